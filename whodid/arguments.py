"""The command-line parser both commands (`whodid`, `whodid-agent`) build on.

argparse's own error is a usage block and exit 2; whodid's promise for every error is one
line a person can act on, exit 2, and a bad argument keeps it too.
"""

from __future__ import annotations

import argparse

EXIT_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse, keeping the promise every other error keeps: one line, exit 2."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: {message} (see `{self.prog} --help`)\n")
