"""aiosendspin 10.2.1's Noise client as a subprocess peer for
tests/test_protocol_noise_interop.py (runs under an interpreter with
`aiosendspin[server]==10.2.1`; imports nothing of this repository).

    python aiosendspin10_client.py URL SUITE CHUNKS [watermark]

Prints its client_id as one JSON line {"client_id": ...} (so the server side can
check client/init), connects to URL with unpaired access enabled, a player@v1
offering PCM 48 kHz/16-bit/stereo, keeps every audio chunk's (timestamp,
send_ahead, bytes, first two PCM samples), and after CHUNKS chunks (or 20 s)
prints {"chunks": [...], "server": ...} and disconnects with a goodbye.

With `watermark` (tests/test_reference_server_noise.py: the reference server's
source, every frame's two samples its index's low and high 16 bits) each chunk's
record gains a fifth value: whether every frame of it holds the index after the
previous frame's, so the check is sample by sample without shipping the PCM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

from aiosendspin.client import SendspinClient
from aiosendspin.models.player import ClientHelloPlayerSupport, SupportedAudioFormat
from aiosendspin.models.types import AudioCodec, Roles
from aiosendspin.noise.keys import Identity
from aiosendspin.noise.session import NoiseCipherSuite
from aiosendspin.noise.trust_store import ClientPairingConfig, InMemoryClientPairingStore


def consecutive(data: bytes, first: int) -> bool:
    frames = len(data) // 4
    index = [int.from_bytes(data[i : i + 2], "little") | int.from_bytes(data[i + 2 : i + 4], "little") << 16
             for i in range(0, frames * 4, 4)]
    return index == list(range(first, first + frames))


async def main(url: str, suite: str, want: int, check_watermark: bool = False) -> None:
    identity = Identity.generate()
    print(json.dumps({"client_id": identity.peer_id}), flush=True)
    store = InMemoryClientPairingStore()
    await store.store_pairing_config(ClientPairingConfig(unpaired_access_enabled=True))
    client = SendspinClient(
        identity, "aiosendspin 10.2.1 interop", [Roles.PLAYER], pairing_store=store,
        player_support=ClientHelloPlayerSupport(
            supported_formats=[SupportedAudioFormat(codec=AudioCodec.PCM, channels=2, sample_rate=48_000,
                                                    bit_depth=16)],
            buffer_capacity=2_000_000),
        cipher_suite=NoiseCipherSuite(suite))
    chunks: list[list[int]] = []
    enough = asyncio.Event()

    def on_audio(ts: int, data: bytes, _fmt: object, send_ahead: int) -> None:
        first = int.from_bytes(data[0:2], "little") | int.from_bytes(data[2:4], "little") << 16
        chunks.append([ts, send_ahead, len(data), first, *([consecutive(data, first)] if check_watermark else [])])
        if len(chunks) >= want:
            enough.set()

    client.add_audio_chunk_listener(on_audio)
    try:
        await asyncio.wait_for(client.connect(url), 15)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), 20)
        print(json.dumps({"chunks": chunks}), flush=True)
    finally:
        await asyncio.wait_for(client.disconnect(), 5)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:5] == ["watermark"]))
