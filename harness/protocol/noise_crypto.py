"""The Noise Protocol Framework as Sendspin uses it: `Noise_KKpsk2` over X25519,
ChaChaPoly or AESGCM, and SHA-256 (spec `connection.md`, "Encryption").

Written on `cryptography`'s primitives (X25519, ChaCha20-Poly1305, AES-GCM,
SHA-256, HMAC) rather than on a Noise package: the framework's part Sendspin
needs is one pattern and two suites, and a harness must be able to hold and
show every intermediate (`h`, `ck`, the nonces), pin ephemeral keys for test
vectors and rerun a handshake in transport mode with the prior `h` as the
prologue. Checked against the cacophony test vectors for both suites
(tests/vectors/noise_kkpsk2.json) and against aiosendspin 10.2.1, which uses
the noiseprotocol package.

Sans-I/O: bytes in, bytes out. Every failure is a `NoiseError` (a ProtocolError)
naming the step that failed; the caller closes the connection silently.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import ConnectionFatal

Suite = Literal["25519_ChaChaPoly_SHA256", "25519_AESGCM_SHA256"]
SUITES: tuple[Suite, ...] = ("25519_ChaChaPoly_SHA256", "25519_AESGCM_SHA256")
PATTERN = "KKpsk2"
PskCategory = Literal["lt", "pr", "sn"]  # long-term, pairing, Sentinel
PSK_CATEGORIES: tuple[PskCategory, ...] = ("lt", "pr", "sn")

DHLEN = 32
HASHLEN = 32
KEYLEN = 32
TAGLEN = 16
MAX_NOISE_MESSAGE = 65535  # Noise spec §3: every Noise message, handshake or transport
MAX_NONCE = 2**64 - 1  # reserved (Noise spec §5.1): never used to encrypt

PSK_ID_LABEL = b"sendspin-psk-id-v1"
SENTINEL_LABEL = b"sendspin-sentinel-psk-v1"
SENTINEL_PSK = hashlib.sha256(SENTINEL_LABEL).digest()


class NoiseError(ConnectionFatal):
    """A Noise step failed: a silent failure (the detecting side closes, sends nothing)."""

    def __init__(self, step: str, rule: str) -> None:
        super().__init__("noise", step, rule)


def b64url(data: bytes) -> str:
    """base64url without padding, as every Sendspin key and id is written."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, length: int | None = None) -> bytes:
    """Strict inverse of `b64url`: no padding, only the URL-safe alphabet, canonical."""
    if not isinstance(text, str) or not text.isascii() or "=" in text or "+" in text or "/" in text:
        raise ValueError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not base64url: {exc}") from None
    if b64url(data) != text:
        raise ValueError("not the canonical encoding of its bytes")
    if length is not None and len(data) != length:
        raise ValueError(f"must decode to {length} bytes, got {len(data)}")
    return data


def psk_id(psk: bytes) -> str:
    """`base64url(SHA-256("sendspin-psk-id-v1" || PSK))` (connection.md, Pre-Shared Key)."""
    return b64url(hashlib.sha256(PSK_ID_LABEL + psk).digest())


SENTINEL_PSK_ID = psk_id(SENTINEL_PSK)


@dataclass(frozen=True)
class Psk:
    """One PSK as a side holds it: its 32 bytes, its category and, for a
    long-term PSK on the client, the `server_id` its pairing record binds it to."""

    key: bytes
    category: PskCategory
    server_id: str | None = None

    def __post_init__(self) -> None:
        if len(self.key) != 32:
            raise ValueError(f"a PSK is 32 bytes, got {len(self.key)}")
        if self.category not in PSK_CATEGORIES:
            raise ValueError(f"PSK category must be one of {PSK_CATEGORIES}, got {self.category!r}")

    @property
    def id(self) -> str:
        return psk_id(self.key)


SENTINEL = Psk(SENTINEL_PSK, "sn")


@dataclass(frozen=True)
class Identity:
    """A static X25519 keypair; its base64url public key is the client_id / server_id."""

    private: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.private) != DHLEN:
            raise ValueError(f"an X25519 private key is {DHLEN} bytes, got {len(self.private)}")

    @classmethod
    def generate(cls) -> Identity:
        return cls(os.urandom(DHLEN))

    @property
    def public(self) -> bytes:
        return public_key(self.private)

    @property
    def peer_id(self) -> str:
        return b64url(self.public)


def public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def peer_key(peer_id: str) -> bytes:
    """The 32-byte public key a client_id / server_id names; ValueError if it names none."""
    if not isinstance(peer_id, str) or len(peer_id) != 43:
        raise ValueError("must be 43 characters of base64url (a 32-byte Curve25519 key)")
    return b64url_decode(peer_id, DHLEN)


