"""Redaction, as the agent uses it: the rules live in whodid.tracer.redact, the one place
every producer (agent, audit import, ingest) and the collector take them from."""

from whodid.tracer.redact import (DEFAULT_RULES, MASK, Rule, compile_rules, cut_short, redact, redact_event,
                                  redact_events, redact_fitted, redact_text)

__all__ = ["DEFAULT_RULES", "MASK", "Rule", "compile_rules", "cut_short", "redact", "redact_event", "redact_events",
           "redact_fitted", "redact_text"]
