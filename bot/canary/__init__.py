"""The canary room: checks that notice an outage, and who to suspect when one fails.

checks.py parses the config's `canaries` and runs one check (HTTP, TCP, command, Kubernetes) as a
pure step with its I/O at the edge; runner.py schedules them in `whodid serve`, finds suspects in
the store and keeps their state; alerts.py is the open/resolved state machine (`step`) and what an
alert says, posted to Slack or to files.
"""
