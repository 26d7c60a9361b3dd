"""Load generator for bench/noise_fanout.py: many cheap Sendspin `noise` PCM listeners in one process.

Raw WebSocket over asyncio.Protocol (as bench/_mw_load.py: frame headers parsed
inline, this loop runs once per chunk per listener), each listener a real
`noise` client: its own X25519 identity, `client/init`, the KKpsk2 handshake
with the Sentinel PSK (our sans-I/O `NoiseSession`, client side), then
`client/hello` with unpaired access and a PCM 48 kHz/16-bit/stereo player
after `server/hello`, and `client/state` (`available`, the player object)
after the first `server/activate`. The same work for any server.

Checking "zero gaps" without spending the machine on decryption. A listener
must decrypt every control message (to follow the handshake, and the AEAD
nonce is the message count), but audio is by far most of the traffic, and
decrypting a 4.8 kB chunk costs about as much as everything else a listener
does with it. So:

- every listener counts its audio messages and frames from their sizes (a
  transport message ≥ BIG bytes is audio: 13-byte header + PCM + 16-byte tag;
  control messages are far smaller) and advances its receive nonce without
  decrypting;
- every listener decrypts two anchor chunks, the first audio after `mark` and
  the first after `report`, and checks between them, exactly: the watermark
  (both servers stream one: frame n carries n) must have advanced by the frames
  it counted (fewer: missing samples; more: duplicates), and the timestamps by
  their duration. A lost chunk anywhere in the window shows; it costs two
  decryptions per listener per window;
- a sample (--sample per process) decrypts every message and checks each
  chunk as bench/_mw_load.py does (watermark continuity, timestamp steps,
  `send_ahead`), and checks the size rule the others rely on: every message
  ≥ BIG is player audio of the size counted, and no audio is smaller.

Driven over stdin like bench/_mw_load.py: prints {"event": "ready"} once every
listener got audio (or the timeout passed), then `mark` (zero the counters,
arm the first anchors), `report` (arm the second anchors, wait for them at
most --anchor-timeout s, print the counters since the mark and its own CPU),
`quit`/EOF, or --max-seconds whatever happens.

    python bench/_noise_load.py --urls ws://127.0.0.1:P/sendspin --count N [--sample K]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import struct
import sys
import time
from urllib.parse import urlsplit

from _mw_load import MAX_PENDING_UPGRADES, client_frame, emit

from harness.protocol import ConnectionFatal, ProtocolError
from harness.protocol import messages as m
from harness.protocol.noise import AudioChunk, NoiseProfile, NoiseSession
from harness.protocol.wsframes import BINARY, CLOSE, CONT, PING, PONG, TEXT

RATE = 48_000
FRAME_BYTES = 4              # 16-bit stereo
OVERHEAD = 13 + 16           # audio header (type, timestamp, send_ahead) + AEAD tag
BIG = 1024                   # a transport message this large is audio (25 ms of PCM: 4829 bytes)
REQUIRED_LEAD_MS = 100       # the lead each listener asks for (client/state); less is late audio
TS_SLACK_US = 1000           # timestamps may round to µs per chunk; a lost chunk is 25 000 µs
_HH = struct.Struct("<HH")


def wm_index(pcm: bytes | memoryview, frame: int) -> int:
    lo, hi = _HH.unpack_from(pcm, frame * FRAME_BYTES)
    return lo | (hi << 16)


def _hello() -> m.NoiseClientHello:
    return m.NoiseClientHello(
        name="noise fan-out listener", supported_roles=["player@v1"],
        player_support=m.NoisePlayerSupport(supported_formats=[m.AudioFormat(
            codec="pcm", channels=2, sample_rate=RATE, bit_depth=16)], buffer_capacity=2_000_000),
        supported_pair_methods={"pairing_psk": {}}, unpaired_access=m.UnpairedAccess(enabled=True))


def _state() -> m.NoiseClientState:
    return m.NoiseClientState(available=True, player=m.NoisePlayerState(
        volume=100, muted=False, output_delay_ms=0, required_lead_time_ms=REQUIRED_LEAD_MS, min_buffer_ms=250,
        supported_commands=["volume", "mute"]))


class Anchor:
    """One decrypted chunk: its first watermark index, timestamp, and the listener's
    frame count before it."""

    __slots__ = ("frames_before", "index", "ts")

    def __init__(self, index: int, ts: int, frames_before: int) -> None:
        self.index, self.ts, self.frames_before = index, ts, frames_before


class Listener(asyncio.Protocol):
    __slots__ = (
        "a0",
        "a1",
        "arm",
        "audio",
        "back",
        "big_not_audio",
        "buf",
        "codec",
        "dup",
        "errors",
        "exp",
        "frames",
        "host",
        "last_ts",
        "lost",
        "min_send_ahead",
        "missing",
        "path",
        "recv",
        "sampled",
        "size_mismatch",
        "state_sent",
        "status",
        "step_us",
        "transport",
        "ts_gaps",
        "upgraded",
        "upgraded_cb",
    )

    def __init__(self, profile: NoiseProfile, host: str, path: str, sampled: bool, upgraded_cb) -> None:
        self.codec: NoiseSession = profile.session("client")
        self.host, self.path, self.sampled, self.upgraded_cb = host, path, sampled, upgraded_cb
        self.buf = bytearray()
        self.upgraded = self.state_sent = False
        self.status = 0
        self.recv = None  # the receive CipherState, once in transport mode
        self.arm = 0      # 1: the next audio is the first anchor; 2: the second
        self.a0: Anchor | None = None
        self.a1: Anchor | None = None
        self.audio = self.frames = self.lost = 0
        self.errors: list[str] = []
        # sampled listeners only: per-chunk checks since the mark
        self.exp: int | None = None
        self.last_ts: int | None = None
        self.missing = self.dup = self.back = self.ts_gaps = self.big_not_audio = self.size_mismatch = 0
        self.min_send_ahead: int | None = None
        self.step_us = 0  # the previous chunk's duration

    def mark(self) -> None:
        self.audio = self.frames = 0
        self.missing = self.dup = self.back = self.ts_gaps = self.big_not_audio = self.size_mismatch = 0
        self.min_send_ahead = None
        self.a0 = self.a1 = None
        self.arm = 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                             .encode())

    def _fail(self, why: str) -> None:
        self.errors.append(why)
        self.transport.abort()

    def _send_all(self, wires: tuple | list) -> None:
        for w in wires:
            self.transport.write(client_frame(TEXT if isinstance(w, str) else BINARY,
                                              w.encode() if isinstance(w, str) else w))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            line = bytes(buf[: buf.find(b"\r\n")]).split()
            self.status = int(line[1]) if len(line) > 1 and line[1].isdigit() else -1
            del buf[: end + 4]
            self.upgraded = True
            self.upgraded_cb(self)
            if self.status != 101:
                self.transport.abort()
                return
            self._send_all(self.codec.handshake(None).send)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, n = buf[pos], buf[pos + 1] & 0x7F
            hdr = 2
            if n == 126:
                if size - pos < 4:
                    break
                n, hdr = (buf[pos + 2] << 8) | buf[pos + 3], 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, hdr = struct.unpack_from(">Q", buf, pos + 2)[0], 10
            if size - pos < hdr + n:
                break
            p = pos + hdr
            op = b0 & 0x0F
            if op == BINARY and n >= BIG and self.recv is not None and not self.sampled and not self.arm:
                self.recv.n += 1  # audio, counted, not decrypted: the nonce is the message count
                self.audio += 1
                self.frames += (n - OVERHEAD) // FRAME_BYTES
            elif op in (BINARY, TEXT):
                self._message(op, bytes(buf[p : p + n]))
            elif op == PING:  # answer, or a keepalive drops us
                self.transport.write(client_frame(PONG, bytes(buf[p : p + n])))
            elif op == CLOSE:
                self.transport.close()
            elif op == CONT:
                self._fail("a WebSocket continuation frame (this load generator reads whole frames only)")
            pos = p + n
        if pos:
            del buf[:pos]

    def _message(self, op: int, data: bytes) -> None:
        codec = self.codec
        try:
            if not codec.ready:
                step = codec.handshake(data.decode() if op == TEXT else data)
                self._send_all(step.send)
                if step.close:
                    self._fail(f"handshake: {step.error}")
                elif codec.ready:
                    self.recv = codec._receive  # its nonce is advanced for audio not decrypted
                return
            message = codec.decode(data)
        except ConnectionFatal as exc:
            self._fail(f"fatal: {exc}")
            return
        except ProtocolError:  # a message we do not know: ignored, as the spec says
            return
        if isinstance(message, AudioChunk):
            self._audio(message, len(data))
        elif len(data) >= BIG:
            self.big_not_audio += 1
        elif isinstance(message, m.NoiseServerHello):
            self._send_all(codec.encode_messages(_hello()))
        elif isinstance(message, m.ServerActivate) and not self.state_sent:
            self.state_sent = True
            self._send_all(codec.encode_messages(_state()))

    def _audio(self, chunk: AudioChunk, size: int) -> None:
        pcm = chunk.payload
        frames = len(pcm) // FRAME_BYTES
        if size < BIG or frames != (size - OVERHEAD) // FRAME_BYTES:
            self.size_mismatch += 1
        if self.arm and frames:
            anchor = Anchor(wm_index(pcm, 0), chunk.timestamp_us, self.frames)
            if self.arm == 1:
                self.a0 = anchor
            else:
                self.a1 = anchor
            self.arm = 0
        self.audio += 1
        self.frames += frames
        if not self.sampled or not frames:
            return
        first, last = wm_index(pcm, 0), wm_index(pcm, frames - 1)
        exp = self.exp
        if exp is not None:
            if first > exp:
                self.missing += first - exp
            elif first < exp:
                if first + frames > exp:
                    self.dup += exp - first
                else:
                    self.back += 1
        if last - first + 1 > frames:
            self.missing += last - first + 1 - frames
        self.exp = last + 1
        ts = chunk.timestamp_us
        if self.last_ts is not None and abs(ts - self.last_ts - self.step_us) > TS_SLACK_US:
            self.ts_gaps += 1
        self.last_ts, self.step_us = ts, frames * 1_000_000 // RATE
        sa = chunk.send_ahead_us
        if self.min_send_ahead is None or sa < self.min_send_ahead:
            self.min_send_ahead = sa

    def span(self) -> tuple[int, int, int] | None:
        """(frames counted between the anchors, watermark advance, timestamp advance µs);
        None if an anchor is missing."""
        if self.a0 is None or self.a1 is None:
            return None
        return self.a1.frames_before - self.a0.frames_before, self.a1.index - self.a0.index, self.a1.ts - self.a0.ts

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost += 1
        if not self.upgraded:
            self.upgraded = True
            self.upgraded_cb(self)


def summary(listeners: list[Listener], seconds: float, cpu_s: float) -> dict:
    """The counters since the mark, over all listeners (anchors checked exactly)."""
    missing = dup = ts_off = unanchored = with_missing = 0
    for x in listeners:
        span = x.span()
        if span is None:
            unanchored += 1
            continue
        counted, advanced, ts_us = span
        if advanced > counted:
            missing += advanced - counted
            with_missing += 1
        elif advanced < counted:
            dup += counted - advanced
        if abs(ts_us - counted * 1_000_000 / RATE) > TS_SLACK_US:
            ts_off += 1
    sampled = [x for x in listeners if x.sampled]
    send_ahead = [x.min_send_ahead for x in sampled if x.min_send_ahead is not None]
    errors = [e for x in listeners for e in x.errors]
    return {
        "event": "report", "seconds": round(seconds, 3), "cpu_s": round(cpu_s, 3), "listeners": len(listeners),
        "with_audio": sum(1 for x in listeners if x.audio), "audio": sum(x.audio for x in listeners),
        "frames": sum(x.frames for x in listeners), "unanchored": unanchored,
        "missing": missing, "dup": dup, "with_missing": with_missing, "ts_off": ts_off,
        "sampled": len(sampled), "sample_missing": sum(x.missing for x in sampled),
        "sample_dup": sum(x.dup for x in sampled), "sample_back": sum(x.back for x in sampled),
        "sample_ts_gaps": sum(x.ts_gaps for x in sampled),
        "sample_big_not_audio": sum(x.big_not_audio for x in sampled),
        "sample_size_mismatch": sum(x.size_mismatch for x in sampled),
        "min_send_ahead_us": min(send_ahead) if send_ahead else None,
        "lost": sum(x.lost for x in listeners), "errors": len(errors), "first_error": errors[0] if errors else "",
    }


async def run(urls: list[str], count: int, sample: int, suite: str, ready_timeout: float, anchor_timeout: float,
              max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_seconds
    pending = asyncio.Semaphore(MAX_PENDING_UPGRADES)
    listeners: list[Listener] = []
    failed = 0

    def upgraded(_: Listener) -> None:
        pending.release()

    # Sampled listeners spread evenly over the process's listeners (and so over the worker URLs).
    every = max(1, count // sample) if sample else 0
    t0 = time.monotonic()
    for i in range(count):
        parts = urlsplit(urls[i % len(urls)])
        profile = NoiseProfile(suite=suite)  # type: ignore[arg-type]  # a fresh identity per listener
        sampled = bool(every) and i % every == 0 and i // every < sample
        await asyncio.wait_for(pending.acquire(), 30)
        try:
            _, proto = await asyncio.wait_for(loop.create_connection(
                lambda profile=profile, parts=parts, sampled=sampled: Listener(
                    profile, parts.netloc, parts.path, sampled, upgraded),
                parts.hostname, parts.port), 10)
        except (OSError, TimeoutError):
            failed += 1
            pending.release()
            continue
        listeners.append(proto)
    t_connected = time.monotonic()
    end = min(loop.time() + ready_timeout, deadline)
    while loop.time() < end and not all(x.audio or x.lost for x in listeners):
        await asyncio.sleep(0.05)
    errors = [e for x in listeners for e in x.errors]
    emit({"event": "ready", "count": count, "connected": len(listeners), "failed": failed,
          "refused": sum(1 for x in listeners if x.status not in (0, 101)),
          "handshaken": sum(1 for x in listeners if x.recv is not None),
          "streaming": sum(1 for x in listeners if x.audio), "lost": sum(x.lost for x in listeners),
          "errors": len(errors), "first_error": errors[0] if errors else "",
          "connect_s": round(t_connected - t0, 2), "ready_s": round(time.monotonic() - t0, 2)})

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    mark_t, mark_cpu = time.monotonic(), time.process_time()
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), max(0.1, deadline - loop.time()))
        except TimeoutError:
            break
        cmd = line.decode().strip()
        if cmd in ("", "quit"):
            break
        if cmd == "mark":
            for x in listeners:
                x.mark()
            mark_t, mark_cpu = time.monotonic(), time.process_time()
            emit({"event": "marked"})
        elif cmd == "report":
            cpu_s = time.process_time() - mark_cpu
            live = [x for x in listeners if not x.lost]
            for x in live:
                x.arm = 2
            end = loop.time() + anchor_timeout
            while loop.time() < end and any(x.arm and not x.lost for x in live):
                await asyncio.sleep(0.01)
            for x in listeners:  # counting stops here for everyone
                x.arm = 0
            seconds = time.monotonic() - mark_t  # what the counts span: mark to the second anchors
            emit(summary(listeners, seconds, cpu_s))
    for x in listeners:
        x.transport.abort()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--urls", required=True, help="comma-separated WebSocket URLs; listeners go round-robin")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--sample", type=int, default=8, help="listeners of this process that decrypt every chunk")
    ap.add_argument("--suite", default="25519_ChaChaPoly_SHA256")
    ap.add_argument("--ready-timeout", type=float, default=30.0)
    ap.add_argument("--anchor-timeout", type=float, default=3.0)
    ap.add_argument("--max-seconds", type=float, default=120.0, help="leave after this long whatever happens")
    a = ap.parse_args()
    asyncio.run(run(a.urls.split(","), a.count, a.sample, a.suite, a.ready_timeout, a.anchor_timeout,
                    a.max_seconds))


if __name__ == "__main__":
    main()
