"""The `noise` profile's connection, sans-I/O, between our own two sides
(harness/protocol/noise_session.py, noise_flow.py, noise.py).

Spec: `connection.md` (Encryption: pattern, suites, PSK, Sentinel Fallback,
Prologue, Failure Handling, Re-handshake) and `messaging.md` (Communication,
`client/init`, `server/init`, `noise/handshake`, `server/error`, `server/activate`,
`client/state`, `client/leave`).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise_support import Wire, deliver, handshake, pair

from harness.protocol import ConnectionFatal, HandshakeStep, ProtocolError, get_profile
from harness.protocol import messages as m
from harness.protocol.codec import encode_json
from harness.protocol.noise import (
    SENTINEL_PSK_ID,
    SUITES,
    AudioChunk,
    Identity,
    NoiseProfile,
    NoiseSession,
    Phase,
    Psk,
    RawBinary,
    check_client_init,
)
from harness.protocol.noise_crypto import KKpsk2Handshake, b64url, b64url_decode, peer_key
from harness.protocol.noise_flow import FlowState, NoiseClientFlow, NoiseServerFlow
from harness.protocol.noise_plaintext import AUDIO_HEADER_SIZE
from harness.protocol.wsframes import BINARY, parse_header

# --- the handshake, end to end ------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_handshake_end_to_end(suite: str) -> None:
    server = NoiseSession("server", Identity.generate())
    client = NoiseSession("client", Identity.generate(), suite=suite)
    assert not server.ready and not client.ready
    server_steps, client_steps = handshake(server, client)
    # client: client/init; server: server/init immediately followed by noise/handshake 1;
    # client: noise/handshake 2 (done); server: done.
    assert [len(s.send) for s in client_steps] == [1, 0, 1]
    assert [len(s.send) for s in server_steps] == [2, 0]
    client_init, (server_init, message_1), message_2 = client_steps[0].send[0], server_steps[0].send, \
        client_steps[2].send[0]
    assert all(isinstance(w, str) for w in (client_init, server_init, message_1, message_2))  # text messages
    assert json.loads(client_init) == {"type": "client/init", "payload": {
        "client_id": client.identity.peer_id, "version": 1, "suite": suite}}
    assert json.loads(server_init) == {"type": "server/init", "payload": {
        "server_id": server.identity.peer_id, "version": 1}}
    assert json.loads(message_1)["type"] == json.loads(message_2)["type"] == "noise/handshake"
    assert client_steps[-1].done and server_steps[-1].done
    assert server.ready and client.ready and server.phase is client.phase is Phase.TRANSPORT
    assert server.suite == client.suite == suite
    assert server.handshake_hash == client.handshake_hash and server.handshake_hash is not None
    assert server.peer_id == client.identity.peer_id and client.peer_id == server.identity.peer_id
    assert server.psk is not None and server.psk.category == client.psk.category == "sn"  # type: ignore[union-attr]
    # Transport: every message is one binary WebSocket message, both ways.
    hello = m.NoiseServerHello(name="srv")
    wire = server.encode(hello)
    assert isinstance(wire, bytes)
    assert client.decode(wire) == hello
    leave = m.ClientLeave()
    assert server.decode(client.encode(leave)) == leave
    assert server.encoded_size(hello) == len(server.encode(hello))


@pytest.mark.parametrize("suite", SUITES)
def test_message_1_payload_names_the_psk(suite: str) -> None:
    """Decrypt message 1 as the client would: {psk_id, psk_category}, the Sentinel's here."""
    server = NoiseSession("server", Identity.generate())
    me = Identity.generate()
    client_init = encode_json(m.ClientInit(client_id=me.peer_id, version=1, suite=suite))
    server_init, message_1 = server.handshake(client_init).send
    hs = KKpsk2Handshake(suite=suite, initiator=False, static=me.private,  # type: ignore[arg-type]
                         remote_static=server.identity.public,
                         prologue=client_init.encode() + server_init.encode())  # type: ignore[union-attr]
    payload = hs.read_message(b64url_decode(json.loads(message_1)["payload"]["data"]))
    assert json.loads(payload) == {"psk_id": SENTINEL_PSK_ID, "psk_category": "sn"}


