"""Every JSON message of both Sendspin revisions, typed.

One dataclass per message (its `TYPE` is the wire `type`) and one per role
object. The annotations are the schema; see `fields.py` for how they read.

- `legacy` (README.md @ 7e3157c): `ALL_MESSAGES`, `MESSAGE_TYPES`.
- `noise` (`messaging.md`, `roles/player/v1.md` of the current spec): the
  messages new to it (`client/init`, `server/init`, `server/error`,
  `noise/handshake`, `server/activate`, `client/leave`, `server/unpair`) and
  `Noise*` classes for the messages whose shape changed under the same wire
  type (`client/hello` lost `client_id`/`version` to `client/init`,
  `client/state` gained `available`, ...): `NOISE_MESSAGES`,
  `NOISE_MESSAGE_TYPES`. A wire type maps to one class per revision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .fields import UNSET, Unset

Codec = Literal["opus", "flac", "pcm"]
ImageFormat = Literal["jpeg", "png", "bmp"]
ArtworkSource = Literal["album", "artist", "none"]
ClientStateValue = Literal["synchronized", "error", "external_source"]
PlayerCommandName = Literal["volume", "mute"]
ControllerCommandName = Literal[
    "play", "pause", "stop", "next", "previous", "volume", "mute",
    "repeat_off", "repeat_one", "repeat_all", "shuffle", "unshuffle", "switch",
]
GoodbyeReason = Literal["another_server", "shutdown", "restart", "user_request"]

_VOLUME = {"range": (0, 100)}


class Message:
    """Base of all JSON messages."""

    TYPE: ClassVar[str]


# --- role objects ------------------------------------------------------------


@dataclass(kw_only=True)
class DeviceInfo:
    product_name: str | Unset = UNSET
    manufacturer: str | Unset = UNSET
    software_version: str | Unset = UNSET


@dataclass(kw_only=True)
class AudioFormat:
    codec: Codec
    channels: int = field(metadata={"range": (1, 32)})
    sample_rate: int = field(metadata={"range": (1, 1_000_000)})
    bit_depth: int = field(metadata={"range": (1, 64)})


@dataclass(kw_only=True)
class PlayerSupport:
    supported_formats: list[AudioFormat] = field(metadata={"length": (1, 1000)})
    buffer_capacity: int = field(metadata={"range": (1, 2**62)})
    supported_commands: list[PlayerCommandName]


@dataclass(kw_only=True)
class ArtworkChannelSupport:
    source: ArtworkSource
    format: ImageFormat
    media_width: int = field(metadata={"range": (0, 2**31)})
    media_height: int = field(metadata={"range": (0, 2**31)})


@dataclass(kw_only=True)
class ArtworkSupport:
    channels: list[ArtworkChannelSupport] = field(metadata={"length": (1, 4)})


@dataclass(kw_only=True)
class VisualizerSupport:
    buffer_capacity: int = field(metadata={"range": (1, 2**62)})


@dataclass(kw_only=True)
class PlayerState:
    volume: int | Unset = field(default=UNSET, metadata=_VOLUME)
    muted: bool | Unset = UNSET
    # Not in the spec's player object; aiosendspin 6.1.1 sends the client state here.
    state: ClientStateValue | Unset = UNSET


@dataclass(kw_only=True)
class ControllerCommand:
    command: ControllerCommandName
    volume: int | Unset = field(default=UNSET, metadata=_VOLUME)
    mute: bool | Unset = UNSET


@dataclass(kw_only=True)
class Progress:
    track_progress: int
    track_duration: int
    playback_speed: int


@dataclass(kw_only=True)
class MetadataState:
    timestamp: int
    title: str | Unset | None = UNSET
    artist: str | Unset | None = UNSET
    album_artist: str | Unset | None = UNSET
    album: str | Unset | None = UNSET
    artwork_url: str | Unset | None = UNSET
    year: int | Unset | None = UNSET
    track: int | Unset | None = UNSET
    progress: Progress | Unset | None = UNSET
    repeat: Literal["off", "one", "all"] | Unset | None = UNSET
    shuffle: bool | Unset | None = UNSET


@dataclass(kw_only=True)
class ControllerState:
    supported_commands: list[ControllerCommandName]
    volume: int = field(metadata=_VOLUME)
    muted: bool


@dataclass(kw_only=True)
class PlayerCommand:
    command: PlayerCommandName
    volume: int | Unset = field(default=UNSET, metadata=_VOLUME)
    mute: bool | Unset = UNSET


@dataclass(kw_only=True)
class PlayerStream:
    codec: str
    sample_rate: int
    channels: int
    bit_depth: int
    codec_header: str | Unset = UNSET


@dataclass(kw_only=True)
class ArtworkStreamChannel:
    source: ArtworkSource
    format: ImageFormat
    width: int
    height: int


@dataclass(kw_only=True)
class ArtworkStream:
    channels: list[ArtworkStreamChannel] = field(metadata={"length": (0, 4)})


@dataclass(kw_only=True)
class PlayerFormatRequest:
    codec: Codec | Unset = UNSET
    channels: int | Unset = UNSET
    sample_rate: int | Unset = UNSET
    bit_depth: int | Unset = UNSET


@dataclass(kw_only=True)
class ArtworkFormatRequest:
    channel: int = field(metadata={"range": (0, 3)})
    source: ArtworkSource | Unset = UNSET
    format: ImageFormat | Unset = UNSET
    media_width: int | Unset = UNSET
    media_height: int | Unset = UNSET


# --- core messages -------------------------------------------------------------


@dataclass(kw_only=True)
class ClientHello(Message):
    TYPE: ClassVar[str] = "client/hello"
    client_id: str
    name: str
    version: int = field(default=1, metadata={"equals": 1})
    supported_roles: list[str]
    device_info: DeviceInfo | Unset = UNSET
    player_support: PlayerSupport | Unset = field(default=UNSET, metadata={"key": "player@v1_support"})
    artwork_support: ArtworkSupport | Unset = field(default=UNSET, metadata={"key": "artwork@v1_support"})
    visualizer_support: VisualizerSupport | Unset = field(
        default=UNSET, metadata={"key": "visualizer@v1_support"}
    )


@dataclass(kw_only=True)
class ServerHello(Message):
    TYPE: ClassVar[str] = "server/hello"
    server_id: str
    name: str
    version: int = field(default=1, metadata={"equals": 1})
    active_roles: list[str]
    connection_reason: Literal["discovery", "playback"]


@dataclass(kw_only=True)
class ClientTime(Message):
    TYPE: ClassVar[str] = "client/time"
    client_transmitted: int


@dataclass(kw_only=True)
class ServerTime(Message):
    TYPE: ClassVar[str] = "server/time"
    client_transmitted: int
    server_received: int
    server_transmitted: int


@dataclass(kw_only=True)
class ClientState(Message):
    TYPE: ClassVar[str] = "client/state"
    state: ClientStateValue | Unset = UNSET
    player: PlayerState | Unset = UNSET


@dataclass(kw_only=True)
class ClientCommand(Message):
    TYPE: ClassVar[str] = "client/command"
    controller: ControllerCommand | Unset = UNSET


@dataclass(kw_only=True)
class ServerState(Message):
    TYPE: ClassVar[str] = "server/state"
    metadata: MetadataState | Unset = UNSET
    controller: ControllerState | Unset = UNSET


@dataclass(kw_only=True)
class ServerCommand(Message):
    TYPE: ClassVar[str] = "server/command"
    player: PlayerCommand | Unset = UNSET


@dataclass(kw_only=True)
class StreamStart(Message):
    TYPE: ClassVar[str] = "stream/start"
    player: PlayerStream | Unset = UNSET
    artwork: ArtworkStream | Unset = UNSET
    visualizer: dict[str, Any] | Unset = UNSET


@dataclass(kw_only=True)
class StreamClear(Message):
    TYPE: ClassVar[str] = "stream/clear"
    roles: list[str] | Unset = UNSET


@dataclass(kw_only=True)
class StreamRequestFormat(Message):
    TYPE: ClassVar[str] = "stream/request-format"
    player: PlayerFormatRequest | Unset = UNSET
    artwork: ArtworkFormatRequest | Unset = UNSET


@dataclass(kw_only=True)
class StreamEnd(Message):
    TYPE: ClassVar[str] = "stream/end"
    roles: list[str] | Unset = UNSET


@dataclass(kw_only=True)
class GroupUpdate(Message):
    TYPE: ClassVar[str] = "group/update"
    playback_state: Literal["playing", "stopped"] | Unset | None = UNSET
    group_id: str | Unset | None = UNSET
    group_name: str | Unset | None = UNSET


@dataclass(kw_only=True)
class ClientGoodbye(Message):
    TYPE: ClassVar[str] = "client/goodbye"
    reason: GoodbyeReason


# --- the harness's application-specific role `_harness@v1` ---------------------
# The spec reserves `_`-prefixed names for applications. The harness uses them
# for a client->server upload (a JSON header announcing a binary payload) and
# for the server's error reports, which the legacy spec has no message for.

HARNESS_ROLE = "_harness@v1"
UPLOAD_BINARY_TYPE = 192  # first application-specific binary id (role 48, slot 0)


@dataclass(kw_only=True)
class HarnessUpload(Message):
    """Announces that the next message is a binary upload of `size` bytes."""

    TYPE: ClassVar[str] = "_harness/upload"
    upload_id: str
    size: int = field(metadata={"range": (0, 2**40)})
    sha256: str


@dataclass(kw_only=True)
class HarnessUploadResult(Message):
    TYPE: ClassVar[str] = "_harness/upload-result"
    upload_id: str
    size: int
    sha256: str


@dataclass(kw_only=True)
class HarnessError(Message):
    """Why the server rejected something; the session stays open."""

    TYPE: ClassVar[str] = "_harness/error"
    message_type: str
    field: str
    rule: str


# --- the `noise` revision (current spec) --------------------------------------------
#
# Role objects whose content is not this harness's business yet (artwork, visualizer,
# source, color, pairing descriptors) stay plain dicts: unknown keys pass, shape unchecked.

SuiteName = Literal["25519_ChaChaPoly_SHA256", "25519_AESGCM_SHA256"]
ServerErrorReason = Literal["unsupported_version", "unsupported_suite", "malformed"]
Activity = Literal["playback", "pairing"]
NoisePlayerCommandName = Literal["volume", "mute", "set_output_delay"]
NoiseGoodbyeReason = Literal[
    "another_server", "shutdown", "restart", "user_request", "unauthorized", "pairing_required",
    "concurrent_attempt", "unpaired",
]
SERVER_ERROR_REASONS: tuple[str, ...] = ("unsupported_version", "unsupported_suite", "malformed")


@dataclass(kw_only=True)
class ClientInit(Message):
    """First message of a connection, cleartext. `version` and `suite` are plain
    here so that a test peer can send any value; the server checks them in the
    spec's order (`noise_session.check_client_init`)."""

    TYPE: ClassVar[str] = "client/init"
    client_id: str
    version: int = 1
    suite: str


