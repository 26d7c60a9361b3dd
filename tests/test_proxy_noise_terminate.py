"""The proxy terminating Noise (`--noise terminate`, proxy/relay/terminate.py).

The proxy completes a handshake with each peer and its faults see plaintext: a drop or
an injection selects by JSON type, a slicer's WebSocket fragments become Noise fragments,
an orphan header becomes a malformed Noise fragment sequence. Real peers on 127.0.0.1:
our sans-I/O noise client and server over websockets (noise_ws_peers.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.contentviews import Metadata
from noise_ws_peers import CHUNKS, WAIT_S, DualServer, LegacyClient, NoiseClient
from proxy_support import RawUpstream, Recorder, api, client_connect, fault_events, in_process_proxy, until
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from harness.protocol import ConnectionFatal, peek_type
from harness.protocol import messages as m
from harness.protocol.noise import Identity
from harness.protocol.noise_crypto import b64url
from harness.protocol.wsframes import PING, TEXT, encode_frame
from proxy.cli import connections_table
from proxy.contentview import sendspin
from proxy.relay.noise_keys import KeysFileError, NoiseKeys
from proxy.view import LiveView


def events(px: Any, name: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in px.events.since(0, limit=10_000)
            if e["event"] == name and all(e.get(k) == v for k, v in match.items())]


def test_a_terminated_session_streams_sample_for_sample_while_faults_act_on_its_plaintext(run: Any) -> None:
    """Through a terminating proxy: the handshakes complete (the proxy is the client
    towards the server, with a key of its own for that client, and the server towards the
    client); a drop selected by JSON type loses exactly the first server/time; a slicer
    cuts every audio chunk into WebSocket fragments, which the proxy seals as Noise
    fragments, and the client reassembles every chunk byte-identical to what the server
    sealed, in order. A legacy connection through the same proxy is relayed as before."""
    async def body() -> None:
        async with DualServer().running() as server, in_process_proxy(
                [server.url], noise_keys=NoiseKeys(), web=("127.0.0.1", 0)) as px:
            for spec in ({"type": "drop", "name": "drop-time", "json_type": "server/time", "count": 1},
                         {"type": "slicer", "name": "slice-audio", "binary_type": 4, "frame_bytes": 1000}):
                status, answer = await api(px, "POST", "/faults", spec)
                assert status == 201, answer
            client = await NoiseClient(px.url + "/sendspin").open()
            legacy = await LegacyClient(px.url + "/sendspin").open()
            try:
                _, conns = await api(px, "GET", "/connections")
                modes = {c["client_port"]: (c["profile"], c["mode"]) for c in conns["connections"]}
                assert modes == {client.port: ("noise", "noise-terminated"), legacy.port: ("legacy", "legacy")}
                shown = connections_table(conns["connections"])  # `sendspin-proxy connections`
                assert "noise (terminated)" in shown and " legacy " in shown, shown
                sent, got = await client.time_sync(3)
                assert got == sent[1:]  # the first reply dropped, by its type, inside the encryption
                chunks = await client.play()
                sent, got = await legacy.time_sync(2)
                assert got == sent
            finally:
                await client.close()
                if legacy.ws is not None:
                    await legacy.ws.close()
            (established,) = events(px, "noise_terminate", stage="established")
            assert established["client_id"] == client.codec.identity.peer_id
            assert established["upstream_client_id"] not in (None, established["client_id"])
            assert established["server_id"] == server.profile.identity.peer_id
            assert established["proxy_server_id"] == client.codec.peer_id != established["server_id"]
            (sealed,) = server.sealed.values()  # keyed by the client the server saw: the proxy's key
            assert list(server.sealed) == [established["upstream_client_id"]]
            assert len(sealed) == CHUNKS and chunks == sealed
            cuts = fault_events(px, "slicer")
            assert len(cuts) >= CHUNKS and all(e["binary_type"] == 4 and e["frames"] == 5 for e in cuts), cuts[:2]
            (drop,) = fault_events(px, "drop")
            assert drop["json_type"] == "server/time"
            assert not events(px, "fault_not_applied")

            await until(lambda: len(events(px, "close")) == 2, WAIT_S, "both connections' close")
            (flow,) = [f for f in px.web.view if f.websocket is not None and
                       f.metadata.get("sendspin_profile") == "noise-terminated"]
            first = flow.websocket.messages[0]  # the plaintext: the handshakes are the proxy's own
            assert (first.from_client, peek_type(first.content)) == (False, "server/hello")
            view = sendspin.prettify(first.content, Metadata(flow=flow, websocket_message=first))
            assert view.startswith("# Sendspin server/hello") and "# valid (noise schema)" in view, view

    run(body(), 60)


def test_message_faults_make_their_noise_form_and_a_tampered_message_ends_only_its_session(run: Any) -> None:
    """An injected JSON message reaches the client sealed, as a real message; an orphan
    header (fragment variant) becomes a Noise first fragment followed by another message,
    which the client must refuse as a malformed sequence. A client whose ciphertext is
    tampered (a flipped byte) is closed by the proxy without a word, server side too,
    and the other session through the proxy streams on."""
    async def body() -> None:
        async with DualServer().running() as server, in_process_proxy([server.url], noise_keys=NoiseKeys()) as px:
            victim = await NoiseClient(px.url + "/sendspin").open()
            other = await NoiseClient(px.url + "/sendspin").open()
            try:
                status, answer = await api(px, "POST", "/faults", {
                    "type": "inject", "name": "hello-again", "count": 1, "direction": "downstream",
                    "text": json.dumps({"type": "server/state", "payload": {}}),
                    "connections": {"client_port": victim.port}})
                assert status == 201 and "not_applied" not in answer["fault"], answer
                await until(lambda: fault_events(px, "inject"), WAIT_S, "the injection")
                assert isinstance(await victim.recv(), m.NoiseServerState)

                status, answer = await api(px, "POST", "/faults", {
                    "type": "orphan_header", "name": "orphan", "variant": "fragment", "json_type": "server/time",
                    "count": 1, "direction": "downstream", "connections": {"client_port": victim.port}})
                assert status == 201, answer
                with pytest.raises(ConnectionFatal, match="fragment"):
                    await victim.time_sync(2)  # a first fragment, then the next reply as a whole message

                victim2 = await NoiseClient(px.url + "/sendspin").open()
                assert victim2.ws is not None
                wire = bytearray(victim2.codec.encode(m.ClientTime(client_transmitted=1)))
                wire[-1] ^= 0x01
                await victim2.ws.send(bytes(wire))
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(victim2.ws.recv(), WAIT_S)
                (failed,) = events(px, "noise_terminate", stage="failed")
                assert failed["side"] == "client" and "AEAD" in failed["reason"], failed
                assert failed["client_id"] == victim2.codec.identity.peer_id

                sent, got = await other.time_sync(3)
                assert got == sent
                assert len(await other.play()) == CHUNKS
            finally:
                for c in (victim, other):
                    await c.close()

    run(body(), 60)


def test_what_the_proxy_cannot_terminate_is_relayed_untouched(run: Any) -> None:
    """A `client/init` the proxy cannot parse (version 2) goes to the server untouched; the
    server's `server/error` comes back, and the connection is an opaque noise session."""
    async def body() -> None:
        async with DualServer().running() as server, in_process_proxy([server.url], noise_keys=NoiseKeys()) as px:
            async with ws_connect(px.url + "/sendspin", open_timeout=WAIT_S) as ws:
                await ws.send(json.dumps({"type": "client/init", "payload": {
                    "client_id": Identity.generate().peer_id, "version": 2, "suite": "25519_ChaChaPoly_SHA256"}}))
                answer = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
                assert answer == {"type": "server/error", "payload": {"reason": "unsupported_version"}}
            (ident,) = events(px, "identified")
            assert (ident["profile"], ident["mode"]) == ("noise", "noise-opaque")
            assert not events(px, "noise_terminate")

    run(body(), 30)


