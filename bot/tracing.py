"""The tracer every surface asks through (CLI, Slack, canaries, trace pages, change review),
made in one place from the config: who is who (identity), how to stitch (trace settings),
and what a destination's name stands for (names recorded at connect time, network.names, and
- when network.resolve - the name resolved when asked: tracer/names.py)."""

from __future__ import annotations

import socket
from functools import partial

from whodid import config as config_mod
from whodid.tracer import Store, Tracer
from whodid.tracer.names import addresses_for


def tracer_for(cfg: config_mod.Config, store: Store) -> Tracer:
    lookup = partial(addresses_for, recorded=store.addresses_named, config_names=cfg.network.networks(),
                     resolver=socket.getaddrinfo if cfg.network.resolve else _no_resolution)
    return Tracer(store, cfg.identity.identity(), cfg.trace_settings(), addresses_for=lookup)


def _no_resolution(*args, **kw):
    raise socket.gaierror(socket.EAI_NONAME, "network.resolve is off")
