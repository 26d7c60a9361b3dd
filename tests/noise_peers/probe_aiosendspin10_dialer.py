"""aiosendspin 10.2.1's Noise server dialling a listening client (server-initiated),
as a subprocess peer for tests/test_probe_noise.py. Runs under an interpreter with
`aiosendspin[server]==10.2.1`; imports nothing of this repository but its sibling
aiosendspin10_server.py (the watermark and the stream's format).

    python probe_aiosendspin10_dialer.py CLIENT_ID URL SECONDS

Pre-approves CLIENT_ID for unpaired playback, prints one JSON line {server_id},
dials URL (`connect_to_client`), streams SECONDS of watermark PCM to that client's
group once it is added, and prints {"streamed": frames}. Exits when stdin closes,
or after 60 s at most.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from aiosendspin.noise.keys import Identity
from aiosendspin.noise.trust_store import InMemoryServerPairingStore
from aiosendspin.server import AudioFormat, ClientAddedEvent, SendspinServer
from aiosendspin10_server import BITS, CHANNELS, RATE, watermark  # also imports av up front


async def main(client_id: str, url: str, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    identity = Identity.generate()
    server = SendspinServer(loop, identity, "aiosendspin 10.2.1 dialler", pairing_store=InMemoryServerPairingStore(),
                            allow_unencrypted=False)
    await server.trust_unpaired(client_id)
    added: asyncio.Queue[str] = asyncio.Queue()
    server.add_event_listener(lambda _s, e: added.put_nowait(e.client_id) if isinstance(e, ClientAddedEvent) else None)
    print(json.dumps({"server_id": identity.peer_id}), flush=True)
    stdin_closed = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1(4096) or stdin_closed.set())
    try:
        async with asyncio.timeout(60):
            server.connect_to_client(url)
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


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
