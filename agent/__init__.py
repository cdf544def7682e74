"""whodid.agent: capture on each host with BPF tracepoints (BCC), as schema-v1 events.

capture.c (the kernel side) -> decode.py (raw records, pure) -> assemble.py (the process
table, /proc and NSS lookups -> events) -> cli.py (`whodid-agent`: where events go).
"""
