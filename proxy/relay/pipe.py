"""One direction of one relayed connection: bytes read from `src` are written to `dst`.

Data path, cheapest first:
  * no fault: the frame scanner notes boundaries (O(frames)) and the chunk is written
    as read, so bytes, masks, fragment sizes and timing are the peer's own;
  * byte faults only: the same, with the chunk passed through the byte chain;
  * a message fault: each data message is decided at its first frame
    (`PipeHooks.might_act`); a "no" streams it through untouched, a "maybe" buffers that
    one message, reassembles it and hands it to the message faults. Control frames
    always pass at once (they may interleave with fragments, RFC 6455 §5.4).

Backpressure: the pipe pauses reading its source socket while any hold is set
(`hold(why)`): the destination's write buffer is over its high-water mark, a fault
queues too much, or output is withheld beyond `OUT_LIMIT`. Nothing here reads ahead
without a bound, so memory per connection is the transports' buffers plus what the
active faults queue (each bounds its own) plus at most one message being reassembled.

Faults are attached as `PipeHooks` (hooks.py), one object per fault and pipe, made by
the fault from the pipe's `channel` (connection.py: all a fault may read and do).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from harness.protocol import wsframes as fr

from .connection import Channel
from .hooks import PipeHooks
from .message import Msg

if TYPE_CHECKING:
    from .relay import Relay

_EOF = object()  # marker for the EOF in the withheld output queue


def other(side: str) -> str:
    return "server" if side == "client" else "client"


class Pipe:
    OUT_LIMIT = 1 << 20  # withheld output (bytes) above which the source is held

    def __init__(self, relay: Relay, src: str) -> None:
        self.relay = relay
        self.src = src
        self.dst = other(src)
        self.direction = "upstream" if src == "client" else "downstream"
        self.mask = self.dst == relay.dialled  # frames we make towards the peer we dialled must be masked
        self.scanner = fr.FrameScanner()
        self.faults: list[PipeHooks] = []  # attached, in order
        self._by_key: dict[object, PipeHooks] = {}  # the key they were attached with -> them
        self.bytes_in = 0
        self.bytes_out = 0
        self.msg_index = 0  # number of data messages started (the next Msg.index)
        self.eof_in = False  # the source sent FIN
        self.eof_out = False  # we sent FIN to the destination
        self.closed_input = False  # the proxy stopped forwarding (close with code, limit)
        self._chain: list[PipeHooks] = []  # byte-level faults, in order
        self._msg_faults: list[PipeHooks] = []
        self._nexts: dict[int, Callable[[Any], None]] = {}
        self._eof_nexts: dict[int, Callable[[], None]] = {}
        self._assembler: fr.MessageAssembler | None = None
        self._synced = True  # False: a message fault arrived mid-message; pass until the boundary
        self._buffering = False  # the current message is being reassembled
        self._cur_hdr: fr.Header | None = None
        self._raw: list[bytes] = []  # wire bytes of the message being reassembled
        self._holds: set[str] = set()
        self._withholds: set[str] = set()
        self._held_out: deque[Any] = deque()
        self._held_bytes = 0
        self._pending_inject: deque[tuple[bytes, Callable[[], None] | None]] = deque()
        # A traffic observer (--view, --web: proxy/observe.py) sees each chunk as read, before any fault.
        # None, the default, costs one attribute check per chunk.
        self.observer: Callable[[bytes | memoryview], None] | None = None
        # The client's pipe reads its first message before anything else does (identify.py); then None.
        self.sniffer: Callable[[bytes | memoryview], None] | None = None

    # --- properties ---------------------------------------------------------------------
    @cached_property
    def channel(self) -> Channel:
        """What faults on this pipe may read and do (made at the first attach)."""
        return Channel(self.relay, self)

    @property
    def holds(self) -> frozenset[str]:
        return frozenset(self._holds)

    @property
    def withholding(self) -> bool:
        return bool(self._withholds)

    # --- flow control on the source socket (real TCP backpressure) -----------------------
    def hold(self, why: str) -> None:
        """Stop reading the source until every hold is released."""
        if not self._holds:
            tr = self.relay.tr[self.src]
            if not tr.is_closing():
                tr.pause_reading()
                self.relay.watch_sends(self.src, True)
        self._holds.add(why)

    def release(self, why: str) -> None:
        if why not in self._holds:
            return
        self._holds.discard(why)
        if not self._holds:
            tr = self.relay.tr[self.src]
            self.relay.watch_sends(self.src, False)
            if not tr.is_closing():
                tr.resume_reading()

    # --- output control -----------------------------------------------------------------
    def withhold(self, why: str) -> None:
        """Queue this direction's output (data and EOF) until every withhold is lifted."""
        self._withholds.add(why)

    def unwithhold(self, why: str) -> None:
        self._withholds.discard(why)
        while self._held_out and not self._withholds:
            item = self._held_out.popleft()
            if item is _EOF:
                self._write_eof()
            else:
                self._held_bytes -= len(item)
                self.write(item)
        if not self._held_out:
            self.release("withheld")

    def write(self, data: bytes | memoryview) -> None:
        """To the destination socket (after the byte chain), honouring withhold."""
        if self._withholds:
            self._held_out.append(bytes(data))  # a copy: a view would pin the whole read chunk
            self._held_bytes += len(data)
            if self._held_bytes > self.OUT_LIMIT:
                self.hold("withheld")
            return
        if self.eof_out:
            return
        tr = self.relay.tr[self.dst]
        if not tr.is_closing():
            tr.write(data)
            self.bytes_out += len(data)

    def _next_fault(self, after: PipeHooks | None) -> PipeHooks | None:
        """The byte fault after `after` (None: the first); None past the end, or when
        `after` is no longer in the chain (removed: it sends straight to the socket)."""
        chain = self._chain
        if after is None:
            return chain[0] if chain else None
        try:
            i = chain.index(after) + 1
        except ValueError:
            return None
        return chain[i] if i < len(chain) else None

    def emit(self, data: bytes | memoryview, after: PipeHooks | None = None) -> None:
        """Into the byte chain after `after` (None: from its start), then to the socket."""
        f = self._next_fault(after)
        if f is None:
            self.write(data)
        else:
            f.on_bytes(data, self._nexts[id(f)])

    def emit_eof(self, after: PipeHooks | None = None) -> None:
        """The source's FIN, through the byte chain (so it follows queued data)."""
        f = self._next_fault(after)
        if f is None:
            self._write_eof()
        else:
            f.on_eof(self._eof_nexts[id(f)])

    def _write_eof(self) -> None:
        if self._withholds:
            self._held_out.append(_EOF)
            return
        if self.eof_out:
            return
        self.eof_out = True
        self.relay.sent.setdefault(self.dst, "eof")
        tr = self.relay.tr[self.dst]
        if not tr.is_closing() and tr.can_write_eof():
            with contextlib.suppress(OSError):
                tr.write_eof()
        self.relay.check_done()

    def inject(self, frame: bytes, then: Callable[[], None] | None = None) -> None:
        """Send a whole frame we made (`encode`), through the byte chain, as soon as the
        output is at a frame boundary (control frames) or a message boundary (data frames),
        so it never lands inside a frame or between the fragments of a message; then
        call `then`."""
        if not self._pending_inject and self._can_inject(frame[0] & 0x0F):
            self.emit(frame)
            if then is not None:
                then()
        else:
            self._pending_inject.append((frame, then))

    # --- faults -------------------------------------------------------------------------
    def attached(self, key: object) -> PipeHooks | None:
        """What was attached with `key` (a fault's state on this pipe), if anything."""
        return self._by_key.get(key)

    def add(self, key: object, make: Callable[[Channel], PipeHooks]) -> None:
        """Attach a fault: `make(self.channel)` builds its hooks for this pipe (and does
        whatever the fault does on attaching); once per key."""
        if key in self._by_key:
            return
        f = make(self.channel)
        self._by_key[key] = f
        self.faults.append(f)
        self._rebuild()
        if f.needs_messages and self._assembler is None:
            self._assembler = fr.MessageAssembler()
            self._buffering = False
            self._synced = self.scanner.at_message_boundary  # never start mid-message

    def remove(self, key: object) -> None:
        f = self._by_key.get(key)
        if f is None:
            return
        try:
            f.detach()  # still in the chain: it may flush with emit(after=self)
        finally:
            del self._by_key[key]
            self.faults.remove(f)
            self._rebuild()
            if not self._msg_faults and self._assembler is not None:
                # the message being reassembled goes out as it came; the rest streams
                raw, self._raw = self._raw, []
                self._assembler = None
                self._buffering = False
                if raw:
                    self.emit(b"".join(raw))

    def _rebuild(self) -> None:
        self._chain = [f for f in self.faults if f.byte_level]
        self._msg_faults = [f for f in self.faults if f.needs_messages]
        self._nexts = {id(f): self._make_next(f) for f in self._chain}
        self._eof_nexts = {id(f): self._make_eof_next(f) for f in self._chain}

    def _make_next(self, f: PipeHooks) -> Callable[[Any], None]:
        return lambda data: self.emit(data, after=f)

    def _make_eof_next(self, f: PipeHooks) -> Callable[[], None]:
        return lambda: self.emit_eof(after=f)

    # --- input --------------------------------------------------------------------------
    def feed(self, data: bytes | memoryview) -> None:
        """Bytes read from the source."""
        self.bytes_in += len(data)
        if self.sniffer is not None:  # before the faults and the observers: they may depend on the profile
            self.sniffer(data)
        if self.closed_input:
            return
        if self.observer is not None:
            self.observer(data)
        if self._assembler is None and not self._pending_inject:
            self.scanner.advance(data)  # fast path: boundaries only, the chunk as read
            if self._chain:
                self.emit(data)
            else:
                self.write(data)
            return
        for p in self.scanner.split(data):
            if self._assembler is None:
                self.emit(p.data)
            else:
                self._on_piece(p)
            if self._pending_inject and p.frame_end:
                self._flush_injections()

    def feed_eof(self) -> None:
        """The source sent FIN: a message being reassembled goes out as far as it came."""
        self.eof_in = True
        if self.closed_input:
            return
        raw, self._raw = self._raw, []
        if raw:
            self.emit(b"".join(raw))
        self._buffering = False
        self.emit_eof()

    def close_input(self) -> None:
        """Stop forwarding anything more from the source (the proxy ends this direction)."""
        self.closed_input = True
        self._raw = []
        self._pending_inject.clear()

    def _can_inject(self, opcode: int) -> bool:
        sc = self.scanner
        if self._assembler is not None and self._synced and self._buffering:
            # the current data message is buffered, not yet sent: only a control frame
            # in progress (sent as it comes) can be open on the output
            return sc.at_frame_boundary or not (sc.header is not None and sc.header.is_control)
        return sc.at_frame_boundary if opcode >= 8 else sc.at_message_boundary

    def _flush_injections(self) -> None:
        while self._pending_inject and self._can_inject(self._pending_inject[0][0][0] & 0x0F):
            frame, then = self._pending_inject.popleft()
            self.emit(frame)
            if then is not None:
                then()

    def _on_piece(self, p: fr.Piece) -> None:
        if not self._synced:  # joined mid-message: pass it through until the boundary
            self.emit(p.data)
            if p.frame_end and self.scanner.at_message_boundary:
                self._synced = True
            return
        if p.header is not None:
            self._cur_hdr = p.header
        h = self._cur_hdr
        assert h is not None
        if h.is_control:  # pings, pongs, close: at once, even between fragments
            self.emit(p.data)
            return
        if p.header is not None and h.opcode != fr.CONT:  # the first frame of a new message
            start = h.size
            prefix = p.data[start:start + 16]
            if h.masked:
                prefix = fr.mask_bytes(prefix, h.mask)
            self._buffering = any(f.might_act(h.opcode, prefix, h) for f in self._msg_faults)
            self._raw = []
            if self._buffering:
                self._assembler = self._assembler or fr.MessageAssembler()
                self._assembler.reset()
            else:
                self.msg_index += 1
        if not self._buffering:  # decided at the first frame: stream it untouched
            self.emit(p.data)
            return
        self._raw.append(bytes(p.data))
        assert self._assembler is not None
        for opcode, payload, sizes, rsv in self._assembler.feed(p):
            self._deliver(opcode, payload, sizes, rsv)
            self._raw = []
            self._buffering = False

    def _deliver(self, opcode: int, payload: bytes, sizes: list[int], rsv: int) -> None:
        orig = Msg(opcode, payload, self.msg_index, sizes, rsv)
        self.msg_index += 1
        items: list[Msg | bytes] = [orig]
        for f in list(self._msg_faults):
            nxt: list[Msg | bytes] = []
            for it in items:
                r = f.on_message(it) if isinstance(it, Msg) else None
                if r is None:
                    nxt.append(it)
                else:
                    nxt.extend(r)
            items = nxt
        if len(items) == 1 and items[0] is orig:  # untouched: original bytes, masks, fragments
            self.emit(b"".join(self._raw))
            return
        for it in items:
            # RSV1 kept: a compressed payload stays marked as such
            self.emit(fr.encode_frame(it.opcode, it.payload, True, self.mask, it.rsv) if isinstance(it, Msg) else it)

    # --- observation --------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {"bytes": self.bytes_in, "bytes_out": self.bytes_out, "messages": self.scanner.messages,
                "frames": self.scanner.frames, "held": sorted(self._holds), "withheld_bytes": self._held_bytes,
                "faults": [f.name for f in self.faults]}
