"""`whodid demo`: the story that motivated whodid, on a simulated fleet of 22 hosts.

jim logs in to the jump box, pauses about three hours, hops to the config server as the
shared account ec2-user, becomes root with `sudo -i`, and an hour later deletes the prod
EKS cluster. bob does much the same the same day - ec2-user on the same server, sudo, aws -
and four days of cron jobs, daemons, deploys and other people surround them.

The same afternoon the staging database is dropped on db-01 from a tmux session jim started
that morning as ec2-user and detached from; bob attached to it later. The process tree leads
to jim; who was attached when it ran says bob.
"""

from __future__ import annotations

import random
import time
from typing import Any

from .simfleet import SimFleet, SimProc, key_fingerprint

DAYS = 4
LAPTOPS = {"jim": "203.0.113.7", "bob": "198.51.100.23", "alice": "203.0.113.41",
           "carol": "198.51.100.88", "dave": "203.0.113.90"}
PEOPLE = {name: key_fingerprint(name) for name in LAPTOPS} | {"deploy-ci": key_fingerprint("deploy-ci")}

EKS_API = ("198.51.100.24", 443)      # eks.us-east-1.amazonaws.com in the story (a documentation address)
HOSTS = (
    [("jump-box", "10.0.0.10"), ("config-server", "10.0.1.20")]
    + [(f"web-{i:02d}", f"10.0.2.{10 + i}") for i in range(1, 7)]
    + [(f"db-{i:02d}", f"10.0.3.{10 + i}") for i in range(1, 4)]
    + [(f"cache-{i:02d}", f"10.0.4.{10 + i}") for i in range(1, 3)]
    + [(f"ci-runner-{i:02d}", f"10.0.5.{10 + i}") for i in range(1, 3)]
    + [(f"k8s-node-{i:02d}", f"10.0.6.{10 + i}") for i in range(1, 5)]
    + [("monitor-01", "10.0.7.11"), ("backup-01", "10.0.7.12"), ("log-01", "10.0.7.13")]
)
ROLE_DAEMONS = {
    "web": [(["nginx:", "master", "process", "/usr/sbin/nginx"], 0), (["/usr/local/bin/app-server", "--port", "8080"], 998)],
    "db": [(["/usr/lib/postgresql/15/bin/postgres", "-D", "/var/lib/postgresql/15/main"], 997)],
    "cache": [(["/usr/bin/redis-server", "127.0.0.1:6379"], 996)],
    "ci": [(["/usr/bin/gitlab-runner", "run"], 995)],
    "k8s": [(["/usr/bin/kubelet", "--config=/var/lib/kubelet/config.yaml"], 0)],
}
CRON_JOBS = [
    (10, ["/bin/sh", "-c", "/usr/local/bin/healthcheck.sh"], [["curl", "-fsS", "http://localhost/health"]]),
    (60, ["/bin/sh", "-c", "cd / && run-parts --report /etc/cron.hourly"], [["run-parts", "--report", "/etc/cron.hourly"]]),
]


def story_people() -> dict[str, dict[str, list[str]]]:
    """The identity section that goes with this fleet (as config.example.yaml shows it)."""
    return {name: {"ssh_keys": [fp]} for name, fp in PEOPLE.items() if name in LAPTOPS}


def build(now: float, seed: int = 7, days: int = DAYS) -> tuple[SimFleet, dict[str, Any]]:
    """The fleet and what really happened (for tests to check the answer against). `days`
    longer than the demo's four makes the same story with more history (bench/bigfleet.py)."""
    rng = random.Random(seed)
    fleet = SimFleet(seed)
    start = now - days * 86400
    for name, addr in HOSTS:
        h = fleet.add_host(name, addr, boot_ts=start - rng.uniform(3600, 30 * 86400))
        for uid, user in [(1000, "ec2-user"), (1001, "jim"), (1002, "bob"), (1003, "alice"),
                          (1004, "carol"), (1005, "dave"), (1100, "deploy"), (1006, "ubuntu"),
                          (998, "app"), (997, "postgres"), (996, "redis"), (995, "gitlab-runner")]:
            h.add_user(uid, user)
        role = name.split("-")[0] if not name.startswith("ci") else "ci"
        h.daemons = [h.daemon(start - 60, argv, uid) for argv, uid in ROLE_DAEMONS.get(role, [])]
    _cron_noise(fleet, start, now, rng)
    _daily_work(fleet, start, now, rng, days)
    truth = _incident(fleet, now)
    truth.update(_shared_tmux(fleet, now))
    _changes_today(fleet, now)
    return fleet, truth


