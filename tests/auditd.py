"""A real auditd for the tests: its own config and log in a temporary directory, whodid's
rules loaded, everything undone afterwards (rules deleted, auditing switched back off).

Its plugins are only those it is given (`plugins`: file name -> plugin config, e.g. Laurel's
for bench/agent_overhead.py), in its own plugin directory: never the host's
/etc/audit/plugins.d, where an installed package (laurel, af_unix) may have put an active one."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

RULES = Path(__file__).parent.parent / "agent" / "audit.rules"
CONF = """log_file = {log}
log_format = ENRICHED
flush = INCREMENTAL_ASYNC
freq = 20
max_log_file = 200
num_logs = 2
max_log_file_action = ROTATE
space_left = 50
space_left_action = SYSLOG
admin_space_left = 20
admin_space_left_action = SUSPEND
disk_full_action = SUSPEND
disk_error_action = SUSPEND
write_logs = yes
local_events = yes
plugin_dir = {plugins}
q_depth = 2000
overflow_action = SYSLOG
"""


def missing() -> str | None:
    for tool in ("auditd", "auditctl", "ausearch"):
        if not shutil.which(tool):
            return f"{tool} is not installed (apt-get install auditd)"
    res = subprocess.run(["auditctl", "-s"], capture_output=True, text=True)
    if res.returncode:
        return f"the kernel's audit subsystem is not usable here: {res.stderr.strip()}"
    return None


class Auditd:
    def __init__(self, work: Path, plugins: dict[str, str] | None = None):
        self.dir = work
        self.log = work / "audit.log"
        self.plugins = plugins or {}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Auditd":
        self.dir.mkdir(parents=True, exist_ok=True)
        plugin_dir = self.dir / "plugins.d"
        plugin_dir.mkdir(mode=0o750, exist_ok=True)
        for name, text in self.plugins.items():
            (plugin_dir / name).write_text(text)
            (plugin_dir / name).chmod(0o640)           # auditd refuses a plugin config others may write
        conf = self.dir / "auditd.conf"
        conf.write_text(CONF.format(log=self.log, plugins=plugin_dir))
        conf.chmod(0o640)
        subprocess.run(["auditctl", "-D"], capture_output=True)
        self.proc = subprocess.Popen(["auditd", "-n", "-c", str(self.dir)], stderr=subprocess.PIPE, text=True)
        for _ in range(100):
            if self.log.exists():
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"auditd did not start: {self.proc.stderr.read()}")
            time.sleep(0.05)
        subprocess.run(["auditctl", "-R", str(RULES)], check=True, capture_output=True)
        subprocess.run(["auditctl", "-e", "1"], check=True, capture_output=True)
        return self

    def stop(self) -> None:
        subprocess.run(["auditctl", "-D"], capture_output=True)
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        subprocess.run(["auditctl", "-e", "0"], capture_output=True)

    def __exit__(self, *exc) -> None:
        self.stop()
