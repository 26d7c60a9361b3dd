"""The seam between wire revisions. Callers hold a Profile, obtained by name
(`get_profile("legacy")`), and never look at framing themselves, so the
`noise` revision slots in beside `legacy`.

Two levels, because a revision may keep state per connection:

- `Profile` (one per process, stateless): `session(side)` opens the codec of
  one connection, and `prepare_audio(ts, pcm)` renders an audio chunk once
  into the form every listener's codec starts from.
- `SessionCodec` (one per connection, may hold keys and nonces): `encode`,
  `decode`, `encode_binary` (as head + body, so a large shared payload is
  never copied) and `audio_frame`, the bytes to write for one prepared chunk.
  Calls happen in wire order: `encode` when a message is sent (not when it is
  queued; `encoded_size` measures without advancing anything), `decode` as
  messages arrive.

Legacy: cleartext, stateless. `prepare_audio` returns the complete WebSocket
frame (server frames are unmasked, so the bytes are the same for everyone) and
its codec says `shared_audio`: `audio_frame` is the identity, so a server may
write the prepared bytes as they are, to any number of sessions. Except where the
server dialled the client (the spec's server-initiated connections): then it is the
WebSocket client and must mask every frame (RFC 6455 §5.3), so `session("server",
masked=True)` is a codec without `shared_audio` that frames each chunk again, masked,
for that one connection.

A per-session encrypted revision (Noise: after a handshake every message is
its own AEAD ciphertext under the connection's keys, sent as one WebSocket
binary message) returns the plaintext audio message from `prepare_audio`; its
codec has `shared_audio = False` and `audio_frame` encrypts and frames it for
that one listener; `encode` returns bytes; `encode_binary` returns the whole
ciphertext as head and an empty body.

What the `noise` profile added to the seam (the smallest change that fits it):

- `ready` and `handshake(data)`: a codec may need messages of its own before it
  can encode anything. While `ready` is false, every received message goes to
  `handshake()`, which returns a `HandshakeStep` (send these, done, close);
  `handshake(None)` when the connection opens gives what this side sends first.
  Legacy: always ready; `handshake(None)` is done at once and sends nothing.
- `decode` may return None (a Sendspin fragment of a message still open), an
  `AudioChunk` (13-byte header with `send_ahead`) or a `RawBinary`.
- `encode_messages(message)`: a message too large for one transport message
  becomes several WebSocket messages (Sendspin fragments). Legacy: `[encode()]`.
- `audio_frame(prepared, transmit_us=None)`: `send_ahead` is stamped per
  listener at transmission (messaging.md, Transmit timestamps). Legacy ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from .binary import PLAYER_AUDIO, BinaryMessage, decode_binary, encode_binary
from .codec import decode_json, encode_json
from .errors import ProtocolError
from .messages import Message
from .wsframes import BINARY, encode_frame, parse_header

WireData = str | bytes  # str = WebSocket text message, bytes = binary message
BinaryParts = tuple[bytes, bytes | memoryview]  # one binary message = head + body (body: shared, never copied)
Side = Literal["client", "server"]

if TYPE_CHECKING:
    from .noise_plaintext import AudioChunk, RawBinary

    Decoded = Message | BinaryMessage | AudioChunk | RawBinary | None


@dataclass(frozen=True)
class HandshakeStep:
    """What one input of a codec's handshake phase leads to."""

    send: tuple[WireData, ...] = ()  # write these, in order (str: text message, bytes: binary)
    done: bool = False  # the (re-)handshake completed: application messages from now on
    close: bool = False  # close the connection after writing `send`
    error: ProtocolError | None = None  # why it closes
    server_error: str | None = None  # client: the reason of a server/error received
    notes: tuple[str, ...] = ()  # tolerated oddities, for logs