def deploy_window_opens(now: float) -> float:
    """The hour the pipeline's window opens on the demo's last day: its daily run starts 14 to
    14.5 hours after the day's start (see _daily_work), so 10 to 9.5 hours before now."""
    return (now - 10 * 3600) // 3600 * 3600


def change_rules(now: float) -> dict[str, Any]:
    """The `changes` config that goes with this fleet: the deploy pipeline (gitlab-runner on the
    CI hosts) is expected, in a two-hour daily window around its run."""
    hour = time.gmtime(deploy_window_opens(now)).tm_hour
    return {
        "expected_actors": [{"name": "deploy pipeline", "users": ["gitlab-runner", "deploy"],
                             "from_hosts": ["ci-runner-*"]}],
        "windows": [{"name": "daily deploy window", "cron": f"0 {hour} * * *", "duration": "2h", "timezone": "UTC",
                     "hosts": ["web-*", "k8s-*", "ci-runner-*"]}],
    }


def _changes_today(fleet: SimFleet, now: float) -> None:
    """The rest of the day's changes: the pipeline's Kubernetes rollout in its window, and two
    hand-run fixes. (Its own random stream, so the story above stays as it was.)"""
    rng = random.Random(1234)
    H = fleet.hosts
    t = deploy_window_opens(now) + 2400 + rng.uniform(0, 600)
    ci = H["ci-runner-02"]
    job = ci.spawn(ci.daemons[0], t, ["/bin/bash", "-c", "kubectl apply -f k8s/prod/"], duration=None)
    ci.spawn(job, t + 0.3, ["kubectl", "apply", "-f", "k8s/prod/"], duration=4.0)
    ci.spawn(job, t + 5, ["kubectl", "rollout", "status", "deployment/api", "-n", "prod"], duration=30.0)
    ci.exit(job, t + 36)
    # carol restarts postgres by hand on db-02, via sudo, late morning
    t = now - 13 * 3600 + rng.uniform(0, 1800)
    db = H["db-02"]
    sh = fleet.ssh_login(db, t, "carol", raddr=LAPTOPS["carol"], rport=rng.randint(40000, 60000),
                         key_fp=PEOPLE["carol"])
    r = db.spawn(sh, t + 40, ["sudo", "systemctl", "restart", "postgresql"], duration=None, euid=0)
    db.setuid(r, t + 40.01, 0)
    db.spawn(r, t + 40.02, ["systemctl", "restart", "postgresql"], duration=3.0)
    db.exit(r, t + 43.1)
    _logout(sh, t + 90)
    # dave scales a deployment from a k8s node, as the shared ubuntu account, outside the window
    t = now - 5 * 3600 + rng.uniform(0, 1800)
    sh = fleet.ssh_login(H["jump-box"], t, "dave", raddr=LAPTOPS["dave"], rport=rng.randint(40000, 60000),
                         key_fp=PEOPLE["dave"])
    _, nsh = fleet.ssh_hop(sh, t + 20, H["k8s-node-02"], "ubuntu", PEOPLE["dave"])
    H["k8s-node-02"].spawn(nsh, t + 45, ["kubectl", "scale", "deployment/api", "--replicas=2", "-n", "prod"],
                           duration=1.0)
    _logout(nsh, t + 80)
    _logout(sh, t + 90)


