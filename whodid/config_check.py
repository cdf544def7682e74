"""`whodid config check`: every problem of a config file at once, each at its line.

Loading a config stops at its first problem (a daemon must not start on half a config); a
person fixing one wants them all. The rules are config.py's own - config.collect runs each
section and rule on its own and keeps every ConfigError - and this module only finds where in
the file each one is: YAML's composed nodes keep their marks, and a problem names its key in
backticks (`agent.ringbuf_pages`, `changes.windows[0].cron`) or as `canary NAME` /
`canaries[I]` (or `output NAME` / `outputs[I]`), which is walked down the node tree as far as it goes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from whodid import config as config_mod


@dataclass(frozen=True)
class Problem:
    line: int | None            # 1-based; None: the file as a whole
    message: str                # without the file's name

    def show(self, path: str) -> str:
        """`path:line: message`, its secrets masked: the output goes into tickets and chat."""
        from whodid.logs import mask
        return mask(f"{path}:{self.line}: {self.message}" if self.line else f"{path}: {self.message}")


def check_text(text: str, path: str, mode: int = 0o600) -> tuple[config_mod.Config | None, list[Problem]]:
    """(the Config, every problem) of a config file's text; mode: the file's, for the rule
    that a file holding secrets is its owner's alone."""
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        what = " ".join(str(p) for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p)
        return None, [Problem(mark.line + 1 if mark else None, f"not valid YAML: {what or exc}")]
    try:
        config_mod.within_bounds(raw, path)
    except config_mod.ConfigError as exc:
        return None, [Problem(None, str(exc).removeprefix(f"{path} "))]
    cfg, errors = config_mod.collect(raw, path)
    problems = []
    for error in errors:
        message = str(error).removeprefix(f"{path}: ")
        problems.append(Problem(line_of(root, message), message))
    secret = config_mod.readable_secrets(raw, path, mode)
    if secret:
        first = config_mod.secrets_in(raw)[0]              # slack.bot_token, canaries[NAME].check.token
        parts = [p for p in re.split(r"[.\[\]]+", first) if p]
        key = [parts[0], ("name", parts[1]), *parts[2:]] if parts[0] == "canaries" else parts
        problems.append(Problem(_walk(root, key)[1] if root else None, str(secret).removeprefix(f"{path} ")))
    return cfg, sorted(problems, key=lambda p: p.line or 0)      # in the file's order, as a linter


def line_of(root: yaml.Node | None, message: str) -> int | None:
    """The line of the deepest node a message's key reaches in the file (None: none of it is)."""
    if root is None:
        return None
    best = (0, None)
    for path in keys_in(message):
        depth, line = _walk(root, path)
        if depth > best[0]:
            best = (depth, line)
    return best[1]


def _walk(node: yaml.Node, path: list) -> tuple[int, int | None]:
    """(how many parts of the path the file has, the line of the last). A key may hold dots
    (network.names' DNS names), so the longest run of parts that names a key is tried first."""
    i, line = 0, None
    while i < len(path):
        for j in range(len(path), i, -1):
            parts = path[i:j]
            if j > i + 1 and not all(isinstance(p, str) for p in parts):
                continue
            child, found = _child(node, ".".join(parts) if j > i + 1 else parts[0])
            if child is not None:
                node, line, i = child, found, j
                break
        else:
            break
    return i, line


_KEY = re.compile(r"`([A-Za-z_][^`\s]*)`")
_CANARY = re.compile(r"\bcanary ([A-Za-z0-9][A-Za-z0-9_.-]*?)(?=[.:\s]|$)|\bcanaries\[(\d+)\]")
_INDEX = re.compile(r"^(.*?)\[(\d+)\]$")
_OUTPUT = re.compile(r"\boutput ([A-Za-z0-9][A-Za-z0-9_.-]*?)(?=[.:\s]|$)|\boutputs\[(\d+)\]")


def keys_in(message: str) -> list[list]:
    """The key paths a message names: ["agent", "ringbuf_pages"], ["canaries", 2], ..."""
    paths = []
    for m in _CANARY.finditer(message):
        name, index = m.groups()
        paths.append(["canaries", int(index) if index is not None else ("name", name)])
    for m in _OUTPUT.finditer(message):               # outputs.py's words: `output NAME.url`, `outputs[I]`
        name, index = m.groups()
        paths.append(["outputs", int(index) if index is not None else ("name", name)])
    for m in _KEY.finditer(message):
        path: list = []
        for part in m.group(1).split("."):
            index = _INDEX.match(part)
            path += [index.group(1), int(index.group(2))] if index else [part]
        if paths and paths[0][0] == "canaries" and path[0] != "canaries":
            path = paths[0] + path          # a canary's own key: `every`, `check`
        paths.append(path)
    return paths


def _child(node: yaml.Node, part) -> tuple[yaml.Node | None, int | None]:
    """(the child node, the line it starts at) for a key, a list index, or ("name", N)."""
    if isinstance(node, yaml.SequenceNode):
        if isinstance(part, int) and part < len(node.value):
            return node.value[part], node.value[part].start_mark.line + 1
        if isinstance(part, tuple):
            for item in node.value:
                if isinstance(item, yaml.MappingNode) and any(
                        k.value == "name" and getattr(v, "value", None) == part[1] for k, v in item.value):
                    return item, item.start_mark.line + 1
        return None, None
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                return value, key.start_mark.line + 1
    return None, None
