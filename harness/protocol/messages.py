"""Every JSON message of the legacy Sendspin spec (README.md @ 7e3157c), typed.

One dataclass per message (its `TYPE` is the wire `type`) and one per role
object. The annotations are the schema; see `fields.py` for how they read.
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


ALL_MESSAGES: tuple[type[Message], ...] = (
    ClientHello, ServerHello, ClientTime, ServerTime, ClientState, ClientCommand,
    ServerState, ServerCommand, StreamStart, StreamClear, StreamRequestFormat,
    StreamEnd, GroupUpdate, ClientGoodbye, HarnessUpload, HarnessUploadResult, HarnessError,
)
MESSAGE_TYPES: dict[str, type[Message]] = {m.TYPE: m for m in ALL_MESSAGES}
