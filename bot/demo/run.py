"""`whodid demo`: build the demo store from the simulated fleet and tell its stories, or
(`--live`) play jim's story for real on network namespaces with sshd and the BPF agent.

Demo-only: nothing in the product paths imports this room. The demo rebuilds its own store each
run and refuses to overwrite any file that is not a demo store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from whodid import config as config_mod
from whodid.tracer import Query, Store, StoreError, Tracer, ingest
from whodid.tracer.render import render_text

from ..commands import EXIT_NO_MATCH, EXIT_OK, UsageError
from ..commands.trace import write_images


def cmd_demo(args, cfg: config_mod.Config) -> int:
    if args.live:
        return live_demo(args.db or str(config_mod.data_dir() / "demo-live.db"), cfg)
    from . import story as demo

    path = args.db or str(config_mod.data_dir() / "demo.db")
    _prepare_demo_file(path)
    print(f"Building the demo store at {path}")
    now = time.time()
    t0 = time.perf_counter()
    fleet, _truth = demo.build(now, seed=args.seed)
    lines = _shipping_order(fleet, args.seed)
    print(f"  simulated {len(fleet.hosts)} hosts over {demo.DAYS} days: {len(lines):,} events "
          f"({time.perf_counter() - t0:.1f}s)")
    store = Store.open(path, create=True)
    store.set_meta("demo", "1")
    t1 = time.perf_counter()

    def progress(report):
        if sys.stderr.isatty():
            print(f"\r  ingesting: {report.accepted:,} / {len(lines):,}", end="", file=sys.stderr, flush=True)

    report = ingest(store, lines, progress=progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"  ingested through the store's ingest path: {report.summary()} "
          f"({time.perf_counter() - t1:.1f}s)")
    if report.rejected:
        raise UsageError(f"the demo's own events were refused: {report.samples[0]}")
    people = cfg.identity.people or demo.story_people()
    ident = config_mod.IdentityConfig(shared_accounts=cfg.identity.shared_accounts, people=people).identity()
    tracer = Tracer(store, ident, cfg.trace_settings())
    query = Query(pattern="delete-cluster", since=now - 86400, limit=cfg.trace.limit)
    traces = tracer.find(query)
    image = os.path.splitext(path)[0] + ".png"
    print()
    print(f"$ whodid trace delete-cluster --since 24h --png {image}")
    print(render_text(query, traces, now))
    for written in write_images(traces[:1], image, now):
        print(f"image: {written}")
    # the second story: a command typed in a tmux session another person started
    query = Query(pattern="dropdb", since=now - 86400, limit=cfg.trace.limit)
    shared = os.path.splitext(path)[0] + "-tmux.png"
    print()
    print(f"$ whodid trace dropdb --since 24h --png {shared}")
    traces = tracer.find(query)
    print(render_text(query, traces, now))
    for written in write_images(traces[:1], shared, now):
        print(f"image: {written}")
    # the store is whole on disk before anything else opens it: closing folds the write-ahead log
    # into the file, so a copy of demo.db alone (a backup, a test) holds every event
    store.close()
    demo_canary(path, cfg)
    demo_digest(path, cfg, ident, now)
    print()
    print("Try next:")
    print(f"  whodid trace --db {path} delete-cluster --json")
    print(f"  whodid trace --db {path} delete-cluster --scope 2")
    print(f"  whodid trace --db {path} /etc/nginx/nginx.conf")
    print(f"  whodid trace --db {path} 'aws*' --user bob")
    print(f"  whodid trace --db {path} to:eks.us-east-1.amazonaws.com      # who talked to the EKS API")
    print(f"  whodid changes --db {path} since:24h user:dave")
    return EXIT_OK


def demo_digest(path: str, cfg: config_mod.Config, ident, now: float) -> None:
    """The day's changes, as the morning digest posts them: the cluster deletion among the
    unplanned ones, the pipeline's deploys planned."""
    from dataclasses import replace

    from whodid.tracer.changes import parse_rules

    from . import story as demo
    from ..changes import DigestJob, render_text
    rules = cfg.changes if cfg.changes.configured else parse_rules(demo.change_rules(now))
    rules = replace(rules, digest=parse_rules({"digest": {"channel": "#changes"}}).digest)
    identity = config_mod.IdentityConfig(shared_accounts=cfg.identity.shared_accounts,
                                         people=cfg.identity.people or demo.story_people())
    demo_cfg = replace(cfg, changes=rules, identity=identity)
    print()
    print("$ whodid changes since:24h          # what the morning digest posts (changes.digest)")
    review = DigestJob(demo_cfg, path, bot=None, log=lambda msg: None).run(now)
    print(render_text(review, now))


