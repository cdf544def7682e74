"""The files whodid ships beside its code, found where whodid is installed.

A person setting whodid up needs more than commands: the example config to start from,
auditd's rules, the Slack app's manifest, the systemd units. They are package data, read
through importlib.resources, so `whodid files`, `whodid config example` and
`whodid-agent audit-rules` give the same bytes from a wheel in site-packages as from a
checkout. The checkout keeps each file where its readers look for it (config.example.yaml at
the top, the units in deploy/systemd/); whodid/share/ links to them, and the wheel holds copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable


@dataclass(frozen=True)
class Shipped:
    name: str                   # what a person asks for: `whodid files NAME`
    package: str
    path: str                   # inside the package
    what: str                   # one line: what it is for, and how it is used

    def resource(self) -> Traversable:
        return files(self.package).joinpath(*self.path.split("/"))

    def text(self) -> str:
        return self.resource().read_text(encoding="utf-8")


FIXED = (
    Shipped("config.example.yaml", "whodid", "share/config.example.yaml",
            "every config key, commented: `whodid config example > /etc/whodid/config.yaml`"),
    Shipped("audit.rules", "whodid.agent", "audit.rules",
            "auditd rules for `whodid-agent run --audit-log`: "
            "`whodid-agent audit-rules > /etc/audit/rules.d/whodid.rules && augenrules --load`"),
    Shipped("manifest.yml", "whodid.bot.slack", "manifest.yml",
            "the Slack app's manifest, to paste at api.slack.com/apps (From an app manifest)"),
)


def units() -> list[Shipped]:
    """The systemd units (deploy/systemd/*.service), as many as were built in."""
    folder = files("whodid").joinpath("share", "systemd")
    try:
        names = sorted(f.name for f in folder.iterdir() if f.name.endswith(".service"))
    except (FileNotFoundError, NotADirectoryError):
        names = []
    return [Shipped(name, "whodid", f"share/systemd/{name}",
                    f"systemd unit: `whodid files {name} > /etc/systemd/system/{name}` (docs/deploy.md)")
            for name in names]


def every() -> list[Shipped]:
    return [*FIXED, *units()]


def find(name: str) -> Shipped:
    """The shipped file of that name; KeyError (naming the ones there are) if none."""
    for shipped in every():
        if shipped.name == name:
            return shipped
    raise KeyError(f"whodid ships no file named {name!r}; it ships {', '.join(s.name for s in every())}")