def _respace(text: Wire) -> Wire:
    """The same JSON with different bytes: a space after the first colon."""
    assert isinstance(text, str)
    return text.replace(":", ": ", 1)


def test_prologue_binds_client_init() -> None:
    """The server sees a re-spaced client/init (same JSON, other bytes): message 1 fails at the client."""
    server, client = NoiseSession("server", Identity.generate()), NoiseSession("client", Identity.generate())
    server_steps, client_steps = handshake(server, client, to_server=lambda w: _respace(w) if "client/init" in w
                                           else w)
    assert server_steps[0].send and not server_steps[0].close  # the server accepted the init
    last = client_steps[-1]
    assert last.close and last.send == () and isinstance(last.error, ConnectionFatal), last  # silent
    assert "AEAD" in last.error.rule
    assert client.phase is Phase.CLOSED


def test_prologue_binds_server_init() -> None:
    server, client = NoiseSession("server", Identity.generate()), NoiseSession("client", Identity.generate())
    _, client_steps = handshake(server, client, to_client=lambda w: _respace(w) if "server/init" in w else w)
    assert client_steps[-1].close and client_steps[-1].send == ()


def test_prologue_control_without_tampering() -> None:
    """The same helper with the identity tamper completes: the two tests above can fail."""
    server, client = NoiseSession("server", Identity.generate()), NoiseSession("client", Identity.generate())
    _, client_steps = handshake(server, client, to_server=lambda w: w)
    assert client_steps[-1].done


def test_a_tampered_message_2_is_a_silent_failure() -> None:
    def flip(w: Wire) -> Wire:
        if isinstance(w, str) and "noise/handshake" in w:
            obj = json.loads(w)
            raw = bytearray(b64url_decode(obj["payload"]["data"]))
            raw[-1] ^= 1
            obj["payload"]["data"] = b64url(bytes(raw))
            return json.dumps(obj)
        return w

    server, client = NoiseSession("server", Identity.generate()), NoiseSession("client", Identity.generate())
    server_steps, _ = handshake(server, client, to_server=flip)
    assert server_steps[-1].close and server_steps[-1].send == ()
    assert server.phase is Phase.CLOSED


@pytest.mark.parametrize(("name", "wire"), [
    ("binary instead of text", b'{"type":"server/init"}'),
    ("not JSON", "{"),
    ("another message", '{"type":"server/hello","payload":{"name":"x"}}'),
    ("version 2", None),
    ("bad server_id", '{"type":"server/init","payload":{"server_id":"abc","version":1}}'),
])
def test_a_client_rejects_a_bad_server_init_silently(name: str, wire: Wire | None) -> None:
    server_id = Identity.generate().peer_id
    if wire is None:
        wire = json.dumps({"type": "server/init", "payload": {"server_id": server_id, "version": 2}})
    client = NoiseSession("client", Identity.generate())
    client.handshake(None)
    step = client.handshake(wire)
    assert step.close and step.send == () and step.error is not None, name
    assert client.phase is Phase.CLOSED


def test_a_client_reads_server_error_as_a_rejection() -> None:
    client = NoiseSession("client", Identity.generate())
    client.handshake(None)
    step = client.handshake(encode_json(m.ServerError(reason="unsupported_suite")))
    assert step.close and step.send == () and step.server_error == "unsupported_suite"
    step_unknown = NoiseSession("client", Identity.generate())
    step_unknown.handshake(None)
    assert step_unknown.handshake('{"type":"server/error","payload":{"reason":"new_reason"}}').server_error == \
        "new_reason"


# --- server/error: the init failures, version checked first ----------------------------------------

GOOD_ID = Identity(bytes(range(32))).peer_id


def _init(**payload: object) -> str:
    return json.dumps({"type": "client/init", "payload": payload})


