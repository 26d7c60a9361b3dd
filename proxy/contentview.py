"""A mitmproxy content view for Sendspin WebSocket messages (both profiles).

Binary messages: type byte (with its role and slot), timestamp, payload size, the audio
format of the latest `stream/start` in the same flow (so a chunk shows its frames and
duration), the image size of artwork, then a hex dump of the first payload bytes. JSON
messages: the type and key fields, whether they pass the schema of the flow's revision,
then the pretty-printed JSON. In a noise session (`proxy/web.py` marks the flow) every
binary message is AEAD ciphertext the proxy holds no keys for: its size and first bytes.
Registered on import (`contentviews.add`); `--web` imports it, and `mitmweb -s
proxy/contentview.py` loads it into a stock mitmweb.

`proxy/web.py` keeps only the start of a big message and appends `TRIM_MARKER`; the view
takes the marker off again and says how much was kept.
"""

from __future__ import annotations

import json
import re
import struct

from mitmproxy import contentviews
from mitmproxy.contentviews import Contentview, Metadata, SyntaxHighlight
from mitmproxy.websocket import WebSocketMessage

from harness.protocol import (
    HEADER_SIZE,
    MESSAGE_TYPES,
    NOISE_MESSAGE_TYPES,
    PLAYER_AUDIO,
    binary_role,
    binary_slot,
)

from .describe import (
    binary_name,
    format_text,
    json_summary,
    parse_json_object,
    size_text,
    ts_text,
    type_from_prefix,
    validation_error,
)

TRIM_MARKER = b"\n[sendspin-proxy: trimmed to the first %d of %d bytes]"
_TRIMMED = re.compile(rb"\n\[sendspin-proxy: trimmed to the first (\d+) of (\d+) bytes\]\Z")
HEXDUMP_BYTES = 256
FORMAT_LOOKBACK = 500  # messages searched backwards for the stream/start that applies
PROFILE_KEY = "sendspin_profile"  # flow.metadata, set by proxy/web.py when a flow is a noise session
CIPHERTEXT_SHOWN = 64  # first bytes of an encrypted message in its hex dump


def trim(content: bytes, total: int) -> bytes:
    """`content` (the first bytes of a message of `total` bytes) with the marker, if it is short."""
    return content if len(content) >= total else content + TRIM_MARKER % (len(content), total)


def untrim(data: bytes) -> tuple[bytes, int]:
    """(the kept bytes, the message's full size)."""
    m = _TRIMMED.search(data)
    if m is None:
        return data, len(data)
    kept = data[:m.start()]
    return kept, int(m.group(2))


def _image(payload: bytes) -> str | None:
    if payload.startswith(b"\x89PNG\r\n\x1a\n") and len(payload) >= 24:
        w, h = struct.unpack(">II", payload[16:24])
        return f"PNG {w}×{h}"
    if payload.startswith(b"BM") and len(payload) >= 26:
        w, h = struct.unpack("<ii", payload[18:26])
        return f"BMP {w}×{abs(h)}"
    if payload.startswith(b"\xff\xd8"):
        return "JPEG"
    return None


def _hexdump(data: bytes, offset: int = 0) -> list[str]:
    out = []
    for i in range(0, len(data), 16):
        row = data[i:i + 16]
        hx = " ".join(f"{b:02x}" for b in row)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        out.append(f"{offset + i:08x}  {hx:<47}  {text}")
    return out


def _player_format(metadata: Metadata) -> dict[str, object] | None:
    """The player format of the last downstream stream/start before this message, if recorded."""
    flow, msg = metadata.flow, metadata.websocket_message
    ws = getattr(flow, "websocket", None)
    if ws is None or msg is None:
        return None
    messages: list[WebSocketMessage] = ws.messages
    try:
        end = next(i for i in range(len(messages) - 1, -1, -1) if messages[i] is msg)
    except StopIteration:
        end = len(messages)
    for m in reversed(messages[max(0, end - FORMAT_LOOKBACK):end]):
        if m.from_client or not m.is_text or b'"stream/start"' not in m.content[:200]:
            continue
        obj = parse_json_object(m.content)
        player = obj.get("payload", {}).get("player") if obj else None
        if isinstance(player, dict):
            return player
    return None


def _mode(metadata: Metadata) -> str | None:
    """The flow's noise mode (noise-opaque, noise-terminated), None for legacy."""
    flow = metadata.flow
    return None if flow is None else flow.metadata.get(PROFILE_KEY)


def _noise(metadata: Metadata) -> bool:
    """Ciphertext after the handshake: a noise session the proxy holds no keys for."""
    return _mode(metadata) == "noise-opaque"


