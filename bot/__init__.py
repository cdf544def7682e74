"""whodid.bot: the face of whodid - the `whodid` command (and, later, the Slack app)."""