@pytest.mark.parametrize(("wire", "reason"), [
    (_init(client_id=GOOD_ID, version=1, suite="25519_ChaChaPoly_SHA256"), None),
    (_init(client_id=GOOD_ID, version=1, suite="25519_AESGCM_SHA256"), None),
    (_init(client_id=GOOD_ID, version=2, suite="25519_ChaChaPoly_SHA256"), "unsupported_version"),
    # version before suite, and before the remaining fields:
    (_init(client_id=GOOD_ID, version=2, suite="25519_AESGCM_SHA512"), "unsupported_version"),
    (_init(client_id="bad", version=0, suite=7), "unsupported_version"),
    (_init(version=-1), "unsupported_version"),
    (_init(client_id=GOOD_ID, version=1, suite="25519_AESGCM_SHA512"), "unsupported_suite"),
    (_init(client_id="bad", version=1, suite="Noise_XX"), "unsupported_suite"),  # suite before client_id
    (_init(client_id="bad", version=1, suite="25519_ChaChaPoly_SHA256"), "malformed"),
    (_init(version=1, suite="25519_ChaChaPoly_SHA256"), "malformed"),
    (_init(client_id=GOOD_ID, version=1), "malformed"),
    (_init(client_id=GOOD_ID, version=1, suite=None), "malformed"),
    (_init(client_id=GOOD_ID, version="1", suite="25519_ChaChaPoly_SHA256"), "malformed"),
    (_init(client_id=GOOD_ID, version=True, suite="25519_ChaChaPoly_SHA256"), "malformed"),
    (_init(client_id=GOOD_ID, version=1.0, suite="25519_ChaChaPoly_SHA256"), "malformed"),
    (_init(client_id=GOOD_ID, suite="25519_ChaChaPoly_SHA256"), "malformed"),
    ('{"type":"client/hello","payload":{"client_id":"x","name":"n","version":1,"supported_roles":[]}}', "malformed"),
    ('{"type":"client/init"}', "malformed"),
    ('{"type":"client/init","payload":[]}', "malformed"),
    ("[1]", "malformed"),
    ("{", "malformed"),
    ("", "malformed"),
    (b'{"type":"client/init"}', "malformed"),  # a binary message
])
def test_server_error_reasons_in_the_spec_order(wire: Wire, reason: str | None) -> None:
    server = NoiseSession("server", Identity.generate())
    step = server.handshake(wire)
    if reason is None:
        assert not step.close and len(step.send) == 2
        return
    assert step.close and step.error is not None
    assert step.send == (json.dumps({"type": "server/error", "payload": {"reason": reason}},
                                    separators=(",", ":")),)
    assert server.phase is Phase.CLOSED
    with pytest.raises(ProtocolError, match="closed"):
        server.handshake(wire)


def test_check_client_init_names_the_field() -> None:
    with pytest.raises(ProtocolError) as info:
        check_client_init(_init(client_id="short", version=1, suite="25519_AESGCM_SHA256"))
    assert info.value.field == "payload.client_id" and info.value.reason == "malformed"  # type: ignore[attr-defined]
    init = check_client_init(_init(client_id=GOOD_ID, version=1, suite="25519_AESGCM_SHA256", extra=1))
    assert init == m.ClientInit(client_id=GOOD_ID, version=1, suite="25519_AESGCM_SHA256")


# --- PSKs: categories, the Sentinel Fallback, the credential-mismatch signal ------------------------


def test_long_term_psk_when_both_hold_it() -> None:
    server_id, client_id = Identity.generate(), Identity.generate()
    lt = bytes(range(32))
    server = NoiseSession("server", server_id, server_psks={client_id.peer_id: Psk(lt, "lt")})
    client = NoiseSession("client", client_id, client_psks=[Psk(lt, "lt", server_id.peer_id)])
    server_steps, client_steps = handshake(server, client)
    assert server_steps[-1].done and client_steps[-1].done
    assert server.psk.category == client.psk.category == "lt"  # type: ignore[union-attr]
    assert not server.credential_mismatch
    assert client.decode(server.encode(m.ServerActivate(activities=["playback"], active_roles=[]))) is not None


