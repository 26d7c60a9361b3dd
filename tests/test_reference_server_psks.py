"""The reference server's `--psks FILE`: a PSK to reference per client_id instead of the
Sentinel, e.g. the long-term PSK Sendspin/conformance's aiosendspin client adapter is
pre-paired with (it leaves unpaired access off, so under the Sentinel our server
activates nothing for it). A session keyed with such a PSK plays without unpaired
access; everyone else still gets the Sentinel. Real server process, real sockets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_reference_server_noise import NoiseClient, continuous

from harness.protocol.noise import Identity, NoiseProfile
from harness.protocol.noise_crypto import Psk, b64url
from harness.scenario import Scenario

PSK = bytes(range(32))


def _files(tmp_path: Path, client: Identity, category: str = "lt") -> tuple[Identity, Path, Path]:
    server = Identity.generate()
    key_file = tmp_path / "server.key"
    key_file.write_text(b64url(server.private) + "\n")
    key_file.chmod(0o600)
    psks = tmp_path / "psks.json"
    psks.write_text(json.dumps({"psks": [{"key": b64url(PSK), "category": category, "client_id": client.peer_id},
                                         {"key": b64url(bytes(32)), "category": "lt"}]}))  # no client_id: ignored
    return server, key_file, psks


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_a_client_paired_by_the_psks_file_plays_without_unpaired_access(run: Callable[..., Any], tmp_path: Path,
                                                                        workers: int) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            me = Identity.generate()
            server_key, key_file, psks = _files(tmp_path, me)
            extra = ["--workers", "2"] if workers == 2 else []
            server = await sc.server("--profiles", "noise", "--identity", str(key_file), "--psks", str(psks), *extra)
            urls = [server.ready["url"]] if workers == 1 else [w["url"] for w in server.ready["workers"]]
            paired = NoiseClient(urls[0], unpaired_access=False)
            paired.codec = NoiseProfile(identity=me, client_psks=[Psk(PSK, "lt", server_key.peer_id)]).session("client")
            stranger = NoiseClient(urls[-1], unpaired_access=False)  # not in the file: Sentinel, so idle
            for c in (paired, stranger):
                await c.start()
            await paired.until("20 chunks", lambda: len(paired.chunks) >= 20)
            assert paired.codec.psk is not None and paired.codec.psk.category == "lt"
            assert paired.activations[0].activities == ["playback"], paired.activations
            assert continuous(paired.chunks) == []
            await stranger.until("server/activate", lambda: bool(stranger.activations))
            assert stranger.codec.psk is not None and stranger.codec.psk.category == "sn"
            assert (stranger.activations[0].activities, stranger.activations[0].active_roles) == ([], [])
            assert not stranger.chunks
            for c in (paired, stranger):
                await c.close()

    run(body(), 90)


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not readable JSON"),
    ('{"keys": []}', 'needs an object with a "psks" list'),
    ('{"psks": [{"key": "AAAA", "category": "lt", "client_id": "x"}]}', "psks[0]:"),
    ('{"psks": [{"key": "AAAA", "category": "paired"}]}', '"category" must be one of'),
])
def test_cli_names_what_is_wrong_with_a_psks_file(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "psks.json"
    bad.write_text(content)
    result = subprocess.run([sys.executable, "-m", "reference_server", "--psks", str(bad)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and message in result.stderr and str(bad) in result.stderr, result.stderr


def test_no_psks_file_means_the_sentinel_for_everyone(run: Callable[..., Any], tmp_path: Path) -> None:
    async def body() -> None:
        async with Scenario(tmp_path) as sc:
            server = await sc.server("--profiles", "noise")
            client = NoiseClient(server.ready["url"], unpaired_access=False)
            await client.start()
            await client.until("server/activate", lambda: bool(client.activations))
            assert client.codec.psk is not None and client.codec.psk.category == "sn"
            assert client.activations[0].activities == []
            await client.close()

    run(body(), 60)
