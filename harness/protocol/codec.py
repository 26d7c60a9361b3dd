"""JSON text messages: ``{"type": ..., "payload": {...}}``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .errors import ProtocolError, UnknownMessageType
from .fields import decode_object, encode_object
from .messages import MESSAGE_TYPES, Message


def encode_json(message: Message) -> str:
    return json.dumps({"type": message.TYPE, "payload": encode_object(message)}, separators=(",", ":"))


def peek_type(text: str | bytes) -> str:
    """Best-effort `type` of a text message, for logs; never raises."""
    try:
        obj = json.loads(text)
        return str(obj.get("type", "?")) if isinstance(obj, dict) else "?"
    except (ValueError, RecursionError):
        return "?"


def decode_json(text: str | bytes, types: Mapping[str, type[Message]] = MESSAGE_TYPES) -> Message:
    """One JSON message; `types` is the revision's vocabulary (legacy by default)."""
    try:
        obj: Any = json.loads(text)
    except ValueError as exc:
        raise ProtocolError("?", "", f"malformed JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("?", "", "JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError("?", "", f"message must be a JSON object, got {type(obj).__name__}")
    message_type = obj.get("type")
    if not isinstance(message_type, str):
        raise ProtocolError("?", "type", "required string field is missing")
    cls = types.get(message_type)
    if cls is None:
        raise UnknownMessageType(message_type)
    if "payload" not in obj:
        raise ProtocolError(message_type, "payload", "required field is missing")
    return decode_object(cls, obj["payload"], message_type, "payload")
