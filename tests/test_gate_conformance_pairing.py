"""The gate pre-pairs a conformance client adapter in the noise profile
(`harness/gate/client.py`, `conformance_pairing`): the keys Sendspin/conformance's
aiosendspin adapter derives from `--server-id` / `--client-id`, in one file that both
the reference server (`--psks`, `--identity`) and the terminating proxy (`--noise-keys`)
read. The expected ids were reported by aiosendspin 10.2.1 itself, running that adapter
(its summary's `client_id`, and the `server_id` it pinned), so a wrong derivation fails.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.gate.client import SERVER_ID, case_client_id, conformance_pairing
from harness.protocol.noise_crypto import Identity, b64url_decode
from proxy.relay.noise_keys import NoiseKeys
from reference_server.profiles import load_identity, load_psks

# seen on the wire with aiosendspin 10.2.1 running Sendspin/conformance's adapter (2026-12-02)
SERVER_PEER = "NKHfU1aY5x0jwapSHcbbdBeaoyrYuDcsf55saku1wQk"        # --server-id reference-server
CLIENT_PEER = "kBmIgbWLI1niU3nUz3ynIbfoXpgnhhfKsfiptGW1E2w"        # --client-id demo-client


def test_the_derived_keys_are_the_adapters_and_both_sides_read_the_file(tmp_path: Path) -> None:
    path = conformance_pairing(tmp_path / "pairing.json", SERVER_ID, "demo-client")
    assert SERVER_ID == "reference-server"
    assert load_identity(path.with_suffix(".key")).peer_id == SERVER_PEER
    assert path.stat().st_mode & 0o777 == 0o600 and path.with_suffix(".key").stat().st_mode & 0o777 == 0o600
    psks = load_psks(path)
    assert list(psks) == [CLIENT_PEER] and psks[CLIENT_PEER].category == "lt"
    keys = NoiseKeys.load(path)
    assert set(keys.identities) == {SERVER_PEER, CLIENT_PEER}
    assert keys.towards_client(SERVER_PEER).peer_id == SERVER_PEER
    assert keys.towards_server(CLIENT_PEER).peer_id == CLIENT_PEER
    assert keys.psk_for_client[CLIENT_PEER].key == psks[CLIENT_PEER].key
    entry = json.loads(path.read_text())["psks"][0]
    assert entry["server_id"] == SERVER_PEER
    assert Identity(b64url_decode(json.loads(path.read_text())["identities"][1], 32)).peer_id == CLIENT_PEER


def test_each_case_gets_its_own_client_and_psk(tmp_path: Path) -> None:
    a = load_psks(conformance_pairing(tmp_path / "a.json", SERVER_ID, case_client_id("3.1")))
    b = load_psks(conformance_pairing(tmp_path / "b.json", SERVER_ID, case_client_id("3.2")))
    assert case_client_id("3.1") == "gate-3-1"
    assert set(a) != set(b) and next(iter(a.values())).key != next(iter(b.values())).key