def _cron_noise(fleet: SimFleet, start: float, now: float, rng: random.Random) -> None:
    for h in fleet.hosts.values():
        for every_min, sh_argv, children in CRON_JOBS:
            t = start + rng.uniform(0, every_min * 60)
            while t < now:
                job = h.fork(h.cron, t)                       # cron's own child, then the job's shell
                job.auid, job.ses = 0, h.next_ses
                h.next_ses += 1
                sh = h.spawn(job, t + 0.002, sh_argv, duration=None)
                for argv in children:
                    h.spawn(sh, t + 0.01, argv, duration=0.3)
                h.exit(sh, t + 0.4)
                h.exit(job, t + 0.41)
                t += every_min * 60 + rng.uniform(-1, 1)


def _session(fleet: SimFleet, shell: SimProc, t: float, commands: list[list[str]],
             rng: random.Random) -> float:
    """Type commands in a shell, a few seconds to minutes apart. Returns the time after."""
    for argv in commands:
        t += rng.uniform(4, 90)
        shell.host.spawn(shell, t, argv, duration=rng.uniform(0.05, 3))
    return t


def _logout(shell: SimProc, t: float) -> None:
    shell.host.exit(shell, t)


def _daily_work(fleet: SimFleet, start: float, now: float, rng: random.Random, days: int = DAYS) -> None:
    H = fleet.hosts
    jump = H["jump-box"]
    for day in range(days):
        d0 = start + day * 86400 + 8 * 3600
        # alice: web admin via the jump box, edits nginx config with sudo, reloads it
        t = d0 + rng.uniform(0, 3600)
        if t < now - 3600:
            sh = fleet.ssh_login(jump, t, "alice", raddr=LAPTOPS["alice"], rport=rng.randint(40000, 60000),
                                 key_fp=PEOPLE["alice"])
            t = _session(fleet, sh, t, [["uptime"], ["ls", "-la"]], rng)
            web = H[f"web-{rng.randint(1, 6):02d}"]
            _, wsh = fleet.ssh_hop(sh, t + 30, web, "alice", PEOPLE["alice"])
            t = _session(fleet, wsh, t + 31, [["tail", "-n", "50", "/var/log/nginx/error.log"]], rng)
            vim = web.spawn(wsh, t + 20, ["sudo", "vim", "/etc/nginx/nginx.conf"], duration=None, euid=0)
            web.setuid(vim, t + 20.01, 0)
            editor = web.spawn(vim, t + 20.02, ["vim", "/etc/nginx/nginx.conf"], duration=None)
            web.file(editor, t + 140, "write", "/etc/nginx/nginx.conf")
            web.exit(editor, t + 141)
            web.exit(vim, t + 141.1)
            rl = web.spawn(wsh, t + 150, ["sudo", "systemctl", "reload", "nginx"], duration=None, euid=0)
            web.setuid(rl, t + 150.01, 0)
            web.spawn(rl, t + 150.02, ["systemctl", "reload", "nginx"], duration=0.4)
            web.exit(rl, t + 150.5)
            _logout(wsh, t + 200)
            _logout(sh, t + 260)
        # carol: straight from her laptop to a database host, as herself
        t = d0 + 2 * 3600 + rng.uniform(0, 3600)
        if t < now - 3600:
            db = H[f"db-{rng.randint(1, 3):02d}"]
            sh = fleet.ssh_login(db, t, "carol", raddr=LAPTOPS["carol"], rport=rng.randint(40000, 60000),
                                 key_fp=PEOPLE["carol"])
            t = _session(fleet, sh, t, [["psql", "-c", "select count(*) from orders"], ["df", "-h"]], rng)
            dump = db.spawn(sh, t + 10, ["sudo", "-u", "postgres", "pg_dump", "orders"], duration=None, euid=0)
            db.setuid(dump, t + 10.01, 997)
            db.spawn(dump, t + 10.02, ["pg_dump", "orders"], duration=40)
            db.exit(dump, t + 51)
            _logout(sh, t + 120)
        # dave: kubernetes nodes as the shared `ubuntu` account, with his own key
        t = d0 + 4 * 3600 + rng.uniform(0, 3600)
        if t < now - 3600:
            sh = fleet.ssh_login(jump, t, "dave", raddr=LAPTOPS["dave"], rport=rng.randint(40000, 60000),
                                 key_fp=PEOPLE["dave"])
            node = H[f"k8s-node-{rng.randint(1, 4):02d}"]
            _, nsh = fleet.ssh_hop(sh, t + 20, node, "ubuntu", PEOPLE["dave"])
            t = _session(fleet, nsh, t + 21, [["kubectl", "get", "pods", "-A"], ["sudo", "crictl", "ps"],
                                              ["journalctl", "-u", "kubelet", "-n", "100"]], rng)
            _logout(nsh, t + 60)
            _logout(sh, t + 70)
        # jim's ordinary days: the jump box, and now and then config-server, legitimately
        t = d0 + rng.uniform(0, 1800)
        if t < now - 9 * 3600:
            sh = fleet.ssh_login(jump, t, "jim", raddr=LAPTOPS["jim"], rport=rng.randint(40000, 60000),
                                 key_fp=PEOPLE["jim"])
            t = _session(fleet, sh, t, [["git", "-C", "infra", "pull"], ["kubectl", "get", "pods", "-n", "prod"]], rng)
            if day % 2:
                _, csh = fleet.ssh_hop(sh, t + 30, H["config-server"], "ec2-user", PEOPLE["jim"])
                t = _session(fleet, csh, t + 31, [["aws", "eks", "list-clusters"],
                                                  ["aws", "eks", "describe-cluster", "--name", "staging"]], rng)
                _logout(csh, t + 40)
            _logout(sh, t + 60)
        # the deploy pipeline: gitlab-runner on a CI host ssh'es to every web host as `deploy`
        t = d0 + 6 * 3600 + rng.uniform(0, 1800)
        if t < now - 3600:
            ci = H["ci-runner-01"]
            job = ci.spawn(ci.daemons[0], t, ["/bin/bash", "-c", "ansible-playbook deploy.yml"], duration=None)
            ansible = ci.spawn(job, t + 0.5, ["ansible-playbook", "deploy.yml"], duration=None)
            for i in range(1, 7):
                web = H[f"web-{i:02d}"]
                ts = t + i * 5
                _, wsh = fleet.ssh_hop(ansible, ts, web, "deploy", PEOPLE["deploy-ci"],
                                       argv=["ssh", "-o", "BatchMode=yes", f"deploy@{web.name}",
                                             "sudo systemctl restart app"])
                r = web.spawn(wsh, ts + 0.5, ["sudo", "systemctl", "restart", "app"], duration=None, euid=0)
                web.setuid(r, ts + 0.51, 0)
                web.spawn(r, ts + 0.52, ["systemctl", "restart", "app"], duration=1.5)
                web.exit(r, ts + 2.1)
                _logout(wsh, ts + 2.2)
            ci.exit(ansible, t + 40)
            ci.exit(job, t + 40.5)


