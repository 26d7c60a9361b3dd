"""Connection ordering rules and role activation (spec: Communication, Role Versioning)."""

from __future__ import annotations

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from harness.protocol import (
    ALL_MESSAGES,
    IMPLEMENTED_ROLES,
    ClientHandshake,
    Message,
    ProtocolError,
    ServerHandshake,
    activate_roles,
    decode_json,
    encode_json,
    role_family,
)
from harness.protocol import messages as m
from harness.protocol.handshake import State, unknown_roles

PHASES = (Phase.explicit, Phase.generate, Phase.shrink)

HELLO = m.ClientHello(client_id="c1", name="Client", supported_roles=["player@v1"])
SERVER_HELLO = m.ServerHello(server_id="s1", name="Server", active_roles=["player@v1"], connection_reason="playback")

# One minimal instance of every message class.
EXAMPLES: dict[type[Message], Message] = {
    m.ClientHello: HELLO,
    m.ServerHello: SERVER_HELLO,
    m.ClientTime: m.ClientTime(client_transmitted=1),
    m.ServerTime: m.ServerTime(client_transmitted=1, server_received=2, server_transmitted=3),
    m.ClientState: m.ClientState(state="synchronized"),
    m.ClientCommand: m.ClientCommand(controller=m.ControllerCommand(command="play")),
    m.ServerState: m.ServerState(),
    m.ServerCommand: m.ServerCommand(player=m.PlayerCommand(command="mute", mute=True)),
    m.StreamStart: m.StreamStart(),
    m.StreamClear: m.StreamClear(),
    m.StreamRequestFormat: m.StreamRequestFormat(),
    m.StreamEnd: m.StreamEnd(),
    m.GroupUpdate: m.GroupUpdate(),
    m.ClientGoodbye: m.ClientGoodbye(reason="user_request"),
    m.HarnessUpload: m.HarnessUpload(upload_id="u", size=0, sha256=""),
    m.HarnessUploadResult: m.HarnessUploadResult(upload_id="u", size=0, sha256=""),
    m.HarnessError: m.HarnessError(message_type="x", field="", rule="r"),
}


def test_examples_cover_every_message() -> None:
    assert set(EXAMPLES) == set(ALL_MESSAGES)


# --- server side ---------------------------------------------------------------------------


def test_server_requires_client_hello_first() -> None:
    for cls in ALL_MESSAGES:
        if cls is m.ClientHello:
            continue
        handshake = ServerHandshake()
        with pytest.raises(ProtocolError) as info:
            handshake.receive(EXAMPLES[cls])
        err = info.value
        assert err.message_type == cls.TYPE
        assert "client/hello" in err.rule
        assert "first" in err.rule
        assert handshake.hello is None
        assert handshake.state is State.AWAITING_HELLO


def test_server_rejects_binary_before_client_hello() -> None:
    handshake = ServerHandshake()
    with pytest.raises(ProtocolError) as info:
        handshake.receive_binary()
    assert info.value.message_type == "binary"
    assert "client/hello" in info.value.rule
    assert handshake.state is State.AWAITING_HELLO


def test_server_accepts_hello_then_anything() -> None:
    handshake = ServerHandshake()
    assert handshake.receive(HELLO) is HELLO
    assert handshake.hello is HELLO
    assert handshake.state is State.ACTIVE
    handshake.receive_binary()  # binary is fine now
    for cls, message in EXAMPLES.items():
        if cls in (m.ClientHello, m.ClientGoodbye):
            continue
        assert handshake.receive(message) is message
    assert handshake.state is State.ACTIVE
    assert handshake.hello is HELLO


def test_server_hello_decoded_from_the_wire() -> None:
    handshake = ServerHandshake()
    message = decode_json(encode_json(HELLO))
    handshake.receive(message)
    assert handshake.hello == HELLO


def test_server_accepts_client_hello_only_once() -> None:
    handshake = ServerHandshake()
    handshake.receive(HELLO)
    other = m.ClientHello(client_id="c2", name="Other", supported_roles=[])
    with pytest.raises(ProtocolError) as info:
        handshake.receive(other)
    assert info.value.message_type == "client/hello"
    assert "once" in info.value.rule
    assert handshake.hello is HELLO  # the first hello stands


