"""The fault proxy and the Noise revision, opaque mode (the proxy holds no keys).

The proxy learns each connection's profile from the client's first message
(`client/init` = noise, `client/hello` = legacy). On a noise session every message after
the cleartext handshake is AEAD ciphertext: network faults act as usual and the session
survives them; a fault that reads or rewrites messages by content cannot act, and the
proxy refuses it there with its reason (API answer, event log, `--view`, `--web`), while
it still acts on a legacy connection through the same proxy; `corrupt` is allowed as
what it is there, a tampered message.

Real peers on 127.0.0.1: our sans-I/O noise client (NoiseSession + NoiseClientFlow) over
a websockets connection, a minimal in-test server on websockets that speaks both
profiles (NoiseSession + NoiseServerFlow for noise, a few JSON replies for legacy), the
proxy embedded in the test's loop."""

from __future__ import annotations

import asyncio
import io
import json
import re
from typing import Any

import pytest
from mitmproxy.contentviews import Metadata
from noise_ws_peers import CHUNKS, WAIT_S, DualServer, LegacyClient, NoiseClient
from proxy_support import api, fault_events, in_process_proxy, until
from websockets.asyncio.client import connect as ws_connect

from harness.protocol import ConnectionFatal, peek_type
from proxy.cli import types_table
from proxy.contentview import sendspin
from proxy.faults import Fault, fault_types
from proxy.view import LiveView


def events(px: Any, name: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in px.events.since(0, limit=10_000)
            if e["event"] == name and all(e.get(k) == v for k, v in match.items())]


def session_of(px: Any, seq: int) -> str:
    (ident,) = events(px, "identified", conn_seq=seq)
    return str(ident["session"])


def test_a_noise_session_streams_unchanged_through_latency_and_a_slicer(run: Any) -> None:
    """Latency both ways and a slicer on every message both ways (WebSocket fragments,
    below the encryption): the session handshakes, syncs time and streams; the audio the
    client decrypts is byte-identical to what the server sealed, in order. The proxy
    identified the connection as noise (event, `GET /connections`), both faults acted on
    it, and `--web` shows the decoded cleartext handshake, then ciphertext."""
    async def body() -> None:
        async with DualServer().running() as server, in_process_proxy([server.url], web=("127.0.0.1", 0)) as px:
            for spec in ({"type": "latency", "name": "lat", "latency_ms": 20, "direction": "both"},
                         {"type": "slicer", "name": "slice", "frame_bytes": 1000, "direction": "both"}):
                status, answer = await api(px, "POST", "/faults", spec)
                assert status == 201 and "not_applied" not in answer["fault"], answer
            client = await NoiseClient(px.url + "/sendspin").open()
            try:
                _, conns = await api(px, "GET", "/connections")
                (conn,) = conns["connections"]
                assert (conn["profile"], conn["mode"], conn["client_port"]) == ("noise", "noise-opaque", client.port)
                sent, got = await client.time_sync(3)
                assert got == sent
                chunks = await client.play()
            finally:
                await client.close()
            (sealed,) = server.sealed.values()
            assert len(sealed) == CHUNKS and chunks == sealed  # every chunk, in order, byte for byte

            (ident,) = events(px, "identified")
            assert (ident["profile"], ident["mode"], ident["json_type"]) == ("noise", "noise-opaque", "client/init")
            assert not events(px, "fault_not_applied")
            session = ident["session"]
            slices = [e for e in fault_events(px, "slicer") if e["session"] == session]
            audio = [e for e in slices if e["direction"] == "downstream" and e["size"] > 4800]
            assert len(audio) >= CHUNKS and all(e["frames"] == 5 for e in audio), audio[:3]  # 4829 B in 1000s
            assert all(e["encrypted"] and e["binary_type"] is None for e in audio)
            assert {e["direction"] for e in slices} == {"upstream", "downstream"}
            assert {e["direction"] for e in fault_events(px, "latency") if e["session"] == session} == {
                "upstream", "downstream"}
            await until(lambda: events(px, "close"), WAIT_S, "the relay's close")
            assert events(px, "close")[0]["profile"] == "noise"

            (flow,) = [f for f in px.web.view if f.websocket is not None]
            assert flow.metadata["sendspin_profile"] == "noise-opaque" and "(noise session)" in flow.comment
            assert "FAULT s→c slice (slicer) encrypted 4.7 KiB frames=5" in flow.comment  # no type named
            msgs = flow.websocket.messages
            assert [(x.from_client, peek_type(x.content)) for x in msgs[:4]] == [
                (True, "client/init"), (False, "server/init"), (False, "noise/handshake"), (True, "noise/handshake")]
            assert all(not x.is_text for x in msgs[4:])
            init = sendspin.prettify(msgs[0].content, Metadata(flow=flow, websocket_message=msgs[0]))
            assert init.startswith("# Sendspin client/init (client → server)") and "# valid (noise schema)" in init
            sealed_view = sendspin.prettify(msgs[-1].content, Metadata(flow=flow, websocket_message=msgs[-1]))
            assert sealed_view.startswith("# Sendspin noise transport message") and "encrypted" in sealed_view

    run(body(), 60)