def test_sentinel_fallback_on_a_lookup_miss() -> None:
    """The client lost its record: it completes with the Sentinel; the server, failing
    the referenced PSK, validates under the Sentinel: a credential mismatch."""
    server_id, client_id = Identity.generate(), Identity.generate()
    server = NoiseSession("server", server_id, server_psks={client_id.peer_id: Psk(bytes(range(32)), "lt")})
    client = NoiseSession("client", client_id)
    server_steps, client_steps = handshake(server, client)
    assert server_steps[-1].done and client_steps[-1].done
    assert server.psk.category == client.psk.category == "sn"  # type: ignore[union-attr]
    assert server.credential_mismatch and any("credential mismatch" in n for n in server_steps[-1].notes)
    assert server.decode(client.encode(m.ClientLeave())) == m.ClientLeave()


def test_a_psk_held_under_another_category_is_a_miss() -> None:
    server_id, client_id = Identity.generate(), Identity.generate()
    key = bytes(range(32))
    server = NoiseSession("server", server_id, server_psks={client_id.peer_id: Psk(key, "pr")})
    client = NoiseSession("client", client_id, client_psks=[Psk(key, "lt", server_id.peer_id)])
    handshake(server, client)
    assert client.psk.category == "sn" and server.credential_mismatch  # type: ignore[union-attr]


def test_pairing_psk() -> None:
    server_id, client_id = Identity.generate(), Identity.generate()
    key = bytes(range(1, 33))
    server = NoiseSession("server", server_id, server_psks={client_id.peer_id: Psk(key, "pr")})
    client = NoiseSession("client", client_id, client_psks=[Psk(key, "pr")])
    handshake(server, client)
    assert server.psk.category == client.psk.category == "pr" and not server.credential_mismatch  # type: ignore[union-attr]


def test_a_long_term_psk_bound_to_another_server_fails() -> None:
    """A match whose stored server_id differs from server/init's is a misbinding, not a miss."""
    server_id, client_id = Identity.generate(), Identity.generate()
    key = bytes(range(32))
    server = NoiseSession("server", server_id, server_psks={client_id.peer_id: Psk(key, "lt")})
    client = NoiseSession("client", client_id, client_psks=[Psk(key, "lt", Identity.generate().peer_id)])
    _, client_steps = handshake(server, client)
    assert client_steps[-1].close and client_steps[-1].send == () and "bound to server" in str(client_steps[-1].error)


def test_message_2_payload_must_be_a_json_object() -> None:
    """A client written by hand: `{}` passes, `{ }` passes with a note, `[]` is a silent failure."""
    for payload, outcome in ((b"{}", "done"), (b"{ }", "note"), (b"[]", "fail"), (b"\xff", "fail")):
        server, me = NoiseSession("server", Identity.generate()), Identity.generate()
        client_init = encode_json(m.ClientInit(client_id=me.peer_id, version=1, suite="25519_AESGCM_SHA256"))
        server_init, message_1 = server.handshake(client_init).send
        hs = KKpsk2Handshake(suite="25519_AESGCM_SHA256", initiator=False, static=me.private,
                             remote_static=server.identity.public,
                             prologue=client_init.encode() + server_init.encode())  # type: ignore[union-attr]
        hs.read_message(b64url_decode(json.loads(message_1)["payload"]["data"]))
        hs.set_psk(bytes.fromhex("1b5e24dbc1aed95fc2a5a338a90c05df44bd10f5ec1f4cd66cbf86272767b9d3"))
        step = server.handshake(encode_json(m.NoiseHandshake(data=b64url(hs.write_message(payload)))))
        if outcome == "fail":
            assert step.close and step.send == (), payload
        else:
            assert step.done and bool(step.notes) == (outcome == "note"), payload


# --- silent failures in transport mode -------------------------------------------------------------


def test_a_text_message_in_transport_mode_is_fatal() -> None:
    server, client = pair()
    with pytest.raises(ConnectionFatal, match="cleartext"):
        client.decode(encode_json(m.NoiseServerHello(name="x")))
    assert client.phase is Phase.CLOSED
    with pytest.raises(ProtocolError):
        client.decode(server.encode(m.NoiseServerHello(name="x")))


def test_a_tampered_or_replayed_transport_message_is_fatal() -> None:
    server, client = pair("25519_AESGCM_SHA256")
    wire = server.encode(m.NoiseServerHello(name="x"))
    assert client.decode(wire) is not None
    with pytest.raises(ConnectionFatal, match="AEAD"):
        client.decode(wire)  # replayed
    server, client = pair()
    wire = bytearray(server.encode(m.NoiseServerHello(name="x")))
    wire[5] ^= 0x80
    with pytest.raises(ConnectionFatal, match="AEAD"):
        client.decode(bytes(wire))


