"""The `whodid` subcommands' implementations, one module per command (cli.py only parses and
dispatches): trace.py, changes.py, ingest.py (ingest and import-audit), db.py, token.py,
canary.py, config.py (config check and example, files). `whodid serve` lives in bot/serve.py and `whodid demo` in bot/demo/run.py.

Every command takes (args, config) and returns its exit status; a mistake the user can fix is a
UsageError, which the CLI prints as one line.
"""

EXIT_OK, EXIT_NO_MATCH, EXIT_ERROR = 0, 1, 2


class UsageError(Exception):
    pass
