"""whodid.bot: the face of whodid - the `whodid` command, the Slack app, canaries."""