def test_a_bad_json_message_is_not_fatal() -> None:
    """An unknown or invalid JSON message is an ordinary ProtocolError: the caller decides."""
    server, client = pair()
    with pytest.raises(ProtocolError) as info:
        client.decode(server.encode_raw(0, b'{"type":"made/up","payload":{}}')[0])
    assert not isinstance(info.value, ConnectionFatal) and client.ready
    assert client.decode(server.encode(m.ClientLeave())) == m.ClientLeave()


def test_nothing_before_the_handshake_completes() -> None:
    server = NoiseSession("server", Identity.generate())
    with pytest.raises(ProtocolError, match="before the handshake"):
        server.encode(m.NoiseServerHello(name="x"))
    with pytest.raises(ProtocolError, match="before the handshake"):
        server.decode(b"x")


# --- re-handshake ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_server_initiated_rehandshake(suite: str) -> None:
    server_id, client_id = Identity.generate(), Identity.generate()
    new_lt = bytes(range(32))
    server = NoiseSession("server", server_id)
    client = NoiseSession("client", client_id, suite=suite, client_psks=[Psk(new_lt, "lt", server_id.peer_id)])
    handshake(server, client)
    old_hash = server.handshake_hash
    # The client sent this before it saw message 1: the server still reads it under the old keys.
    early = client.encode(m.ClientTime(client_transmitted=1))
    (message_1,) = server.rehandshake(Psk(new_lt, "lt")).send
    assert isinstance(message_1, bytes) and server.phase is Phase.REHANDSHAKE
    with pytest.raises(ProtocolError, match="no application message"):
        server.encode(m.ServerTime(client_transmitted=1, server_received=2, server_transmitted=3))
    assert server.decode(early) == m.ClientTime(client_transmitted=1)
    handshake_message = client.decode(message_1)
    assert isinstance(handshake_message, m.NoiseHandshake)
    step = client.handshake(handshake_message)
    assert step.done and len(step.send) == 1
    with pytest.raises(ProtocolError, match="sends nothing new"):
        client.encode(m.ClientTime(client_transmitted=2))
    reply = server.decode(step.send[0])
    assert isinstance(reply, m.NoiseHandshake)
    assert server.handshake(reply).done
    assert server.handshake_hash == client.handshake_hash != old_hash
    assert server.psk.category == client.psk.category == "lt" and server.rehandshakes == 1  # type: ignore[union-attr]
    with pytest.raises(ProtocolError, match="must be server/activate"):
        server.encode(m.NoiseServerHello(name="x"))
    activate = m.ServerActivate(activities=["playback"], active_roles=["player@v1"])
    assert client.decode(server.encode(activate)) == activate
    assert server.decode(client.encode(m.ClientTime(client_transmitted=3))) == m.ClientTime(client_transmitted=3)
    assert client.decode(server.encode(m.ServerTime(client_transmitted=3, server_received=4, server_transmitted=5)))


def test_rehandshake_prologue_is_the_prior_hash() -> None:
    """A client whose prior h differs (as after a different first handshake) fails message 1."""
    server, client = pair()
    client.handshake_hash = bytes(32)
    (message_1,) = server.rehandshake().send
    step = client.handshake(client.decode(message_1))  # type: ignore[arg-type]
    assert step.close and step.send == () and client.phase is Phase.CLOSED


def test_a_rehandshake_miss_has_no_sentinel_fallback() -> None:
    server, client = pair()
    (message_1,) = server.rehandshake(Psk(bytes(range(32)), "lt")).send
    step = client.handshake(client.decode(message_1))  # type: ignore[arg-type]
    assert step.close and step.send == () and "re-handshake" in str(step.error)


def test_only_the_server_rehandshakes() -> None:
    _, client = pair()
    with pytest.raises(ProtocolError, match="only the server"):
        client.rehandshake()  # type: ignore[attr-defined]


# --- the profile seam ------------------------------------------------------------------------------