def _incident(fleet: SimFleet, now: float) -> dict[str, Any]:
    rng = random.Random(99)
    H = fleet.hosts
    jump, config = H["jump-box"], H["config-server"]
    t0 = now - 7.5 * 3600
    # jim: ssh with his key to the jump box, a few commands, then a long pause
    jim = fleet.ssh_login(jump, t0, "jim", raddr=LAPTOPS["jim"], rport=53122, key_fp=PEOPLE["jim"])
    t = _session(fleet, jim, t0, [["ls", "-la"], ["cat", "runbook.md"], ["kubectl", "config", "get-contexts"]], rng)
    # bob arrives two hours later, and goes to the same server as the same shared account
    tb = t0 + 2 * 3600
    bob = fleet.ssh_login(jump, tb, "bob", raddr=LAPTOPS["bob"], rport=41870, key_fp=PEOPLE["bob"])
    _, bob_remote = fleet.ssh_hop(bob, tb + 600, config, "ec2-user", PEOPLE["bob"])
    bob_root = fleet.sudo_shell(bob_remote, tb + 700, ["sudo", "su", "-"])
    bt = _session(fleet, bob_root, tb + 710, [["aws", "sts", "get-caller-identity"],
                                              ["aws", "eks", "list-clusters"]], rng)
    # jim comes back three hours after his last command and hops over as ec2-user
    t_ssh = t + 3 * 3600 + 120
    ssh, jim_remote = fleet.ssh_hop(jim, t_ssh, config, "ec2-user", PEOPLE["jim"])
    t_sudo = t_ssh + 55
    jim_root = fleet.sudo_shell(jim_remote, t_sudo, ["sudo", "-i"])
    _session(fleet, jim_root, t_sudo + 5, [["aws", "sts", "get-caller-identity"]], rng)
    # bob keeps working as root on the same box, with aws, while jim's shell sits idle
    _session(fleet, bob_root, max(bt, t_sudo) + 900, [["aws", "eks", "describe-cluster", "--name", "prod"],
                                                      ["aws", "s3", "ls", "s3://prod-backups"],
                                                      ["aws", "eks", "update-kubeconfig", "--name", "prod"]], rng)
    # an hour after the sudo, the delete
    t_del = t_sudo + 3600 + 200
    delete = config.spawn(jim_root, t_del, ["aws", "eks", "delete-cluster", "--name", "prod"], duration=6.5)
    # the CLI's request to the EKS API: what `to:` finds when no command line names the action
    config.connect(delete, t_del + 0.4, EKS_API[0], EKS_API[1], rname="eks.us-east-1.amazonaws.com")
    config.spawn(bob_root, t_del + 1500, ["kubectl", "get", "nodes"], duration=2.0, code=1)
    _logout(jim_root, t_del + 1800)
    _logout(jim_remote, t_del + 1801)
    _logout(bob_root, t_del + 2400)
    _logout(bob_remote, t_del + 2401)
    return {"delete_pid": delete.pid, "delete_ts": t_del + 0.0007, "jim_login": t0, "ssh_ts": t_ssh,
            "sudo_ts": t_sudo, "jim_ssh_pid": ssh.pid}


