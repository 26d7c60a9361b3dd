"""The Noise framework under the `noise` profile (harness/protocol/noise_crypto.py).

- The cacophony test vectors for `Noise_KKpsk2` in both Sendspin suites
  (tests/vectors/noise_kkpsk2.json, public domain): fixed keys, ephemerals,
  prologue and PSK give byte-identical handshake messages, handshake hash and
  transport messages, from both sides.
- Sendspin's constants (connection.md, "Pre-Shared Key"): the psk_id formula,
  the Sentinel PSK and its published psk_id.
- Nonces, replay, tampering, low-order keys and strict base64url.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from harness.protocol.errors import ConnectionFatal, ProtocolError
from harness.protocol.noise_crypto import (
    SENTINEL,
    SENTINEL_PSK,
    SENTINEL_PSK_ID,
    SUITES,
    CipherState,
    Identity,
    KKpsk2Handshake,
    NoiseError,
    Psk,
    b64url,
    b64url_decode,
    peer_key,
    protocol_name,
    psk_id,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "noise_kkpsk2.json").read_text())["vectors"]


def _vector(suite: str) -> dict:
    (vector,) = [v for v in VECTORS if v["protocol_name"] == protocol_name(suite)]  # type: ignore[arg-type]
    return vector


def _sides(v: dict) -> tuple[KKpsk2Handshake, KKpsk2Handshake]:
    h = bytes.fromhex
    suite = v["protocol_name"].removeprefix("Noise_KKpsk2_")
    initiator = KKpsk2Handshake(suite=suite, initiator=True, static=h(v["init_static"]),
                                remote_static=h(v["init_remote_static"]), prologue=h(v["init_prologue"]),
                                psk=h(v["init_psks"][0]), ephemeral=h(v["init_ephemeral"]))
    responder = KKpsk2Handshake(suite=suite, initiator=False, static=h(v["resp_static"]),
                                remote_static=h(v["resp_remote_static"]), prologue=h(v["resp_prologue"]),
                                psk=h(v["resp_psks"][0]), ephemeral=h(v["resp_ephemeral"]))
    return initiator, responder


def test_the_vector_file_holds_both_sendspin_suites() -> None:
    assert sorted(v["protocol_name"] for v in VECTORS) == sorted(protocol_name(s) for s in SUITES)
    assert protocol_name("25519_ChaChaPoly_SHA256") == "Noise_KKpsk2_25519_ChaChaPoly_SHA256"


@pytest.mark.parametrize("suite", SUITES)
def test_cacophony_vector(suite: str) -> None:
    v = _vector(suite)
    h = bytes.fromhex
    initiator, responder = _sides(v)
    m = v["messages"]
    # Message 1 (-> e, es, ss) and 2 (<- e, ee, se, psk), written and read.
    c1 = initiator.write_message(h(m[0]["payload"]))
    assert c1.hex() == m[0]["ciphertext"]
    assert responder.read_message(c1) == h(m[0]["payload"])
    c2 = responder.write_message(h(m[1]["payload"]))
    assert c2.hex() == m[1]["ciphertext"]
    assert initiator.read_message(c2) == h(m[1]["payload"])
    assert initiator.done and responder.done
    ti, tr = initiator.split(), responder.split()
    assert ti.handshake_hash.hex() == tr.handshake_hash.hex() == v["handshake_hash"]
    # Transport: initiator -> responder on even messages, back on odd ones.
    for k, msg in enumerate(m[2:]):
        send, receive = (ti.send, tr.receive) if k % 2 == 0 else (tr.send, ti.receive)
        ciphertext = send.encrypt_with_ad(b"", h(msg["payload"]))
        assert ciphertext.hex() == msg["ciphertext"], f"transport message {k}"
        assert receive.decrypt_with_ad(b"", ciphertext) == h(msg["payload"])


@pytest.mark.parametrize("suite", SUITES)
def test_a_wrong_psk_or_prologue_fails_message_2(suite: str) -> None:
    """The vector's inputs, one changed: the responder's message 2 no longer authenticates."""
    v = _vector(suite)
    for change in ("psk", "prologue"):
        initiator, responder = _sides(v)
        if change == "psk":
            responder.set_psk(bytes(32))
        else:
            responder.ss.mix_hash(b"x")  # as if the prologue had one more byte
        payload = bytes.fromhex(v["messages"][0]["payload"])
        message_1 = initiator.write_message(payload)
        if change == "prologue":  # message 1's payload is bound to the prologue already
            with pytest.raises(NoiseError, match="AEAD authentication failed"):
                responder.read_message(message_1)
            continue
        responder.read_message(message_1)
        with pytest.raises(NoiseError, match="AEAD authentication failed"):
            initiator.read_message(responder.write_message(b""))


@pytest.mark.parametrize("suite", SUITES)
def test_a_flipped_bit_anywhere_in_message_1_fails(suite: str) -> None:
    v = _vector(suite)
    message_1 = bytearray(_sides(v)[0].write_message(b"payload"))
    for position in (0, 31, 32, len(message_1) - 1):  # e, the encrypted payload, the tag
        tampered = bytearray(message_1)
        tampered[position] ^= 0x01
        with pytest.raises(NoiseError):
            _sides(v)[1].read_message(bytes(tampered))


def test_nonce_encoding_per_suite() -> None:
    """ChaChaPoly: 4 zero bytes + little-endian counter; AESGCM: big-endian (Noise spec §12)."""
    key = bytes(range(32))
    for suite, aead, pack in (("25519_ChaChaPoly_SHA256", ChaCha20Poly1305(key), "<Q"),
                              ("25519_AESGCM_SHA256", AESGCM(key), ">Q")):
        cs = CipherState(suite, key)  # type: ignore[arg-type]
        cs.encrypt_with_ad(b"", b"first")  # n = 0
        second = cs.encrypt_with_ad(b"ad", b"second")  # n = 1
        assert second == aead.encrypt(b"\x00" * 4 + struct.pack(pack, 1), b"second", b"ad")


@pytest.mark.parametrize("suite", SUITES)
def test_replayed_reordered_or_tampered_transport_messages_fail(suite: str) -> None:
    send, receive = CipherState(suite, bytes(32)), CipherState(suite, bytes(32))  # type: ignore[arg-type]
    a, b = send.encrypt_with_ad(b"", b"a"), send.encrypt_with_ad(b"", b"b")
    with pytest.raises(NoiseError):
        receive.decrypt_with_ad(b"", b)  # out of order
    assert receive.decrypt_with_ad(b"", a) == b"a"  # a failure does not advance the nonce
    with pytest.raises(NoiseError):
        receive.decrypt_with_ad(b"", a)  # replayed
    with pytest.raises(NoiseError):
        receive.decrypt_with_ad(b"", b[:-1] + bytes([b[-1] ^ 1]))  # tampered tag
    with pytest.raises(NoiseError, match="16-byte tag"):
        receive.decrypt_with_ad(b"", b"short")
    assert receive.decrypt_with_ad(b"", b) == b"b"


def test_noise_errors_are_connection_fatal_protocol_errors() -> None:
    error = NoiseError("decrypt", "AEAD authentication failed")
    assert isinstance(error, ConnectionFatal) and isinstance(error, ProtocolError)
    assert str(error) == "noise.decrypt: AEAD authentication failed"


def test_a_low_order_remote_key_fails_the_handshake() -> None:
    me = Identity.generate()
    hs = KKpsk2Handshake(suite="25519_ChaChaPoly_SHA256", initiator=True, static=me.private,
                         remote_static=bytes(32), prologue=b"", psk=SENTINEL_PSK)
    with pytest.raises(NoiseError, match="X25519"):
        hs.write_message(b"")


def test_a_side_may_write_or_read_only_its_own_messages() -> None:
    a, b = Identity.generate(), Identity.generate()
    server = KKpsk2Handshake(suite="25519_AESGCM_SHA256", initiator=True, static=a.private, remote_static=b.public,
                             prologue=b"p", psk=SENTINEL_PSK)
    with pytest.raises(NoiseError, match="not this side's to read"):
        server.read_message(b"x" * 64)
    server.write_message(b"")
    with pytest.raises(NoiseError, match="not this side's to write"):
        server.write_message(b"")
    with pytest.raises(NoiseError, match="split before"):
        server.split()


# --- Sendspin's constants -----------------------------------------------------------------------


def test_sentinel_psk_and_its_psk_id_are_the_published_constants() -> None:
    assert hashlib.sha256(b"sendspin-sentinel-psk-v1").digest() == SENTINEL_PSK
    assert SENTINEL_PSK.hex() == "1b5e24dbc1aed95fc2a5a338a90c05df44bd10f5ec1f4cd66cbf86272767b9d3"
    assert SENTINEL_PSK_ID == "GFsV9tLaSQm9HcFWpKsgYQOr7wFTvNUtkmFwuVz3zoo"
    assert b64url_decode(SENTINEL_PSK_ID).hex() == "185b15f6d2da4909bd1dc156a4ab206103abef0153bcd52d926170b95cf7ce8a"
    assert SENTINEL.category == "sn" and SENTINEL.id == SENTINEL_PSK_ID


def test_psk_id_formula() -> None:
    """base64url(SHA-256("sendspin-psk-id-v1" || PSK)): the label's bytes, no NUL, no padding."""
    psk = bytes(range(32))
    expected = hashlib.sha256(b"sendspin-psk-id-v1" + psk).digest()
    assert psk_id(psk) == b64url(expected)
    assert len(psk_id(psk)) == 43 and "=" not in psk_id(psk)
    assert psk_id(psk) != psk_id(psk[:-1] + b"\x00")
    assert Psk(psk, "lt", "server").id == psk_id(psk)


def test_psk_validation() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Psk(b"short", "lt")
    with pytest.raises(ValueError, match="category"):
        Psk(bytes(32), "xx")  # type: ignore[arg-type]


def test_identities_are_base64url_public_keys() -> None:
    identity = Identity(bytes(range(32)))
    assert len(identity.peer_id) == 43
    assert peer_key(identity.peer_id) == identity.public
    assert Identity.generate().peer_id != Identity.generate().peer_id


@pytest.mark.parametrize("bad", [
    "", "A" * 42, "A" * 44,  # length
    "A" * 42 + "=",  # padding
    "+" + "A" * 42, "/" + "A" * 42,  # standard alphabet
    "A" * 42 + "B",  # non-canonical: the last character's low bits must be zero
    "é" + "A" * 42,
])
def test_peer_ids_are_strict(bad: str) -> None:
    with pytest.raises(ValueError):
        peer_key(bad)
