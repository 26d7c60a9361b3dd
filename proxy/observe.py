"""Watching relayed traffic without getting in its way: the data behind `--view` and `--web`.

Each direction of each relay gets a `MessageObserver` as `Pipe.observer`: it sees every
chunk as read (before any fault) and reports whole messages as `ObservedMessage`s to the
consumers (the terminal view, the mitmweb recorder) through one `Observation`.

Cost, only while observation is on: a second `FrameScanner` pass per chunk (O(frames);
payloads are memoryview slices, never copied) and a copy of at most `capture` payload
bytes per message, unmasked; the rest of a big message is only counted. A message
compressed with permessage-deflate is inflated as it passes (the context carries over
between messages, so every compressed byte must go through zlib), in bounded chunks.
Memory per direction: one capture buffer and one zlib window.

A consumer's bug is logged once and never reaches the data path: the relay would take an
exception from `Pipe.feed` for a fault's bug and reset the connection.
"""

from __future__ import annotations

import logging
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness.protocol import wsframes as fr

from .relay.relay import Relay
from .state import EventSink, ProxyState

log = logging.getLogger(__name__)

DEFLATE_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 §7.2.2: removed by the sender, appended by the receiver
INFLATE_CHUNK = 64 * 1024  # inflated bytes beyond the capture are produced (and dropped) in chunks of this
CONTROL_CAPTURE = 125  # a control frame's whole payload (RFC 6455 §5.5)


@dataclass(slots=True)
class ObservedMessage:
    """One message (or control frame) as it crossed the proxy, before any fault acted."""

    direction: str  # upstream (client to server) | downstream (server to client)
    opcode: int  # frames.TEXT, BINARY, CLOSE, PING, PONG
    size: int  # payload bytes on the wire, all fragments
    fragments: int  # frames of a data message (1 = not fragmented)
    head: bytes  # the first payload bytes, unmasked (inflated when compressed)
    plain_size: int  # payload bytes after inflating (= size unless compressed)
    t: float  # time.time() when its last frame was read
    compressed: bool = False
    inflate_error: str | None = None
    complete: bool = True  # False: a new message began before this one's last fragment

    @property
    def truncated(self) -> bool:
        return self.plain_size > len(self.head)

    @property
    def from_client(self) -> bool:
        return self.direction == "upstream"

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.head[:2])[0] if self.opcode == fr.CLOSE and len(self.head) >= 2 else None

    @property
    def close_reason(self) -> str:
        return self.head[2:].decode("utf-8", "replace") if self.opcode == fr.CLOSE else ""


@dataclass(slots=True)
class _Reading:
    """A message being read: what is kept of it so far."""

    opcode: int
    capture: int
    compressed: bool = False
    size: int = 0
    plain_size: int = 0
    fragments: int = 0
    head: bytearray = field(default_factory=bytearray)
    started: float = field(default_factory=time.time)
    inflate_error: str | None = None
    stall_reported: bool = False  # the view said once that it is taking long