def test_server_accepts_nothing_after_goodbye() -> None:
    for cls in ALL_MESSAGES:
        handshake = ServerHandshake()
        handshake.receive(HELLO)
        handshake.receive(m.ClientTime(client_transmitted=5))
        goodbye = m.ClientGoodbye(reason="restart")
        assert handshake.receive(goodbye) is goodbye
        assert handshake.state is State.CLOSING
        with pytest.raises(ProtocolError) as info:
            handshake.receive(EXAMPLES[cls])
        assert info.value.message_type == cls.TYPE
        assert "client/goodbye" in info.value.rule
        assert handshake.state is State.CLOSING


def test_server_accepts_no_binary_after_goodbye() -> None:
    """The "nothing after goodbye" rule holds for binary messages too."""
    handshake = ServerHandshake()
    handshake.receive(HELLO)
    handshake.receive(m.ClientGoodbye(reason="shutdown"))
    with pytest.raises(ProtocolError) as info:
        handshake.receive_binary()
    assert info.value.message_type == "binary"
    assert "client/goodbye" in info.value.rule


def test_server_goodbye_right_after_hello() -> None:
    handshake = ServerHandshake()
    handshake.receive(HELLO)
    handshake.receive(m.ClientGoodbye(reason="another_server"))
    with pytest.raises(ProtocolError):
        handshake.receive(m.ClientGoodbye(reason="another_server"))


@settings(max_examples=150, deadline=None, phases=PHASES)
@given(st.lists(st.sampled_from(ALL_MESSAGES), max_size=12))
def test_server_sequence_model(sequence: list[type[Message]]) -> None:
    """Against a model: accepted iff hello is first and unique and nothing follows goodbye."""
    handshake = ServerHandshake()
    seen_hello = seen_goodbye = False
    for cls in sequence:
        if not seen_hello:
            ok = cls is m.ClientHello
        elif seen_goodbye:
            ok = False
        else:
            ok = cls is not m.ClientHello
        try:
            handshake.receive(EXAMPLES[cls])
        except ProtocolError:
            assert not ok, cls.TYPE
            return  # a session stops at its first violation
        assert ok, cls.TYPE
        seen_hello = True
        seen_goodbye = seen_goodbye or cls is m.ClientGoodbye


# --- client side ---------------------------------------------------------------------------


def test_client_requires_server_hello_first() -> None:
    for cls in ALL_MESSAGES:
        if cls is m.ServerHello:
            continue
        handshake = ClientHandshake(HELLO)
        with pytest.raises(ProtocolError) as info:
            handshake.receive(EXAMPLES[cls])
        assert info.value.message_type == cls.TYPE
        assert "server/hello" in info.value.rule
        assert handshake.server_hello is None
        assert handshake.state is State.AWAITING_HELLO


def test_client_rejects_binary_before_server_hello() -> None:
    handshake = ClientHandshake(HELLO)
    with pytest.raises(ProtocolError) as info:
        handshake.receive_binary()
    assert info.value.message_type == "binary"
    assert "server/hello" in info.value.rule


def test_client_accepts_server_hello_then_anything_but_another() -> None:
    handshake = ClientHandshake(HELLO)
    assert handshake.hello is HELLO
    assert handshake.receive(SERVER_HELLO) is SERVER_HELLO
    assert handshake.server_hello is SERVER_HELLO
    assert handshake.state is State.ACTIVE
    handshake.receive_binary()
    for cls, message in EXAMPLES.items():
        if cls is not m.ServerHello:
            assert handshake.receive(message) is message
    with pytest.raises(ProtocolError) as info:
        handshake.receive(m.ServerHello(server_id="s2", name="x", active_roles=[], connection_reason="discovery"))
    assert info.value.message_type == "server/hello"
    assert "once" in info.value.rule
    assert handshake.server_hello is SERVER_HELLO


# --- role activation ---------------------------------------------------------------------


def test_implemented_roles_are_the_spec_roles() -> None:
    assert set(IMPLEMENTED_ROLES) == {"player@v1", "controller@v1", "metadata@v1", "artwork@v1", "visualizer@v1"}