def test_message_faults_are_refused_on_noise_and_act_on_legacy_at_the_same_time(run: Any) -> None:
    """A noise session and a legacy connection through one proxy. A drop of `server/time`,
    an orphan header, a slicer selecting `server/time` and a reordering delay cannot mean
    anything on the noise session: each POST answer lists it under `not_applied` with its
    reason, the event log says so, and the noise session keeps all its replies; on the
    legacy connection the drop and the slicer act. A noise connection opened afterwards is
    refused the same way when it is identified. `corrupt` is allowed on a noise session as
    a tampered message: the client's AEAD check fails at that message."""
    async def body() -> None:
        async with DualServer().running() as server, in_process_proxy([server.url]) as px:
            noise = await NoiseClient(px.url + "/sendspin").open()
            legacy = await LegacyClient(px.url + "/sendspin").open()
            late: NoiseClient | None = None
            try:
                refused: dict[str, str] = {}
                for spec in ({"type": "drop", "name": "drop-time", "json_type": "server/time", "count": 2},
                             {"type": "orphan_header", "name": "orphan"},
                             {"type": "slicer", "name": "slice-time", "json_type": "server/time",
                              "frame_bytes": 20},
                             {"type": "delay", "name": "reorder", "reorder": True, "delay_ms": 10,
                              "connections": {"client_port": noise.port}},
                             {"type": "inject", "name": "forge", "text": '{"type": "server/x", "payload": {}}'}):
                    status, answer = await api(px, "POST", "/faults", spec)
                    assert status == 201, answer
                    (na,) = answer["fault"]["not_applied"]  # the noise connection only
                    assert (na["seq"], na["client_port"], na["profile"], na["mode"]) == (
                        1, noise.port, "noise", "noise-opaque"), na
                    refused[spec["name"]] = na["why"]
                assert refused["drop-time"].startswith("on a noise session a dropped message is never a lost one")
                assert refused["orphan"].startswith("the noise form of an orphan header is a malformed Sendspin "
                                                    "fragment sequence")
                assert refused["slice-time"].startswith("it selects json_type server/time, which a noise session "
                                                        "sends only inside the encryption")
                assert refused["reorder"].startswith("reorder on a noise session")
                assert refused["forge"].startswith("a message of the proxy's own on a noise session is a forgery")

                sent, got = await legacy.time_sync(4)
                assert got == sent[2:]  # the legacy connection lost its first two replies
                sent, got = await noise.time_sync(3)
                assert got == sent  # the noise session lost nothing
                legacy_session, noise_session = session_of(px, 2), session_of(px, 1)
                assert {e["session"] for e in fault_events(px, "drop")} == {legacy_session}
                assert {e["session"] for e in fault_events(px, "slicer")} == {legacy_session}
                logged = events(px, "fault_not_applied")
                assert {(e["fault"], e["conn_seq"], e["profile"]) for e in logged} == {
                    (name, 1, "noise") for name in refused}

                assert [e["session"] for e in fault_events(px, "inject")] == [legacy_session]
                late = await NoiseClient(px.url + "/sendspin").open()  # met the faults before it was identified
                later = {e["fault"]: e for e in events(px, "fault_not_applied", conn_seq=3)}
                # drop-time and forge retired (count 2, count 1); reorder is for the first connection only
                assert set(later) == {"orphan", "slice-time"}
                assert later["orphan"]["why"] == refused["orphan"] and later["orphan"]["mode"] == "noise-opaque"
                _, listed = await api(px, "GET", "/faults/slice-time")
                assert [c["seq"] for c in listed["fault"]["not_applied"]] == [1, 3]
                sent, got = await late.time_sync(2)
                assert got == sent

                status, answer = await api(px, "POST", "/faults", {"type": "corrupt", "name": "tamper", "count": 1,
                                                                   "connections": {"client_port": noise.port}})
                assert status == 201 and "not_applied" not in answer["fault"], answer
                with pytest.raises(ConnectionFatal):
                    await noise.time_sync(1)  # its reply arrives tampered
                (tamper,) = fault_events(px, "corrupt")
                assert tamper["session"] == noise_session and tamper["direction"] == "downstream"
            finally:
                for c in (noise, late):
                    if c is not None:
                        await c.close()
                if legacy.ws is not None:
                    await legacy.ws.close()

    run(body(), 60)


