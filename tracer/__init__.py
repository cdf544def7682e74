"""whodid.tracer: the event schema, the causal store, stitching and the trace engine.

Public surface - everything else is an implementation detail:
"""

from .destinations import Destination, DestinationError, parse_destination
from .events import SCHEMA_VERSION, EventError, decode_line, parse_event
from .identity import Identity, Person
from .ingest import IngestReport, ingest
from .store import Store, StoreError
from .trace import Connections, Query, Settings, Target, Trace, Tracer

__all__ = [
    "Destination", "DestinationError", "parse_destination",
    "SCHEMA_VERSION", "EventError", "decode_line", "parse_event",
    "Identity", "Person",
    "IngestReport", "ingest",
    "Store", "StoreError",
    "Connections", "Query", "Settings", "Target", "Trace", "Tracer",
]
