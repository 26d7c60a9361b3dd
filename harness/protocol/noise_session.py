"""One connection of the `noise` revision, sans-I/O: the cleartext init exchange,
the Noise KKpsk2 handshake, transport mode with fragmentation, and the
server-initiated re-handshake (spec `connection.md`, "Encryption";
`messaging.md`, "Communication", "Fragmentation").

`NoiseSession` is the `SessionCodec` of the `noise` profile. Its phases:

    server: AWAITING_CLIENT_INIT -> AWAITING_NOISE_2 -> TRANSPORT (<-> REHANDSHAKE)
    client: START -> AWAITING_SERVER_INIT -> AWAITING_NOISE_1 -> TRANSPORT
    either: -> CLOSED on any failure

While not `ready`, every received WebSocket message goes to `handshake(data)`,
which returns a `HandshakeStep`: what to send, whether the handshake is done,
whether to close. The client starts with `handshake(None)` (its `client/init`).

- Init failure (server, from `client/init` alone): the step sends `server/error`
  with its reason, then closes. `version` is checked before `suite`, then the
  rest; anything not JSON of the defined shape is `malformed`.
- Every other handshake failure is silent: the step closes and sends nothing.

In transport mode every message is one Noise transport message in one
WebSocket binary message; `decode` returns a typed message, an `AudioChunk`, a
`RawBinary`, or None while a fragmented message is still open. A breach after
which the connection must close raises `ConnectionFatal` (AEAD failure, a
cleartext message, a malformed fragment sequence) and the session is CLOSED.

Re-handshake: the server calls `rehandshake(psk)`; the client's `decode` returns
the `NoiseHandshake` it carried, which the caller passes to `handshake()` (the
client answers with message 2 under the old keys, the server switches keys on
it). The prologue is the prior handshake hash; the server's first message under
the new keys must be `server/activate`, and the client sends nothing new from
message 1 until that activation arrives.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .binary import encode_binary as encode_legacy_binary
from .clock import now_us
from .codec import decode_json, encode_json
from .errors import ConnectionFatal, ProtocolError
from .fragments import (
    DEFAULT_REASSEMBLY_CAP,
    MAX_PAYLOAD,
    MAX_PLAINTEXT,
    MAX_TRANSPORT_MESSAGE,
    Reassembler,
    fragment_count,
    fragment_plaintexts,
)
from .messages import (
    NOISE_MESSAGE_TYPES,
    ClientInit,
    Message,
    NoiseHandshake,
    ServerActivate,
    ServerError,
    ServerInit,
)
from .noise_crypto import (
    PSK_CATEGORIES,
    SENTINEL,
    SUITES,
    CipherState,
    Identity,
    KKpsk2Handshake,
    NoiseError,
    Psk,
    Suite,
    b64url,
    b64url_decode,
    peer_key,
)
from .noise_plaintext import (
    JSON_BODY,
    PLAYER_AUDIO,
    AudioChunk,
    RawBinary,
    decode_audio,
    encode_audio,
    stamp_send_ahead,
)
from .profile import HandshakeStep
from .wsframes import BINARY, encode_frame

PROTOCOL_VERSION = 1


class Phase(enum.Enum):
    START = "start"
    AWAITING_CLIENT_INIT = "awaiting_client_init"
    AWAITING_SERVER_INIT = "awaiting_server_init"
    AWAITING_NOISE_1 = "awaiting_noise_1"
    AWAITING_NOISE_2 = "awaiting_noise_2"
    TRANSPORT = "transport"
    REHANDSHAKE = "rehandshake"  # server: message 1 sent in transport, awaiting message 2
    CLOSED = "closed"


class InitRejected(ProtocolError):
    """`client/init` refused from its cleartext alone; `reason` goes into server/error."""

    def __init__(self, reason: str, field: str, rule: str) -> None:
        self.reason = reason
        super().__init__("client/init", field, rule)


def check_client_init(text: str | bytes) -> ClientInit:
    """Parse `client/init` in the spec's order (connection.md, Failure Handling):
    envelope, `version` (any integer other than 1 is unsupported_version whatever
    the rest), `suite`, then the remaining fields. Raises InitRejected."""
    if isinstance(text, bytes):
        raise InitRejected("malformed", "", "client/init must be a WebSocket text message")
    try:
        obj: Any = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InitRejected("malformed", "", f"not JSON: {exc}") from None
    payload = obj.get("payload") if isinstance(obj, dict) else None
    if not isinstance(payload, dict) or obj.get("type") != ClientInit.TYPE:
        raise InitRejected("malformed", "type", "not a client/init envelope ({type: client/init, payload: {}})")
    version = payload.get("version")
    if type(version) is not int:  # a JSON true is no version; neither is 1.0
        raise InitRejected("malformed", "payload.version", f"must be an integer, got {version!r}")
    if version != PROTOCOL_VERSION:
        raise InitRejected("unsupported_version", "payload.version", f"must be {PROTOCOL_VERSION}, got {version}")
    suite = payload.get("suite")
    if not isinstance(suite, str):
        raise InitRejected("malformed", "payload.suite", f"must be a string, got {suite!r}")
    if suite not in SUITES:
        raise InitRejected("unsupported_suite", "payload.suite", f"must be one of {list(SUITES)}, got {suite!r}")
    client_id = payload.get("client_id")
    try:
        peer_key(client_id)
    except ValueError as exc:
        raise InitRejected("malformed", "payload.client_id", str(exc)) from None
    return ClientInit(client_id=client_id, version=version, suite=suite)


def _text_bytes(data: str | bytes) -> bytes:
    # websockets hands text messages over as str; their UTF-8 is the exact wire bytes
    # (a valid UTF-8 sequence has one encoding), so the prologue hashes what was sent.
    return data.encode("utf-8") if isinstance(data, str) else data


def _handshake_text(noise_message: bytes) -> str:
    return encode_json(NoiseHandshake(data=b64url(noise_message)))


def _msg1_payload(psk: Psk) -> bytes:
    return json.dumps({"psk_id": psk.id, "psk_category": psk.category}, separators=(",", ":")).encode()


@dataclass
class _Pending:
    """A handshake in progress."""

    hs: KKpsk2Handshake
    psk: Psk | None = None  # the PSK message 1 referenced (server) or the client chose
    fork: KKpsk2Handshake | None = None  # server: state after message 1, for the Sentinel retry
    rehandshake: bool = False


@dataclass(eq=False)  # a connection is equal only to itself
class NoiseSession:
    """The codec of one `noise` connection. Server: `server_psks` maps a client_id
    to the PSK to reference for it (absent: the Sentinel). Client: `client_psks`
    are its candidates (the Sentinel is always one)."""

    side: str
    identity: Identity
    suite: Suite = "25519_ChaChaPoly_SHA256"  # client: the suite it announces; server: learnt from client/init
    server_psks: Mapping[str, Psk] = field(default_factory=dict)
    client_psks: Sequence[Psk] = ()
    reassembly_cap: int = DEFAULT_REASSEMBLY_CAP
    shared_audio = False

    def __post_init__(self) -> None:
        if self.side not in ("client", "server"):
            raise ValueError(f"side must be 'client' or 'server', got {self.side!r}")
        if self.suite not in SUITES:
            raise ValueError(f"unknown suite {self.suite!r}; Sendspin defines {SUITES}")
        self.phase = Phase.AWAITING_CLIENT_INIT if self.side == "server" else Phase.START
        self.peer_id: str | None = None
        self.psk: Psk | None = None  # the PSK the session is keyed with
        self.credential_mismatch = False  # server: message 2 validated only under the Sentinel
        self.handshake_hash: bytes | None = None
        self.rehandshakes = 0
        self._client_init: bytes = b""
        self._pending: _Pending | None = None
        self._send: CipherState | None = None
        self._receive: CipherState | None = None
        self._reassembler = Reassembler(self.reassembly_cap)
        self._must_activate = False  # server: the next message must be server/activate
        self._awaiting_activate = False  # client: nothing new until server/activate arrives

    # --- state --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Application messages may be decoded (and, outside a re-handshake, encoded)."""
        return self.phase in (Phase.TRANSPORT, Phase.REHANDSHAKE)

    def _fail(self, error: ProtocolError, send: tuple[str | bytes, ...] = ()) -> HandshakeStep:
        self.phase = Phase.CLOSED
        self._pending = None
        return HandshakeStep(send=send, close=True, error=error)

    def _fatal(self, error: ProtocolError) -> ConnectionFatal:
        self.phase = Phase.CLOSED
        if isinstance(error, ConnectionFatal):
            return error
        fatal = ConnectionFatal(error.message_type, error.field, error.rule)
        fatal.__cause__ = error
        return fatal

    # --- handshake ----------------------------------------------------------------------

    def handshake(self, data: str | bytes | NoiseHandshake | None) -> HandshakeStep:
        """Feed one message of the handshake phase (None: the connection just opened)."""
        if self.phase is Phase.CLOSED:
            raise ProtocolError("noise", "", "the session is closed")
        if isinstance(data, NoiseHandshake):
            return self._rehandshake_message(data)
        if data is None:
            if self.phase is Phase.START:
                self._client_init = encode_json(ClientInit(
                    client_id=self.identity.peer_id, version=PROTOCOL_VERSION, suite=self.suite)).encode()
                self.phase = Phase.AWAITING_SERVER_INIT
                return HandshakeStep(send=(self._client_init.decode(),))
            return HandshakeStep()
        try:
            if self.phase is Phase.AWAITING_CLIENT_INIT:
                return self._on_client_init(data)
            if self.phase is Phase.AWAITING_SERVER_INIT:
                return self._on_server_init(data)
            if self.phase is Phase.AWAITING_NOISE_1:
                return self._on_noise_1(data)
            if self.phase is Phase.AWAITING_NOISE_2:
                return self._on_noise_2(data)
        except InitRejected as exc:
            return self._fail(exc, (encode_json(ServerError(reason=exc.reason)),))
        except ProtocolError as exc:
            return self._fail(exc)
        raise ProtocolError("noise", "", f"no handshake message is expected in phase {self.phase.value}")

    def _cleartext(self, data: str | bytes, expected: type[Message]) -> Message:
        if isinstance(data, bytes):
            raise NoiseError("cleartext", f"{expected.TYPE} must be a WebSocket text message, got binary")
        message = decode_json(data, NOISE_MESSAGE_TYPES)
        if not isinstance(message, expected | ServerError):
            raise NoiseError("cleartext", f"expected {expected.TYPE}, got {message.TYPE}")
        return message

    def _noise_bytes(self, message: NoiseHandshake) -> bytes:
        try:
            return b64url_decode(message.data)
        except ValueError as exc:
            raise NoiseError("handshake", f"noise/handshake data: {exc}") from None

    def _on_client_init(self, data: str | bytes) -> HandshakeStep:
        init = check_client_init(data)
        self.suite = init.suite  # type: ignore[assignment]  # checked against SUITES
        self.peer_id = init.client_id
        psk = self.server_psks.get(init.client_id, SENTINEL)
        server_init = encode_json(ServerInit(server_id=self.identity.peer_id, version=PROTOCOL_VERSION))
        hs = KKpsk2Handshake(suite=self.suite, initiator=True, static=self.identity.private,
                             remote_static=peer_key(init.client_id),
                             prologue=_text_bytes(data) + server_init.encode(), psk=psk.key)
        message_1 = hs.write_message(_msg1_payload(psk))
        self._pending = _Pending(hs, psk, fork=hs.fork() if psk.category != "sn" else None)
        self.phase = Phase.AWAITING_NOISE_2
        return HandshakeStep(send=(server_init, _handshake_text(message_1)))

    def _on_server_init(self, data: str | bytes) -> HandshakeStep:
        message = self._cleartext(data, ServerInit)
        if isinstance(message, ServerError):
            self.phase = Phase.CLOSED
            return HandshakeStep(close=True, server_error=message.reason, error=ProtocolError(
                "server/error", "reason", f"the server refused client/init: {message.reason!r}"))
        assert isinstance(message, ServerInit)  # decode_json checked that version is an integer
        if message.version != PROTOCOL_VERSION:
            raise NoiseError("server/init", f"version must be {PROTOCOL_VERSION}, got {message.version}")
        try:
            server_key = peer_key(message.server_id)
        except ValueError as exc:
            raise NoiseError("server/init", f"server_id: {exc}") from None
        self.peer_id = message.server_id
        self._pending = _Pending(KKpsk2Handshake(
            suite=self.suite, initiator=False, static=self.identity.private, remote_static=server_key,
            prologue=self._client_init + _text_bytes(data)))
        self.phase = Phase.AWAITING_NOISE_1
        return HandshakeStep()

    def _choose_psk(self, payload: bytes, *, rehandshake: bool) -> Psk:
        """Client: the PSK message 1 references, or the Sentinel on a miss (initial handshake only)."""
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            raise NoiseError("message 1", "its payload must be UTF-8 JSON") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("psk_id"), str) or len(obj["psk_id"]) != 43:
            raise NoiseError("message 1", "its payload needs psk_id, 43 characters of base64url")
        category = obj.get("psk_category")
        if category not in PSK_CATEGORIES:
            raise NoiseError("message 1", f"psk_category must be one of {list(PSK_CATEGORIES)}, got {category!r}")
        for psk in (*self.client_psks, SENTINEL):
            if psk.category == category and psk.id == obj["psk_id"]:
                if psk.category == "lt" and psk.server_id != self.peer_id:
                    raise NoiseError("psk", f"the long-term PSK matched is bound to server {psk.server_id}, "
                                            f"not to {self.peer_id}")
                return psk
        if rehandshake:
            raise NoiseError("psk", f"no PSK matches psk_id {obj['psk_id']} ({category}) in a re-handshake")
        return SENTINEL  # Sentinel Fallback

    def _on_noise_1(self, data: str | bytes) -> HandshakeStep:
        message = self._cleartext(data, NoiseHandshake)
        if not isinstance(message, NoiseHandshake):
            raise NoiseError("cleartext", "expected noise/handshake, got server/error")
        assert self._pending is not None
        hs = self._pending.hs
        payload = hs.read_message(self._noise_bytes(message))
        psk = self._choose_psk(payload, rehandshake=False)
        hs.set_psk(psk.key)
        message_2 = hs.write_message(b"{}")
        self._enter_transport(hs, psk)
        return HandshakeStep(send=(_handshake_text(message_2),), done=True)

    def _read_message_2(self, noise_message: bytes) -> tuple[bytes, list[str]]:
        """Server: message 2 under the referenced PSK, else under the Sentinel (Sentinel
        Fallback, initial handshake only)."""
        assert self._pending is not None and self._pending.psk is not None
        pending = self._pending
        try:
            return pending.hs.read_message(noise_message), []
        except NoiseError:
            if pending.fork is None:
                raise
        retry = pending.fork
        retry.set_psk(SENTINEL.key)
        payload = retry.read_message(noise_message)  # raises: the handshake fails
        pending.hs, pending.psk = retry, SENTINEL
        self.credential_mismatch = True
        return payload, ["message 2 validated only under the Sentinel PSK: credential mismatch"]

    def _check_message_2_payload(self, payload: bytes) -> list[str]:
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            raise NoiseError("message 2", "its payload must be UTF-8 JSON, the empty object") from None
        if not isinstance(obj, dict):
            raise NoiseError("message 2", "its payload must be a JSON object")
        return [] if payload == b"{}" else [f"message 2 payload is not the literal bytes {{}}: {payload[:40]!r}"]

    def _on_noise_2(self, data: str | bytes) -> HandshakeStep:
        message = self._cleartext(data, NoiseHandshake)
        if not isinstance(message, NoiseHandshake):
            raise NoiseError("cleartext", "expected noise/handshake")
        payload, notes = self._read_message_2(self._noise_bytes(message))
        notes += self._check_message_2_payload(payload)
        assert self._pending is not None and self._pending.psk is not None
        self._enter_transport(self._pending.hs, self._pending.psk)
        return HandshakeStep(done=True, notes=tuple(notes))

    def _enter_transport(self, hs: KKpsk2Handshake, psk: Psk) -> None:
        transport = hs.split()
        self._send, self._receive = transport.send, transport.receive
        self.handshake_hash = transport.handshake_hash
        self.psk = psk
        self._pending = None
        self.phase = Phase.TRANSPORT

    # --- re-handshake --------------------------------------------------------------------

    def rehandshake(self, psk: Psk | None = None) -> HandshakeStep:
        """Server: start a re-handshake to `psk` (default: the session's PSK). The step
        sends Noise message 1, encrypted under the current keys."""
        if self.side != "server":
            raise ProtocolError("noise/handshake", "", "only the server starts a re-handshake")
        if self.phase is not Phase.TRANSPORT or self._reassembler.in_flight:
            raise ProtocolError("noise/handshake", "",
                                f"a re-handshake starts in transport mode, not {self.phase.value}")
        psk = psk or self.psk or SENTINEL
        assert self.peer_id is not None and self.handshake_hash is not None
        hs = KKpsk2Handshake(suite=self.suite, initiator=True, static=self.identity.private,
                             remote_static=peer_key(self.peer_id), prologue=self.handshake_hash, psk=psk.key)
        message_1 = hs.write_message(_msg1_payload(psk))
        wire = self._encrypt_json(_handshake_text(message_1).encode())
        self._pending = _Pending(hs, psk, rehandshake=True)
        self.phase = Phase.REHANDSHAKE
        return HandshakeStep(send=tuple(wire))

    def _rehandshake_message(self, message: NoiseHandshake) -> HandshakeStep:
        try:
            if self.side == "client":
                if self.phase is not Phase.TRANSPORT:
                    raise NoiseError("re-handshake", f"message 1 arrived in phase {self.phase.value}")
                assert self.peer_id is not None and self.handshake_hash is not None
                hs = KKpsk2Handshake(suite=self.suite, initiator=False, static=self.identity.private,
                                     remote_static=peer_key(self.peer_id), prologue=self.handshake_hash)
                payload = hs.read_message(self._noise_bytes(message))
                psk = self._choose_psk(payload, rehandshake=True)
                hs.set_psk(psk.key)
                message_2 = hs.write_message(b"{}")
                wire = self._encrypt_json(_handshake_text(message_2).encode())  # under the old keys
                self._enter_transport(hs, psk)
                self._awaiting_activate = True
                self.rehandshakes += 1
                return HandshakeStep(send=tuple(wire), done=True)
            if self.phase is not Phase.REHANDSHAKE or self._pending is None:
                raise NoiseError("re-handshake", f"message 2 arrived in phase {self.phase.value}")
            payload = self._pending.hs.read_message(self._noise_bytes(message))
            notes = self._check_message_2_payload(payload)
            assert self._pending.psk is not None
            self._enter_transport(self._pending.hs, self._pending.psk)
            self._must_activate = True
            self.rehandshakes += 1
            return HandshakeStep(done=True, notes=tuple(notes))
        except ProtocolError as exc:
            return self._fail(exc)

    # --- transport: sending --------------------------------------------------------------

    def _check_may_send(self, message: Message | None) -> None:
        if self.phase is Phase.REHANDSHAKE:
            raise ProtocolError(message.TYPE if message else "binary", "",
                                "after Noise message 1 the server starts no application message "
                                "until the re-handshake completes")
        if self.phase is not Phase.TRANSPORT or self._send is None:
            raise ProtocolError(message.TYPE if message else "binary", "",
                                f"no application message before the handshake completes (phase {self.phase.value})")
        if self._awaiting_activate:
            raise ProtocolError(message.TYPE if message else "binary", "",
                                "after a re-handshake's message 1 the client sends nothing new "
                                "until the new server/activate")
        if self._must_activate:
            if not isinstance(message, ServerActivate):
                raise ProtocolError(message.TYPE if message else "binary", "",
                                    "the first message under re-handshaken keys must be server/activate")
            self._must_activate = False

    def _encrypt(self, plaintext: bytes | bytearray) -> bytes:
        assert self._send is not None
        return self._send.encrypt_with_ad(b"", plaintext)

    def _encrypt_json(self, body: bytes) -> list[bytes]:
        return [self._encrypt(p) for p in fragment_plaintexts(JSON_BODY, body)]

    def encode_messages(self, message: Message) -> list[bytes]:
        """The WebSocket binary messages carrying `message`: one, or its fragments.
        Send them in order with no other message in between."""
        self._check_may_send(message)
        return self._encrypt_json(encode_json(message).encode())

    def encode(self, message: Message) -> bytes:
        body = encode_json(message).encode()
        if len(body) > MAX_PAYLOAD:
            raise ProtocolError(message.TYPE, "", f"{len(body)} bytes need fragments: use encode_messages")
        self._check_may_send(message)
        return self._encrypt(bytes([JSON_BODY]) + body)

    def encoded_size(self, message: Message) -> int:
        size = len(encode_json(message).encode())
        n = fragment_count(size)
        return 1 + size + 16 if n == 1 else size + 3 + 2 * (n - 1) + 16 * n

    def encode_binary(self, message_type: int, timestamp_us: int, payload: bytes | memoryview) -> tuple[bytes, bytes]:
        """One binary message as (ciphertext, b""). Player audio gets the 13-byte header
        with `send_ahead` stamped now; other types keep the legacy layout (type +
        int64 timestamp + payload), the harness's application role's; `encode_raw`
        sends exact bytes."""
        (ciphertext,) = self.encode_binary_messages(message_type, timestamp_us, payload, max_messages=1)
        return ciphertext, b""

    def encode_binary_messages(self, message_type: int, timestamp_us: int, payload: bytes | memoryview,
                               *, max_messages: int | None = None) -> list[bytes]:
        if message_type == PLAYER_AUDIO:
            plaintext = stamp_send_ahead(encode_audio(timestamp_us, 0, payload), now_us())
        else:
            plaintext = bytearray(encode_legacy_binary(message_type, timestamp_us, payload))
        return self._encrypt_plaintext(plaintext, max_messages)

    def encode_raw(self, message_type: int, data: bytes | memoryview) -> list[bytes]:
        """`[type][data]` exactly, fragmented if it must be."""
        return self._encrypt_plaintext(bytes([message_type]) + data, None)

    def encrypt_plaintext(self, plaintext: bytes) -> bytes:
        """One transport message of exactly `plaintext`, unchecked (a test's malformed
        fragment sequence: what encode_raw refuses to make)."""
        self._check_may_send(None)
        return self._encrypt(plaintext)

    def seal(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        """One transport message of exactly `plaintext`, with no check of what may be sent
        when: for a relay that passes its peer's messages on in their order (the
        terminating proxy), where the order rules are the peers' to keep."""
        if self._send is None or not self.ready:
            raise ProtocolError("noise", "", f"seal before the handshake completed (phase {self.phase.value})")
        return self._send.encrypt_with_ad(b"", plaintext)

    def open(self, data: bytes | bytearray | memoryview) -> bytes:
        """The plaintext of one received transport message as is, fragments not
        reassembled (the relay's counterpart of `seal`). `ConnectionFatal` as `decode`."""
        if not self.ready or self._receive is None:
            raise ProtocolError("noise", "", f"open before the handshake completed (phase {self.phase.value})")
        if len(data) > MAX_TRANSPORT_MESSAGE:
            raise self._fatal(NoiseError("transport", f"a transport message is at most {MAX_TRANSPORT_MESSAGE} "
                                                      f"bytes, got {len(data)}"))
        try:
            return self._receive.decrypt_with_ad(b"", data)
        except ProtocolError as exc:
            raise self._fatal(exc) from None

    def _encrypt_plaintext(self, plaintext: bytes | bytearray, max_messages: int | None) -> list[bytes]:
        if max_messages is not None and fragment_count(len(plaintext) - 1) > max_messages:
            raise ProtocolError("binary", "", f"{len(plaintext)} bytes need fragments: use encode_binary_messages")
        self._check_may_send(None)
        return [self._encrypt(p) for p in fragment_plaintexts(plaintext[0], memoryview(plaintext)[1:])]

    def audio_messages(self, prepared: bytes, transmit_us: int | None = None) -> list[bytes]:
        """The binary messages of one prepared chunk for this listener, `send_ahead`
        stamped for a transmission at `transmit_us` (default: now)."""
        self._check_may_send(None)
        plaintext = stamp_send_ahead(prepared, now_us() if transmit_us is None else transmit_us)
        if len(plaintext) <= MAX_PLAINTEXT:  # the usual case: one message, no further copy
            return [self._encrypt(plaintext)]
        return [self._encrypt(p) for p in fragment_plaintexts(PLAYER_AUDIO, memoryview(plaintext)[1:])]

    def audio_frame(self, prepared: bytes, transmit_us: int | None = None) -> bytes:
        """The WebSocket frame(s) (server to client, unmasked) of one prepared chunk."""
        return b"".join(encode_frame(BINARY, m) for m in self.audio_messages(prepared, transmit_us))

    # --- transport: receiving ------------------------------------------------------------

    def decode(self, data: str | bytes) -> Message | AudioChunk | RawBinary | None:
        """One received WebSocket message in transport mode. None: a fragment of a
        message still open. `ConnectionFatal`: close the connection silently."""
        if not self.ready or self._receive is None:
            raise ProtocolError("noise", "", f"decode before the handshake completed (phase {self.phase.value})")
        if isinstance(data, str):
            raise self._fatal(NoiseError("transport", "a cleartext (text) message after the switch to transport mode"))
        if len(data) > MAX_TRANSPORT_MESSAGE:
            raise self._fatal(NoiseError("transport", f"a transport message is at most {MAX_TRANSPORT_MESSAGE} "
                                                      f"bytes, got {len(data)}"))
        try:
            plaintext = self._receive.decrypt_with_ad(b"", data)
            complete = self._reassembler.feed(plaintext)
        except ProtocolError as exc:
            raise self._fatal(exc) from None
        if complete is None:
            return None
        message_type, payload = complete
        if message_type == JSON_BODY:
            message = decode_json(payload, NOISE_MESSAGE_TYPES)  # a bad message is not fatal by itself
            if isinstance(message, ServerActivate) and self.side == "client":
                self._awaiting_activate = False
            return message
        if message_type == PLAYER_AUDIO:
            return decode_audio(message_type, payload)
        # Every other id, reserved ones (2-3: aiosendspin's pre-#172 fragments) included, is
        # returned as is: messaging.md has receivers ignore binary ids they do not implement.
        return RawBinary(message_type, payload)
