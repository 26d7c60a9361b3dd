"""The one exception type of the protocol core."""

from __future__ import annotations


class ProtocolError(Exception):
    """A message broke a rule of the protocol.

    `message_type` is the Sendspin type (``client/hello``, ``binary``, ...) or
    ``"?"`` when it could not be read, `field` the dotted path of the field in
    the payload (``""`` for the message as a whole), `rule` what was broken.
    """

    def __init__(self, message_type: str, field: str, rule: str) -> None:
        self.message_type = message_type
        self.field = field
        self.rule = rule
        where = f"{message_type}.{field}" if field else message_type
        super().__init__(f"{where}: {rule}")


class ConnectionFatal(ProtocolError):
    """A breach after which the connection must be closed (the `noise` revision's
    silent failures, malformed fragment sequences); other ProtocolErrors leave the
    decision to the caller."""


class UnknownMessageType(ProtocolError):
    """A well-formed JSON message whose `type` this profile does not define."""

    def __init__(self, message_type: str) -> None:
        super().__init__(message_type, "type", "unknown message type")