@dataclass(kw_only=True)
class ServerInit(Message):
    TYPE: ClassVar[str] = "server/init"
    server_id: str
    version: int = 1


@dataclass(kw_only=True)
class ServerError(Message):
    """Sent in place of server/init; the server closes after it. `reason` is kept
    as sent: an unknown reason is still a rejection."""

    TYPE: ClassVar[str] = "server/error"
    reason: str


@dataclass(kw_only=True)
class NoiseHandshake(Message):
    """One Noise handshake message, base64url without padding."""

    TYPE: ClassVar[str] = "noise/handshake"
    data: str


@dataclass(kw_only=True)
class NoiseDeviceInfo:
    product_name: str | Unset = UNSET
    manufacturer: str | Unset = UNSET
    software_version: str | Unset = UNSET
    mac_address: str | Unset = UNSET


@dataclass(kw_only=True)
class NoisePlayerSupport:
    supported_formats: list[AudioFormat] = field(metadata={"length": (1, 1000)})
    buffer_capacity: int = field(metadata={"range": (1, 2**62)})


@dataclass(kw_only=True)
class UnpairedAccess:
    enabled: bool


@dataclass(kw_only=True)
class NoiseServerHello(Message):
    TYPE: ClassVar[str] = "server/hello"
    name: str
    languages: list[str] | Unset = UNSET
    source_support: dict[str, Any] | Unset = field(default=UNSET, metadata={"key": "source@v1_support"})


