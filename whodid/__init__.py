"""whodid: trace a command back to the person who ran it.

The code lives in three packages, one per part of the pipeline: whodid.agent (capture on
each host), whodid.tracer (store, stitching, trace) and whodid.bot (Slack, canaries and the
`whodid` command). whodid.config holds the one configuration object they all read, and
whodid.private makes the files they write private (0600, directories 0700).
"""

__version__ = "0.1.0"
