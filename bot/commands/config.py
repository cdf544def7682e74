"""`whodid config check|example` and `whodid files`: the config file and the files whodid ships.

Neither reads the config the way the other commands do: `config check` reads it itself to
say every problem at once (whodid/config_check.py), and the shipped files need no config.
"""

from __future__ import annotations

import sys

from whodid import config as config_mod
from whodid import shipped
from whodid.config_check import check_text

from . import EXIT_ERROR, EXIT_OK, UsageError


def cmd_config(args, _cfg) -> int:
    if args.action == "example":
        sys.stdout.write(shipped.find("config.example.yaml").text())
        return EXIT_OK
    return check(args.file or getattr(args, "config", None))


def check(path: str | None) -> int:
    """Every problem of the config file, one a line as FILE:LINE: what; exit 2 if any."""
    chosen = config_mod.find(path)
    if not chosen:
        looked = ", ".join(["$WHODID_CONFIG", *config_mod.SEARCH_PATH])
        print(f"ok: no config file ({looked}): whodid runs on its defaults; start one with "
              "`whodid config example > /etc/whodid/config.yaml`")
        return EXIT_OK
    try:
        text, mode = config_mod.read(chosen)
    except config_mod.ConfigError as exc:
        print(f"whodid: {exc}", file=sys.stderr)
        return EXIT_ERROR
    cfg, problems = check_text(text, chosen, mode)
    for problem in problems:
        print(problem.show(chosen))
    if problems:
        print(f"{len(problems)} problem(s) in {chosen}", file=sys.stderr)
        return EXIT_ERROR
    print(f"ok: {chosen}: {summary(cfg, text)}")
    return EXIT_OK


def summary(cfg: config_mod.Config, text: str) -> str:
    """What the file sets, in a line: the sections given, and how many canaries and people."""
    import yaml
    raw = yaml.safe_load(text) or {}
    sections = [name for name in raw if raw.get(name) not in (None, {}, [])]
    return (f"sections {', '.join(sections) or 'none (all defaults)'}; {len(cfg.canaries)} canar"
            f"{'y' if len(cfg.canaries) == 1 else 'ies'}; {len(cfg.identity.people)} "
            f"{'person' if len(cfg.identity.people) == 1 else 'people'}; "
            f"{len(cfg.changes.windows)} change window(s)")


def cmd_files(args, _cfg) -> int:
    """No name: each shipped file, where it is, and what it is for. A name: its contents."""
    if args.name:
        try:
            found = shipped.find(args.name)
        except KeyError as exc:
            raise UsageError(exc.args[0]) from None
        if args.path:
            print(found.resource())
        else:
            sys.stdout.write(found.text())
        return EXIT_OK
    for item in shipped.every():
        print(f"{item.name:<22} {item.resource()}\n{'':<22} {item.what}")
    return EXIT_OK

