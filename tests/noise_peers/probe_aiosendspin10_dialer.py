"""aiosendspin 10.2.1's Noise server dialling a listening client (server-initiated),
as a subprocess peer for tests/test_probe_noise.py. Runs under an interpreter with
`aiosendspin[server]==10.2.1`; imports nothing of this repository but its sibling
aiosendspin10_server.py, whose session it runs unchanged except that the server
also dials.

    python probe_aiosendspin10_dialer.py CLIENT_ID URL SECONDS

As aiosendspin10_server.py (pre-approves CLIENT_ID for unpaired playback, prints
{url, server_id}, streams SECONDS of watermark PCM once the client is added, prints
{"streamed": frames}, exits when stdin closes), and right after the approval it
dials URL (`connect_to_client`). Its own listening endpoint stays unused.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import aiosendspin10_server as peer  # a sibling script, found through the path above


class DiallingServer(peer.SendspinServer):
    url = ""

    async def trust_unpaired(self, client_id: str) -> None:
        await super().trust_unpaired(client_id)
        # the peer registers its client-added listener right after this returns, with no
        # await in between, so the dial's task cannot add the client before it listens
        self.connect_to_client(self.url)


if __name__ == "__main__":
    DiallingServer.url = sys.argv[2]
    peer.SendspinServer = DiallingServer  # the peer's main() builds its server through this name
    asyncio.run(peer.main(sys.argv[1], float(sys.argv[3])))
