"""`sendspin-proxy --view`: a live terminal view of the decoded Sendspin traffic.

One line per message: wall-clock time, a marker column, the connection (`#3` = the
proxy's third connection), the direction (`c→s` client to server, `s→c` server to client),
then the JSON type with its key fields, or the binary type with timestamp and size.
Audio and visualizer chunks, and time sync after the first exchange, come many per
second: they are summed up once per second per connection and direction (count, bytes,
audio duration, timestamp range, round trip through the server as the proxy sees it).
A noise session (its client opened with `client/init`) shows its cleartext handshake
decoded (`client/init`, `server/init`, `noise/handshake` message 1 and 2, `server/error`);
after it every message is ciphertext the proxy holds no keys for: the first of each
direction gets a line, the rest are summed up the same way (count, bytes, smallest and
largest), and a text message after the switch is flagged (a receiver must close).
With `--noise terminate` the proxy holds the keys: after the handshake line, the
session's plaintext shows as a legacy one's does (JSON by type, binaries by type byte).
A fault that acts on many messages (a slicer on all of them, a delay of every audio
chunk) is summed up the same way, per fault, connection and direction: its first
application has its own line at once, and so does any that follows a quiet second; the
rest are counted and shown once per second, and when the connection closes.
`--view all` prints every message and every application instead.

Markers (always there, so a capture or `grep` finds them; coloured on a terminal):
  `!!` a fault acted or cannot act on a connection, or something is wrong (invalid
       message, relay error)
  `**` the fault table changed, an upstream went up/down, a message was left unfinished
  `++` a connection opened, `--` it closed (with the close codes each side sent)

Lines go through a bounded queue to a thread of their own: a terminal that stops reading
never blocks the proxy; if more than `LINE_QUEUE` lines wait, the newest are dropped and
counted (the view says how many).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from harness.protocol import HEADER_SIZE, MESSAGE_TYPES, NOISE_MESSAGE_TYPES, PLAYER_AUDIO, now_us
from harness.protocol import wsframes as fr
from harness.protocol.noise_plaintext import AUDIO_HEADER_SIZE

from .describe import (
    ARROW,
    FaultTally,
    binary_name,
    binary_summary,
    close_summary,
    fault_applied,
    fault_name,
    fault_spec_text,
    format_text,
    is_stream_chunk,
    json_summary,
    parse_json_object,
    size_text,
    ts_text,
    type_from_prefix,
    validation_error,
)
from .observe import MessageObserver, ObservedMessage
from .relay.relay import Relay

LINE_QUEUE = 10_000
STALL_S = 2.0  # a message started this long ago and not finished is worth a line (stalled payload)
JSON_CAPTURE = 64 * 1024  # a longer JSON message is named from its first bytes only
TIME_TYPES = ("client/time", "server/time")
PENDING_TIMES = 64  # client/time stamps remembered per connection to pair with server/time

RESET = "\x1b[0m"
STYLE = {"!!": "\x1b[1;31m", "**": "\x1b[33m", "++": "\x1b[32m", "--": "\x1b[1;33m",
         "upstream": "\x1b[36m", "downstream": "\x1b[35m", "dim": "\x1b[2m"}


class LineWriter:
    """Writes lines from a thread, so a slow terminal never blocks the event loop."""

    def __init__(self, stream: TextIO, limit: int = LINE_QUEUE) -> None:
        self.stream = stream
        self.queue: queue.Queue[str | None] = queue.Queue(limit)
        self.dropped = 0
        self._reported = 0
        self.thread = threading.Thread(target=self._run, name="sendspin-view", daemon=True)
        self.thread.start()

    def write(self, line: str) -> None:
        try:
            self.queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 1000 and batch[-1] is not None:
                    batch.append(self.queue.get_nowait())
            done = batch[-1] is None
            lines = [ln for ln in batch if ln is not None]
            dropped = self.dropped
            if dropped > self._reported:
                lines.append(f"[view: {dropped - self._reported} lines dropped: the terminal was not reading]")
                self._reported = dropped
            try:
                if lines:
                    self.stream.write("\n".join(lines) + "\n")
                    self.stream.flush()
            except (OSError, ValueError):  # the terminal is gone: nothing more to show
                return
            if done:
                return

    def close(self, timeout: float = 2.0) -> None:
        with contextlib.suppress(queue.Full):
            self.queue.put(None, timeout=timeout)
        self.thread.join(timeout)


@dataclass
class _Chunks:
    """Stream chunks of one binary type in one direction since the last summary."""

    count: int = 0
    payload: int = 0  # bytes after the 9-byte header
    ts_first: int | None = None
    ts_last: int | None = None
    fragmented: int = 0


@dataclass
class _Sealed:
    """A noise session's encrypted messages in one direction since the last summary."""

    count: int = 0
    size: int = 0
    smallest: int | None = None
    largest: int = 0
    fragmented: int = 0

    def add(self, msg: ObservedMessage) -> None:
        self.count += 1
        self.size += msg.size
        self.smallest = msg.size if self.smallest is None else min(self.smallest, msg.size)
        self.largest = max(self.largest, msg.size)
        self.fragmented += msg.fragments > 1

    def text(self) -> str:
        sizes = size_text(self.largest) if self.smallest == self.largest else \
            f"{size_text(self.smallest or 0)}–{size_text(self.largest)}"
        return (f"encrypted ×{self.count} {size_text(self.size)} ({sizes} each"
                + (f", {self.fragmented} fragmented" if self.fragmented else "") + ")")


