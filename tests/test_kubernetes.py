"""The Kubernetes manifests in deploy/kubernetes (issue 22 item 2), checked without a cluster:

- every object validates against the Kubernetes OpenAPI schemas (kubernetes-validate bundles
  them), strictly - an unknown field is an error - for the oldest version they claim (1.30,
  for appArmorProfile) and the newest the library knows; and the validator is shown to catch
  a misspelt field;
- the kustomization lists every manifest and names every image the manifests use;
- what the manifests say matches what whodid really does: the ConfigMap is a config whodid
  loads, the ports and the probe path are the ones `whodid serve` serves (a real collector from
  that config answers the probe), the agent's token file and spool are where it is mounted, the
  agent's capabilities are the systemd unit's (both measured by tests/test_units.py), the
  commands and options exist.

Not checked: that a cluster schedules and runs them (no cluster here; docs/deploy.md).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from whodid import config as config_mod
from whodid.collector.server import Collector

from test_units import UNITS, unit_settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def manifests() -> dict[str, list[dict]]:
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(K8S.glob("*.yaml"))
            if p.name != "kustomization.yaml"}


def objects() -> dict[str, dict]:
    return {doc["kind"]: doc for docs in manifests().values() for doc in docs}


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_kubernetes(version):
    for name, docs in manifests().items():
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)       # raises, naming the field


def test_the_validator_refuses_a_misspelt_field():
    ds = objects()["DaemonSet"]
    ds["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, VERSIONS[0], strict=True)


def test_the_kustomization_lists_every_manifest_and_names_every_image():
    k = kustomization()
    assert sorted(k["resources"]) == sorted(manifests())
    assert k["namespace"] == objects()["Namespace"]["metadata"]["name"]
    used = {c["image"] for kind in ("DaemonSet", "Deployment")
            for c in objects()[kind]["spec"]["template"]["spec"]["containers"]}
    assert used == {i["name"] for i in k["images"]}
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert {i["newTag"] for i in k["images"]} == {version}


def config_from_map() -> config_mod.Config:
    text = objects()["ConfigMap"]["data"]["config.yaml"]
    return config_mod.from_dict(yaml.safe_load(text))       # whodid's own loader: unknown keys refused


def pod(kind: str) -> dict:
    return objects()[kind]["spec"]["template"]["spec"]


def mounts(kind: str) -> dict[str, dict]:
    """mountPath -> (the mount, its volume)."""
    volumes = {v["name"]: v for v in pod(kind)["volumes"]}
    return {m["mountPath"]: {**m, "volume": volumes[m["name"]]} for m in pod(kind)["containers"][0]["volumeMounts"]}


def test_ports_and_probes_are_the_ones_whodid_serve_serves(tmp_path):
    cfg = config_from_map()
    collector_port, web_port = cfg.collector.address()[1], int(cfg.web.listen.rsplit(":", 1)[1])
    assert (collector_port, web_port) == (8470, 8471)           # config.example.yaml's
    container = pod("Deployment")["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"collector": collector_port, "web": web_port}
    service = objects()["Service"]["spec"]
    assert {p["targetPort"]: p["port"] for p in service["ports"]} == ports
    assert service["selector"] == objects()["Deployment"]["spec"]["selector"]["matchLabels"]
    # the agents ship to that Service, in that namespace
    ns = kustomization()["namespace"]
    assert cfg.agent.collector == f"http://{objects()['Service']['metadata']['name']}.{ns}.svc:{ports['collector']}"
    # every probe asks a real collector, built from this config, and is answered 200
    probes = [container[p]["httpGet"] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    assert all(p["port"] == "collector" for p in probes)
    db = str(tmp_path / "store.db")
    c = Collector(db, "127.0.0.1", 0).start()
    try:
        for probe in probes:
            with urllib.request.urlopen(c.url + probe["path"], timeout=30) as resp:
                assert resp.status == 200
    finally:
        c.stop()
    # the store is on the volume, and the security context is not root's
    assert Path(cfg.store.path).parent.as_posix() in mounts("Deployment")
    assert mounts("Deployment")[str(Path(cfg.store.path).parent)]["volume"]["persistentVolumeClaim"]["claimName"] \
        == objects()["PersistentVolumeClaim"]["metadata"]["name"]
    ctx, pctx = container["securityContext"], pod("Deployment")["securityContext"]
    assert pctx["runAsNonRoot"] and pctx["runAsUser"] != 0 and ctx["readOnlyRootFilesystem"]
    assert ctx["capabilities"] == {"drop": ["ALL"]} and not ctx["allowPrivilegeEscalation"]


def test_the_agent_has_the_units_capabilities_and_its_files_where_it_looks():
    container = pod("DaemonSet")["containers"][0]
    ctx = container["securityContext"]
    assert ctx["privileged"] is False and ctx["capabilities"]["drop"] == ["ALL"]
    unit_caps = unit_settings(UNITS / "whodid-agent.service")["CapabilityBoundingSet"][0].split()
    assert sorted("CAP_" + c for c in ctx["capabilities"]["add"]) == sorted(unit_caps)
    assert pod("DaemonSet")["hostPID"] and pod("DaemonSet")["hostNetwork"]
    cfg = config_from_map()
    m = mounts("DaemonSet")
    # the token: this node's key of the Secret, at agent.token_file, readable by root alone
    token = m[cfg.agent.token_file]
    assert token["subPathExpr"] == "$(NODE_NAME)" and token["volume"]["secret"]["defaultMode"] == 0o400
    # the spool on the host, so it outlives the pod
    spool = container["args"][container["args"].index("--spool") + 1]
    assert m[str(Path(spool).parent)]["volume"]["hostPath"]["path"] == str(Path(spool).parent)
    # what BCC and the agent read on the host, at the same place inside
    agent_src = "\n".join(p.read_text() for p in (ROOT / "agent").glob("*.py"))
    for path in ("/sys/kernel/tracing", "/sys/kernel/debug", "/sys/kernel/btf", "/lib/modules", "/usr/src"):
        assert m[path]["volume"]["hostPath"]["path"] == path and m[path]["readOnly"]
        assert path in agent_src                                   # the agent (or its doctor) looks there
    assert container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


@pytest.mark.parametrize("kind", ["DaemonSet", "Deployment"])
def test_the_commands_and_options_exist(kind):
    container = pod(kind)["containers"][0]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert container["command"][0] in scripts
    subcommand = container["args"][0]
    helped = subprocess.run([Path(sys.executable).parent / container["command"][0], subcommand, "--help"],
                            capture_output=True, text=True)
    assert helped.returncode == 0
    assert all(opt in helped.stdout for opt in container["args"] if opt.startswith("--"))
    config = container["args"][container["args"].index("--config") + 1]
    assert mounts(kind)[config]["subPath"] == "config.yaml"


def test_the_agent_sees_a_volatile_journal_and_serve_has_a_writable_matplotlib_dir():
    """Adversarial review of issue 22. A node whose journal is volatile (no /var/log/journal:
    journald's Storage=auto) keeps sshd's lines under /run/log/journal, which journalctl in the
    pod must see. serve, non-root with a read-only root, draws trace pictures with matplotlib,
    whose cache (~/.config/matplotlib) must be somewhere writable or it is rebuilt at every
    start in a fresh temporary directory, with a warning."""
    m = mounts("DaemonSet")
    assert m["/run/log/journal"]["volume"]["hostPath"]["path"] == "/run/log/journal" and m["/run/log/journal"]["readOnly"]
    container = pod("Deployment")["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    where = env.get("MPLCONFIGDIR")
    assert where and any(where == p or where.startswith(p.rstrip("/") + "/") for p, v in mounts("Deployment").items()
                         if not v.get("readOnly")), env
