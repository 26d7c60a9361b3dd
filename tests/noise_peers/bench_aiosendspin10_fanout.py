"""aiosendspin 10.2.1's Noise server as the fan-out peer of bench/noise_fanout.py.

Runs under an interpreter that has `aiosendspin[server]==10.2.1` (not the
project's venv); imports nothing of this repository. Unlike
aiosendspin10_server.py (one client, pre-approved by its client_id), this one
serves any number of listeners from ONE group, as a fan-out does:

- default mode (`allow_unencrypted=False`: Noise only), mounted on our own
  aiohttp site on 127.0.0.1 (no zeroconf, so no network namespace is needed);
- every unpaired client is approved for playback (a pairing store whose
  trusted-unpaired lookup says yes to every client_id: the operator's approval,
  which our reference server does not ask for, given to all at once);
- the first client added founds the group and starts its stream; every later
  client is added to that group, so the source is pushed once and each
  listener gets its own encryption of the same chunks;
- the source: watermark PCM, 48 kHz/16-bit/stereo (frame n: left = n's low 16
  bits, right = its high 16 bits), pushed in 25 ms blocks (its player role's
  chunk length too) while the buffer is at most --lead-ms ahead.

    python bench_aiosendspin10_fanout.py [--lead-ms 1500] [--max-seconds 600]

Prints one JSON line {"url", "server_id", "aiosendspin"} when listening, then
{"streaming": true} when the stream starts. Exits when stdin closes, on
SIGTERM, or after --max-seconds whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import socket
import sys

from aiohttp import web
from aiosendspin.noise.keys import Identity
from aiosendspin.noise.trust_store import InMemoryServerPairingStore, TrustedUnpairedClient
from aiosendspin.server import AudioFormat, ClientAddedEvent, SendspinServer

# the interop peer's watermark (this script's directory is on sys.path); it imports PyAV up front too
from aiosendspin10_server import BITS, CHANNELS, RATE, watermark

BLOCK = RATE // 40  # 25 ms


class ApproveEveryone(InMemoryServerPairingStore):
    """Every client_id is approved for unpaired playback (no approved pairing-required roles)."""

    async def trusted_unpaired(self, client_id: str) -> TrustedUnpairedClient | None:
        return await super().trusted_unpaired(client_id) or TrustedUnpairedClient(client_id=client_id)


class FanOut:
    """One group for every listener: the first client added founds it and starts the stream."""

    def __init__(self, server: SendspinServer, lead_ms: int) -> None:
        self.server, self.lead_us = server, lead_ms * 1000
        self.group = None
        self.tasks: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def on_event(self, _server: SendspinServer, event: object) -> None:
        client = self.server.get_client(event.client_id) if isinstance(event, ClientAddedEvent) else None
        if client is None:
            return
        if self.group is None:
            self.group = client.group
            self._spawn(self.push())
        elif client.group is not self.group:
            self._spawn(self.group.add_client(client))

    async def push(self) -> None:
        stream = self.group.start_stream()
        fmt = AudioFormat(sample_rate=RATE, bit_depth=BITS, channels=CHANNELS)
        print(json.dumps({"streaming": True}), flush=True)
        frame = 0
        while True:
            stream.prepare_audio(watermark(frame, BLOCK), fmt)
            await stream.commit_audio()
            frame += BLOCK
            await stream.sleep_to_limit_buffer(self.lead_us)


async def main(lead_ms: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    identity = Identity.generate()
    server = SendspinServer(loop, identity, "aiosendspin 10.2.1 fan-out bench", pairing_store=ApproveEveryone(),
                            allow_unencrypted=False)
    fan_out = FanOut(server, lead_ms)
    server.add_event_listener(fan_out.on_event)
    app = web.Application()
    app.router.add_get(SendspinServer.API_PATH, server.on_client_connect)
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0), backlog=4096)  # bound here: a deep accept queue for a burst
    await web.SockSite(runner, sock).start()
    print(json.dumps({"url": f"ws://127.0.0.1:{sock.getsockname()[1]}{SendspinServer.API_PATH}",
                      "server_id": identity.peer_id, "aiosendspin": importlib.metadata.version("aiosendspin")}),
          flush=True)
    stdin_closed = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1(4096) or stdin_closed.set())
    try:
        async with asyncio.timeout(max_seconds):
            await stdin_closed.wait()
    except TimeoutError:
        pass
    finally:
        for task in list(fan_out.tasks):
            task.cancel()
        loop.remove_reader(sys.stdin.fileno())
        await asyncio.wait_for(runner.cleanup(), 5)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lead-ms", type=int, default=1500, help="push while the buffer is at most this far ahead")
    ap.add_argument("--max-seconds", type=float, default=600.0)
    a = ap.parse_args()
    asyncio.run(main(a.lead_ms, a.max_seconds))
