"""Event log records (docs/architecture.md §6): one JSON object per line, per process.

Fields: `t_us` (monotonic µs, see clock.py), `proc`, `session`, `event`, and
event fields. The format is the contract between every process and the
checkers, so it lives here beside the wire formats; every event name and field
is declared in eventschema.py, and `emit` refuses anything else. Lines are
flushed as they are written so that a killed process leaves a complete log
behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from .clock import now_us
from .eventschema import check_record


class EventLog:
    def __init__(self, path: Path | str | None, proc: str) -> None:
        self.proc = proc
        self._file: TextIO | None = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in close()

    def emit(self, event: str, session: str | None = None, t_us: int | None = None, **fields: Any) -> None:
        check_record(event, fields)
        if self._file is None:
            return
        record = {"t_us": now_us() if t_us is None else t_us, "proc": self.proc, "session": session, "event": event}
        record.update(fields)
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