def test_every_fault_type_declares_its_modes_and_the_catalogue_shows_them() -> None:
    """`modes` is a declared property of each fault class (a class without it does not
    register); `GET /fault-types` (what `fault types --json` prints) carries the modes and,
    for the others, why; the `fault types` table has a MODES column."""
    with pytest.raises(TypeError, match="fault undeclared: declare `modes`"):
        type("Undeclared", (Fault,), {"kind": "undeclared"})
    assert "undeclared" not in fault_types()
    types = {k: cls.describe() for k, cls in fault_types().items()}
    for name, t in types.items():
        assert set(t["modes"]) | set(t["refused_in"]) == {"legacy", "noise-opaque", "noise-terminated"}, name
        assert all(t["refused_in"].values()), name  # a refusal always says why
    opaque = {name for name, t in types.items() if "noise-opaque" in t["modes"]}
    assert {name for name in types if name not in opaque} == {"drop", "duplicate", "inject", "orphan_header"}
    assert types["corrupt"]["modes"]["noise-opaque"].startswith("a tampered message")
    assert types["truncate"]["modes"]["noise-opaque"].startswith("a truncated ciphertext")
    assert types["latency"]["modes"] == {"legacy": "", "noise-terminated": "", "noise-opaque": ""}
    assert all("noise-terminated" in t["modes"] for t in types.values())  # the proxy holds the keys there
    assert types["orphan_header"]["modes"]["noise-terminated"].startswith("the Noise form")
    lines = types_table(types, ["json_type"]).split("\n\n")[0].splitlines()
    col = slice(lines[0].index("MODES"), lines[0].index("WHAT IT DOES"))
    modes: dict[str, list[str]] = {}
    for ln in lines[1:]:  # a row's first line names the type; the next ones continue its cells
        cell = modes.setdefault(ln.split()[0], []) if ln[:1].strip() else modes[list(modes)[-1]]
        cell += [ln[col].strip()] if ln[col].strip() else []
    assert modes["drop"] == ["legacy", "noise-terminated"]
    assert modes["latency"] == ["legacy", "noise-terminated", "noise-opaque"]
    assert modes["corrupt"] == ["legacy", "noise-terminated*", "noise-opaque*"]  # *: something narrower there


def test_view_decodes_the_cleartext_handshake_then_sums_up_ciphertext(run: Any) -> None:
    """`--view` on a noise session: the open line, the profile, `client/init`, `server/init`,
    `noise/handshake` messages 1 and 2 decoded and valid; then the first encrypted message of
    each direction and a summary of the rest; a drop added meanwhile says it cannot apply,
    with why; a `client/init` with an unsupported version gets its `server/error` shown."""
    async def body() -> str:
        out = io.StringIO()
        view = LiveView(out, color=False)
        async with DualServer().running() as server, in_process_proxy([server.url], observers=[view]) as px:
            view.start()
            try:
                client = await NoiseClient(px.url + "/sendspin").open()
                try:
                    status, answer = await api(px, "POST", "/faults", {"type": "drop", "name": "drop-time",
                                                                       "json_type": "server/time"})
                    assert status == 201 and answer["fault"]["not_applied"][0]["seq"] == 1
                    await client.time_sync(3)
                    assert len(await client.play()) == CHUNKS
                finally:
                    await client.close()
                async with ws_connect(px.url + "/sendspin", open_timeout=WAIT_S, compression=None) as bad:
                    await bad.send(json.dumps({"type": "client/init", "payload": {
                        "client_id": client.codec.identity.peer_id, "version": 2,
                        "suite": "25519_ChaChaPoly_SHA256"}}))
                    error = json.loads(await asyncio.wait_for(bad.recv(), WAIT_S))
                    assert error == {"type": "server/error", "payload": {"reason": "unsupported_version"}}
                await until(lambda: len(events(px, "close")) == 2, WAIT_S, "both connections' close")
            finally:
                view.close()
        return out.getvalue()

    text = run(body(), 60)

    def line(pattern: str) -> str:
        found = [ln for ln in text.splitlines() if re.search(pattern, ln)]
        assert found, f"no line matches {pattern!r} in:\n{text}"
        return found[0]

    clock = r"^\d\d:\d\d:\d\d\.\d{3} "
    line(clock + r"\+\+ +#1 +open 127\.0\.0\.1:\d+ → ws://127\.0\.0\.1:\d+ GET /sendspin$")
    line(clock + r"\+\+ +#1 +noise session \(client/init\): encrypted after its handshake")
    line(r"#1 c→s client/init client_id=\S+ version=1 suite=25519_ChaChaPoly_SHA256$")
    line(r"#1 s→c server/init server_id=\S+ version=1$")
    line(r"#1 s→c noise/handshake message 1, \d+ B$")
    line(r"#1 c→s noise/handshake message 2, \d+ B$")
    line(r"#1 s→c encrypted \d+ B \(transport mode: the proxy holds no keys\)$")
    line(r"#1 c→s encrypted \d+ B \(transport mode: the proxy holds no keys\)$")
    line(r"#1 s→c encrypted ×\d+ [\d.]+ KiB \([\d.]+ (B|KiB)–4\.7 KiB each\)$")
    line(clock + r"!! +#1 s→c FAULT drop-time \(drop\) cannot apply on connection #1: on a noise session a "
                 r"dropped message is never a lost one")
    line(clock + r"-- +#1 +closed after [\d.]+ s \(noise session\); ")
    line(r"#2 s→c server/error reason=unsupported_version$")
    assert "invalid" not in text and "must close the connection" not in text, text  # all valid, none late
    assert len([ln for ln in text.splitlines() if "encrypted" in ln]) < 10  # summed up, not one per chunk
