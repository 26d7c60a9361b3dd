"""Who may send what after the Noise handshake of the `noise` revision (spec
`messaging.md`, "Communication"): `server/hello` → `client/hello` →
`server/activate`, and nothing else before the first `server/activate` but a
`client/goodbye`. Then `client/state` (with `available`) opens the roles'
binary data. Sans-I/O like `handshake.py`, its legacy counterpart: both sides
feed every decoded message to `receive()` and every message they send to
`sent()`; a broken ordering rule raises ProtocolError naming it.
"""

from __future__ import annotations

import enum

from .errors import ProtocolError
from .messages import (
    Message,
    NoiseClientGoodbye,
    NoiseClientHello,
    NoiseClientState,
    NoiseServerHello,
    ServerActivate,
)
from .noise_plaintext import AudioChunk, RawBinary


class FlowState(enum.Enum):
    AWAITING_SERVER_HELLO = "awaiting_server_hello"
    AWAITING_CLIENT_HELLO = "awaiting_client_hello"
    AWAITING_ACTIVATE = "awaiting_activate"
    ACTIVE = "active"
    CLOSING = "closing"


class NoiseServerFlow:
    """Server side: sends server/hello, receives client/hello, sends server/activate."""

    def __init__(self) -> None:
        self.state = FlowState.AWAITING_SERVER_HELLO
        self.hello: NoiseClientHello | None = None
        self.active_roles: list[str] = []
        self.activities: list[str] = []
        self.client_state: NoiseClientState | None = None

    def sent(self, message: Message) -> None:
        if self.state is FlowState.AWAITING_SERVER_HELLO:
            if not isinstance(message, NoiseServerHello):
                raise ProtocolError(message.TYPE, "", "the server's first message must be server/hello")
            self.state = FlowState.AWAITING_CLIENT_HELLO
        elif isinstance(message, NoiseServerHello):
            raise ProtocolError(message.TYPE, "", "server/hello may be sent only once")
        elif self.state is FlowState.AWAITING_CLIENT_HELLO:
            raise ProtocolError(message.TYPE, "", "nothing but server/hello before client/hello")
        elif isinstance(message, ServerActivate):
            if self.state is FlowState.AWAITING_ACTIVATE and not isinstance(message.active_roles, list):
                raise ProtocolError(message.TYPE, "active_roles", "required on the first server/activate")
            if isinstance(message.active_roles, list):
                self.active_roles = list(message.active_roles)
            self.activities = list(message.activities)
            self.state = FlowState.ACTIVE
        elif self.state is FlowState.AWAITING_ACTIVATE:
            raise ProtocolError(message.TYPE, "", "the server's first message after client/hello is server/activate")

    def receive(self, message: Message | AudioChunk | RawBinary) -> Message | AudioChunk | RawBinary:
        if self.state is FlowState.CLOSING:
            raise ProtocolError(getattr(message, "TYPE", "binary"), "", "no message may follow client/goodbye")
        if isinstance(message, NoiseClientGoodbye):
            self.state = FlowState.CLOSING
            return message
        if self.state is FlowState.AWAITING_SERVER_HELLO:
            raise ProtocolError(getattr(message, "TYPE", "binary"), "", "the client spoke before server/hello")
        if self.state is FlowState.AWAITING_CLIENT_HELLO:
            if not isinstance(message, NoiseClientHello):
                raise ProtocolError(getattr(message, "TYPE", "binary"), "",
                                    "the client's first message must be client/hello")
            self.hello = message
            self.state = FlowState.AWAITING_ACTIVATE
            return message
        if isinstance(message, NoiseClientHello):
            raise ProtocolError(message.TYPE, "", "client/hello may be sent only once")
        if self.state is FlowState.AWAITING_ACTIVATE:
            raise ProtocolError(getattr(message, "TYPE", "binary"), "",
                                "nothing but client/goodbye before the first server/activate")
        if isinstance(message, NoiseClientState):
            self.client_state = message
        return message


class NoiseClientFlow:
    """Client side: receives server/hello, sends client/hello, receives server/activate."""

    def __init__(self) -> None:
        self.state = FlowState.AWAITING_SERVER_HELLO
        self.server_hello: NoiseServerHello | None = None
        self.active_roles: list[str] = []
        self.activities: list[str] = []
        self.activations = 0

    def sent(self, message: Message) -> None:
        if isinstance(message, NoiseClientGoodbye):
            self.state = FlowState.CLOSING
            return
        if self.state is FlowState.AWAITING_SERVER_HELLO:
            raise ProtocolError(message.TYPE, "", "the client sends nothing before server/hello")
        if self.state is FlowState.AWAITING_CLIENT_HELLO:
            if not isinstance(message, NoiseClientHello):
                raise ProtocolError(message.TYPE, "", "the client's first message must be client/hello")
            self.state = FlowState.AWAITING_ACTIVATE
        elif isinstance(message, NoiseClientHello):
            raise ProtocolError(message.TYPE, "", "client/hello may be sent only once")
        elif self.state is FlowState.AWAITING_ACTIVATE:
            raise ProtocolError(message.TYPE, "", "nothing but client/goodbye before the first server/activate")

    def receive(self, message: Message | AudioChunk | RawBinary) -> Message | AudioChunk | RawBinary:
        kind = getattr(message, "TYPE", "binary")
        if self.state is FlowState.AWAITING_SERVER_HELLO:
            if not isinstance(message, NoiseServerHello):
                raise ProtocolError(kind, "", "the server's first message must be server/hello")
            self.server_hello = message
            self.state = FlowState.AWAITING_CLIENT_HELLO
            return message
        if isinstance(message, NoiseServerHello):
            raise ProtocolError(kind, "", "server/hello may be sent only once")
        if isinstance(message, ServerActivate):
            if isinstance(message.active_roles, list):
                self.active_roles = list(message.active_roles)
            elif self.activations == 0:
                self.active_roles = []  # an omitted first active_roles reads as empty
            self.activities = list(message.activities)
            self.activations += 1
            if self.state is not FlowState.CLOSING:
                self.state = FlowState.ACTIVE
            return message
        if self.state in (FlowState.AWAITING_CLIENT_HELLO, FlowState.AWAITING_ACTIVATE):
            raise ProtocolError(kind, "", "nothing but server/activate may follow server/hello before the "
                                          "first activation")
        return message
