"""`results.json`: every case's result, for machines (the HTML report reads it too)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FORMAT = 1


def results_document(rows: Iterable[dict[str, Any]], peer: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """`rows`: `CaseResult.to_json()` of every case, from this process and any xdist worker."""
    ordered = sorted(rows, key=lambda r: tuple(int(n) for n in r["id"].split(".")))
    return {
        "format": FORMAT, "peer": peer, **meta,
        "summary": dict(Counter(r["verdict"] for r in ordered)),
        "cases": ordered,
    }


def write_results(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a file