def test_the_keys_file_names_what_is_wrong_and_a_known_client_key_is_used_as_is() -> None:
    client = Identity.generate()
    keys = NoiseKeys.parse({"identities": [b64url(client.private)],
                            "psks": [{"key": b64url(bytes(32)), "category": "lt", "client_id": client.peer_id}]})
    assert keys.towards_server(client.peer_id) == client  # the server sees the real client
    stranger = Identity.generate().peer_id
    assert keys.towards_server(stranger) == keys.towards_server(stranger) != client  # one made key per client
    assert keys.towards_client(None) == keys.own and keys.psk_for_client[client.peer_id].key == bytes(32)
    for doc, complaint in (([], "a JSON object"), ({"identities": ["short"]}, "identities[0]"),
                           ({"psks": [{"key": b64url(bytes(32)), "category": "xx"}]}, "psks[0]"),
                           ({"psks": [{"secret": "x"}]}, "psks[0]: an object with `key`")):
        with pytest.raises(KeysFileError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
            NoiseKeys.parse(doc)


def test_view_shows_a_terminated_session_decoded(run: Any) -> None:
    """`--view` with `--noise terminate`: the session is announced as terminated, then its
    plaintext is decoded as a legacy one's is: JSON messages by type, the audio summed up."""
    async def body() -> str:
        out = io.StringIO()
        view = LiveView(out, color=False)
        async with DualServer().running() as server, in_process_proxy(
                [server.url], observers=[view], noise_keys=NoiseKeys()) as px:
            view.start()
            try:
                client = await NoiseClient(px.url + "/sendspin").open()
                try:
                    await client.time_sync(2)
                    assert len(await client.play()) == CHUNKS
                finally:
                    await client.close()
                await until(lambda: events(px, "close"), WAIT_S, "the connection's close")
            finally:
                view.close()
        return out.getvalue()

    text = run(body(), 60)
    for pattern in (r"\+\+ +#1 +noise session terminated by the proxy \(25519_ChaChaPoly_SHA256\)",
                    r"#1 s→c server/hello ", r"#1 c→s client/hello ", r"#1 s→c server/activate ",
                    r"#1 c→s client/time ", r"#1 s→c stream/start ", r"#1 s→c stream/end",
                    r"#1 s→c player audio ×40 187\.5 KiB = 1\.000 s of pcm/48000/16/2"):  # the 13-byte header known
        assert re.search(pattern, text, re.M), f"no line matches {pattern!r} in:\n{text}"
    assert "encrypted" not in text and "!!" not in text, text


@pytest.mark.parametrize(("args", "message"), [
    (["--noise", "terminate", "--noise-keys", "{keys}"], "identities[0]: must decode to 32 bytes, got 3"),
    (["--noise-keys", "{keys}"], "--noise-keys is for --noise terminate"),
])
def test_the_cli_refuses_a_bad_keys_file_naming_what_is_wrong(tmp_path: Path, args: list[str], message: str) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"identities": [b64url(b"abc")]}))
    done = subprocess.run([sys.executable, "-m", "proxy", "--upstream", "ws://127.0.0.1:9/sendspin",
                           *(a.format(keys=keys) for a in args)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_a_ping_before_the_first_message_is_passed_on_once(run: Any) -> None:
    """A terminating proxy waits for the client's first message before it decides; a ping
    that comes first goes on with what it decides, exactly once (a legacy hello: relayed
    untouched)."""
    async def body() -> None:
        recorder = Recorder()
        async with RawUpstream(recorder) as up, in_process_proxy([f"ws://127.0.0.1:{up.port}"],
                                                                 noise_keys=NoiseKeys()) as px:
            _, writer = await client_connect(px.port, "/sendspin")
            hello = json.dumps({"type": "client/hello", "payload": {"client_id": "c", "name": "c", "version": 1,
                                                                    "supported_roles": []}}).encode()
            writer.write(encode_frame(PING, b"early", mask=True) + encode_frame(TEXT, hello, mask=True))
            await until(lambda: len(recorder.got) >= 2, WAIT_S, "the ping and the hello upstream")
            await asyncio.sleep(0.2)  # a duplicate would follow at once
            assert [(f.opcode, f.payload) for _, f in recorder.got] == [(PING, b"early"), (TEXT, hello)]
            writer.close()

    run(body(), 30)
