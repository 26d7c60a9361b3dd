"""Reading the event logs (docs/architecture.md §6) the processes wrote."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .protocol.eventschema import check_record

Record = dict[str, Any]


@dataclass
class Events:
    records: list[Record]

    @classmethod
    def merge(cls, *parts: Events) -> Events:
        """The records of several logs (a case's client and its server and proxy), in time order."""
        return cls(sorted((r for part in parts for r in part.records), key=lambda r: r["t_us"]))

    @classmethod
    def load(cls, directory: Path, since_us: int = 0) -> Events:
        """Every record of the logs in `directory` (from `since_us` on), in time order."""
        records: list[Record] = []
        for path in sorted(directory.glob("*.jsonl")):
            text = path.read_text(encoding="utf-8")
            if not text.endswith("\n"):
                # a last line without its newline is still being written (or its writer was
                # killed mid-write): no record yet; a live writer's is read next time
                text = text[:text.rfind("\n") + 1]
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:  # a whole line that is not JSON: a writer's bug
                    raise ValueError(f"{path}:{n}: not a JSON line ({exc})") from None
                if record["t_us"] >= since_us:
                    records.append(record)
        records.sort(key=lambda r: r["t_us"])
        return cls(records)

    def select(self, event: str | Iterable[str] | None = None, proc: str | None = None,
               session: str | None = None, **equal: Any) -> list[Record]:
        events = {event} if isinstance(event, str) else set(event) if event is not None else None
        for name in events or ():
            check_record(name, equal)  # a misspelt name or field would select nothing and pass silently
        return [r for r in self.records
                if (events is None or r["event"] in events)
                and (proc is None or r["proc"] == proc)
                and (session is None or r["session"] == session)
                and all(r.get(k) == v for k, v in equal.items())]

    def server_session(self, client_id: str) -> tuple[str, str] | None:
        """(server proc, session id) of the session that said client/hello as `client_id`,
        or as the noise probe named `client_id` (its client_id is its public key, which its
        `noise_handshake` names)."""
        ids = {client_id} | {r["client_id"] for r in self.select("noise_handshake", proc=client_id)
                             if r.get("client_id")}
        for r in self.records:
            if r["event"] == "recv" and r.get("type") == "client/hello" and r.get("client_id") in ids:
                return r["proc"], r["session"]
        return None

    def stream_start_us(self, client_id: str) -> int | None:
        """When the server began sending `client_id` its stream (its stream/start), on the
        server's own clock; None if it did not."""
        found = self.server_session(client_id)
        starts = self.select("send_begin", proc=found[0], session=found[1], type="stream/start") if found else []
        return starts[0]["t_us"] if starts else None

    def start_us(self) -> int:
        return self.records[0]["t_us"] if self.records else 0

    def excerpt(self, t_us: int, before_us: int = 300_000, after_us: int = 300_000,
                sessions: set[str] | None = None, limit: int = 40, skip: frozenset[str] = frozenset({"audio"}),
                hide: Callable[[Record], bool] | None = None) -> str:
        """Human-readable lines around `t_us` (audio chunks left out unless asked for;
        `hide` leaves out more)."""
        t0 = self.start_us()
        lines = []
        for r in self.records:
            if not t_us - before_us <= r["t_us"] <= t_us + after_us or r["event"] in skip or (hide and hide(r)):
                continue
            if sessions is not None and r["session"] not in sessions and r["session"] is not None:
                continue
            extra = " ".join(f"{k}={v}" for k, v in r.items() if k not in ("t_us", "proc", "session", "event"))
            mark = ">>" if r["t_us"] == t_us else "  "
            lines.append(f"{mark} {(r['t_us'] - t0) / 1000:10.1f} ms  {r['proc']:<10} {r['session'] or '-':<10} "
                         f"{r['event']:<14} {extra[:160]}")
        if len(lines) > limit:
            middle = next((i for i, line in enumerate(lines) if line.startswith(">>")), len(lines) // 2)
            lo = max(0, middle - limit // 2)
            lines = lines[lo : lo + limit]
        return "\n".join(lines)
