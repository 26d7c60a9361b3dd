"""`--wire-log`: every message that crosses the proxy, as a `wire` event in its event log.

What a gate judges a peer by must be seen from outside the peer: this records, per
message and before any fault acts on it, its direction, kind, Sendspin type and size,
at the moment its last frame reached the proxy. Message order across the two
directions (did the client send anything before `server/hello` passed?) can only be
judged here, and how early each audio chunk passed (its timestamp against the clock:
a client that reads slower than audio is produced holds the stream back, and its
chunks pass later and later). Cost: one event-log write per message (audio included),
only when asked.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from harness.protocol import HEADER_SIZE, peek_type
from harness.protocol import wsframes as fr

from .observe import ObservedMessage
from .relay.relay import Relay
from .state import EventSink

TEXT_CAPTURE = 64 * 1024  # `type` may come after `payload` (aiosendspin puts it last)
_TYPE = re.compile(rb'"type"\s*:\s*"([^"\\]{1,64})"')
KINDS = {fr.TEXT: "text", fr.BINARY: "binary", fr.CLOSE: "close", fr.PING: "ping", fr.PONG: "pong"}


def message_type(msg: ObservedMessage) -> str | None:
    """The JSON `type` of a text message, or the binary type byte as a string."""
    if msg.opcode == fr.TEXT:
        if not msg.truncated:
            return peek_type(msg.head)
        found = _TYPE.search(msg.head)  # a longer message: its first `type` key, at any depth
        return found.group(1).decode("utf-8", "replace") if found else "?"
    if msg.opcode == fr.BINARY:
        return str(msg.head[0]) if msg.head else "empty"
    return None


class WireLog:
    """A `TrafficConsumer` (observe.py) that writes one `wire` event per message."""

    capture_text = TEXT_CAPTURE
    capture_binary = HEADER_SIZE  # type byte and timestamp: how early a chunk passed (its lead)

    events: EventSink  # set by the proxy once its sink exists (the sink is built after its consumers)

    def relay_opened(self, relay: Relay) -> None:
        pass

    def message(self, relay: Relay, msg: ObservedMessage) -> None:
        fields: dict[str, Any] = {"direction": msg.direction, "kind": KINDS.get(msg.opcode, str(msg.opcode)),
                                  "size": msg.size}
        kind = message_type(msg)
        if kind is not None:
            fields["type"] = kind
        if msg.opcode == fr.BINARY and len(msg.head) >= HEADER_SIZE:
            fields["ts_us"] = struct.unpack_from(">q", msg.head, 1)[0]
        if msg.fragments > 1:
            fields["fragments"] = msg.fragments
        if msg.compressed:
            fields["compressed"] = True
        if not msg.complete:
            fields["complete"] = False
        if msg.opcode == fr.CLOSE:
            fields["code"] = msg.close_code
        self.events.log.emit("wire", session=relay.flow_id, **fields)

    def event(self, record: dict[str, Any]) -> None:
        pass