class SessionCodec(Protocol):
    """The codec of one connection; per-connection state (keys, nonces) lives here."""

    @property
    def ready(self) -> bool:
        """False while the codec's own handshake runs: received messages go to `handshake()`."""
        ...

    def handshake(self, data: WireData | None) -> HandshakeStep: ...

    @property
    def shared_audio(self) -> bool:
        """True: `audio_frame(prepared)` is `prepared` itself, the same bytes for every session."""
        ...

    def encode(self, message: Message) -> WireData: ...

    def encode_messages(self, message: Message) -> list[WireData]:
        """Every WebSocket message that carries `message`, in order (one unless fragmented)."""
        ...

    def encoded_size(self, message: Message) -> int:
        """The bytes `encode(message)` would send, without advancing any state."""
        ...

    def encode_binary(self, message_type: int, timestamp_us: int, payload: bytes | memoryview) -> BinaryParts: ...

    def decode(self, data: WireData) -> Decoded: ...

    def audio_frame(self, prepared: bytes, transmit_us: int | None = None) -> bytes:
        """The complete WebSocket frame (server to client) carrying one chunk that
        `Profile.prepare_audio` prepared."""
        ...


class Profile(Protocol):
    name: str

    def session(self, side: Side, masked: bool = False) -> SessionCodec:
        """The codec of one connection; `masked`: this side dialled, so its frames are masked."""
        ...

    def prepare_audio(self, timestamp_us: int, pcm: bytes | memoryview) -> bytes:
        """One player audio chunk, rendered once per format, shared by every session."""
        ...


class LegacySession:
    """Cleartext revision: JSON in text messages, binary = type + int64 µs + payload."""

    shared_audio = True
    ready = True

    def handshake(self, data: WireData | None) -> HandshakeStep:
        if data is not None:
            raise ProtocolError("?", "", "the legacy revision has no codec handshake: decode every message")
        return HandshakeStep(done=True)

    def encode(self, message: Message) -> WireData:
        return encode_json(message)

    def encode_messages(self, message: Message) -> list[WireData]:
        return [encode_json(message)]

    def encoded_size(self, message: Message) -> int:
        return len(encode_json(message))

    def encode_binary(self, message_type: int, timestamp_us: int, payload: bytes | memoryview) -> BinaryParts:
        return encode_binary(message_type, timestamp_us), payload

    def decode(self, data: WireData) -> Message | BinaryMessage:
        if isinstance(data, str):
            return decode_json(data)
        return decode_binary(data)

    def audio_frame(self, prepared: bytes, transmit_us: int | None = None) -> bytes:
        return prepared


class MaskedLegacySession(LegacySession):
    """Cleartext, for a server that dialled: each prepared (unmasked) audio frame is
    framed again with a mask of its own."""

    shared_audio = False

    def audio_frame(self, prepared: bytes) -> bytes:
        header = parse_header(prepared)
        assert header is not None and header.opcode == BINARY, "prepare_audio makes one whole binary frame"
        return encode_frame(BINARY, memoryview(prepared)[header.size:], mask=True)


_LEGACY_SESSION = LegacySession()  # no per-connection state: every connection shares one
_MASKED_LEGACY_SESSION = MaskedLegacySession()


class LegacyProfile:
    name = "legacy"

    def session(self, side: Side, masked: bool = False) -> LegacySession:
        return _MASKED_LEGACY_SESSION if masked else _LEGACY_SESSION

    def prepare_audio(self, timestamp_us: int, pcm: bytes | memoryview) -> bytes:
        return encode_frame(BINARY, encode_binary(PLAYER_AUDIO, timestamp_us, pcm))

    # Stateless shortcuts, legacy only (a per-session revision has no codec without a session).

    def encode(self, message: Message) -> WireData:
        return _LEGACY_SESSION.encode(message)

    def decode(self, data: WireData) -> Message | BinaryMessage:
        return _LEGACY_SESSION.decode(data)


def _noise_profile() -> Profile:
    from .noise import NoiseProfile  # noise imports this module: resolved at first use

    return NoiseProfile()


_FACTORIES = {"legacy": LegacyProfile, "noise": _noise_profile}
PROFILES: dict[str, Profile] = {}


def get_profile(name: str) -> Profile:
    """The process's profile of that name. `noise`: a fresh random identity, the
    Sentinel PSK only, ChaChaPoly for a client; build a `NoiseProfile` for others."""
    if name not in PROFILES:
        try:
            PROFILES[name] = _FACTORIES[name]()
        except KeyError:
            raise ValueError(f"unknown protocol profile {name!r}; known: {sorted(_FACTORIES)}") from None
    return PROFILES[name]
