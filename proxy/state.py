"""Proxy-wide state without mitmproxy: the event sink, the upstreams, the live relays
and the fault table. The mitmproxy addons and the control API both work on one
`ProxyState`; faults reach it as `fault.proxy` (the `ProxyServices` of faults/fault.py).
Here relays and faults meet: the table attaches each fault to the pipes it applies to.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harness.protocol import EventLog, now_us

from .faults import ConnectInfo, Fault, FaultSpecError
from .relay.connection import Connection
from .relay.relay import Relay

RECENT_EVENTS = 10_000  # events kept in memory for GET /events (the log file has them all)


class EventSink:
    """The event log (harness.protocol.EventLog, one JSON line per event) plus a bounded
    in-memory ring of recent events, each with a sequence number for `GET /events?since=`."""

    def __init__(self, path: Path | str | None, proc: str = "proxy", keep: int = RECENT_EVENTS) -> None:
        self.log = EventLog(path, proc)
        self.proc = proc
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self._seq = itertools.count(1)
        self.last_seq = 0

    def emit(self, event: str, session: str | None = None, t_us: int | None = None, **fields: Any) -> None:
        t = now_us() if t_us is None else t_us
        self.log.emit(event, session=session, t_us=t, **fields)
        self.last_seq = next(self._seq)
        # the ring's own `seq` last: an event's field of that name (a connection number) must not
        # overwrite it, or `since=` would skip events
        self.recent.append({"t_us": t, "proc": self.proc, "session": session, "event": event, **fields,
                            "seq": self.last_seq})

    def since(self, seq: int = 0, limit: int = 1000, event: str | None = None) -> list[dict[str, Any]]:
        out = []
        for rec in self.recent:
            if rec["seq"] > seq and (event is None or rec["event"] == event):
                out.append(rec)
                if len(out) >= limit:
                    break
        return out

    def close(self) -> None:
        self.log.close()


@dataclass
class Upstream:
    """One upstream server (a worker). `alive` is the balancer's view of it."""

    index: int
    url: str
    host: str
    port: int
    path: str = ""
    pid: int | None = None  # registered by the orchestration (for worker_crash)
    alive: bool = True
    active: int = 0  # connections now
    total: int = 0  # connections routed to it so far
    failures: int = 0  # connect failures seen
    last_error: str | None = None
    changed_us: int = field(default_factory=now_us)

    @classmethod
    def parse(cls, index: int, url: str) -> Upstream:
        u = urlsplit(url)
        if u.scheme not in ("ws", "http"):
            raise ValueError(f"upstream {url!r}: only ws:// (or http://) upstreams are supported")
        if not u.hostname or not u.port:
            raise ValueError(f"upstream {url!r}: needs host and port, e.g. ws://127.0.0.1:8927")
        return cls(index, url, u.hostname, u.port, u.path if u.path not in ("", "/") else "")

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "url": self.url, "host": self.host, "port": self.port, "pid": self.pid,
                "alive": self.alive, "active": self.active, "total": self.total, "failures": self.failures,
                "last_error": self.last_error, "changed_us": self.changed_us}


