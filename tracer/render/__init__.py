"""Renderers: pure functions from a Trace (or a list of them) to something people read."""

from .jsonout import TRACE_SCHEMA, trace_json, traces_json
from .text import render_text

__all__ = ["TRACE_SCHEMA", "trace_json", "traces_json", "render_text"]