def dh(private: bytes, public: bytes) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # an all-zero shared secret: a low-order public key
        raise NoiseError("dh", f"X25519 failed: {exc}") from None


# --- CipherState (Noise spec §5.1) ----------------------------------------------------------


class CipherState:
    """One direction's key and nonce. ChaChaPoly encodes the nonce little-endian,
    AESGCM big-endian, each after 32 zero bits (Noise spec §12.3, §12.4)."""

    __slots__ = ("_aead", "_little_endian", "k", "n", "suite")

    def __init__(self, suite: Suite, k: bytes | None = None) -> None:
        self.suite = suite
        self._little_endian = cipher_name(suite) == "ChaChaPoly"
        self.k: bytes | None = None
        self._aead: ChaCha20Poly1305 | AESGCM | None = None
        self.n = 0
        if k is not None:
            self.initialize_key(k)

    def initialize_key(self, k: bytes) -> None:
        self.k = k
        self._aead = ChaCha20Poly1305(k) if self._little_endian else AESGCM(k)
        self.n = 0

    @property
    def has_key(self) -> bool:
        return self.k is not None

    def _nonce(self) -> bytes:
        if self.n >= MAX_NONCE:
            raise NoiseError("nonce", "the nonce is exhausted (2^64-1 is reserved)")
        return b"\x00" * 4 + (struct.pack("<Q", self.n) if self._little_endian else struct.pack(">Q", self.n))

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes | bytearray | memoryview) -> bytes:
        if self._aead is None:
            return bytes(plaintext)
        ciphertext = self._aead.encrypt(self._nonce(), plaintext, ad or None)  # any bytes-like: no copy
        self.n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes | bytearray | memoryview) -> bytes:
        if self._aead is None:
            return bytes(ciphertext)
        if len(ciphertext) < TAGLEN:
            raise NoiseError("decrypt", f"a ciphertext holds at least the {TAGLEN}-byte tag, got {len(ciphertext)}")
        try:
            plaintext = self._aead.decrypt(self._nonce(), ciphertext, ad or None)
        except InvalidTag:
            raise NoiseError("decrypt", f"AEAD authentication failed (nonce {self.n})") from None
        self.n += 1  # only after a successful decryption (Noise spec §5.1)
        return plaintext


def cipher_name(suite: str) -> str:
    return suite.split("_")[1]


# --- SymmetricState (Noise spec §5.2) -------------------------------------------------------


def hkdf(ck: bytes, ikm: bytes, outputs: int) -> list[bytes]:
    temp = hmac.new(ck, ikm, hashlib.sha256).digest()
    out: list[bytes] = []
    prev = b""
    for i in range(1, outputs + 1):
        prev = hmac.new(temp, prev + bytes([i]), hashlib.sha256).digest()
        out.append(prev)
    return out


class SymmetricState:
    __slots__ = ("ck", "cs", "h")

    def __init__(self, protocol_name: bytes, suite: Suite) -> None:
        self.h = protocol_name.ljust(HASHLEN, b"\x00") if len(protocol_name) <= HASHLEN else (
            hashlib.sha256(protocol_name).digest())
        self.ck = self.h
        self.cs = CipherState(suite)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.cs.initialize_key(temp_k[:KEYLEN])

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cs.initialize_key(temp_k[:KEYLEN])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cs.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cs.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = hkdf(self.ck, b"", 2)
        return CipherState(self.cs.suite, k1[:KEYLEN]), CipherState(self.cs.suite, k2[:KEYLEN])

    def copy(self) -> SymmetricState:
        other = SymmetricState.__new__(SymmetricState)
        other.h, other.ck = self.h, self.ck
        other.cs = CipherState(self.cs.suite, self.cs.k)
        other.cs.n = self.cs.n
        return other


# --- HandshakeState for KKpsk2 (Noise spec §5.3, §7.5, §9) ------------------------------------
#
#   KKpsk2:
#     -> s
#     <- s
#     ...
#     -> e, es, ss
#     <- e, ee, se, psk
#
# Sendspin: the server is the initiator, the client the responder (connection.md, Pattern).

MESSAGE_TOKENS: tuple[tuple[str, ...], ...] = (("e", "es", "ss"), ("e", "ee", "se", "psk"))


def protocol_name(suite: Suite) -> str:
    return f"Noise_{PATTERN}_{suite}"


@dataclass
class Transport:
    """The two CipherStates after Split, from this side's point of view."""

    send: CipherState
    receive: CipherState
    handshake_hash: bytes


