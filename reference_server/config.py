"""Server settings and the policies they set, in one place.

Slow-reader policy: a session's writer sends audio only as far ahead as the
client's `buffer_capacity` allows (bytes sent and not yet due to play). Audio
never queues per session: each writer pulls from the shared timeline, so a
writer that was blocked simply skips the chunks whose time has passed (logged
as `audio_skip`). Control messages queue per session, bounded in bytes
(`control_queue_bytes`); artwork keeps only the newest image per channel. A
session whose socket accepted nothing for `slow_reader_close_s` while data was
waiting, or whose control queue overflows, is closed with 4001 (slow reader).

Hardened reads: every wait for an expected message has a timeout
(`hello_timeout_s`, `handshake_step_timeout_s`, `payload_timeout_s`). What a bad
message gets is listed in README.md ("Reference server: policies").

Noise handshake timeouts. connection.md suggests 30 s for each side to receive
the next expected message of the prologue and handshake; ours are much shorter,
because each step is one message the peer sends at once, in reply, after a few
X25519 operations (well under a millisecond on a PC, tens of milliseconds on a
small microcontroller), and a connection that stalls holds a socket and a
half-built handshake state. The first message (`client/init`, or legacy's
`client/hello`) gets `hello_timeout_s` (5 s: a client may connect before it is
ready to speak, as legacy always allowed); Noise message 2 after message 1, and
`client/hello` after `server/hello`, get `handshake_step_timeout_s` (3 s: a
hundred times a slow device's work, and loaded-loopback scheduling delays of a
second still pass). A stall ends in a silent close (no message, an empty close
frame) and a `reject` event naming the step.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server

from harness.protocol import EventLog


@dataclass(kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    path: str = "/sendspin"
    name: str = "sendspin-harness reference server"
    server_id: str = "reference-server"
    ready_file: Path | None = None
    log_dir: Path | None = None
    proc: str = "server"
    control_port: int = 0              # the control endpoint's (scripted actions; control.py), 0 = ephemeral

    # wire revisions served (profiles.py); a connection's first message picks one
    profiles: tuple[str, ...] = ("legacy", "noise")
    identity_file: Path | None = None  # the noise static key (made there if absent); None: a fresh one per run
    psks_file: Path | None = None      # PSKs to reference per client_id (profiles.load_psks); None: Sentinel only

    # audio timeline
    source: str = "watermark"          # "watermark" or a path to a WAV file
    sample_rate: int = 48_000
    chunk_ms: int = 25
    max_lead_ms: int = 1_500           # how far ahead of real time the timeline runs
    batch_ms: int = 100                # chunks are handed to sessions this often (one write per batch)
    start_delay_ms: int = 300          # a (re)joining player's first chunk plays this far in the future
    autoplay: bool = True

    # artwork
    artwork_bytes: int = 64 * 1024     # size of the generated image (up to >= 32 MiB)

    # sends
    fragment_bytes: int = 256 * 1024   # messages larger than this go out as fragments of this size
    write_limit_bytes: int = 64 * 1024 # transport buffer high-water mark before a send waits
    socket_send_buffer: int = 64 * 1024

    # slow-reader policy
    control_queue_bytes: int = 256 * 1024
    slow_reader_close_s: float = 10.0

    # hardened reads
    hello_timeout_s: float = 5.0       # the first message: legacy client/hello, noise client/init
    handshake_step_timeout_s: float = 3.0  # noise: message 2 after message 1, client/hello after server/hello
    payload_timeout_s: float = 2.0     # a started message (fragment or announced upload) must finish in this
    max_message_bytes: int = 4 * 1024 * 1024

    # keepalive
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0

    stats_interval_s: float = 0.5      # how often each session logs what it holds

    # server-initiated connections: client URLs to dial at start (and again after a loss; dialer.py)
    dial: tuple[str, ...] = ()

    def announce(self, log: EventLog, listening: Server, **extra: Any) -> int:
        """Log `ready` and write the readiness file (atomically) for `listening`; returns its port."""
        host, port = next(iter(listening.sockets)).getsockname()[:2]
        ready = {"pid": os.getpid(), "host": host, "port": port, "url": f"ws://{host}:{port}{self.path}",
                 "http": f"http://{host}:{port}", **extra}
        log.emit("ready", **ready)
        if self.ready_file is not None:
            tmp = Path(f"{self.ready_file}.tmp")
            tmp.write_text(json.dumps(ready))
            tmp.rename(self.ready_file)
        return port
