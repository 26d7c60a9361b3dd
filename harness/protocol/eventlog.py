"""Event log records (docs/architecture.md §6): one JSON object per line, per process.

Fields: `t_us` (monotonic µs, see clock.py), `proc`, `session`, `event`, and
event fields. The format is the contract between every process and the
checkers, so it lives here beside the wire formats; every event name and field
is declared in eventschema.py, and `emit` refuses anything else.

Each record is one `write(2)` of one whole line, made as it is emitted: a killed
process leaves every record it emitted, the process holds no buffer (its memory
for the log is one line), and it costs one syscall per event.

The kernel's page cache is the only buffer. When it is full (dirty-page
throttling on a busy disk) a write blocks: the process waits, so nothing is lost,
and a write that took over `SLOW_WRITE_US` is recorded as `log_slow_write`, so a
stall it caused is named (on a busy machine a write may also take that long because
the process was not scheduled; the record cannot tell the two apart). A write that
fails (disk full, file too large) loses that record, never silently: the first
failure is printed on stderr, and the next record that is written is preceded by a
`log_gap` saying how many were lost and why.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .clock import now_us
from .eventschema import check_record

# Above a page-cache copy (microseconds), below the loop-lag threshold (looplag.py).
SLOW_WRITE_US = 10_000


class EventLog:
    def __init__(self, path: Path | str | None, proc: str) -> None:
        self.proc = proc
        self.path = None if path is None else Path(path)
        self._fd: int | None = None
        self.lost = 0  # records that could not be written since the last one that was
        self._lost_error = ""
        self._torn = False  # a failed write left part of a line: the next record starts a new one
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def emit(self, event: str, session: str | None = None, t_us: int | None = None, **fields: Any) -> None:
        check_record(event, fields)
        if self._fd is None:
            return
        record = {"t_us": now_us() if t_us is None else t_us, "proc": self.proc, "session": session, "event": event}
        record.update(fields)
        if self.lost and not self._write(self._line({"t_us": record["t_us"], "proc": self.proc, "session": None,
                                                     "event": "log_gap", "lost": self.lost,
                                                     "error": self._lost_error})):
            self.lost += 1
            return
        self.lost = 0
        line = self._line(record)
        started = time.perf_counter_ns()
        if not self._write(line):
            self.lost += 1
            return
        took_us = (time.perf_counter_ns() - started) // 1000
        if took_us > SLOW_WRITE_US and not self._write(self._line({
                "t_us": now_us(), "proc": self.proc, "session": None, "event": "log_slow_write",
                "write_us": took_us, "bytes": len(line)})):
            self.lost += 1

    @staticmethod
    def _line(record: dict[str, Any]) -> bytes:
        return (json.dumps(record, separators=(",", ":")) + "\n").encode()

    def _write(self, line: bytes) -> bool:
        assert self._fd is not None
        data = b"\n" + line if self._torn else line
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
            self._torn = False
        except OSError as exc:
            self._torn = self._torn or len(view) < len(data)
            if not self.lost:
                print(f"event log {self.path}: {exc.strerror or exc}; records are being lost (a log_gap will count "
                      "them)", file=sys.stderr, flush=True)
            self._lost_error = exc.strerror or str(exc)
            return False
        return True

    def close(self) -> None:
        if self._fd is not None:
            if self.lost:
                print(f"event log {self.path}: {self.lost} records lost at the end ({self._lost_error})",
                      file=sys.stderr, flush=True)
            os.close(self._fd)
            self._fd = None