class ProxyState:
    """Everything the proxy knows: events, upstreams, live relays, faults."""

    def __init__(self, events: EventSink, upstreams: Iterable[str] = ()) -> None:
        self.events = events
        self._upstreams = [Upstream.parse(i, u) for i, u in enumerate(upstreams)]
        self.live: dict[str, Relay] = {}  # flow id -> relay
        self.faults: dict[str, Fault] = {}  # name -> fault, in the order added
        self._seq = itertools.count(1)
        self._expiry: dict[str, asyncio.TimerHandle] = {}

    # --- ProxyServices ------------------------------------------------------------------
    @property
    def upstreams(self) -> list[Upstream]:
        return self._upstreams

    def relays(self) -> list[Relay]:
        return list(self.live.values())

    def connections(self) -> list[Connection]:
        return [r.connection for r in self.live.values()]

    def next_seq(self) -> int:
        return next(self._seq)

    # --- relays -------------------------------------------------------------------------
    def register(self, relay: Relay) -> None:
        """A new relay: faults attach before its first byte is forwarded."""
        self.live[relay.flow_id] = relay
        relay.on_start.append(self._attach_all)
        relay.on_identify.append(self._identified)
        relay.on_finish.append(self._relay_done)

    def _attach_all(self, relay: Relay) -> None:
        for f in list(self.faults.values()):
            self._attach(f, relay)

    def _identified(self, relay: Relay) -> None:
        """The connection's profile is known (before any fault saw the client's first
        message): the faults attached to it that mean nothing in its mode leave it, and
        say so, as they would have at attach time had the mode been known then."""
        upstream = relay.upstream.index if relay.upstream is not None else None
        for f in list(self.faults.values()):
            if not any(p.attached(f) is not None for p in relay.pipes.values()):
                continue
            why = f.cannot_act_on(relay.connection)
            if why is not None:
                for pipe in relay.pipes.values():
                    pipe.remove(f)
                self._not_applied(f, relay, upstream, why)

    def _relay_done(self, relay: Relay) -> None:
        self.live.pop(relay.flow_id, None)
        u = relay.upstream
        if isinstance(u, Upstream):
            u.active = max(0, u.active - 1)

    def _attach(self, f: Fault, relay: Relay) -> None:
        upstream = relay.upstream.index if relay.upstream is not None else None
        if not f.active or relay.finished or not f.affects(relay.seq, relay.client_port, upstream):
            return
        why = f.cannot_act_on(relay.connection)
        if why is not None:  # never silently inert: the API answer, the log and --view say so
            self._not_applied(f, relay, upstream, why)
            return
        for direction, pipe in relay.pipes.items():
            if f.direction in (direction, "both"):
                pipe.add(f, f.attach)

    def _not_applied(self, f: Fault, relay: Relay, upstream: int | None, why: str) -> None:
        extensions = list(relay.extensions)
        f.not_applied.append({"session": relay.flow_id, "seq": relay.seq, "client_port": relay.client_port,
                              "upstream": upstream, "extensions": extensions, "profile": relay.profile,
                              "mode": relay.mode, "why": why})
        self.events.emit("fault_not_applied", session=relay.flow_id, fault=f.name, type=f.kind,
                         direction=f.direction, conn_seq=relay.seq, client_port=relay.client_port, upstream=upstream,
                         extensions=extensions, profile=relay.profile, mode=relay.mode, why=why)

    # --- faults -------------------------------------------------------------------------
    def add_fault(self, f: Fault) -> Fault:
        """Add and apply to every live connection (and every new one); the connections it
        cannot act on are in `f.not_applied`."""
        if f.name in self.faults:
            if f.named:
                raise FaultSpecError(f"a fault named {f.name!r} exists already (PATCH or DELETE it)")
            for i in itertools.count(2):  # unnamed: drop, drop-2, drop-3, ...
                if f"{f.kind}-{i}" not in self.faults:
                    f.name = f"{f.kind}-{i}"
                    break
        f.events = self.events
        f.proxy = self
        f.on_retire = self._on_retire
        f.added_us = now_us()
        self.faults[f.name] = f
        self.events.emit("fault_added", spec=f.spec())
        f.on_added(self)
        for relay in list(self.live.values()):
            try:
                self._attach(f, relay)
            except Exception as e:  # a fault's attach bug ends that connection, not the API call
                relay.fail(e)
        if f.duration is not None:
            self._expiry[f.name] = asyncio.get_running_loop().call_later(f.duration, f.retire, "duration")
        return f

    def remove_fault(self, name: str, why: str = "removed") -> Fault:
        f = self.faults.pop(name)  # KeyError: unknown name (the API answers 404)
        h = self._expiry.pop(name, None)
        if h is not None:
            h.cancel()
        if f.retired is None:
            f.retired = why
        for relay in list(self.live.values()):
            for pipe in relay.pipes.values():
                try:
                    pipe.remove(f)
                except Exception as e:
                    relay.fail(e)
        f.on_removed(self)
        self.events.emit("fault_removed", fault=f.name, type=f.kind, why=why, applied=f.applied)
        return f

    def replace_fault(self, name: str, new: Fault) -> Fault:
        """PATCH: the old fault goes (its queues flushed), the new one takes its name."""
        if name not in self.faults:
            raise KeyError(name)
        new.name = name
        new.named = True
        self.remove_fault(name, why="replaced")
        return self.add_fault(new)

    def reset(self) -> list[str]:
        """Remove every fault: the proxy is transparent again."""
        names = list(self.faults)
        for name in reversed(names):
            self.remove_fault(name, why="reset")
        return names

    def _on_retire(self, f: Fault, why: str) -> None:
        # never re-entrantly: retire() may be called from inside a pipe's fault chain
        def drop() -> None:
            if self.faults.get(f.name) is f:
                self.remove_fault(f.name, why=why)

        asyncio.get_running_loop().call_soon(drop)

    def on_connect(self, info: ConnectInfo) -> str | None:
        """The first refusal reason of any active fault, else None."""
        for f in list(self.faults.values()):
            if f.active:
                why = f.on_connect(info)
                if why:
                    return why
        return None

    def close(self) -> None:
        for h in self._expiry.values():
            h.cancel()
        self._expiry.clear()
