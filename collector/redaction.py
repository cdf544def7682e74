"""Defence in depth: the collector redacts every batch as it arrives, with the rules the
agents use (whodid.tracer.redact), so a command line an old, misconfigured or foreign agent
sent with its secret never reaches the store - nor does the raw text of a refused event."""

from __future__ import annotations

from whodid.tracer.redact import redact_events, redact_text


def redact_batch(batch) -> None:
    """Redact a parsed batch in place: its events' command lines and its refused lines."""
    redact_events(batch.events)
    batch.refused[:] = [(line, field, error, redact_text(raw)) for line, field, error, raw in batch.refused]