def test_role_family() -> None:
    assert role_family("player@v2") == "player"
    assert role_family("_myapp_visualizer@v2") == "_myapp_visualizer"
    assert role_family("controller") == "controller"
    assert role_family("a@b@c") == "a"


ACTIVATION_EXAMPLES: list[tuple[list[str], list[str]]] = [
    (["player@v2", "player@v1"], ["player@v1"]),
    (["player@v1", "player@v2"], ["player@v1"]),
    (["controller@v1", "player@v1"], ["controller@v1", "player@v1"]),  # client's order kept
    (["visualizer@v1", "metadata@v1", "artwork@v1", "controller@v1", "player@v1"],
     ["visualizer@v1", "metadata@v1", "artwork@v1", "controller@v1", "player@v1"]),
    (["player@v1", "player@v1"], ["player@v1"]),
    (["_myapp_display@v1", "player@v3", "speaker@v1", "player"], []),
    (["player@v2", "_x@v1", "metadata@v1", "player@v1", "metadata@v2"], ["metadata@v1", "player@v1"]),
    ([], []),
]


def test_activate_roles_with_implemented_roles() -> None:
    for supported, expected in ACTIVATION_EXAMPLES:
        assert activate_roles(supported, IMPLEMENTED_ROLES) == expected, supported


def test_activate_roles_picks_first_implemented_version_of_each_family() -> None:
    implemented = ["player@v1", "player@v2", "artwork@v1"]
    assert activate_roles(["player@v2", "player@v1"], implemented) == ["player@v2"]
    assert activate_roles(["player@v1", "player@v2"], implemented) == ["player@v1"]
    assert activate_roles(["player@v3", "artwork@v2", "player@v1", "artwork@v1"], implemented) == [
        "player@v1", "artwork@v1",
    ]
    assert activate_roles(["_app@v1"], ["_app@v1"]) == ["_app@v1"]
    assert activate_roles(["player@v1"], ("player@v1",)) == ["player@v1"]  # tuple or list


FAMILIES = ["player", "controller", "metadata", "artwork", "visualizer", "_app"]
ROLE = st.builds(lambda f, v: f"{f}@v{v}", st.sampled_from(FAMILIES), st.integers(1, 3))


@settings(max_examples=200, deadline=None, phases=PHASES)
@given(st.lists(ROLE, max_size=10), st.lists(ROLE, max_size=8))
def test_activate_roles_properties(supported: list[str], implemented: list[str]) -> None:
    active = activate_roles(supported, implemented)
    families = [role_family(r) for r in active]
    assert len(families) == len(set(families))  # one version per family
    assert all(r in implemented and r in supported for r in active)
    # order: the client's priority order
    assert active == sorted(active, key=supported.index)
    for role in active:  # the first implemented entry of its family in the client's list
        first = next(r for r in supported if role_family(r) == role_family(role) and r in implemented)
        assert role == first
    # every family that has an implemented entry is activated
    assert set(families) == {role_family(r) for r in supported if r in implemented}


def test_unknown_roles_excludes_application_roles() -> None:
    supported = ["player@v2", "player@v1", "_myapp_controller", "_custom_display@v2", "lights@v1", "controller@v1"]
    assert unknown_roles(supported, IMPLEMENTED_ROLES) == ["player@v2", "lights@v1"]
    assert unknown_roles(["player@v1", "metadata@v1"], IMPLEMENTED_ROLES) == []
    assert unknown_roles([], IMPLEMENTED_ROLES) == []
    assert unknown_roles(["_a", "_b@v9"], []) == []


@settings(max_examples=150, deadline=None, phases=PHASES)
@given(st.lists(ROLE | st.text(max_size=8), max_size=10))
def test_unknown_roles_properties(supported: list[str]) -> None:
    unknown = unknown_roles(supported, IMPLEMENTED_ROLES)
    assert unknown == [r for r in supported if not r.startswith("_") and r not in IMPLEMENTED_ROLES]
    assert not set(unknown) & set(activate_roles(supported, IMPLEMENTED_ROLES))