def test_get_profile_noise() -> None:
    profile = get_profile("noise")
    assert isinstance(profile, NoiseProfile) and profile.name == "noise"
    assert get_profile("noise") is profile
    codec = profile.session("server")
    assert isinstance(codec, NoiseSession) and codec.shared_audio is False and not codec.ready
    assert profile.session("client").identity == profile.identity


def test_legacy_codec_is_ready_and_has_no_handshake() -> None:
    codec = get_profile("legacy").session("client")
    assert codec.ready and codec.handshake(None) == HandshakeStep(done=True)
    assert codec.encode_messages(m.ClientTime(client_transmitted=1)) == [codec.encode(m.ClientTime(
        client_transmitted=1))]


def _frames(stream: bytes) -> list[bytes]:
    out = []
    while stream:
        header = parse_header(stream)
        assert header is not None and header.opcode == BINARY and header.fin and not header.masked
        out.append(stream[header.size : header.size + header.length])
        stream = stream[header.size + header.length :]
    return out


def test_prepare_audio_once_encrypt_per_listener() -> None:
    profile = NoiseProfile()
    prepared = profile.prepare_audio(10_000_000, b"\x01\x02" * 2400)
    assert len(prepared) == AUDIO_HEADER_SIZE + 4800 and prepared[0] == 4
    listeners = [pair() for _ in range(2)]
    frames = [server.audio_frame(prepared, transmit_us=9_750_000) for server, _ in listeners]
    assert frames[0] != frames[1]  # each listener's own keys
    for (_, client), frame in zip(listeners, frames, strict=True):
        (message,) = _frames(frame)
        chunk = client.decode(message)
        assert isinstance(chunk, AudioChunk)
        assert (chunk.timestamp_us, chunk.send_ahead_us, bytes(chunk.payload)) == (10_000_000, 250_000,
                                                                                  b"\x01\x02" * 2400)
    assert prepared == profile.prepare_audio(10_000_000, b"\x01\x02" * 2400)  # not stamped in place


def test_encode_binary_stamps_send_ahead_now_and_other_types_stay_raw() -> None:
    server, client = pair()
    head, body = server.encode_binary(4, 2**62, b"pcm")
    assert body == b""
    chunk = client.decode(head)
    assert isinstance(chunk, AudioChunk) and chunk.send_ahead_us == 2**32 - 1  # saturated
    (raw,) = server.encode_raw(8, b"\x02announce")
    decoded = client.decode(raw)
    assert isinstance(decoded, RawBinary) and decoded.type == 8 and bytes(decoded.data) == b"\x02announce"
    reserved = client.decode(server.encode_raw(2, b"x")[0])  # not implemented: the caller ignores it
    assert isinstance(reserved, RawBinary) and reserved.type == 2


# --- after the handshake: hello, activate, state, leave --------------------------------------------


def test_hello_activate_state_leave_flow() -> None:
    server, client = pair()
    sflow, cflow = NoiseServerFlow(), NoiseClientFlow()

    def s2c(message: m.Message) -> None:
        sflow.sent(message)
        cflow.receive(deliver(server, client, message))  # type: ignore[arg-type]

    def c2s(message: m.Message) -> None:
        cflow.sent(message)
        sflow.receive(deliver(client, server, message))  # type: ignore[arg-type]

    with pytest.raises(ProtocolError, match="before server/hello"):
        cflow.sent(m.ClientTime(client_transmitted=1))
    s2c(m.NoiseServerHello(name="srv", languages=["en"]))
    with pytest.raises(ProtocolError, match="first message must be client/hello"):
        cflow.sent(m.ClientTime(client_transmitted=1))
    c2s(m.NoiseClientHello(
        name="probe", supported_roles=["player@v1"],
        player_support=m.NoisePlayerSupport(supported_formats=[m.AudioFormat(
            codec="pcm", channels=2, sample_rate=48000, bit_depth=16)], buffer_capacity=1_000_000),
        supported_pair_methods={"pairing_psk": {}}, unpaired_access=m.UnpairedAccess(enabled=True)))
    assert sflow.hello is not None and sflow.state is FlowState.AWAITING_ACTIVATE
    with pytest.raises(ProtocolError, match="server/activate"):
        sflow.sent(m.NoiseGroupUpdate(playback_state="stopped", group_id="g", group_name="g"))
    with pytest.raises(ProtocolError, match="active_roles"):
        sflow.sent(m.ServerActivate(activities=["playback"]))
    with pytest.raises(ProtocolError, match="before the first server/activate"):
        sflow.receive(m.NoiseClientState(available=True))
    s2c(m.ServerActivate(activities=["playback"], active_roles=["player@v1"]))
    assert cflow.active_roles == ["player@v1"] and cflow.state is FlowState.ACTIVE
    state = m.NoiseClientState(available=True, player=m.NoisePlayerState(
        volume=50, muted=False, output_delay_ms=0, required_lead_time_ms=100, min_buffer_ms=250,
        supported_commands=["volume", "mute", "set_output_delay"]))
    c2s(state)
    assert sflow.client_state == state
    c2s(m.ClientLeave())
    s2c(m.ServerActivate(activities=[]))  # active_roles omitted: they persist
    assert cflow.active_roles == ["player@v1"] and cflow.activations == 2
    c2s(m.NoiseClientGoodbye(reason="shutdown"))
    with pytest.raises(ProtocolError, match="follow client/goodbye"):
        sflow.receive(m.ClientLeave())


