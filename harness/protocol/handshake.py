"""Connection state machines (sans-I/O): who may send what, and when.

Both sides feed every decoded message to `receive()`; it returns the message
or raises ProtocolError naming the broken ordering rule.
"""

from __future__ import annotations

import enum
from dataclasses import fields

from .errors import ProtocolError
from .fields import UNSET
from .messages import ClientGoodbye, ClientHello, Message, ServerHello

# Role families the reference implementation knows, newest version first.
IMPLEMENTED_ROLES = ("player@v1", "controller@v1", "metadata@v1", "artwork@v1", "visualizer@v1")


class State(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    ACTIVE = "active"
    CLOSING = "closing"


def role_family(role: str) -> str:
    return role.split("@", 1)[0]


def support_objects(hello: ClientHello) -> list[str]:
    """The `ROLE_support` keys a client/hello carried, as they appear on the wire."""
    return [f.metadata["key"] for f in fields(hello)
            if f.metadata.get("key", "").endswith("_support") and getattr(hello, f.name) is not UNSET]


def activate_roles(supported: list[str], implemented: tuple[str, ...] | list[str]) -> list[str]:
    """One version per role family: the first of the client's list we implement."""
    active: list[str] = []
    families: set[str] = set()
    for role in supported:
        family = role_family(role)
        if family not in families and role in implemented:
            active.append(role)
            families.add(family)
    return active


def unknown_roles(supported: list[str], implemented: tuple[str, ...] | list[str]) -> list[str]:
    """Spec roles we do not implement (not `_` application ones): a newer client."""
    return [r for r in supported if not r.startswith("_") and r not in implemented]


class ServerHandshake:
    """Server side: the first message must be client/hello; nothing after goodbye."""

    def __init__(self) -> None:
        self.state = State.AWAITING_HELLO
        self.hello: ClientHello | None = None

    def receive(self, message: Message) -> Message:
        if self.state is State.AWAITING_HELLO:
            if not isinstance(message, ClientHello):
                raise ProtocolError(message.TYPE, "", "first message must be client/hello")
            self.hello = message
            self.state = State.ACTIVE
        elif self.state is State.ACTIVE:
            if isinstance(message, ClientHello):
                raise ProtocolError(message.TYPE, "", "client/hello may be sent only once")
            if isinstance(message, ClientGoodbye):
                self.state = State.CLOSING
        else:
            raise ProtocolError(message.TYPE, "", "no message may follow client/goodbye")
        return message

    def receive_binary(self) -> None:
        if self.state is State.AWAITING_HELLO:
            raise ProtocolError("binary", "", "first message must be client/hello")
        if self.state is State.CLOSING:
            raise ProtocolError("binary", "", "no message may follow client/goodbye")


class ClientHandshake:
    """Client side: nothing but server/hello may arrive before server/hello."""

    def __init__(self, hello: ClientHello) -> None:
        self.state = State.AWAITING_HELLO
        self.hello = hello
        self.server_hello: ServerHello | None = None

    def receive(self, message: Message) -> Message:
        if self.state is State.AWAITING_HELLO:
            if not isinstance(message, ServerHello):
                raise ProtocolError(message.TYPE, "", "received before server/hello")
            self.server_hello = message
            self.state = State.ACTIVE
        elif isinstance(message, ServerHello):
            raise ProtocolError(message.TYPE, "", "server/hello may be sent only once")
        return message

    def receive_binary(self) -> None:
        if self.state is State.AWAITING_HELLO:
            raise ProtocolError("binary", "", "received before server/hello")
