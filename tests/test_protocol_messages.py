"""JSON messages: schema, wire names, round trips and error reporting.

The expectations here are written from the spec text (README.md @ 7e3157c),
not derived from the dataclasses, so a wrong annotation shows up as a failure.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from harness.protocol import (
    ALL_MESSAGES,
    MESSAGE_TYPES,
    UNSET,
    LegacyProfile,
    Message,
    ProtocolError,
    UnknownMessageType,
    decode_json,
    encode_json,
    get_profile,
    peek_type,
)
from harness.protocol import messages as m

# --- spec vocabulary, copied from the spec text ----------------------------------------

CODECS = ["opus", "flac", "pcm"]
IMAGE_FORMATS = ["jpeg", "png", "bmp"]
ARTWORK_SOURCES = ["album", "artist", "none"]
CLIENT_STATES = ["synchronized", "error", "external_source"]
PLAYER_COMMANDS = ["volume", "mute"]
CONTROLLER_COMMANDS = [
    "play", "pause", "stop", "next", "previous", "volume", "mute",
    "repeat_off", "repeat_one", "repeat_all", "shuffle", "unshuffle", "switch",
]
GOODBYE_REASONS = ["another_server", "shutdown", "restart", "user_request"]
CONNECTION_REASONS = ["discovery", "playback"]
REPEAT_MODES = ["off", "one", "all"]
PLAYBACK_STATES = ["playing", "stopped"]

SPEC_TYPES = {
    "client/hello", "server/hello", "client/time", "server/time", "client/state", "client/command",
    "server/state", "server/command", "stream/start", "stream/clear", "stream/request-format",
    "stream/end", "group/update", "client/goodbye",
}
# The harness plugin's profile turns shrinking off (scenarios are slow); these tests are fast.
PHASES = (Phase.explicit, Phase.generate, Phase.shrink)

HARNESS_TYPES = {"_harness/upload", "_harness/upload-result", "_harness/error"}


# --- one fully populated example per message (every optional field present) --------------

FULL: dict[type[Message], Message] = {
    m.ClientHello: m.ClientHello(
        client_id="kitchen-1",
        name="Kitchen",
        version=1,
        supported_roles=["player@v1", "controller@v1", "metadata@v1", "artwork@v1", "visualizer@v1", "_app@v1"],
        device_info=m.DeviceInfo(product_name="Box", manufacturer="ACME", software_version="1.2.3"),
        player_support=m.PlayerSupport(
            supported_formats=[
                m.AudioFormat(codec="opus", channels=2, sample_rate=48000, bit_depth=16),
                m.AudioFormat(codec="pcm", channels=1, sample_rate=44100, bit_depth=24),
            ],
            buffer_capacity=1_000_000,
            supported_commands=["volume", "mute"],
        ),
        artwork_support=m.ArtworkSupport(
            channels=[
                m.ArtworkChannelSupport(source="album", format="jpeg", media_width=800, media_height=800),
                m.ArtworkChannelSupport(source="artist", format="png", media_width=300, media_height=200),
            ]
        ),
        visualizer_support=m.VisualizerSupport(buffer_capacity=65536),
    ),
    m.ServerHello: m.ServerHello(
        server_id="srv-1", name="Living room server", version=1,
        active_roles=["player@v1", "controller@v1"], connection_reason="discovery",
    ),
    m.ClientTime: m.ClientTime(client_transmitted=123_456_789),
    m.ServerTime: m.ServerTime(client_transmitted=1, server_received=2, server_transmitted=3),
    m.ClientState: m.ClientState(
        state="synchronized", player=m.PlayerState(volume=40, muted=False, state="synchronized")
    ),
    m.ClientCommand: m.ClientCommand(controller=m.ControllerCommand(command="volume", volume=55, mute=True)),
    m.ServerState: m.ServerState(
        metadata=m.MetadataState(
            timestamp=1_000_000, title="Song", artist="Artist", album_artist="Various", album="Album",
            artwork_url="http://example.invalid/a.jpg", year=1999, track=3,
            progress=m.Progress(track_progress=1000, track_duration=180_000, playback_speed=1000),
            repeat="all", shuffle=False,
        ),
        controller=m.ControllerState(supported_commands=["play", "pause", "volume"], volume=30, muted=False),
    ),
    m.ServerCommand: m.ServerCommand(player=m.PlayerCommand(command="mute", volume=10, mute=True)),
    m.StreamStart: m.StreamStart(
        player=m.PlayerStream(codec="flac", sample_rate=48000, channels=2, bit_depth=24, codec_header="ZkxhQw=="),
        artwork=m.ArtworkStream(
            channels=[
                m.ArtworkStreamChannel(source="album", format="jpeg", width=800, height=800),
                m.ArtworkStreamChannel(source="none", format="bmp", width=1, height=1),
            ]
        ),
        visualizer={"bands": 32},
    ),
    m.StreamClear: m.StreamClear(roles=["player", "visualizer"]),
    m.StreamRequestFormat: m.StreamRequestFormat(
        player=m.PlayerFormatRequest(codec="pcm", channels=2, sample_rate=48000, bit_depth=16),
        artwork=m.ArtworkFormatRequest(channel=2, source="artist", format="png", media_width=640, media_height=480),
    ),
    m.StreamEnd: m.StreamEnd(roles=["player", "artwork", "visualizer"]),
    m.GroupUpdate: m.GroupUpdate(playback_state="playing", group_id="g1", group_name="Downstairs"),
    m.ClientGoodbye: m.ClientGoodbye(reason="shutdown"),
    m.HarnessUpload: m.HarnessUpload(upload_id="u1", size=1024, sha256="ab" * 32),
    m.HarnessUploadResult: m.HarnessUploadResult(upload_id="u1", size=1024, sha256="ab" * 32),
    m.HarnessError: m.HarnessError(message_type="client/hello", field="payload.name", rule="must be a string"),
}

# Key shapes of each payload, from the spec's field lists ("[]" = any list index).
EXPECTED_KEYS: dict[str, set[str]] = {
    "client/hello": {
        "client_id", "name", "version", "supported_roles", "supported_roles[]",
        "device_info", "device_info.product_name", "device_info.manufacturer", "device_info.software_version",
        "player@v1_support", "player@v1_support.supported_formats", "player@v1_support.supported_formats[]",
        "player@v1_support.supported_formats[].codec", "player@v1_support.supported_formats[].channels",
        "player@v1_support.supported_formats[].sample_rate", "player@v1_support.supported_formats[].bit_depth",
        "player@v1_support.buffer_capacity", "player@v1_support.supported_commands",
        "player@v1_support.supported_commands[]",
        "artwork@v1_support", "artwork@v1_support.channels", "artwork@v1_support.channels[]",
        "artwork@v1_support.channels[].source", "artwork@v1_support.channels[].format",
        "artwork@v1_support.channels[].media_width", "artwork@v1_support.channels[].media_height",
        "visualizer@v1_support", "visualizer@v1_support.buffer_capacity",
    },
    "server/hello": {"server_id", "name", "version", "active_roles", "active_roles[]", "connection_reason"},
    "client/time": {"client_transmitted"},
    "server/time": {"client_transmitted", "server_received", "server_transmitted"},
    # player.state is not in the spec's player object: the harness accepts aiosendspin 6.1.1's extension.
    "client/state": {"state", "player", "player.volume", "player.muted", "player.state"},
    "client/command": {"controller", "controller.command", "controller.volume", "controller.mute"},
    "server/state": {
        "metadata", "metadata.timestamp", "metadata.title", "metadata.artist", "metadata.album_artist",
        "metadata.album", "metadata.artwork_url", "metadata.year", "metadata.track", "metadata.progress",
        "metadata.progress.track_progress", "metadata.progress.track_duration", "metadata.progress.playback_speed",
        "metadata.repeat", "metadata.shuffle",
        "controller", "controller.supported_commands", "controller.supported_commands[]",
        "controller.volume", "controller.muted",
    },
    "server/command": {"player", "player.command", "player.volume", "player.mute"},
    "stream/start": {
        "player", "player.codec", "player.sample_rate", "player.channels", "player.bit_depth",
        "player.codec_header", "artwork", "artwork.channels", "artwork.channels[]", "artwork.channels[].source",
        "artwork.channels[].format", "artwork.channels[].width", "artwork.channels[].height", "visualizer",
    },
    "stream/clear": {"roles", "roles[]"},
    "stream/request-format": {
        "player", "player.codec", "player.channels", "player.sample_rate", "player.bit_depth",
        "artwork", "artwork.channel", "artwork.source", "artwork.format", "artwork.media_width",
        "artwork.media_height",
    },
    "stream/end": {"roles", "roles[]"},
    "group/update": {"playback_state", "group_id", "group_name"},
    "client/goodbye": {"reason"},
    "_harness/upload": {"upload_id", "size", "sha256"},
    "_harness/upload-result": {"upload_id", "size", "sha256"},
    "_harness/error": {"message_type", "field", "rule"},
}

# Keys without `?` in the spec (only those inside objects that are present).
REQUIRED: dict[str, set[str]] = {
    "client/hello": {
        "client_id", "name", "version", "supported_roles",
        "player@v1_support.supported_formats", "player@v1_support.supported_formats[].codec",
        "player@v1_support.supported_formats[].channels", "player@v1_support.supported_formats[].sample_rate",
        "player@v1_support.supported_formats[].bit_depth", "player@v1_support.buffer_capacity",
        "player@v1_support.supported_commands",
        "artwork@v1_support.channels", "artwork@v1_support.channels[].source",
        "artwork@v1_support.channels[].format", "artwork@v1_support.channels[].media_width",
        "artwork@v1_support.channels[].media_height",
        "visualizer@v1_support.buffer_capacity",
    },
    "server/hello": {"server_id", "name", "version", "active_roles", "connection_reason"},
    "client/time": {"client_transmitted"},
    "server/time": {"client_transmitted", "server_received", "server_transmitted"},
    # The spec lists client/state `state` without `?` but also says later updates carry only
    # changed fields; the harness reads it as a delta field, so it may be omitted.
    "client/state": set(),
    "client/command": {"controller.command"},
    "server/state": {
        "metadata.timestamp", "metadata.progress.track_progress", "metadata.progress.track_duration",
        "metadata.progress.playback_speed", "controller.supported_commands", "controller.volume",
        "controller.muted",
    },
    "server/command": {"player.command"},
    "stream/start": {
        "player.codec", "player.sample_rate", "player.channels", "player.bit_depth", "artwork.channels",
        "artwork.channels[].source", "artwork.channels[].format", "artwork.channels[].width",
        "artwork.channels[].height",
    },
    "stream/clear": set(),
    "stream/request-format": {"artwork.channel"},
    "stream/end": set(),
    "group/update": set(),
    "client/goodbye": {"reason"},
    "_harness/upload": {"upload_id", "size", "sha256"},
    "_harness/upload-result": {"upload_id", "size", "sha256"},
    "_harness/error": {"message_type", "field", "rule"},
}

# `string | null` and friends in the spec; group/update: "Fields set to null should be cleared".
NULLABLE: dict[str, set[str]] = {
    "server/state": {
        "metadata.title", "metadata.artist", "metadata.album_artist", "metadata.album", "metadata.artwork_url",
        "metadata.year", "metadata.track", "metadata.progress", "metadata.repeat", "metadata.shuffle",
    },
    "group/update": {"playback_state", "group_id", "group_name"},
}


# --- helpers ---------------------------------------------------------------------------

Path = tuple[str | int, ...]


def wire(message: Message) -> dict[str, Any]:
    return json.loads(encode_json(message))


def walk(obj: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every key and list item of a payload; the free-form visualizer object is a leaf."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            path = (*prefix, key)
            yield path, value
            if not (prefix == () and key == "visualizer"):
                yield from walk(value, path)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            path = (*prefix, i)
            yield path, value
            yield from walk(value, path)


def shape(path: Path) -> str:
    out = ""
    for part in path:
        out += "[]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def dotted(path: Path) -> str:
    """The field path ProtocolError should name."""
    return "payload" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def modified(message_type: str, payload: dict[str, Any], path: Path, value: Any = None, *, delete: bool = False) -> str:
    payload = copy.deepcopy(payload)
    target: Any = payload
    for part in path[:-1]:
        target = target[part]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps({"type": message_type, "payload": payload})


def expect_error(text: str | bytes, message_type: str, field: str, rule_part: str = "") -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_json(text)
    err = info.value
    assert err.message_type == message_type
    assert err.field == field
    assert rule_part in err.rule
    where = f"{message_type}.{field}" if field else message_type
    assert str(err) == f"{where}: {err.rule}"
    return err


def type_id(cls: type[Message]) -> str:
    return cls.TYPE


# --- hypothesis strategies, one per class --------------------------------------------------

TEXT = st.text(max_size=12)
INT64 = st.integers(-(2**63), 2**63 - 1)
VOLUME = st.integers(0, 100)
ROLE = st.sampled_from(["player@v1", "player@v2", "controller@v1", "metadata@v1", "artwork@v1",
                        "visualizer@v1", "_app@v1"]) | TEXT
JSON_SCALAR = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats(allow_nan=False, allow_infinity=False) | TEXT
)
JSON_VALUE = st.recursive(
    JSON_SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8
)
JSON_OBJECT = st.dictionaries(TEXT, JSON_VALUE, max_size=4)


def opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.just(UNSET) | strategy


def opt_null(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.just(UNSET) | st.none() | strategy


AUDIO_FORMAT = st.builds(
    m.AudioFormat, codec=st.sampled_from(CODECS), channels=st.integers(1, 32),
    sample_rate=st.integers(1, 1_000_000), bit_depth=st.integers(1, 64),
)
PLAYER_SUPPORT = st.builds(
    m.PlayerSupport, supported_formats=st.lists(AUDIO_FORMAT, min_size=1, max_size=3),
    buffer_capacity=st.integers(1, 2**62), supported_commands=st.lists(st.sampled_from(PLAYER_COMMANDS), max_size=2),
)
ARTWORK_SUPPORT = st.builds(
    m.ArtworkSupport,
    channels=st.lists(
        st.builds(m.ArtworkChannelSupport, source=st.sampled_from(ARTWORK_SOURCES),
                  format=st.sampled_from(IMAGE_FORMATS), media_width=st.integers(0, 2**31),
                  media_height=st.integers(0, 2**31)),
        min_size=1, max_size=4,
    ),
)
DEVICE_INFO = st.builds(m.DeviceInfo, product_name=opt(TEXT), manufacturer=opt(TEXT), software_version=opt(TEXT))
PROGRESS = st.builds(m.Progress, track_progress=INT64, track_duration=INT64, playback_speed=INT64)
METADATA = st.builds(
    m.MetadataState, timestamp=INT64, title=opt_null(TEXT), artist=opt_null(TEXT), album_artist=opt_null(TEXT),
    album=opt_null(TEXT), artwork_url=opt_null(TEXT), year=opt_null(INT64), track=opt_null(INT64),
    progress=opt_null(PROGRESS), repeat=opt_null(st.sampled_from(REPEAT_MODES)), shuffle=opt_null(st.booleans()),
)
CONTROLLER_STATE = st.builds(
    m.ControllerState, supported_commands=st.lists(st.sampled_from(CONTROLLER_COMMANDS), max_size=13),
    volume=VOLUME, muted=st.booleans(),
)
ROLES_LIST = st.lists(ROLE, max_size=4)

STRATEGIES: dict[type[Message], st.SearchStrategy[Any]] = {
    m.ClientHello: st.builds(
        m.ClientHello, client_id=TEXT, name=TEXT, version=st.just(1), supported_roles=ROLES_LIST,
        device_info=opt(DEVICE_INFO), player_support=opt(PLAYER_SUPPORT), artwork_support=opt(ARTWORK_SUPPORT),
        visualizer_support=opt(st.builds(m.VisualizerSupport, buffer_capacity=st.integers(1, 2**62))),
    ),
    m.ServerHello: st.builds(
        m.ServerHello, server_id=TEXT, name=TEXT, version=st.just(1), active_roles=ROLES_LIST,
        connection_reason=st.sampled_from(CONNECTION_REASONS),
    ),
    m.ClientTime: st.builds(m.ClientTime, client_transmitted=INT64),
    m.ServerTime: st.builds(m.ServerTime, client_transmitted=INT64, server_received=INT64, server_transmitted=INT64),
    m.ClientState: st.builds(
        m.ClientState, state=opt(st.sampled_from(CLIENT_STATES)),
        player=opt(st.builds(m.PlayerState, volume=opt(VOLUME), muted=opt(st.booleans()),
                             state=opt(st.sampled_from(CLIENT_STATES)))),
    ),
    m.ClientCommand: st.builds(
        m.ClientCommand,
        controller=opt(st.builds(m.ControllerCommand, command=st.sampled_from(CONTROLLER_COMMANDS),
                                 volume=opt(VOLUME), mute=opt(st.booleans()))),
    ),
    m.ServerState: st.builds(m.ServerState, metadata=opt(METADATA), controller=opt(CONTROLLER_STATE)),
    m.ServerCommand: st.builds(
        m.ServerCommand,
        player=opt(st.builds(m.PlayerCommand, command=st.sampled_from(PLAYER_COMMANDS), volume=opt(VOLUME),
                             mute=opt(st.booleans()))),
    ),
    m.StreamStart: st.builds(
        m.StreamStart,
        player=opt(st.builds(m.PlayerStream, codec=st.sampled_from(CODECS) | TEXT, sample_rate=INT64,
                             channels=INT64, bit_depth=INT64, codec_header=opt(TEXT))),
        artwork=opt(st.builds(
            m.ArtworkStream,
            channels=st.lists(st.builds(m.ArtworkStreamChannel, source=st.sampled_from(ARTWORK_SOURCES),
                                        format=st.sampled_from(IMAGE_FORMATS), width=INT64, height=INT64),
                              max_size=4),
        )),
        visualizer=opt(JSON_OBJECT),
    ),
    m.StreamClear: st.builds(m.StreamClear, roles=opt(ROLES_LIST)),
    m.StreamRequestFormat: st.builds(
        m.StreamRequestFormat,
        player=opt(st.builds(m.PlayerFormatRequest, codec=opt(st.sampled_from(CODECS)), channels=opt(INT64),
                             sample_rate=opt(INT64), bit_depth=opt(INT64))),
        artwork=opt(st.builds(m.ArtworkFormatRequest, channel=st.integers(0, 3),
                              source=opt(st.sampled_from(ARTWORK_SOURCES)),
                              format=opt(st.sampled_from(IMAGE_FORMATS)), media_width=opt(INT64),
                              media_height=opt(INT64))),
    ),
    m.StreamEnd: st.builds(m.StreamEnd, roles=opt(ROLES_LIST)),
    m.GroupUpdate: st.builds(
        m.GroupUpdate, playback_state=opt_null(st.sampled_from(PLAYBACK_STATES)), group_id=opt_null(TEXT),
        group_name=opt_null(TEXT),
    ),
    m.ClientGoodbye: st.builds(m.ClientGoodbye, reason=st.sampled_from(GOODBYE_REASONS)),
    m.HarnessUpload: st.builds(m.HarnessUpload, upload_id=TEXT, size=st.integers(0, 2**40), sha256=TEXT),
    m.HarnessUploadResult: st.builds(m.HarnessUploadResult, upload_id=TEXT, size=INT64, sha256=TEXT),
    m.HarnessError: st.builds(m.HarnessError, message_type=TEXT, field=TEXT, rule=TEXT),
}
ANY_MESSAGE = st.one_of(*STRATEGIES.values())


# --- registry ----------------------------------------------------------------------------


def test_registry_covers_exactly_the_spec_messages_and_the_harness_role() -> None:
    assert set(MESSAGE_TYPES) == SPEC_TYPES | HARNESS_TYPES
    assert len(ALL_MESSAGES) == len(MESSAGE_TYPES)
    assert all(MESSAGE_TYPES[cls.TYPE] is cls for cls in ALL_MESSAGES)
    assert all(t.startswith("_") for t in HARNESS_TYPES)


def test_test_tables_cover_every_message_class() -> None:
    assert set(STRATEGIES) == set(ALL_MESSAGES)
    assert set(FULL) == set(ALL_MESSAGES)
    assert set(EXPECTED_KEYS) == set(REQUIRED) == set(MESSAGE_TYPES)


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=type_id)
@settings(max_examples=40, deadline=None, phases=PHASES, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_hypothesis(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[cls])
    text = encode_json(message)
    decoded = decode_json(text)
    assert type(decoded) is cls
    assert decoded == message
    assert encode_json(decoded) == text
    obj = json.loads(text)
    assert obj["type"] == cls.TYPE
    assert set(obj) == {"type", "payload"}


def test_round_trip_full_examples() -> None:
    for message in FULL.values():
        assert decode_json(encode_json(message)) == message
        assert decode_json(encode_json(message).encode()) == message  # bytes input too


def test_wire_keys_are_the_spec_names() -> None:
    for cls, message in FULL.items():
        payload = wire(message)["payload"]
        assert {shape(p) for p, _ in walk(payload)} == EXPECTED_KEYS[cls.TYPE], cls.TYPE


def test_versioned_support_keys_use_the_at_sign_on_the_wire() -> None:
    text = encode_json(FULL[m.ClientHello])
    for key in ('"player@v1_support":', '"artwork@v1_support":', '"visualizer@v1_support":'):
        assert key in text
    assert "player_support" not in text
    assert "artwork_support" not in text
    assert "visualizer_support" not in text


def test_python_attribute_names_are_not_accepted_as_wire_keys() -> None:
    payload = wire(FULL[m.ClientHello])["payload"]
    payload["player_support"] = payload.pop("player@v1_support")
    decoded = decode_json(json.dumps({"type": "client/hello", "payload": payload}))
    assert isinstance(decoded, m.ClientHello)
    assert decoded.player_support is UNSET


def test_omitted_null_and_present_are_distinct() -> None:
    omitted = m.MetadataState(timestamp=5)
    null = m.MetadataState(timestamp=5, title=None, progress=None)
    present = m.MetadataState(timestamp=5, title="T", progress=m.Progress(track_progress=1, track_duration=0,
                                                                           playback_speed=0))
    assert wire(m.ServerState(metadata=omitted))["payload"] == {"metadata": {"timestamp": 5}}
    assert wire(m.ServerState(metadata=null))["payload"] == {
        "metadata": {"timestamp": 5, "title": None, "progress": None}
    }
    assert wire(m.ServerState(metadata=present))["payload"]["metadata"]["title"] == "T"
    for meta in (omitted, null, present):
        decoded = decode_json(encode_json(m.ServerState(metadata=meta)))
        assert isinstance(decoded, m.ServerState)
        assert decoded.metadata == meta
    decoded = decode_json('{"type":"server/state","payload":{"metadata":{"timestamp":5,"title":null}}}')
    assert isinstance(decoded, m.ServerState)
    assert isinstance(decoded.metadata, m.MetadataState)
    assert decoded.metadata.title is None
    assert decoded.metadata.artist is UNSET


def test_group_update_fields_may_be_cleared_with_null() -> None:
    decoded = decode_json('{"type":"group/update","payload":{"group_name":null,"playback_state":"stopped"}}')
    assert decoded == m.GroupUpdate(group_name=None, playback_state="stopped")
    assert wire(decoded)["payload"] == {"group_name": None, "playback_state": "stopped"}


def test_empty_optional_payloads_encode_as_empty_object() -> None:
    for message in (m.StreamEnd(), m.StreamClear(), m.GroupUpdate(), m.ClientState(), m.ServerState()):
        assert wire(message)["payload"] == {}
        assert decode_json(encode_json(message)) == message


def test_client_hello_version_defaults_to_one() -> None:
    hello = m.ClientHello(client_id="c", name="n", supported_roles=[])
    assert wire(hello)["payload"]["version"] == 1


# --- spec examples -----------------------------------------------------------------------

SPEC_STREAM_START = """
{
  "type": "stream/start",
  "payload": {
    "player": {
      "codec": "opus",
      "sample_rate": 48000,
      "channels": 2,
      "bit_depth": 16
    },
    "artwork": {
      "channels": [
        {
          "source": "album",
          "format": "jpeg",
          "width": 800,
          "height": 800
        }
      ]
    }
  }
}
"""


def test_spec_stream_start_example() -> None:
    decoded = decode_json(SPEC_STREAM_START)
    assert decoded == m.StreamStart(
        player=m.PlayerStream(codec="opus", sample_rate=48000, channels=2, bit_depth=16),
        artwork=m.ArtworkStream(
            channels=[m.ArtworkStreamChannel(source="album", format="jpeg", width=800, height=800)]
        ),
    )
    assert isinstance(decoded, m.StreamStart)
    assert decoded.visualizer is UNSET
    assert isinstance(decoded.player, m.PlayerStream)
    assert decoded.player.codec_header is UNSET
    assert json.loads(encode_json(decoded)) == json.loads(SPEC_STREAM_START)


def test_spec_shaped_client_hello() -> None:
    text = json.dumps({
        "type": "client/hello",
        "payload": {
            "client_id": "abc", "name": "Speaker", "version": 1,
            "supported_roles": ["player@v2", "player@v1", "controller@v1", "_myapp_display@v1"],
            "device_info": {"product_name": "P"},
            "player@v1_support": {
                "supported_formats": [{"codec": "flac", "channels": 2, "sample_rate": 44100, "bit_depth": 16}],
                "buffer_capacity": 32768, "supported_commands": ["volume"],
            },
            "player@v2_support": {"anything": [1, 2, 3]},
            "_myapp_display@v1_support": {"x": 1},
        },
    })
    decoded = decode_json(text)
    assert decoded == m.ClientHello(
        client_id="abc", name="Speaker", supported_roles=["player@v2", "player@v1", "controller@v1",
                                                          "_myapp_display@v1"],
        device_info=m.DeviceInfo(product_name="P"),
        player_support=m.PlayerSupport(
            supported_formats=[m.AudioFormat(codec="flac", channels=2, sample_rate=44100, bit_depth=16)],
            buffer_capacity=32768, supported_commands=["volume"],
        ),
    )


def test_spec_shaped_metadata_with_progress() -> None:
    text = ('{"type":"server/state","payload":{"metadata":{"timestamp":42,"title":"T","year":null,'
            '"progress":{"track_progress":0,"track_duration":0,"playback_speed":1500},"repeat":"one",'
            '"shuffle":null}}}')
    decoded = decode_json(text)
    assert decoded == m.ServerState(metadata=m.MetadataState(
        timestamp=42, title="T", year=None,
        progress=m.Progress(track_progress=0, track_duration=0, playback_speed=1500),
        repeat="one", shuffle=None,
    ))
    assert json.loads(encode_json(decoded)) == json.loads(text)


# --- unknown fields and types --------------------------------------------------------------


def test_unknown_payload_fields_are_ignored_everywhere() -> None:
    payload = wire(FULL[m.ClientHello])["payload"]
    payload["future_field"] = {"deep": [1]}
    payload["_app_object"] = 7
    payload["device_info"]["color"] = "red"
    payload["player@v1_support"]["supported_formats"][0]["extra"] = None
    payload["artwork@v1_support"]["channels"][1]["dpi"] = 300
    text = json.dumps({"type": "client/hello", "payload": payload, "sequence": 9})
    assert decode_json(text) == FULL[m.ClientHello]


def test_application_specific_objects_are_ignored_in_role_messages() -> None:
    text = '{"type":"client/state","payload":{"state":"error","_myapp":{"k":1}}}'
    assert decode_json(text) == m.ClientState(state="error")
    text = '{"type":"client/command","payload":{"_myapp":{"command":"x"}}}'
    assert decode_json(text) == m.ClientCommand()


@settings(max_examples=100, deadline=None, phases=PHASES)
@given(message=ANY_MESSAGE, extra=JSON_OBJECT, top_extra=JSON_OBJECT, data=st.data())
def test_unknown_fields_ignored_hypothesis(
    message: Message, extra: dict[str, Any], top_extra: dict[str, Any], data: st.DataObject
) -> None:
    known = set(wire(FULL[type(message)])["payload"])
    obj = wire(message)
    for key, value in extra.items():
        if key not in known:
            obj["payload"][key] = value
    for key, value in top_extra.items():
        if key not in ("type", "payload"):
            obj[key] = value
    assert decode_json(json.dumps(obj)) == message


def test_unknown_message_type_raises() -> None:
    for message_type in ("client/unknown", "player/volume", "", "CLIENT/HELLO", "_myapp/thing", "client/hello "):
        with pytest.raises(UnknownMessageType) as info:
            decode_json(json.dumps({"type": message_type, "payload": {}}))
        err = info.value
        assert isinstance(err, ProtocolError)
        assert err.message_type == message_type
        assert err.field == "type"
        assert "unknown" in err.rule
        assert str(err) == f"{message_type}.type: {err.rule}"


# --- every key: missing, null, wrong type -----------------------------------------------


def _failures(check: Any, *, keys_only: bool = False) -> list[str]:
    """Run `check(cls, payload, path)` for every path of every FULL example; collect all failures."""
    failures = []
    for cls, message in FULL.items():
        payload = wire(message)["payload"]
        paths = [p for p, _ in walk(payload) if not (keys_only and isinstance(p[-1], int))]
        assert paths, cls.TYPE
        for path in paths:
            try:
                check(cls, payload, path)
            except (AssertionError, ProtocolError, pytest.fail.Exception) as exc:
                failures.append(f"{cls.TYPE} {shape(path)}: {exc!r}")
    return failures


def test_missing_key() -> None:
    def check(cls: type[Message], payload: dict[str, Any], path: Path) -> None:
        text = modified(cls.TYPE, payload, path, delete=True)
        if shape(path) in REQUIRED[cls.TYPE]:
            expect_error(text, cls.TYPE, dotted(path), "required field is missing")
        else:
            decoded = decode_json(text)
            assert type(decoded) is cls
            # The omission survives a round trip: the key stays absent.
            assert wire(decoded) == json.loads(text)

    failures = _failures(check, keys_only=True)
    assert not failures, "\n".join(failures)


def test_null_value() -> None:
    def check(cls: type[Message], payload: dict[str, Any], path: Path) -> None:
        text = modified(cls.TYPE, payload, path, None)
        if shape(path) in NULLABLE.get(cls.TYPE, set()):
            decoded = decode_json(text)
            assert wire(decoded) == json.loads(text)
        elif isinstance(path[-1], int):
            expect_error(text, cls.TYPE, dotted(path))  # list items: "must be an object/string/..."
        else:
            expect_error(text, cls.TYPE, dotted(path), "must not be null")

    failures = _failures(check)
    assert not failures, "\n".join(failures)


def _wrong_values(value: Any) -> list[Any]:
    if isinstance(value, bool):
        return [1, 0, "true"]
    if isinstance(value, int):
        return [str(value), True, float(value), [value]]
    if isinstance(value, str):
        return [5, True, [value], {"v": value}]
    if isinstance(value, list):
        return [{}, "x", 3]
    if isinstance(value, dict):
        return [[], "x", 3, True]
    raise AssertionError(value)


def test_wrong_type() -> None:
    def check(cls: type[Message], payload: dict[str, Any], path: Path) -> None:
        for bad in _wrong_values(dict(walk(payload))[path]):
            expect_error(modified(cls.TYPE, payload, path, bad), cls.TYPE, dotted(path))

    failures = _failures(check)
    assert not failures, "\n".join(failures)


# --- the brief's named error cases ---------------------------------------------------------


def test_error_missing_required_field() -> None:
    expect_error('{"type":"client/time","payload":{}}', "client/time", "payload.client_transmitted",
                 "required field is missing")
    expect_error('{"type":"client/goodbye","payload":{}}', "client/goodbye", "payload.reason",
                 "required field is missing")
    # Every message carries a payload object, even one with no required fields.
    expect_error('{"type":"stream/end"}', "stream/end", "payload", "required field is missing")


def test_error_wrong_type() -> None:
    err = expect_error('{"type":"client/time","payload":{"client_transmitted":"12"}}', "client/time",
                       "payload.client_transmitted", "must be an integer")
    assert "'12'" in err.rule
    expect_error('{"type":"server/hello","payload":{"server_id":1,"name":"n","version":1,"active_roles":[],'
                 '"connection_reason":"playback"}}', "server/hello", "payload.server_id", "must be a string")
    expect_error('{"type":"stream/end","payload":{"roles":"player"}}', "stream/end", "payload.roles",
                 "must be a list")
    expect_error('{"type":"client/command","payload":{"controller":[]}}', "client/command",
                 "payload.controller", "must be an object")


def test_error_bool_where_int_expected() -> None:
    for value in ("true", "false"):
        expect_error(f'{{"type":"client/time","payload":{{"client_transmitted":{value}}}}}', "client/time",
                     "payload.client_transmitted", "must be an integer")
        expect_error(f'{{"type":"client/state","payload":{{"player":{{"volume":{value}}}}}}}', "client/state",
                     "payload.player.volume", "must be an integer")


def test_error_int_where_bool_expected() -> None:
    expect_error('{"type":"client/state","payload":{"player":{"muted":1}}}', "client/state",
                 "payload.player.muted", "must be a boolean")


def test_error_float_where_int_expected() -> None:
    expect_error('{"type":"client/time","payload":{"client_transmitted":1.0}}', "client/time",
                 "payload.client_transmitted", "must be an integer")


VOLUME_SITES = [
    ("client/state", '{{"player":{{"volume":{v}}}}}', "payload.player.volume"),
    ("client/command", '{{"controller":{{"command":"volume","volume":{v}}}}}', "payload.controller.volume"),
    ("server/command", '{{"player":{{"command":"volume","volume":{v}}}}}', "payload.player.volume"),
    ("server/state", '{{"controller":{{"supported_commands":[],"volume":{v},"muted":false}}}}',
     "payload.controller.volume"),
]


def test_volume_range() -> None:
    for message_type, template, field in VOLUME_SITES:
        for v in (-1, 101, 1000, -(2**63)):
            text = f'{{"type":"{message_type}","payload":{template.format(v=v)}}}'
            err = expect_error(text, message_type, field, "range 0..100")
            assert str(v) in err.rule
        for v in (0, 1, 50, 99, 100):
            text = f'{{"type":"{message_type}","payload":{template.format(v=v)}}}'
            assert json.loads(encode_json(decode_json(text))) == json.loads(text)


def _hello_with_artwork_channels(n: int) -> str:
    payload = wire(FULL[m.ClientHello])["payload"]
    channel = {"source": "album", "format": "jpeg", "media_width": 10, "media_height": 10}
    payload["artwork@v1_support"]["channels"] = [channel] * n
    return json.dumps({"type": "client/hello", "payload": payload})


def test_artwork_support_channels_length_out_of_range() -> None:
    for n in (0, 5, 8):
        err = expect_error(_hello_with_artwork_channels(n), "client/hello", "payload.artwork@v1_support.channels",
                           "1..4")
        assert f"got {n}" in err.rule


def test_artwork_support_channels_length_in_range() -> None:
    for n in (1, 2, 3, 4):
        decoded = decode_json(_hello_with_artwork_channels(n))
        assert isinstance(decoded, m.ClientHello)
        assert isinstance(decoded.artwork_support, m.ArtworkSupport)
        assert len(decoded.artwork_support.channels) == n


def test_artwork_request_channel_range() -> None:
    for channel in (-1, 4, 11):
        expect_error(f'{{"type":"stream/request-format","payload":{{"artwork":{{"channel":{channel}}}}}}}',
                     "stream/request-format", "payload.artwork.channel", "range 0..3")
    for channel in (0, 3):
        decoded = decode_json(f'{{"type":"stream/request-format","payload":{{"artwork":{{"channel":{channel}}}}}}}')
        assert decoded == m.StreamRequestFormat(artwork=m.ArtworkFormatRequest(channel=channel))


@pytest.mark.parametrize("cls", [m.ClientHello, m.ServerHello], ids=type_id)
def test_version_must_be_one(cls: type[Message]) -> None:
    payload = wire(FULL[cls])["payload"]
    for version in (0, 2, -1, 100):
        err = expect_error(modified(cls.TYPE, payload, ("version",), version), cls.TYPE, "payload.version",
                           "must be 1")
        assert f"got {version}" in err.rule
    expect_error(modified(cls.TYPE, payload, ("version",), "1"), cls.TYPE, "payload.version")
    expect_error(modified(cls.TYPE, payload, ("version",), True), cls.TYPE, "payload.version")
    expect_error(modified(cls.TYPE, payload, ("version",), None, delete=True), cls.TYPE, "payload.version",
                 "required field is missing")


LITERAL_SITES: list[tuple[type[Message], Path, list[str]]] = [
    (m.ClientHello, ("player@v1_support", "supported_formats", 0, "codec"), CODECS),
    (m.ClientHello, ("player@v1_support", "supported_commands", 0), PLAYER_COMMANDS),
    (m.ClientHello, ("artwork@v1_support", "channels", 0, "source"), ARTWORK_SOURCES),
    (m.ClientHello, ("artwork@v1_support", "channels", 0, "format"), IMAGE_FORMATS),
    (m.ServerHello, ("connection_reason",), CONNECTION_REASONS),
    (m.ClientState, ("state",), CLIENT_STATES),
    (m.ClientCommand, ("controller", "command"), CONTROLLER_COMMANDS),
    (m.ServerState, ("metadata", "repeat"), REPEAT_MODES),
    (m.ServerState, ("controller", "supported_commands", 0), CONTROLLER_COMMANDS),
    (m.ServerCommand, ("player", "command"), PLAYER_COMMANDS),
    (m.StreamStart, ("artwork", "channels", 0, "source"), ARTWORK_SOURCES),
    (m.StreamStart, ("artwork", "channels", 0, "format"), IMAGE_FORMATS),
    (m.StreamRequestFormat, ("player", "codec"), CODECS),
    (m.StreamRequestFormat, ("artwork", "source"), ARTWORK_SOURCES),
    (m.StreamRequestFormat, ("artwork", "format"), IMAGE_FORMATS),
    (m.GroupUpdate, ("playback_state",), PLAYBACK_STATES),
    (m.ClientGoodbye, ("reason",), GOODBYE_REASONS),
]


def test_literal_values_exactly_as_in_spec() -> None:
    for cls, path, allowed in LITERAL_SITES:
        payload = wire(FULL[cls])["payload"]
        for value in allowed:
            text = modified(cls.TYPE, payload, path, value)
            assert wire(decode_json(text)) == json.loads(text), (cls.TYPE, path, value)
        for bad in ("bogus", allowed[0].upper(), f"{allowed[0]} ", ""):
            err = expect_error(modified(cls.TYPE, payload, path, bad), cls.TYPE, dotted(path), "must be one of")
            assert repr(bad) in err.rule
            assert all(repr(v) in err.rule for v in allowed)  # the rule lists what is allowed


def test_error_path_indexes_list_items() -> None:
    payload = wire(FULL[m.ClientHello])["payload"]
    text = modified("client/hello", payload, ("player@v1_support", "supported_formats", 1, "codec"), "mp3")
    err = expect_error(text, "client/hello", "payload.player@v1_support.supported_formats[1].codec")
    assert str(err).startswith("client/hello.payload.player@v1_support.supported_formats[1].codec: must be one of")


def test_error_null_where_not_nullable() -> None:
    expect_error('{"type":"client/goodbye","payload":{"reason":null}}', "client/goodbye", "payload.reason",
                 "must not be null")
    expect_error('{"type":"client/state","payload":{"player":null}}', "client/state", "payload.player",
                 "must not be null")


def test_error_malformed_json() -> None:
    for text in ("{", "", "not json", '{"type": "client/time",}', b"\xff\xfe\x00", "[1,", "NaNa"):
        expect_error(text, "?", "", "malformed JSON")


def test_error_non_object_json() -> None:
    for text, kind in [("[]", "list"), ("42", "int"), ('"client/hello"', "str"), ("null", "NoneType"),
                       ("true", "bool")]:
        err = expect_error(text, "?", "", "must be a JSON object")
        assert kind in err.rule


def test_error_missing_or_non_string_type() -> None:
    for text in ('{"payload":{}}', "{}", '{"type":5,"payload":{}}', '{"type":null}', '{"type":["client/hello"]}'):
        expect_error(text, "?", "type")


def test_error_payload_not_an_object() -> None:
    for payload in ("null", "[]", '"x"', "3"):
        expect_error(f'{{"type":"client/time","payload":{payload}}}', "client/time", "payload", "must be an object")


# --- peek_type and the profile ---------------------------------------------------------


def test_peek_type() -> None:
    assert peek_type(encode_json(FULL[m.ClientHello])) == "client/hello"
    assert peek_type(encode_json(FULL[m.StreamEnd]).encode()) == "stream/end"
    assert peek_type('{"type":"made/up"}') == "made/up"
    for text in ("{", "[]", "{}", "3", b"\xff"):
        assert peek_type(text) == "?"


def test_legacy_profile_text_messages() -> None:
    profile = get_profile("legacy")
    assert isinstance(profile, LegacyProfile)
    assert profile.name == "legacy"
    for message in FULL.values():
        data = profile.encode(message)
        assert isinstance(data, str)
        assert data == encode_json(message)
        assert profile.decode(data) == message
    with pytest.raises(ProtocolError):
        profile.decode("{")


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match="known: \\['legacy', 'noise'\\]"):
        get_profile("made-up")


# --- fuzz: decode never raises anything but ProtocolError -----------------------------------


def _decode_or_protocol_error(text: str | bytes) -> None:
    try:
        decoded = decode_json(text)
    except ProtocolError as exc:
        assert isinstance(exc.message_type, str)
        assert isinstance(exc.field, str)
        assert exc.rule
    else:
        assert type(decoded) in ALL_MESSAGES
        assert decode_json(encode_json(decoded)) == decoded
    assert isinstance(peek_type(text), str)


@settings(max_examples=200, deadline=None, phases=PHASES)
@given(st.text() | st.binary())
def test_fuzz_arbitrary_text(text: str | bytes) -> None:
    _decode_or_protocol_error(text)


@settings(max_examples=200, deadline=None, phases=PHASES)
@given(JSON_VALUE)
def test_fuzz_arbitrary_json_values(value: Any) -> None:
    _decode_or_protocol_error(json.dumps(value))


@settings(max_examples=200, deadline=None, phases=PHASES)
@given(st.sampled_from(sorted(MESSAGE_TYPES)), JSON_VALUE | JSON_OBJECT)
def test_fuzz_known_type_arbitrary_payload(message_type: str, payload: Any) -> None:
    text = json.dumps({"type": message_type, "payload": payload})
    try:
        decode_json(text)
    except ProtocolError as exc:
        assert exc.message_type == message_type
        assert exc.field.startswith("payload")
    _decode_or_protocol_error(text)


@settings(max_examples=250, deadline=None, phases=PHASES)
@given(ANY_MESSAGE, JSON_VALUE, st.data())
def test_fuzz_mutated_valid_messages(message: Message, replacement: Any, data: st.DataObject) -> None:
    obj = wire(message)
    paths = [p for p, _ in walk(obj["payload"])]
    if paths:
        path = data.draw(st.sampled_from(paths))
        text = modified(message.TYPE, obj["payload"], path, replacement)
    else:
        text = json.dumps({"type": message.TYPE, "payload": replacement})
    try:
        decoded = decode_json(text)
    except ProtocolError as exc:
        assert exc.message_type == message.TYPE
        assert exc.field.startswith("payload")
        assert str(exc).startswith(f"{message.TYPE}.{exc.field}: ")
    else:
        assert type(decoded) is type(message)
        assert decode_json(encode_json(decoded)) == decoded


def test_deeply_nested_json_is_a_protocol_error() -> None:
    """A peer can send a few KB of brackets; that must be rejected, not crash the reader."""
    for depth in (2_000, 100_000):
        text = "[" * depth + "]" * depth
        with pytest.raises(ProtocolError) as info:
            decode_json(text)
        assert (info.value.message_type, info.value.field) == ("?", "")
        nested = '{"type":"stream/start","payload":{"visualizer":{"x":' + "[" * depth + "]" * depth + "}}}"
        with pytest.raises(ProtocolError):
            decode_json(nested)


def test_peek_type_survives_deep_nesting() -> None:
    for depth in (2_000, 100_000):
        assert peek_type("[" * depth + "]" * depth) == "?"
        assert peek_type('{"type":"x","p":' + "[" * depth + "]" * depth + "}") == "?"
