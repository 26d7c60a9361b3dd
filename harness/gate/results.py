"""`results.json`: every case's result, for machines (the HTML report reads it too)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .verdict import CaseResult

FORMAT = 1


def results_document(results: Iterable[CaseResult], peer: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    rows = sorted(results, key=lambda r: r.case.sort_key)
    return {
        "format": FORMAT, "peer": peer, **meta,
        "summary": dict(Counter(r.verdict.value for r in rows)),
        "cases": [r.to_json() for r in rows],
    }


def write_results(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a file
