"""whodid.bot: the face of whodid - the `whodid` command, the Slack app, canaries.

Rooms by feature: cli.py parses the command line and dispatches to commands/ (one module per
subcommand); serve.py and health.py are the daemon (`whodid serve`); slack/ is the Slack app;
canary/ the canaries; web/ the trace pages and their signed links; changes.py the change review's
text, Slack pages and digest; demo/ is `whodid demo` and its stand-ins, which no product path
imports.
"""
