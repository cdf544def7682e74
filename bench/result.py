"""The one machine-readable line each benchmark prints last, for bench/run.py's report:

    RESULT {"name": "...", "value": 0.62, "target": 0.9, "better": "higher", "unit": "x"}
"""

from __future__ import annotations

import json


def result(name: str, value: float, target: float | None, better: str, unit: str = "") -> None:
    """target None: a figure reported for what it is (bench/run.py shows it, charts only targets)."""
    assert better in ("higher", "lower")
    print("RESULT " + json.dumps({"name": name, "value": value, "target": target, "better": better, "unit": unit}))


def met(r: dict) -> bool:
    return r["value"] >= r["target"] if r["better"] == "higher" else r["value"] <= r["target"]
