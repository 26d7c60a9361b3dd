"""What a fault may read and do: `Connection` (one relayed connection) and `Channel`
(one direction of it). Faults reach the relay through these two classes only.

A fault on a pipe gets the pipe's `Channel` (a `Connection` with a direction);
a fault acting beyond pipes (`down`, `worker_crash`) gets `Connection`s from the
proxy's services.

`Connection`, the whole connection:
  identity   `session` (flow id: the event log's session), `seq` (1, 2, ... in this
             proxy process), `client_port`, `upstream` (index of the upstream, or None),
             `extensions` (the WebSocket extensions its 101 negotiated, e.g.
             ("permessage-deflate",): then payloads are the extension's, not plain),
             `profile` (legacy, noise, unknown; None until the client's first data message
             is whole: identify.py) and `mode` (what the proxy can read: legacy or
             noise-opaque; None until then)
  status     `finished` (both sockets gone), `ending` (finished, or the proxy sent a
             peer an end: FIN, RST or close frame, or stopped forwarding a direction),
             `forwarding` (some direction still forwards), `closing(side)` (the proxy's
             socket to that side is closing), `peer_ended(side)` (that peer sent FIN or
             RST, or its socket is gone)
  ending it  `close(code, reason, grace_s)` (a close frame to each peer, then FIN),
             `shutdown(grace_s)` (FIN both ways, forwarding stops), `abort(side)` (TCP
             RST to `side`, both when None; the other peer then gets one too),
             `stop_forwarding()` (both directions forward nothing more; the sockets stay)
  time       `now()`, `later(delay, fn, *args)`, `soon(fn, *args)`: callbacks skipped
             once the connection finished; an exception in one resets the connection
  log        `log(event, **fields)`: one event-log line with this connection's session
  state      `shared(key, factory)`: one object per key for both directions of this
             connection (made at first use, dropped with the connection)

`Channel`, one direction (`direction` "upstream" = client->server, "downstream";
`src` and `dst` are "client" | "server": Sendspin roles, whoever dialled), adds:
  reading    `hold(why)` / `release(why)`: stop / resume reading the source socket (real
             TCP backpressure; reading resumes once every hold is released),
             `close_input()`: forward nothing more from the source,
             `set_receive_buffer(nbytes)`: SO_RCVBUF of the proxy's socket to the source
  writing    `withhold(why)` / `unwithhold(why)`: queue this direction's output (the
             source is held once 1 MiB is queued), `emit(data, after=hook)` /
             `emit_eof(after=hook)`: into the byte chain after `hook` (None: its start),
             `inject(frame, then=None)`: a whole frame at the next frame boundary
             (control frames) or message boundary (data frames), never inside another
             message, `encode(opcode, payload, fin, rsv)`: a frame for this direction
             (masked towards the peer the proxy dialled: the server, or with
             `--server-dials` the client)
  randomness `rng(seed)`: a random stream seeded by seed, connection and direction
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from harness.protocol import wsframes as fr

if TYPE_CHECKING:
    from .hooks import PipeHooks
    from .pipe import Pipe
    from .relay import Relay


class Connection:
    """One relayed connection as a fault sees it (see the module docstring)."""

    __slots__ = ("_relay",)

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    # --- identity -----------------------------------------------------------------------
    @property
    def session(self) -> str:
        return self._relay.flow_id

    @property
    def seq(self) -> int:
        return self._relay.seq

    @property
    def client_port(self) -> int | None:
        return self._relay.client_port

    @property
    def upstream(self) -> int | None:
        u = self._relay.upstream
        return u.index if u is not None else None

    @property
    def extensions(self) -> tuple[str, ...]:
        return self._relay.extensions

    @property
    def profile(self) -> str | None:
        return self._relay.profile

    @property
    def mode(self) -> str | None:
        return self._relay.mode

    # --- status -------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self._relay.finished

    @property
    def ending(self) -> bool:
        r = self._relay
        return r.finished or bool(r.sent) or any(p.closed_input for p in r.pipes.values())

    @property
    def forwarding(self) -> bool:
        return not all(p.closed_input for p in self._relay.pipes.values())

    def closing(self, side: str) -> bool:
        return self._relay.tr[side].is_closing()

    def peer_ended(self, side: str) -> bool:
        return side in self._relay.ended

    # --- ending it ----------------------------------------------------------------------
    def close(self, code: int | None, reason: str = "", grace_s: float = 2.0) -> None:
        self._relay.close_with_code(code, reason, grace_s=grace_s)

    def shutdown(self, grace_s: float = 0.0) -> None:
        self._relay.shutdown(grace_s)

    def abort(self, side: str | None = None) -> None:
        for s in ("client", "server") if side is None else (side,):
            self._relay.reset(s)

    def stop_forwarding(self) -> None:
        for p in self._relay.pipes.values():
            p.close_input()

    # --- time, log, shared state --------------------------------------------------------
    def now(self) -> float:
        return self._relay.loop.time()

    def later(self, delay: float, fn: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        return self._relay.later(delay, fn, *args)

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self._relay.soon(fn, *args)

    def log(self, event: str, **fields: Any) -> None:
        events = self._relay.events
        if events is not None:
            events.emit(event, session=self._relay.flow_id, **fields)

    def shared(self, key: object, factory: Callable[[], Any]) -> Any:
        st = self._relay.shared
        if key not in st:
            st[key] = factory()
        return st[key]


class Channel(Connection):
    """One direction of a relayed connection as a fault on its pipe sees it."""

    __slots__ = ("_pipe",)

    def __init__(self, relay: Relay, pipe: Pipe) -> None:
        super().__init__(relay)
        self._pipe = pipe

    @property
    def direction(self) -> str:
        return self._pipe.direction

    @property
    def src(self) -> str:
        return self._pipe.src

    @property
    def dst(self) -> str:
        return self._pipe.dst

    # --- reading ------------------------------------------------------------------------
    def hold(self, why: str) -> None:
        self._pipe.hold(why)

    def release(self, why: str) -> None:
        self._pipe.release(why)

    def close_input(self) -> None:
        self._pipe.close_input()

    def set_receive_buffer(self, nbytes: int) -> None:
        sock = self._relay.tr[self._pipe.src].get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, nbytes)

    # --- writing ------------------------------------------------------------------------
    def withhold(self, why: str) -> None:
        self._pipe.withhold(why)

    def unwithhold(self, why: str) -> None:
        self._pipe.unwithhold(why)

    def emit(self, data: bytes | memoryview, after: PipeHooks | None = None) -> None:
        self._pipe.emit(data, after)

    def emit_eof(self, after: PipeHooks | None = None) -> None:
        self._pipe.emit_eof(after)

    def inject(self, frame: bytes, then: Callable[[], None] | None = None) -> None:
        self._pipe.inject(frame, then)

    def encode(self, opcode: int, payload: bytes | memoryview = b"", fin: bool = True, rsv: int = 0) -> bytes:
        return fr.encode_frame(opcode, payload, fin, self._pipe.mask, rsv)

    # --- randomness ---------------------------------------------------------------------
    def rng(self, seed: int) -> random.Random:
        return random.Random(f"{seed}/{self._relay.seq}/{self._pipe.direction}")