def test_client_state_requires_available() -> None:
    server, client = pair()
    with pytest.raises(ProtocolError, match="available"):
        server.decode(client.encode_raw(0, b'{"type":"client/state","payload":{"player":{}}}')[0])


def test_a_first_activation_without_active_roles_reads_as_empty() -> None:
    flow = NoiseClientFlow()
    flow.receive(m.NoiseServerHello(name="s"))
    flow.sent(m.NoiseClientHello(name="c", supported_roles=[], supported_pair_methods={},
                                 unpaired_access=m.UnpairedAccess(enabled=False)))
    with pytest.raises(ProtocolError, match="server/activate"):
        flow.receive(m.NoiseGroupUpdate(playback_state="stopped", group_id="g", group_name="g"))
    flow.receive(m.ServerActivate(activities=[]))
    assert flow.active_roles == [] and flow.state is FlowState.ACTIVE


def test_peer_key_of_a_session_matches_its_init() -> None:
    server, client = pair()
    assert peer_key(server.peer_id) == client.identity.public  # type: ignore[arg-type]


# --- fuzz: any first message and any handshake message -------------------------------------------


@settings(max_examples=150, deadline=None)
@given(text=st.one_of(
    st.text(max_size=80),
    st.builds(lambda v, s, c: json.dumps({"type": "client/init", "payload": {"version": v, "suite": s,
                                                                               "client_id": c}}),
              st.one_of(st.integers(), st.booleans(), st.none(), st.text(max_size=3), st.floats(allow_nan=False)),
              st.one_of(st.sampled_from(["25519_ChaChaPoly_SHA256", "x"]), st.integers(), st.none()),
              st.one_of(st.text(max_size=44), st.integers(), st.just("A" * 43)))))
def test_any_first_message_gets_server_init_or_server_error(text: str) -> None:
    server = NoiseSession("server", Identity.generate())
    step = server.handshake(text)
    if step.close:
        (error,) = step.send
        assert json.loads(error)["type"] == "server/error"
        assert json.loads(error)["payload"]["reason"] in ("unsupported_version", "unsupported_suite", "malformed")
    else:
        assert [json.loads(w)["type"] for w in step.send] == ["server/init", "noise/handshake"]


@settings(max_examples=100, deadline=None)
@given(data=st.one_of(st.text(max_size=60), st.binary(max_size=60),
                      st.builds(lambda d: json.dumps({"type": "noise/handshake", "payload": {"data": d}}),
                                st.text(max_size=120))))
def test_any_other_handshake_message_is_a_silent_failure(data: str | bytes) -> None:
    server, client = NoiseSession("server", Identity.generate()), NoiseSession("client", Identity.generate())
    server_init, _ = server.handshake(client.handshake(None).send[0]).send
    client.handshake(server_init)
    for side in (client, server):
        step = side.handshake(data)
        assert step.close and step.send == () and step.error is not None  # silent failure
