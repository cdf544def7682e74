"""The demo room: `whodid demo` and the stand-ins it plays against. Demo-only code; no product
path imports it.

run.py is the `whodid demo` command (the simulated stories, and `--live` on namespaces with the
real agent); story.py is what happens on the simulated fleet (jim deletes the cluster, the tmux
session, four days of surrounding noise); simfleet.py is the fleet that emits schema-v1 events
like agents would; fakekube.py is a stand-in Kubernetes API for the demo's canary and the tests.
"""