def _shared_tmux(fleet: SimFleet, now: float) -> dict[str, Any]:
    """jim starts `tmux new -s maint` on db-01 as ec2-user, works, detaches; bob, as ec2-user
    too, attaches hours later and drops the staging database in its shell - which is a child of
    the server jim's client forked, in jim's audit session. Only the attach says who was there."""
    rng = random.Random(19)
    db = fleet.hosts["db-01"]
    path = "/tmp/tmux-1000/default"
    t0 = now - 6 * 3600
    jim = fleet.ssh_login(db, t0, "ec2-user", raddr=LAPTOPS["jim"], rport=50112, key_fp=PEOPLE["jim"])
    client = db.spawn(jim, t0 + 20, ["tmux", "new", "-s", "maint"], duration=None)
    server = db.fork(client, t0 + 20.01)         # tmux forks its server: no exec, comm "tmux: server"
    db.unix_connect(client, server, t0 + 20.02, path)
    pane = db.spawn(server, t0 + 20.03, ["-bash"], duration=None)
    t = _session(fleet, pane, t0 + 21, [["psql", "-c", "select pg_size_pretty(pg_database_size('staging'))"],
                                        ["vacuumdb", "--analyze", "staging"]], rng)
    db.exit(client, t + 30)                     # C-b d: jim's client detaches and exits
    _logout(jim, t + 40)
    tb = now - 2 * 3600
    bob = fleet.ssh_login(db, tb, "ec2-user", raddr=LAPTOPS["bob"], rport=41990, key_fp=PEOPLE["bob"])
    attach = db.spawn(bob, tb + 15, ["tmux", "attach", "-t", "maint"], duration=None)
    db.unix_connect(attach, server, tb + 15.01, path)
    drop = db.spawn(pane, tb + 300, ["dropdb", "staging"], duration=1.2)
    db.exit(attach, tb + 900)
    _logout(bob, tb + 910)
    return {"dropdb_pid": drop.pid, "tmux_server_pid": server.pid, "bob_attach_pid": attach.pid}
