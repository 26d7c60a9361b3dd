"""aiosendspin 10.2.1's Noise server as a subprocess peer for
tests/test_protocol_noise_interop.py. Runs under an interpreter that has
`aiosendspin[server]==10.2.1` (not the project's venv, which pins 6.1.1 for the
legacy interop); imports nothing of this repository.

    python aiosendspin10_server.py CLIENT_ID SECONDS

Serves /sendspin on 127.0.0.1:<ephemeral> with `allow_unencrypted=False` (no
zeroconf: the server is mounted on our own aiohttp site), pre-approves
CLIENT_ID for unpaired playback, prints one JSON line {url, server_id} when
ready, then streams SECONDS of watermark PCM (48 kHz, 16-bit, stereo: each
frame's two samples are its index's low and high 16 bits) to that client's
group once it is added, and prints {"streamed": frames} when done. Exits when
stdin closes, or after 60 s at most.
"""

from __future__ import annotations

import asyncio
import json
import sys

import av  # noqa: F401  # PyAV imported up front: aiosendspin would import it lazily on the loop
import numpy as np
from aiohttp import web
from aiosendspin.noise.keys import Identity
from aiosendspin.noise.trust_store import InMemoryServerPairingStore
from aiosendspin.server import AudioFormat, ClientAddedEvent, SendspinServer

RATE, CHANNELS, BITS = 48_000, 2, 16


def watermark(first: int, frames: int) -> bytes:
    index = np.arange(first, first + frames, dtype=np.int64)
    pcm = np.empty((frames, 2), dtype="<i2")
    pcm[:, 0] = (index & 0xFFFF).astype(np.uint16).view(np.int16)
    pcm[:, 1] = ((index >> 16) & 0xFFFF).astype(np.uint16).view(np.int16)
    return pcm.tobytes()


async def main(client_id: str, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    identity = Identity.generate()
    server = SendspinServer(loop, identity, "aiosendspin 10.2.1 interop", pairing_store=InMemoryServerPairingStore(),
                            allow_unencrypted=False)
    await server.trust_unpaired(client_id)
    added: asyncio.Queue[str] = asyncio.Queue()
    server.add_event_listener(lambda _s, e: added.put_nowait(e.client_id) if isinstance(e, ClientAddedEvent) else None)
    app = web.Application()
    app.router.add_get(SendspinServer.API_PATH, server.on_client_connect)
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    print(json.dumps({"url": f"ws://127.0.0.1:{port}{SendspinServer.API_PATH}", "server_id": identity.peer_id}),
          flush=True)
    stdin_closed = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1(4096) or stdin_closed.set())
    try:
        async with asyncio.timeout(60):
            while await added.get() != client_id:
                pass
            client = server.get_client(client_id)
            assert client is not None
            group = client.group
            push = group.start_stream()
            fmt = AudioFormat(sample_rate=RATE, bit_depth=BITS, channels=CHANNELS)
            block, total, frame = RATE // 20, int(RATE * seconds), 0
            while frame < total:
                n = min(block, total - frame)
                push.prepare_audio(watermark(frame, n), fmt)
                await push.commit_audio()
                frame += n
                await push.sleep_to_limit_buffer(400_000)
            await asyncio.sleep(0.8)  # stream/end drops chunks not yet sent: let the last ones go
            await group.stop()
            print(json.dumps({"streamed": frame}), flush=True)
            await stdin_closed.wait()
    finally:
        loop.remove_reader(sys.stdin.fileno())
        await asyncio.wait_for(server.close(), 5)
        await asyncio.wait_for(runner.cleanup(), 5)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