class KKpsk2Handshake:
    """One KKpsk2 handshake. `initiator` writes message 1 and reads message 2.

    `psk` may be given late (`set_psk`) because the responder learns which PSK
    to use from message 1's payload. `ephemeral` pins the ephemeral private
    key (test vectors only).
    """

    def __init__(self, *, suite: Suite, initiator: bool, static: bytes, remote_static: bytes,
                 prologue: bytes, psk: bytes | None = None, ephemeral: bytes | None = None) -> None:
        if suite not in SUITES:
            raise ValueError(f"unknown suite {suite!r}; Sendspin defines {SUITES}")
        self.suite = suite
        self.initiator = initiator
        self.s = static
        self.s_pub = public_key(static)
        self.rs = remote_static
        self.psk = psk
        self._e = ephemeral
        self.re: bytes | None = None
        self.ss = SymmetricState(protocol_name(suite).encode("ascii"), suite)
        self.ss.mix_hash(prologue)
        # Pre-messages: the initiator's static first, then the responder's.
        initiator_s, responder_s = (self.s_pub, self.rs) if initiator else (self.rs, self.s_pub)
        self.ss.mix_hash(initiator_s)
        self.ss.mix_hash(responder_s)
        self.message_index = 0

    def set_psk(self, psk: bytes) -> None:
        if len(psk) != 32:
            raise ValueError(f"a PSK is 32 bytes, got {len(psk)}")
        self.psk = psk

    @property
    def done(self) -> bool:
        return self.message_index == len(MESSAGE_TOKENS)

    @property
    def handshake_hash(self) -> bytes:
        return self.ss.h

    def _my_turn(self) -> bool:
        return (self.message_index % 2 == 0) == self.initiator

    def _dh_token(self, token: str) -> bytes:
        e, re = self._e or b"", self.re or b""  # both are set by the time a token needs them
        if token == "ee":
            return dh(e, re)
        if token == "ss":
            return dh(self.s, self.rs)
        if token == "es":  # initiator's e with responder's s
            return dh(e, self.rs) if self.initiator else dh(self.s, re)
        if token == "se":  # initiator's s with responder's e
            return dh(self.s, re) if self.initiator else dh(e, self.rs)
        raise AssertionError(token)

    def write_message(self, payload: bytes) -> bytes:
        if self.done or not self._my_turn():
            raise NoiseError("handshake", f"message {self.message_index + 1} is not this side's to write")
        out = bytearray()
        for token in MESSAGE_TOKENS[self.message_index]:
            if token == "e":
                if self._e is None:
                    self._e = os.urandom(DHLEN)
                e_pub = public_key(self._e)
                out += e_pub
                self.ss.mix_hash(e_pub)
                self.ss.mix_key(e_pub)  # psk handshakes also mix e into the key (Noise spec §9.2)
            elif token == "psk":
                self._mix_psk()
            else:
                self.ss.mix_key(self._dh_token(token))
        out += self.ss.encrypt_and_hash(payload)
        self.message_index += 1
        if len(out) > MAX_NOISE_MESSAGE:
            raise NoiseError("handshake", f"a Noise message is at most {MAX_NOISE_MESSAGE} bytes, got {len(out)}")
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        if self.done or self._my_turn():
            raise NoiseError("handshake", f"message {self.message_index + 1} is not this side's to read")
        if len(message) > MAX_NOISE_MESSAGE:
            raise NoiseError("handshake", f"a Noise message is at most {MAX_NOISE_MESSAGE} bytes, got {len(message)}")
        view = memoryview(message)
        for token in MESSAGE_TOKENS[self.message_index]:
            if token == "e":
                if len(view) < DHLEN:
                    raise NoiseError("handshake", f"message {self.message_index + 1} is too short for its e")
                self.re = bytes(view[:DHLEN])
                view = view[DHLEN:]
                self.ss.mix_hash(self.re)
                self.ss.mix_key(self.re)
            elif token == "psk":
                self._mix_psk()
            else:
                self.ss.mix_key(self._dh_token(token))
        payload = self.ss.decrypt_and_hash(bytes(view))
        self.message_index += 1
        return payload

    def _mix_psk(self) -> None:
        if self.psk is None:
            raise NoiseError("psk", "no PSK chosen before the psk token")
        self.ss.mix_key_and_hash(self.psk)

    def fork(self) -> KKpsk2Handshake:
        """A copy to try a message on without committing (the server's Sentinel retry)."""
        other = KKpsk2Handshake.__new__(KKpsk2Handshake)
        other.__dict__.update(self.__dict__)
        other.ss = self.ss.copy()
        return other

    def split(self) -> Transport:
        if not self.done:
            raise NoiseError("handshake", "split before the last handshake message")
        c1, c2 = self.ss.split()  # c1: initiator -> responder
        send, receive = (c1, c2) if self.initiator else (c2, c1)
        return Transport(send, receive, self.ss.h)