class MessageObserver:
    """One direction of one relay: chunks in (as `Pipe.observer`), `ObservedMessage`s out."""

    def __init__(self, direction: str, deliver: Callable[[ObservedMessage], None], *,
                 capture_text: int, capture_binary: int) -> None:
        self.direction = direction
        self.deliver = deliver
        self.capture = {fr.TEXT: capture_text, fr.BINARY: capture_binary}
        self.scanner = fr.FrameScanner()
        self.broken = False  # an internal error: observing stops, relaying goes on
        self._msg: _Reading | None = None  # the data message being read (may span many frames)
        self._cur: _Reading | None = None  # what the current frame belongs to (a control frame may interleave)
        self._hdr: fr.Header | None = None
        self._pos = 0  # payload bytes of the current frame seen so far (the mask key rotates with it)
        self._inflater: Any = None  # zlib.decompressobj, created by the first compressed message

    def __call__(self, data: bytes | memoryview) -> None:
        if self.broken:
            return
        try:
            for piece in self.scanner.split(data):
                self._piece(piece)
        except Exception:
            self.broken = True
            log.exception("traffic observer (%s) failed; this direction is no longer observed", self.direction)

    def unfinished(self) -> _Reading | None:
        """The data message started and not finished (a stall, an orphan fragment), if any."""
        return self._msg

    def _piece(self, p: fr.Piece) -> None:
        data = p.data
        h = p.header
        if h is not None:  # a frame starts
            self._hdr, self._pos = h, 0
            data = data[h.size:]
            if h.is_control:
                self._cur = _Reading(h.opcode, CONTROL_CAPTURE)
            else:
                msg = self._msg
                if h.opcode != fr.CONT or msg is None:  # a continuation without a start counts as binary
                    if msg is not None:  # its last fragment never came
                        self._emit(msg, complete=False)
                    opcode = h.opcode if h.opcode != fr.CONT else fr.BINARY
                    compressed = bool(h.rsv & 0x40) and h.opcode != fr.CONT
                    msg = self._msg = _Reading(opcode, self.capture.get(opcode, 0), compressed)
                self._cur = msg
                msg.fragments += 1
        cur, hdr = self._cur, self._hdr
        if cur is None or hdr is None:
            return
        if data:
            cur.size += len(data)
            if cur.compressed:
                self._inflate(cur, self._unmask(hdr, data))
            else:
                cur.plain_size += len(data)
                room = cur.capture - len(cur.head)
                if room > 0:
                    cur.head += self._unmask(hdr, data[:room])
            self._pos += len(data)
        if not p.frame_end:
            return
        if hdr.is_control:
            self._emit(cur)
            self._cur = self._msg
        elif hdr.fin:
            if cur.compressed:
                self._inflate(cur, DEFLATE_TAIL)
            self._msg = self._cur = None
            self._emit(cur)

    def _unmask(self, h: fr.Header, data: bytes | memoryview) -> bytes:
        if not h.masked:
            return bytes(data)
        r = self._pos % 4
        return fr.mask_bytes(data, h.mask[r:] + h.mask[:r])

    def _inflate(self, cur: _Reading, data: bytes) -> None:
        if cur.inflate_error is not None:
            return
        if self._inflater is None:
            # one window per direction for the whole connection: a message compressed with
            # context takeover refers back to earlier ones; one without decodes the same way
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        d = self._inflater
        try:
            while True:
                room = cur.capture - len(cur.head)
                limit = room if room > 0 else INFLATE_CHUNK
                out = d.decompress(data, limit)
                cur.plain_size += len(out)
                if room > 0:
                    cur.head += out
                data = d.unconsumed_tail
                if not data and len(out) < limit:
                    return
        except zlib.error as e:
            cur.inflate_error = f"cannot inflate: {e}"
            self._inflater = None  # the window is lost: later messages may fail too, each says so

    def _emit(self, r: _Reading, complete: bool = True) -> None:
        self.deliver(ObservedMessage(self.direction, r.opcode, r.size, r.fragments, bytes(r.head), r.plain_size,
                                     time.time(), r.compressed, r.inflate_error, complete))


class TrafficConsumer(Protocol):
    """What `Observation` calls; each method returns quickly (it runs inside the data path)."""

    capture_text: int  # payload bytes of each text message it wants to see
    capture_binary: int

    def relay_opened(self, relay: Relay) -> None: ...

    def message(self, relay: Relay, msg: ObservedMessage) -> None: ...

    def event(self, record: dict[str, Any]) -> None: ...


class Observation:
    """Fans new relays, their messages and the proxy's events out to the consumers."""

    def __init__(self, consumers: Sequence[TrafficConsumer]) -> None:
        self.consumers = list(consumers)
        self._failed: set[int] = set()  # consumers whose error was logged already

    def attach(self, relay: Relay) -> None:
        """Before the relay's first byte: observe both directions."""
        self._call("relay_opened", relay)
        capture_text = max(c.capture_text for c in self.consumers)
        capture_binary = max(c.capture_binary for c in self.consumers)
        for pipe in relay.pipes.values():
            def deliver(msg: ObservedMessage, relay: Relay = relay) -> None:
                self._call("message", relay, msg)

            pipe.observer = MessageObserver(pipe.direction, deliver, capture_text=capture_text,
                                            capture_binary=capture_binary)

    def event(self, record: dict[str, Any]) -> None:
        self._call("event", record)

    def _call(self, method: str, *args: Any) -> None:
        for c in self.consumers:
            try:
                getattr(c, method)(*args)
            except Exception:
                if id(c) not in self._failed:
                    self._failed.add(id(c))
                    log.exception("%s.%s failed (logged once)", type(c).__name__, method)


class TappedEventSink(EventSink):
    """The event log, with every record also shown to the observation (fault lines, closes)."""

    def __init__(self, path: Path | str | None, proc: str, observation: Observation) -> None:
        super().__init__(path, proc)
        self.observation = observation

    def emit(self, event: str, session: str | None = None, **fields: Any) -> None:
        super().emit(event, session, **fields)
        self.observation.event(self.recent[-1])


class ObservedProxyState(ProxyState):
    """ProxyState that hands each new relay to the observation before its first byte."""

    def __init__(self, events: EventSink, upstreams: Sequence[str], observation: Observation) -> None:
        super().__init__(events, upstreams)
        self.observation = observation

    def register(self, relay: Relay) -> None:
        super().register(relay)
        self.observation.attach(relay)
