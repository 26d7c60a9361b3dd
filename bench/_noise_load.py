"""Load generator for bench/noise_fanout.py: many cheap Sendspin `noise` PCM listeners in one process.

Raw WebSocket over asyncio.Protocol (bench/_mw_load.py's listener: its HTTP
upgrade and loss accounting; frame headers by harness.protocol.wsframes), each listener a real
`noise` client: its own X25519 identity, `client/init`, the KKpsk2 handshake
with the Sentinel PSK (our sans-I/O `NoiseSession`, client side), then
`client/hello` with unpaired access and a PCM 48 kHz/16-bit/stereo player
after `server/hello`, and `client/state` (`available`, the player object)
after the first `server/activate`. The same work for any server.

Checking "zero gaps" without spending the machine on decryption. A listener
must decrypt every control message (to follow the handshake, and the AEAD
nonce is the message count), but audio is by far most of the traffic, and
decrypting a 4.8 kB chunk (about 5 µs here, ChaChaPoly) would cost about as
much as everything else a listener does with it, i.e. double the load
generator, on a machine the server shares. So:

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
- a sample (--sample per process) decrypts every message and checks every
  sample of every chunk (harness.probe.AudioTracker: gaps, duplicates,
  reordering, corrupt chunks), each timestamp step and `send_ahead`, and the
  size rule the others rely on: every message ≥ BIG is player audio of the
  size counted, and no audio is smaller.

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
import struct
import time

import _mw_load
from _mw_load import client_frame, connect_all, emit, serve_commands

from harness.probe import AudioTracker
from harness.protocol import ConnectionFatal, ProtocolError
from harness.protocol import messages as m
from harness.protocol.noise import AudioChunk, NoiseProfile, NoiseSession
from harness.protocol.wsframes import BINARY, CLOSE, CONT, MAX_HEADER, PING, PONG, TEXT, parse_header

RATE = 48_000
FRAME_BYTES = 4              # 16-bit stereo
OVERHEAD = 13 + 16           # audio header (type, timestamp, send_ahead) + AEAD tag
BIG = 1024                   # a transport message this large is audio (25 ms of PCM: 4829 bytes)
REQUIRED_LEAD_MS = 100       # the lead each listener asks for (client/state); less is late audio
TS_SLACK_US = 1000           # timestamps may round to µs per chunk; a lost chunk is 25 000 µs
_HH = struct.Struct("<HH")
PCM = m.PlayerStream(codec="pcm", sample_rate=RATE, channels=2, bit_depth=16)


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


class Listener(_mw_load.Listener):
    """bench/_mw_load.py's listener (its HTTP upgrade, loss accounting and counters)
    with the noise codec: its "hello" is `client/init`; after the upgrade every
    frame goes through the noise handshake and transport below."""

    __slots__ = (
        "a0",
        "a1",
        "arm",
        "big_not_audio",
        "codec",
        "errors",
        "frames",
        "min_send_ahead",
        "recv",
        "sampled",
        "size_mismatch",
        "step_us",
        "tracker",
    )

    def __init__(self, profile: NoiseProfile, host: str, path: str, sampled: bool, upgraded_cb) -> None:
        super().__init__("", host, path, upgraded_cb)
        self.codec: NoiseSession = profile.session("client")
        (init,) = self.codec.handshake(None).send  # client/init, written by the base once upgraded
        self.hello = client_frame(TEXT, init.encode() if isinstance(init, str) else init)
        self.sampled = sampled
        self.tracker = AudioTracker() if sampled else None  # exact per-sample continuity (harness/probe.py)
        self.recv = None  # the receive CipherState, once in transport mode
        self.arm = 0      # 1: the next audio is the first anchor; 2: the second
        self.a0: Anchor | None = None
        self.a1: Anchor | None = None
        self.frames = self.big_not_audio = self.size_mismatch = self.step_us = 0
        self.errors: list[str] = []
        self.min_send_ahead: int | None = None

    def start_window(self) -> None:
        """`mark`: counters to zero, the next audio is the first anchor."""
        self.chunks = self.frames = self.ts_gaps = self.big_not_audio = self.size_mismatch = 0
        self.min_send_ahead = None
        if self.tracker is not None:
            self.tracker = AudioTracker()
            self.last_ts = None
        self.a0 = self.a1 = None
        self.arm = 1

    def _fail(self, why: str) -> None:
        self.errors.append(why)
        self.transport.abort()

    def _send_all(self, wires: tuple | list) -> None:
        for w in wires:
            self.transport.write(client_frame(TEXT, w.encode()) if isinstance(w, str) else client_frame(BINARY, w))

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:  # the HTTP response; the server says nothing before client/init
            super().data_received(data)
            return
        buf = self.buf
        buf += data
        pos, size = 0, len(buf)
        with memoryview(buf) as view:  # released before `buf` is trimmed
            while (h := parse_header(view[pos : pos + MAX_HEADER])) is not None and pos + h.size + h.length <= size:
                p, n, op = pos + h.size, h.length, h.opcode
                pos = p + n
                if op == BINARY and n >= BIG and self.recv is not None and not self.sampled and not self.arm:
                    self.recv.n += 1  # audio, counted, not decrypted: the nonce is the message count
                    self.chunks += 1
                    self.frames += (n - OVERHEAD) // FRAME_BYTES
                elif op in (BINARY, TEXT):
                    self._message(op, bytes(view[p : p + n]))
                elif op == PING:  # answer, or a keepalive drops us
                    self.transport.write(client_frame(PONG, bytes(view[p : p + n])))
                elif op == CLOSE:
                    self.transport.close()
                elif op == CONT or not h.fin:
                    self._fail("a fragmented WebSocket message (this load generator reads whole frames only)")
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
        self.chunks += 1
        self.frames += frames
        if self.tracker is None or not frames:
            return
        ts = chunk.timestamp_us
        self.tracker.add(pcm, PCM, ts)
        if self.last_ts is not None and abs(ts - self.last_ts - self.step_us) > TS_SLACK_US:
            self.ts_gaps += 1
        self.last_ts, self.step_us = ts, frames * 1_000_000 // RATE
        if self.min_send_ahead is None or chunk.send_ahead_us < self.min_send_ahead:
            self.min_send_ahead = chunk.send_ahead_us

    def span(self) -> tuple[int, int, int] | None:
        """(frames counted between the anchors, watermark advance, timestamp advance µs);
        None if an anchor is missing."""
        if self.a0 is None or self.a1 is None:
            return None
        return self.a1.frames_before - self.a0.frames_before, self.a1.index - self.a0.index, self.a1.ts - self.a0.ts


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
    trackers = [x.tracker for x in sampled if x.tracker is not None]
    send_ahead = [x.min_send_ahead for x in sampled if x.min_send_ahead is not None]
    errors = [e for x in listeners for e in x.errors]
    return {
        "event": "report", "seconds": round(seconds, 3), "cpu_s": round(cpu_s, 3), "listeners": len(listeners),
        "with_audio": sum(1 for x in listeners if x.chunks), "audio": sum(x.chunks for x in listeners),
        "frames": sum(x.frames for x in listeners), "unanchored": unanchored,
        "missing": missing, "dup": dup, "with_missing": with_missing, "ts_off": ts_off,
        "sampled": len(sampled), "sample_missing": sum(t.gaps for t in trackers),
        "sample_dup": sum(t.duplicates for t in trackers),
        "sample_back": sum(t.reordered + t.corrupt for t in trackers),
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
    every = max(1, count // sample) if sample else 0  # the sample, spread evenly (and so over the URLs)

    def make(i: int, parts, upgraded_cb) -> Listener:
        sampled = bool(every) and i % every == 0 and i // every < sample
        return Listener(NoiseProfile(suite=suite), parts.netloc, parts.path, sampled,  # type: ignore[arg-type]
                        upgraded_cb)  # a fresh identity per listener

    listeners, ready = await connect_all(urls, count, make, ready_timeout, deadline)
    errors = [e for x in listeners for e in x.errors]
    emit({**ready, "handshaken": sum(1 for x in listeners if x.recv is not None), "errors": len(errors),
          "first_error": errors[0] if errors else ""})
    mark = [time.monotonic(), time.process_time()]

    def on_mark() -> None:
        for x in listeners:
            x.start_window()
        mark[:] = time.monotonic(), time.process_time()

    async def on_report() -> dict:
        cpu_s = time.process_time() - mark[1]
        live = [x for x in listeners if not x.lost]
        for x in live:
            x.arm = 2
        end = loop.time() + anchor_timeout
        while loop.time() < end and any(x.arm and not x.lost for x in live):
            await asyncio.sleep(0.01)
        for x in listeners:  # counting stops here for everyone
            x.arm = 0
        return summary(listeners, time.monotonic() - mark[0], cpu_s)  # the counts span mark to second anchors

    await serve_commands(deadline, on_mark, on_report)
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