class SendspinContentview(Contentview):
    """Shown as "Sendspin" in mitmweb's view menu; chosen automatically for Sendspin messages."""

    @property
    def syntax_highlight(self) -> SyntaxHighlight:
        return "yaml"  # the JSON body is YAML too, and the header lines are YAML comments

    def prettify(self, data: bytes, metadata: Metadata) -> str:
        kept, total = untrim(data)
        msg = metadata.websocket_message
        if (msg.is_text if msg is not None else kept.lstrip()[:1] == b"{"):
            return self._text(kept, total, metadata)
        if _noise(metadata):
            return self._sealed(kept, total, metadata)
        return self._binary(kept, total, metadata)

    def _sealed(self, kept: bytes, total: int, metadata: Metadata) -> str:
        shown = kept[:CIPHERTEXT_SHOWN]
        lines = [f"# Sendspin noise transport message{self._direction(metadata)}: encrypted",
                 f"size:      {total} bytes ({size_text(total)}) of AEAD ciphertext, the tag included",
                 "# the proxy holds no keys: its type and content are inside the encryption",
                 f"# first {len(shown)} bytes:"]
        return "\n".join(lines + [f"# {ln}" for ln in _hexdump(shown)])

    def _direction(self, metadata: Metadata) -> str:
        msg = metadata.websocket_message
        if msg is None:
            return ""
        return " (client → server)" if msg.from_client else " (server → client)"

    def _text(self, kept: bytes, total: int, metadata: Metadata) -> str:
        if len(kept) < total:
            name = type_from_prefix(kept) or "?"
            head = kept[:2000].decode("utf-8", "replace")
            return (f"# Sendspin {name}{self._direction(metadata)}: JSON of {total} bytes, the first {len(kept)} "
                    f"kept by sendspin-proxy\n{head}…")
        obj = parse_json_object(kept)
        if obj is None:
            raise ValueError("not a JSON object")
        name, fields = json_summary(obj)
        lines = [f"# Sendspin {name}{self._direction(metadata)}"]
        if fields:
            lines.append(f"# {fields}")
        noise = _mode(metadata) is not None
        error = validation_error(kept, NOISE_MESSAGE_TYPES if noise else MESSAGE_TYPES)
        lines.append(f"# INVALID: {error}" if error else f"# valid ({'noise' if noise else 'legacy'} schema)")
        lines.append(json.dumps(obj, indent=2, ensure_ascii=False))
        return "\n".join(lines)

    def _binary(self, kept: bytes, total: int, metadata: Metadata) -> str:
        if total < HEADER_SIZE:
            raise ValueError(f"{total} bytes: shorter than the {HEADER_SIZE}-byte Sendspin binary header")
        mtype = kept[0]
        ts = int.from_bytes(kept[1:HEADER_SIZE], "big", signed=True)
        payload = kept[HEADER_SIZE:]
        size = total - HEADER_SIZE
        lines = [f"# Sendspin binary: {binary_name(mtype)}{self._direction(metadata)}",
                 f"type:      {mtype} (role {binary_role(mtype)}, slot {binary_slot(mtype)})",
                 f"timestamp: {ts} µs ({ts_text(ts)} s)",
                 f"payload:   {size} bytes ({size_text(size)})"]
        if len(payload) < size:
            lines.append(f"kept:      the first {len(payload)} payload bytes (trimmed by sendspin-proxy)")
        if mtype == PLAYER_AUDIO:
            fmt = _player_format(metadata)
            if fmt is not None:
                line = f"format:    {format_text(fmt)} (codec/rate/bits/channels, from the last stream/start)"
                lines.append(line)
                frame = int(fmt.get("channels", 0)) * int(fmt.get("bit_depth", 0)) // 8  # type: ignore[call-overload]
                rate = int(fmt.get("sample_rate", 0))  # type: ignore[call-overload]
                if fmt.get("codec") == "pcm" and frame > 0 and rate > 0:
                    frames = size // frame
                    lines.append(f"frames:    {frames} = {frames * 1000 / rate:.3f} ms"
                                 + (f" ({size % frame} bytes left over)" if size % frame else ""))
        image = _image(payload)
        if image is not None:
            lines.append(f"image:     {image}")
        shown = payload[:HEXDUMP_BYTES]
        if shown:
            lines.append(f"# payload, first {len(shown)} bytes:")
            lines += [f"# {ln}" for ln in _hexdump(shown)]
        return "\n".join(lines)

    def render_priority(self, data: bytes, metadata: Metadata) -> float:
        msg = metadata.websocket_message
        if msg is None or not data:
            return -1
        if msg.is_text:
            name = type_from_prefix(data[:512])
            return 2 if name is not None and "/" in name else -1
        if _noise(metadata):
            return 2
        kept, total = untrim(data)
        return 2 if total >= HEADER_SIZE and binary_role(kept[0]) != "reserved" else -1


sendspin = SendspinContentview()
contentviews.add(sendspin)