def demo_canary(path: str, cfg: config_mod.Config) -> None:
    """The rest of the story: a canary notices the cluster is gone, and its alert names jim."""
    from . import story as demo
    from ..canary.alerts import FilePoster
    from ..canary.checks import parse_canary
    from ..canary.runner import CanaryRunner
    from .fakekube import FakeKube

    with FakeKube() as kube:          # the cluster API, where the prod cluster no longer exists
        canary = parse_canary({
            "name": "prod-cluster", "every": "1m", "timeout": "5s", "channel": "#incidents",
            "check": {"type": "kubernetes", "api_url": kube.url, "token": kube.token,
                      "path": "/apis/eks.amazonaws.com/v1/clusters/prod"},
            "suspects": {"commands": ["delete-cluster", "kubectl delete", "terraform destroy"], "lookback": "24h"},
        }, "demo")
        people = config_mod.IdentityConfig(shared_accounts=cfg.identity.shared_accounts,
                                           people=cfg.identity.people or demo.story_people())
        demo_cfg = dataclasses.replace(cfg, canaries=[canary], identity=people)
        alerts_dir = os.path.join(os.path.dirname(os.path.abspath(path)), "alerts")
        print()
        print("$ whodid serve     # a canary checks the prod cluster every minute; no Slack configured, so")
        print("                   # its alert goes to the log and to files")
        CanaryRunner(demo_cfg, path, FilePoster(alerts_dir, out=sys.stdout), log=lambda m: None).run_one("prod-cluster")


def live_demo(path: str, cfg: config_mod.Config) -> int:
    from pathlib import Path

    from whodid.agent.bccload import BccMissing, load_bcc
    from whodid.agent.lab import Lab, missing_tools, play_story
    from whodid.tracer import Identity, Person

    problems = []
    if os.geteuid() != 0:
        problems.append("root (it makes network namespaces, users and BPF programs)")
    if not os.path.exists("/sys/kernel/tracing/events/sched/sched_process_exec"):
        problems.append("tracefs at /sys/kernel/tracing")
    try:
        load_bcc()
    except BccMissing as exc:
        problems.append(str(exc))
    missing = missing_tools()
    if missing:
        problems.append("these programs: " + ", ".join(missing))
    if problems:
        raise UsageError("the live demo cannot run here; it needs " + "; ".join(problems) +
                         ". `./bootstrap` as root installs what it can; `whodid-agent doctor` explains the rest.")
    _prepare_demo_file(path)
    store = Store.open(path, create=True)
    store.set_meta("demo", "1")
    store.close()
    print(f"Building the live demo store at {path}")
    print("  starting host-a and host-b (own network, pid, mount and UTS namespaces), each with a real sshd "
          "and a whodid agent on BPF; a laptop namespace for jim and bob...")
    with Lab(Path(path)) as lab:
        print("  bob: ssh ec2-user@host-b, sudo -i, aws eks describe-cluster; meanwhile jim: ssh jim@host-a, "
              "then ssh ec2-user@host-b 'sudo -i aws eks delete-cluster --name prod'")
        played = play_story(lab)
    keys = played["keys"]
    ident = Identity(people=(Person("jim", ssh_keys=(keys["jim"],)), Person("bob", ssh_keys=(keys["bob"],))),
                     shared_accounts=tuple(cfg.identity.shared_accounts))
    now = time.time()
    query = Query(pattern="delete-cluster", since=now - 3600, limit=1)
    traces = Tracer(Store.open(path), ident, cfg.trace_settings()).find(query)
    image = os.path.splitext(path)[0] + ".png"
    print()
    print(f"$ whodid trace delete-cluster --limit 1 --png {image}")
    print(render_text(query, traces, now))
    for written in write_images(traces, image, now):
        print(f"image: {written}")
    return EXIT_OK if traces else EXIT_NO_MATCH


def _prepare_demo_file(path: str) -> None:
    """The demo rebuilds its own store each run, and refuses to touch any other file."""
    if not os.path.exists(path):
        return
    try:
        is_demo = Store.open(path).get_meta("demo") == "1"
    except StoreError:
        is_demo = False
    if not is_demo:
        raise UsageError(f"{path} exists and is not a demo store; the demo will not overwrite it. "
                         "Choose another file with --db.")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def _shipping_order(fleet, seed: int) -> list[str]:
    """Events as agents would ship them: JSON lines, hosts interleaved in batches, late hosts late."""
    import random

    rng = random.Random(seed)
    queues = {name: [json.dumps(ev, separators=(",", ":")) for ev in h.events] for name, h in fleet.hosts.items()}
    out: list[str] = []
    names = sorted(queues)
    while names:
        name = rng.choice(names)
        q = queues[name]
        take = rng.randint(200, 2000)
        out.extend(q[:take])
        del q[:take]
        if not q:
            names.remove(name)
    return out
