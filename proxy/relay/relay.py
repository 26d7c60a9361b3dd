"""The relay: two sockets, one `Pipe` per direction, endings mirrored as they happened.

No mitmproxy import: the relay works on any two connected asyncio transports (the
mitmproxy side, `proxy.addons.datapath`, hands over its sockets after the 101).

Endings are transparent: a FIN from one side becomes a FIN to the other (after the
data before it; half-open connections stay half-open), a RST or socket error on one
side becomes a RST (SO_LINGER 0 + abort) to the other, and close frames are bytes
like any other. The connection is closed once both directions have passed their FIN,
or once one side is gone abnormally.

Sides are Sendspin roles, not TCP roles: `client` is the Sendspin client's socket and
`server` the Sendspin server's, whoever dialled. Normally the client dialled the proxy
and the proxy dialled the server; with `server_dials` (`sendspin-proxy --server-dials`,
the spec's server-initiated connections) the server dialled the proxy and the proxy
dialled the client. Directions follow the roles (`upstream` = client to server), so a
fault or a log line means the same in both; only masking follows TCP: frames the proxy
makes towards the peer it dialled (`dialled`) are masked (RFC 6455 §5.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from functools import cached_property
from typing import Any

from harness.protocol import wsframes as fr
from harness.protocol.tcpstall import SendStallWatch

from .connection import Connection
from .identify import MODE_OF, FirstMessage
from .noise_keys import NoiseKeys
from .pipe import Pipe, other
from .terminate import NoiseTerminator

SIDES = ("client", "server")
WRITE_HIGH = 256 * 1024  # per-socket write buffer high-water mark (then the source is held)
WRITE_LOW = 64 * 1024
log = logging.getLogger(__name__)


class SideProtocol(asyncio.Protocol):
    """The asyncio protocol of one socket once the relay owns it."""

    def __init__(self, relay: Relay, side: str) -> None:
        self.relay = relay
        self.side = side

    def data_received(self, data: bytes) -> None:
        try:
            self.relay.receive(self.side, data)
        except Exception as e:  # a fault's bug: loud, and the connection ends abnormally
            self.relay.fail(e)

    def eof_received(self) -> bool:
        try:
            self.relay.on_eof(self.side)
        except Exception as e:
            self.relay.fail(e)
        return True  # keep our write side open: half-close, like TCP

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.on_lost(self.side, exc)

    def pause_writing(self) -> None:  # our buffer towards `side` is full: stop reading its source
        self.relay.pipe_to(self.side).hold("write-buffer")

    def resume_writing(self) -> None:
        self.relay.pipe_to(self.side).release("write-buffer")


def extension_names(header: str | None) -> tuple[str, ...]:
    """The extension tokens of a Sec-WebSocket-Extensions value (RFC 6455 §9.1), without
    their parameters: "permessage-deflate; client_max_window_bits" -> ("permessage-deflate",)."""
    names = (item.split(";", 1)[0].strip() for item in (header or "").split(","))
    return tuple(n for n in names if n)


class Relay:
    def __init__(self, client: asyncio.Transport, server: asyncio.Transport, *, flow_id: str, seq: int = 0,
                 upstream: Any = None, events: Any = None, path: str = "", extensions: str | None = None,
                 server_dials: bool = False, noise_keys: NoiseKeys | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.flow_id = flow_id
        self.seq = seq  # connection sequence number (1, 2, ...): seeds per-connection randomness
        self.upstream = upstream  # proxy.state.Upstream (has .index) or None
        self.events = events
        self.path = path
        # what the 101 negotiated: with an extension, RSV bits and payloads are the extension's
        # (permessage-deflate: compressed), so message faults cannot read or change them
        self.extensions = extension_names(extensions)
        self.tr: dict[str, asyncio.Transport] = {"client": client, "server": server}
        self.dialled = "client" if server_dials else "server"  # the side the proxy opened the TCP connection to
        peer = client.get_extra_info("peername")
        self.client_port: int | None = peer[1] if isinstance(peer, tuple) else None
        self.pipes: dict[str, Pipe] = {"upstream": Pipe(self, "client"), "downstream": Pipe(self, "server")}
        self.timers: set[asyncio.TimerHandle] = set()
        self.send_watches: dict[str, SendStallWatch] = {}  # side -> its socket's sending, while we hold its reads
        self.shared: dict[object, Any] = {}  # Connection.shared: state of both directions, by key
        self.ended: dict[str, str] = {}  # side -> how its peer ended: eof | rst | closed
        self.sent: dict[str, str] = {}  # side -> what the proxy sent it: eof | rst | close
        self.error: dict[str, str] = {}
        self.lost: set[str] = set()
        self._aborted: set[str] = set()
        self.finished = False
        self.started_at = self.loop.time()
        self.done: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.on_finish: list[Callable[[Relay], None]] = []
        self.on_start: list[Callable[[Relay], None]] = []
        # The Sendspin revision, from the client's first data message (identify.py); None until then.
        self.profile: str | None = None
        self.first_type: str | None = None  # that message's JSON type
        self.on_identify: list[Callable[[Relay], None]] = []  # after `profile` is set (the fault table re-checks)
        self.pipes["upstream"].sniffer = FirstMessage(self.identify)
        # --noise terminate: the proxy completes each peer's handshake and the pipes see plaintext
        self.terminator = NoiseTerminator(self, noise_keys) if noise_keys is not None else None

    # --- lookup -------------------------------------------------------------------------
    def pipe_from(self, side: str) -> Pipe:
        return self.pipes["upstream" if side == "client" else "downstream"]

    def pipe_to(self, side: str) -> Pipe:
        return self.pipes["downstream" if side == "client" else "upstream"]

    @property
    def mode(self) -> str | None:
        """What the proxy can read of this connection (identify.py): `legacy` (plain messages),
        `noise-opaque` (ciphertext after the handshake, no keys) or `noise-terminated`
        (terminate.py: plaintext); None until identified."""
        if self.terminator is not None and self.terminator.terminated:
            return "noise-terminated"
        return None if self.profile is None else MODE_OF[self.profile]

    def receive(self, side: str, data: bytes | memoryview) -> None:
        """Bytes read from `side`'s socket: into its pipe, or to the terminator first."""
        if self.terminator is None:
            self.pipe_from(side).feed(data)
        else:
            self.terminator.receive(side, data)

    @cached_property
    def connection(self) -> Connection:
        """What faults acting beyond one pipe may read and do with this connection."""
        return Connection(self)

    # --- life cycle ---------------------------------------------------------------------
    def start(self, leftovers: dict[str, bytes] | None = None) -> None:
        """Own both sockets: our protocol on each, then the bytes already read past the
        upgrade (in order), then the on_start callbacks (faults attach there)."""
        for side in SIDES:
            tr = self.tr[side]
            tr.set_protocol(SideProtocol(self, side))
            if not tr.is_closing():
                tr.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        try:
            for cb in self.on_start:
                cb(self)
        except Exception as e:
            self.fail(e)
            return
        for side in SIDES:
            data = (leftovers or {}).get(side)
            if data:
                self.receive(side, data)

    def identify(self, profile: str, first_type: str | None) -> None:
        """The client's first data message is whole: record the profile, say so in the event
        log, then let the fault table drop the faults that mean nothing here (before any
        of them sees that message)."""
        self.pipes["upstream"].sniffer = None
        self.profile, self.first_type = profile, first_type
        if self.events is not None:
            self.events.emit("identified", session=self.flow_id, profile=profile, mode=self.mode, json_type=first_type,
                             conn_seq=self.seq, client_port=self.client_port)
        for cb in self.on_identify:
            cb(self)

    def later(self, delay: float, fn: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        h = self.loop.call_later(delay, self._timer, fn, args)
        self.timers.add(h)
        return h

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """`fn(*args)` at the next loop iteration, unless the connection finished by then."""
        self.loop.call_soon(self._call, fn, args)

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if not self.finished:
            try:
                fn(*args)
            except Exception as e:
                self.fail(e)

    def _timer(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.timers = {h for h in self.timers if not h.cancelled() and h.when() > self.loop.time()}
        if not self.finished:
            try:
                fn(*args)
            except Exception as e:
                self.fail(e)

    def fail(self, exc: BaseException) -> None:
        """An exception inside the data path (a fault's bug): log it with its traceback,
        put it in the event log, and end the connection with a RST both ways, so a
        broken fault is never mistaken for the peer's behaviour."""
        log.error("relay %s: %r; resetting the connection", self.flow_id, exc, exc_info=exc)
        if self.events is not None:
            self.events.emit("error", session=self.flow_id, error=repr(exc))
        for side in SIDES:
            self.reset(side)

    def watch_sends(self, side: str, on: bool) -> None:
        """We stopped (or resumed) reading `side`'s socket: meanwhile our sending on it can stall
        without that peer's doing (tcpstall.py), which the event log must show as ours."""
        watch = self.send_watches.get(side)
        if watch is None:
            sock = self.tr[side].get_extra_info("socket")
            if not on or self.events is None or sock is None:
                return
            watch = self.send_watches[side] = SendStallWatch(self.loop, sock, self.events, self.flow_id, side)
        watch.start() if on else watch.stop()

    # --- endings ------------------------------------------------------------------------
    def on_eof(self, side: str) -> None:
        if self.pipe_from(side).eof_in or side in self.lost:
            return
        if self.terminator is not None and not self.terminator.eof(side):
            return
        self.ended.setdefault(side, "eof")
        self.pipe_from(side).feed_eof()  # the FIN follows the data through the fault chain
        self.check_done()

    def on_lost(self, side: str, exc: BaseException | None) -> None:
        if side in self.lost:
            return
        self.lost.add(side)
        if exc is not None:
            self.ended[side] = "rst" if isinstance(exc, ConnectionResetError) else "error"
            if not isinstance(exc, ConnectionResetError):
                self.error[side] = repr(exc)
        elif side not in self._aborted:
            self.ended.setdefault(side, "closed")
        if exc is not None or side in self._aborted:
            # the path through the proxy died abnormally: the other peer must see it so
            self.reset(other(side))
        self.check_done()

    def check_done(self) -> None:
        if self.finished:
            return
        up, down = self.pipes["upstream"], self.pipes["downstream"]
        if up.eof_out and down.eof_out:  # FIN passed both ways: close both sockets (after their buffers)
            for side in SIDES:
                tr = self.tr[side]
                if not tr.is_closing():
                    tr.close()
        if len(self.lost) == 2:
            self._finish()

    def reset(self, side: str) -> None:
        """TCP RST to `side` (SO_LINGER 0, then abort)."""
        tr = self.tr[side]
        if side in self.lost:
            return
        self._aborted.add(side)
        self.sent.setdefault(side, "rst")
        sock = tr.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tr.abort()

    def close_with_code(self, code: int | None, reason: str = "", grace_s: float = 2.0) -> None:
        """A close frame to each side (masked towards the dialled side), then FIN; forwarding
        stops. The sockets are closed once both peers sent FIN, or after `grace_s`."""
        for pipe in self.pipes.values():
            if pipe.closed_input:
                continue

            def then(p: Pipe = pipe) -> None:
                p.close_input()
                p.emit_eof()

            self.sent.setdefault(pipe.dst, "close")
            pipe.inject(fr.close_frame(code, reason, mask=pipe.mask), then=then)
        self.later(grace_s, self.shutdown, 0.0)

    def shutdown(self, grace_s: float = 0.0) -> None:
        """End the connection from the proxy: FIN to both sides now (forwarding stops);
        close the sockets after `grace_s` (0: now, after their write buffers)."""
        for pipe in self.pipes.values():
            if not pipe.closed_input:
                pipe.close_input()
                pipe.emit_eof()
        if grace_s > 0:
            self.later(grace_s, self.shutdown, 0.0)
            return
        for side in SIDES:
            tr = self.tr[side]
            if not tr.is_closing():
                tr.close()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        for h in self.timers:
            h.cancel()
        self.timers.clear()
        for watch in self.send_watches.values():
            watch.close()
        result = self.summary()
        if self.events is not None:
            self.events.emit("close", session=self.flow_id, **result)
        for cb in self.on_finish:
            try:
                cb(self)
            except Exception:  # one bad callback must not strand the others
                log.exception("relay on_finish callback failed")
        if not self.done.done():
            self.done.set_result(result)

    # --- observation --------------------------------------------------------------------
    def side_summary(self, side: str) -> dict[str, Any]:
        p = self.pipe_from(side)
        d: dict[str, Any] = {"ended": self.ended.get(side, "open"), "sent": self.sent.get(side)}
        if p.scanner.close_payload is not None:
            d["close_code"] = p.scanner.close_code
            d["close_reason"] = p.scanner.close_reason
        if side in self.error:
            d["error"] = self.error[side]
        return d

    def summary(self) -> dict[str, Any]:
        return {"profile": self.profile,
                "client": self.side_summary("client"), "server": self.side_summary("server"),
                "upstream": self.pipes["upstream"].stats(), "downstream": self.pipes["downstream"].stats(),
                "seconds": round(self.loop.time() - self.started_at, 3)}