@dataclass(kw_only=True)
class NoiseClientHello(Message):
    TYPE: ClassVar[str] = "client/hello"
    name: str
    supported_roles: list[str]
    device_info: NoiseDeviceInfo | Unset = UNSET
    player_support: NoisePlayerSupport | Unset = field(default=UNSET, metadata={"key": "player@v1_support"})
    source_support: dict[str, Any] | Unset = field(default=UNSET, metadata={"key": "source@v1_support"})
    visualizer_support: dict[str, Any] | Unset = field(default=UNSET, metadata={"key": "visualizer@v1_support"})
    supported_pair_methods: dict[str, Any]
    unpaired_access: UnpairedAccess


@dataclass(kw_only=True)
class ServerActivate(Message):
    """The server's purpose on this connection; `active_roles` is required on the
    first one (a client reads an omitted one there as empty)."""

    TYPE: ClassVar[str] = "server/activate"
    activities: list[Activity]
    active_roles: list[str] | Unset = UNSET
    pairing: dict[str, Any] | Unset = UNSET


@dataclass(kw_only=True)
class NoisePlayerState:
    volume: int | Unset = field(default=UNSET, metadata=_VOLUME)
    muted: bool | Unset = UNSET
    output_delay_ms: int = field(metadata={"range": (0, 5000)})
    required_lead_time_ms: int = field(metadata={"range": (0, 2**62)})
    min_buffer_ms: int = field(metadata={"range": (0, 2**62)})
    supported_commands: list[NoisePlayerCommandName]
    format: AudioFormat | Unset = UNSET


