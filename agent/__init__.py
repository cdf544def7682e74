"""whodid.agent: capture on each host (not yet built; see issue 4)."""