@dataclass
class _FaultRun:
    """One fault in one direction of one connection: when it last acted, what waits to be summed up."""

    last_us: int
    tally: FaultTally | None = None


FaultKey = tuple[str, str, str]  # (session or "", fault name, direction)


@dataclass
class _Session:
    tag: str
    relay: Relay
    player_format: dict[str, Any] | None = None
    chunks: dict[tuple[str, int], _Chunks] = field(default_factory=dict)
    time_sent: dict[int, float] = field(default_factory=dict)  # client_transmitted -> when it passed
    time_shown: set[str] = field(default_factory=set)
    time_count: int = 0
    rtt_total: float = 0.0
    rtt_pairs: int = 0
    rtt_max: float = 0.0
    pings: int = 0
    sealed: dict[str, _Sealed] = field(default_factory=dict)  # noise: direction -> encrypted since the last summary
    transport: set[str] = field(default_factory=set)  # noise: directions past their cleartext handshake

    @property
    def noise(self) -> bool:
        return self.relay.profile == "noise"

    @property
    def sealed_after_handshake(self) -> bool:
        """A noise session the proxy holds no keys for (a terminated one shows its plaintext)."""
        return self.relay.mode == "noise-opaque"


class LiveView:
    """A `TrafficConsumer` (proxy/observe.py) that prints the traffic as it passes."""

    capture_text = JSON_CAPTURE
    capture_binary = HEADER_SIZE

    def __init__(self, stream: TextIO | None = None, *, color: bool | None = None, every_message: bool = False,
                 interval: float = 1.0) -> None:
        self.stream = stream if stream is not None else sys.stdout
        if color is None:
            color = self.stream.isatty() and not os.environ.get("NO_COLOR")
        self.color = color
        self.every_message = every_message
        self.interval = interval
        self.sessions: dict[str, _Session] = {}
        self.fault_runs: dict[FaultKey, _FaultRun] = {}
        self.writer: LineWriter | None = None
        self._tick: asyncio.TimerHandle | None = None

    # --- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.writer = LineWriter(self.stream)
        self._tick = asyncio.get_running_loop().call_later(self.interval, self._on_tick)

    def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        for s in self.sessions.values():
            self._flush(s)
        self._flush_faults(lambda key: True)
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _on_tick(self) -> None:
        for sid, s in list(self.sessions.items()):
            self._flush(s)
            self._flush_faults(lambda key, sid=sid: key[0] == sid)
            self._stalls(s)
        self._flush_faults(lambda key: True)  # proxy-wide faults, and connections the view never saw open
        self._tick = asyncio.get_running_loop().call_later(self.interval, self._on_tick)

    # --- output ---------------------------------------------------------------------------
    def _line(self, marker: str, tag: str, direction: str | None, text: str, t: float | None = None) -> None:
        if self.writer is None:
            return
        t = time.time() if t is None else t
        clock = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
        arrow = ARROW.get(direction, "   ") if direction else "   "
        if not self.color:
            self.writer.write(f"{clock} {marker or '  '} {tag:>4} {arrow} {text}")
            return
        if marker:
            self.writer.write(f"{STYLE['dim']}{clock}{RESET} {STYLE[marker]}{marker} {tag:>4} {arrow} {text}{RESET}")
        else:
            style = STYLE.get(direction or "", "")
            self.writer.write(f"{STYLE['dim']}{clock}{RESET}    {tag:>4} {style}{arrow}{RESET} {text}")

    def _tag(self, session: str | None) -> str:
        s = self.sessions.get(session or "")
        return s.tag if s is not None else (session or "")[:4] or "--"

    # --- TrafficConsumer ------------------------------------------------------------------
    def relay_opened(self, relay: Relay) -> None:
        tag = f"#{relay.seq}" if relay.seq else relay.flow_id[:4]
        self.sessions[relay.flow_id] = _Session(tag, relay)
        peer = relay.tr["client"].get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        u = relay.upstream
        upstream = f"ws://{u.host}:{u.port}" if u is not None else "?"
        # a negotiated extension is worth seeing at once: message faults cannot act on such a connection
        ext = f" (extension {', '.join(relay.extensions)})" if relay.extensions else ""
        self._line("++", tag, None, f"open {client} → {upstream} GET {relay.path}{ext}")

    def message(self, relay: Relay, msg: ObservedMessage) -> None:
        s = self.sessions.get(relay.flow_id)
        if s is None:
            return
        if msg.opcode == fr.TEXT:
            self._text(s, msg)
        elif msg.opcode == fr.BINARY:
            self._binary(s, msg)
        elif msg.opcode == fr.CLOSE:
            code = msg.close_code
            what = f"close {code}" if code is not None else "close (no status code)"
            self._line("", s.tag, msg.direction, what + (f' "{msg.close_reason}"' if msg.close_reason else ""), msg.t)
        elif self.every_message:
            self._line("", s.tag, msg.direction, "ping" if msg.opcode == fr.PING else "pong", msg.t)
        else:
            s.pings += 1

    def _suffix(self, msg: ObservedMessage) -> str:
        out = ""
        if msg.fragments > 1:
            out += f" [{msg.fragments} fragments]"
        if msg.compressed:
            out += f" (deflated: {size_text(msg.size)} on the wire)"
        return out

    def _problems(self, s: _Session, msg: ObservedMessage) -> None:
        if msg.inflate_error:
            self._line("!!", s.tag, msg.direction, f"permessage-deflate: {msg.inflate_error}", msg.t)
        if not msg.complete:
            self._line("**", s.tag, msg.direction, f"unfinished: {msg.fragments} fragment(s), "
                       f"{size_text(msg.size)}, then a new message began", msg.t)

    def _text(self, s: _Session, msg: ObservedMessage) -> None:
        obj = None if msg.truncated else parse_json_object(msg.head)
        if obj is None:
            if msg.truncated:
                name = type_from_prefix(msg.head) or "?"
                self._line("", s.tag, msg.direction, f"{name} (JSON of {size_text(msg.plain_size)}, "
                           f"too long to show){self._suffix(msg)}", msg.t)
            else:
                shown = msg.head[:60].decode("utf-8", "replace")
                self._line("!!", s.tag, msg.direction, f"text, not a JSON object: {shown!r}{self._suffix(msg)}", msg.t)
            self._problems(s, msg)
            return
        name, fields = json_summary(obj)
        if name == "stream/start" and isinstance(obj.get("payload"), dict):
            self._flush(s)
            player = obj["payload"].get("player")
            if isinstance(player, dict):
                s.player_format = player
        elif name in ("stream/end", "stream/clear", "client/goodbye"):
            self._flush(s)
        if name in TIME_TYPES:
            self._time(s, name, obj.get("payload"))
            if not self.every_message and name in s.time_shown and msg.complete:
                s.time_count += 1
                return
            s.time_shown.add(name)
        error = validation_error(msg.head, NOISE_MESSAGE_TYPES if s.noise else MESSAGE_TYPES)
        if name == "noise/handshake" and msg.direction not in s.transport:  # the server is the initiator
            fields = f"message {1 if msg.direction == 'downstream' else 2}, {fields}"
        self._line("", s.tag, msg.direction, f"{name} {fields}{self._suffix(msg)}".rstrip(), msg.t)
        if error is not None:
            self._line("!!", s.tag, msg.direction, f"invalid {name}: {error}", msg.t)
        if s.sealed_after_handshake and msg.direction in s.transport:
            self._line("!!", s.tag, msg.direction, f"cleartext {name} after the handshake: a noise receiver "
                       "must close the connection", msg.t)
        self._problems(s, msg)

    def _time(self, s: _Session, name: str, payload: Any) -> None:
        sent = payload.get("client_transmitted") if isinstance(payload, dict) else None
        if not isinstance(sent, int):
            return
        now = time.monotonic()
        if name == "client/time":
            if len(s.time_sent) >= PENDING_TIMES:
                s.time_sent.pop(next(iter(s.time_sent)))
            s.time_sent[sent] = now
        elif (t0 := s.time_sent.pop(sent, None)) is not None:
            rtt = (now - t0) * 1000
            s.rtt_total += rtt
            s.rtt_pairs += 1
            s.rtt_max = max(s.rtt_max, rtt)

    def _binary(self, s: _Session, msg: ObservedMessage) -> None:
        if s.sealed_after_handshake:
            self._sealed(s, msg)
            return
        name, ts, text = binary_summary(msg.head, msg.plain_size)
        if ts is not None and is_stream_chunk(msg.head[0]) and not self.every_message and msg.complete:
            c = s.chunks.setdefault((msg.direction, msg.head[0]), _Chunks())
            c.count += 1
            noise_audio = s.noise and msg.head[0] == PLAYER_AUDIO  # a terminated session's: 13-byte header
            c.payload += msg.plain_size - (AUDIO_HEADER_SIZE if noise_audio else HEADER_SIZE)
            c.ts_first = ts if c.ts_first is None else min(c.ts_first, ts)
            c.ts_last = ts if c.ts_last is None else max(c.ts_last, ts)
            c.fragmented += msg.fragments > 1
            return
        self._line("" if ts is not None else "!!", s.tag, msg.direction, f"{name} {text}{self._suffix(msg)}", msg.t)
        self._problems(s, msg)

    def _sealed(self, s: _Session, msg: ObservedMessage) -> None:
        """A noise transport message: AEAD ciphertext, so only its size is known. The first
        of each direction has a line (the switch to transport mode), the rest are summed up."""
        first = msg.direction not in s.transport
        s.transport.add(msg.direction)
        if first or self.every_message or not msg.complete:
            note = " (transport mode: the proxy holds no keys)" if first else ""
            self._line("", s.tag, msg.direction, f"encrypted {size_text(msg.size)}{note}{self._suffix(msg)}", msg.t)
            self._problems(s, msg)
            return
        s.sealed.setdefault(msg.direction, _Sealed()).add(msg)

    def _flush(self, s: _Session) -> None:
        """The summary lines of one connection since the last ones."""
        for direction, sealed in s.sealed.items():
            self._line("", s.tag, direction, sealed.text())
        s.sealed.clear()
        for (direction, mtype), c in s.chunks.items():
            text = f"{binary_name(mtype)} ×{c.count} {size_text(c.payload)}"
            fmt = s.player_format
            if mtype == PLAYER_AUDIO and fmt is not None and fmt.get("codec") == "pcm":
                frame = int(fmt.get("channels", 0)) * int(fmt.get("bit_depth", 0)) // 8
                rate = int(fmt.get("sample_rate", 0))
                if frame > 0 and rate > 0:
                    text += f" = {c.payload // frame / rate:.3f} s of {format_text(fmt)}"
            if c.ts_first is not None and c.ts_last is not None:
                text += f", ts {ts_text(c.ts_first)} … {ts_text(c.ts_last)}"
            if c.fragmented:
                text += f", {c.fragmented} fragmented"
            self._line("", s.tag, direction, text)
        s.chunks.clear()
        if s.time_count or s.pings:
            parts = []
            if s.time_count:
                parts.append(f"time sync ×{s.time_count}")
            if s.rtt_pairs:
                parts.append(f"round trip proxy↔server {s.rtt_total / s.rtt_pairs:.2f} ms avg, {s.rtt_max:.2f} max")
            if s.pings:
                parts.append(f"ping/pong ×{s.pings}")
            self._line("", s.tag, "both", ", ".join(parts))
        s.time_count = s.rtt_pairs = s.pings = 0
        s.rtt_total = s.rtt_max = 0.0

    # --- events ---------------------------------------------------------------------------
    def event(self, rec: dict[str, Any]) -> None:
        ev = rec.get("event")
        session = rec.get("session")
        if ev == "fault":
            self._fault(rec)
        elif ev == "fault_not_applied":
            tag = self._tag(session)
            self._line("!!", tag, rec.get("direction"),
                       f"FAULT {fault_name(rec.get('fault'), rec.get('type'))} cannot apply on connection {tag}: "
                       f"{rec.get('why')}")
        elif ev == "fault_added":
            self._line("**", "--", None, "fault added: " + fault_spec_text(rec.get("spec", {})))
        elif ev == "fault_removed":
            self._flush_faults(lambda key: key[1] == rec.get("fault"), forget=True)  # its counts before its end
            self._line("**", "--", None, f"fault removed: {rec.get('fault')} ({rec.get('type')}; {rec.get('why')}, "
                       f"applied {rec.get('applied')}×)")
        elif ev == "close":
            s = self.sessions.get(session or "")
            if s is not None:
                self._flush(s)
                self._unfinished(s)
            self._flush_faults(lambda key: key[0] == (session or ""), forget=True)
            self.sessions.pop(session or "", None)
            self._line("--", s.tag if s else self._tag(session), None, close_summary(rec))
        elif ev == "identified" and rec.get("mode") == "noise-opaque":  # legacy is the default: no line for it
            self._line("++", self._tag(session), None, "noise session (client/init): encrypted after its handshake, "
                       "and the proxy holds no keys")
        elif ev == "noise_terminate":
            what = {"established": f"noise session terminated by the proxy ({rec.get('suite')}): its plaintext "
                                   "follows, decoded",
                    "refused": f"the server refused the client's init: {rec.get('reason')}",
                    "rehandshake": "the proxy answered the server's re-handshake",
                    "failed": f"noise session closed by the proxy: the {rec.get('side')} {rec.get('reason')}"}
            self._line("!!" if rec.get("stage") == "failed" else "++", self._tag(session), None,
                       what.get(str(rec.get("stage")), str(rec.get("stage"))))
        elif ev == "error":
            self._line("!!", self._tag(session), None, f"relay error: {rec.get('error')}")
        elif ev == "refused":
            self._line("!!", self._tag(session), None, f"connection refused: {rec.get('why')}")
        elif ev in ("upstream_down", "upstream_up"):
            state = "down" if ev == "upstream_down" else "up"
            self._line("**", "--", None, f"upstream {rec.get('upstream')} {rec.get('url')} {state} ({rec.get('why')})")
        elif ev == "ready":
            ups = ", ".join(rec.get("upstreams") or [])
            self._line("**", "--", None, f"listening on {rec.get('listen')} → {ups}; control API {rec.get('control')}")

    def _fault(self, rec: dict[str, Any]) -> None:
        """A fault's own line at once if it is the first in a while, else counted for the next summary."""
        key = (rec.get("session") or "", str(rec.get("fault")), str(rec.get("direction") or ""))
        t = int(rec.get("t_us") or now_us())
        run = self.fault_runs.get(key)
        if self.every_message or run is None or (run.tally is None and t - run.last_us >= self.interval * 1e6):
            self.fault_runs[key] = _FaultRun(t)
            self._fault_line(rec.get("session"), rec.get("direction"), fault_applied(rec))
            return
        run.last_us = t
        if run.tally is None:
            run.tally = FaultTally()
        run.tally.add(rec)

    def _fault_line(self, session: str | None, direction: Any, text: str) -> None:
        self._line("!!", self._tag(session), direction, "FAULT " + text)

    def _flush_faults(self, which: Callable[[FaultKey], bool], forget: bool = False) -> None:
        """The summaries of the faults `which` selects; `forget`: their connection or fault is gone."""
        for key in [k for k in self.fault_runs if which(k)]:
            run = self.fault_runs[key]
            if run.tally is not None:
                # stamped now, not when it acted: the view's lines stay in time order
                self._fault_line(key[0] or None, key[2] or None, run.tally.text())
                run.tally = None
            if forget:
                del self.fault_runs[key]

    def _stalls(self, s: _Session) -> None:
        now = time.time()
        for pipe in s.relay.pipes.values():
            obs = pipe.observer
            r = obs.unfinished() if isinstance(obs, MessageObserver) else None
            if r is not None and not r.stall_reported and now - r.started > STALL_S:
                r.stall_reported = True
                kind = "text" if r.opcode == fr.TEXT else "binary"
                self._line("**", s.tag, pipe.direction, f"{kind} message unfinished for {now - r.started:.1f} s: "
                           f"{r.fragments} fragment(s), {size_text(r.size)} so far")

    def _unfinished(self, s: _Session) -> None:
        for pipe in s.relay.pipes.values():
            obs = pipe.observer
            r = obs.unfinished() if isinstance(obs, MessageObserver) else None
            if r is not None:
                kind = "text" if r.opcode == fr.TEXT else "binary"
                self._line("**", s.tag, pipe.direction, f"unfinished {kind} message at the end: {r.fragments} "
                           f"fragment(s), {size_text(r.size)} in {time.time() - r.started:.1f} s")