@dataclass(kw_only=True)
class NoiseClientState(Message):
    TYPE: ClassVar[str] = "client/state"
    available: bool
    player: NoisePlayerState | Unset = UNSET
    source: dict[str, Any] | Unset = UNSET
    artwork: dict[str, Any] | Unset = UNSET
    visualizer: dict[str, Any] | Unset = UNSET


@dataclass(kw_only=True)
class ClientLeave(Message):
    """Leave the current group (no payload fields)."""

    TYPE: ClassVar[str] = "client/leave"


@dataclass(kw_only=True)
class ServerUnpair(Message):
    TYPE: ClassVar[str] = "server/unpair"


@dataclass(kw_only=True)
class NoisePlayerCommand:
    command: NoisePlayerCommandName
    volume: int | Unset = field(default=UNSET, metadata=_VOLUME)
    mute: bool | Unset = UNSET
    output_delay_ms: int | Unset = field(default=UNSET, metadata={"range": (0, 5000)})


@dataclass(kw_only=True)
class NoiseServerCommand(Message):
    TYPE: ClassVar[str] = "server/command"
    player: NoisePlayerCommand | Unset = UNSET
    source: dict[str, Any] | Unset = UNSET


@dataclass(kw_only=True)
class NoiseServerState(Message):
    """Role objects may be null: the server clears a role's state that way."""

    TYPE: ClassVar[str] = "server/state"
    metadata: dict[str, Any] | Unset | None = UNSET
    controller: dict[str, Any] | Unset | None = UNSET
    color: dict[str, Any] | Unset | None = UNSET


@dataclass(kw_only=True)
class NoiseStreamStart(Message):
    TYPE: ClassVar[str] = "stream/start"
    server_transmitted: int
    player: PlayerStream | Unset = UNSET
    artwork: dict[str, Any] | Unset = UNSET
    visualizer: dict[str, Any] | Unset = UNSET


@dataclass(kw_only=True)
class NoiseStreamClear(Message):
    TYPE: ClassVar[str] = "stream/clear"
    server_transmitted: int
    roles: list[str] | Unset = UNSET


@dataclass(kw_only=True)
class NoiseGroupUpdate(Message):
    """Every message carries all three fields (messaging.md, group/update)."""

    TYPE: ClassVar[str] = "group/update"
    playback_state: Literal["playing", "stopped"]
    group_id: str
    group_name: str


@dataclass(kw_only=True)
class NoiseClientGoodbye(Message):
    TYPE: ClassVar[str] = "client/goodbye"
    reason: NoiseGoodbyeReason


ALL_MESSAGES: tuple[type[Message], ...] = (
    ClientHello, ServerHello, ClientTime, ServerTime, ClientState, ClientCommand,
    ServerState, ServerCommand, StreamStart, StreamClear, StreamRequestFormat,
    StreamEnd, GroupUpdate, ClientGoodbye, HarnessUpload, HarnessUploadResult, HarnessError,
)
MESSAGE_TYPES: dict[str, type[Message]] = {m.TYPE: m for m in ALL_MESSAGES}

# The cleartext phase of the noise revision: sent as WebSocket text, before any key.
NOISE_CLEARTEXT: tuple[type[Message], ...] = (ClientInit, ServerInit, ServerError, NoiseHandshake)
NOISE_MESSAGES: tuple[type[Message], ...] = (
    *NOISE_CLEARTEXT, NoiseServerHello, NoiseClientHello, ServerActivate, ClientTime, ServerTime,
    NoiseClientState, ClientCommand, NoiseServerState, NoiseServerCommand, NoiseStreamStart, NoiseStreamClear,
    StreamEnd, NoiseGroupUpdate, ClientLeave, ServerUnpair, NoiseClientGoodbye,
    HarnessUpload, HarnessUploadResult, HarnessError,
)
NOISE_MESSAGE_TYPES: dict[str, type[Message]] = {m.TYPE: m for m in NOISE_MESSAGES}
