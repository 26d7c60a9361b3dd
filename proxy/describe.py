"""Sendspin messages in words, for people: one-line summaries (the terminal view) and the
names of binary message types. Decoding is `harness.protocol`'s; this only chooses what
to show. No mitmproxy, no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from harness.protocol import (
    HEADER_SIZE,
    MESSAGE_TYPES,
    ProtocolError,
    UnknownMessageType,
    binary_role,
    binary_slot,
    decode_json,
)
from harness.protocol.messages import UPLOAD_BINARY_TYPE, Message

ARROW = {"upstream": "c→s", "downstream": "s→c", "both": "c↔s"}  # client to server, server to client
VALUE_CHARS = 40  # a longer field value is cut (the line stays readable)
_TYPE_IN_PREFIX = re.compile(rb'"type"\s*:\s*"([^"\\]{1,64})"')


def binary_name(message_type: int) -> str:
    """What a legacy binary type byte means (spec: Binary Message ID Structure)."""
    role = binary_role(message_type)
    slot = binary_slot(message_type)
    if role == "player":
        return "player audio" if slot == 0 else f"player slot {slot}"
    if role == "artwork":
        return f"artwork ch{slot}"
    if role == "visualizer":
        return "visualizer" if slot == 0 else f"visualizer slot {slot}"
    if role == "application":
        return "_harness upload" if message_type == UPLOAD_BINARY_TYPE else f"application {message_type}"
    return f"reserved type {message_type}"


def is_stream_chunk(message_type: int) -> bool:
    """Player and visualizer binaries come many per second: the view summarises them."""
    return binary_role(message_type) in ("player", "visualizer")


def size_text(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.2f} MiB"


def ts_text(ts_us: int) -> str:
    """A Sendspin timestamp (µs on the server's clock) as seconds."""
    sign = "-" if ts_us < 0 else ""
    s, us = divmod(abs(ts_us), 1_000_000)
    return f"{sign}{s}.{us:06d}"


def parse_json_object(text: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def type_from_prefix(head: bytes) -> str | None:
    """The `type` of a JSON message of which only the start was kept."""
    m = _TYPE_IN_PREFIX.search(head)
    return m.group(1).decode("utf-8", "replace") if m else None


def validation_error(text: bytes | str, types: Mapping[str, type[Message]] = MESSAGE_TYPES) -> str | None:
    """None if the message decodes with the revision's schema (`types`; legacy by default),
    else what is wrong."""
    try:
        decode_json(text, types)
    except UnknownMessageType as e:
        return f"unknown type {e.message_type!r}"
    except ProtocolError as e:
        return str(e)
    return None


def _v(value: Any) -> str:
    if isinstance(value, str):
        s = value if value and " " not in value and "=" not in value else json.dumps(value)
    elif isinstance(value, bool) or value is None:
        s = json.dumps(value)
    elif isinstance(value, list):
        s = ",".join(_v(x) for x in value) or "[]"
    elif isinstance(value, dict):
        s = "{" + " ".join(f"{k}={_v(x)}" for k, x in value.items()) + "}"
    else:
        s = str(value)
    return s if len(s) <= VALUE_CHARS else s[:VALUE_CHARS - 1] + "…"


def _kv(d: Any, *keys: str, **labels: str) -> list[str]:
    """`key=value` for the keys present in `d` (labels rename: label=key)."""
    if not isinstance(d, dict):
        return []
    out = [f"{k}={_v(d[k])}" for k in keys if k in d]
    out += [f"{label}={_v(d[k])}" for label, k in labels.items() if k in d]
    return out


def format_text(fmt: Any) -> str:
    """`pcm/48000/16/2` (codec/sample rate/bit depth/channels) from a format or stream object."""
    if not isinstance(fmt, dict):
        return "?"
    return "/".join(str(fmt.get(k, "?")) for k in ("codec", "sample_rate", "bit_depth", "channels"))


def _hello(p: dict[str, Any]) -> list[str]:
    out = _kv(p, "client_id", "name", roles="supported_roles")
    player = p.get("player@v1_support")
    if isinstance(player, dict):
        fmts = player.get("supported_formats")
        if isinstance(fmts, list):
            shown = [format_text(f) for f in fmts[:3]]
            out.append("formats=" + ",".join(shown) + (f",+{len(fmts) - 3}" if len(fmts) > 3 else ""))
        out += _kv(player, buffer="buffer_capacity")
    art = p.get("artwork@v1_support")
    if isinstance(art, dict) and isinstance(art.get("channels"), list):
        out.append("artwork=" + ",".join(f"{c.get('format')} {c.get('media_width')}x{c.get('media_height')}"
                                         for c in art["channels"] if isinstance(c, dict)))
    return out


def _stream_start(p: dict[str, Any]) -> list[str]:
    out = []
    if isinstance(p.get("player"), dict):
        out.append(f"player={format_text(p['player'])}")
    art = p.get("artwork")
    if isinstance(art, dict) and isinstance(art.get("channels"), list):
        out.append("artwork=" + ",".join(f"{c.get('format')} {c.get('width')}x{c.get('height')}"
                                         for c in art["channels"] if isinstance(c, dict)))
    if "visualizer" in p:
        out.append(f"visualizer={_v(p['visualizer'])}")
    return out


def _server_time(p: dict[str, Any]) -> list[str]:
    out = _kv(p, "client_transmitted")
    rx, tx = p.get("server_received"), p.get("server_transmitted")
    if isinstance(rx, int) and isinstance(tx, int):
        out.append(f"server_held={tx - rx} µs")
    return out


def _noise_handshake(p: dict[str, Any]) -> list[str]:
    data = p.get("data")
    # base64url without padding: 4 characters carry 3 bytes
    return [f"{size_text(len(data) * 3 // 4)}"] if isinstance(data, str) else _kv(p, "data")


def _server_state(p: dict[str, Any]) -> list[str]:
    return _kv(p.get("metadata"), "title", "artist", "album") + _kv(p.get("controller"), "volume", "muted")


_SUMMARIES: dict[str, Any] = {
    "client/hello": _hello,
    "server/hello": lambda p: _kv(p, "server_id", "name", "connection_reason", roles="active_roles"),
    "client/time": lambda p: _kv(p, "client_transmitted"),
    "server/time": _server_time,
    "client/state": lambda p: _kv(p, "state") + _kv(p.get("player"), "volume", "muted", "state"),
    "server/state": _server_state,
    "server/command": lambda p: _kv(p.get("player"), "command", "volume", "mute"),
    "client/command": lambda p: _kv(p.get("controller"), "command", "volume", "mute"),
    "stream/start": _stream_start,
    "stream/clear": lambda p: _kv(p, "roles"),
    "stream/end": lambda p: _kv(p, "roles"),
    "stream/request-format": lambda p: _kv(p, "player", "artwork"),
    "group/update": lambda p: _kv(p, "playback_state", "group_id", "group_name"),
    "client/goodbye": lambda p: _kv(p, "reason"),
    "_harness/upload": lambda p: _kv(p, "upload_id", "size", "sha256"),
    "_harness/upload-result": lambda p: _kv(p, "upload_id", "size", "sha256"),
    "_harness/error": lambda p: _kv(p, "message_type", "field", "rule"),
    # the cleartext handshake of the noise revision (everything after it is encrypted)
    "client/init": lambda p: _kv(p, "client_id", "version", "suite"),
    "server/init": lambda p: _kv(p, "server_id", "version"),
    "server/error": lambda p: _kv(p, "reason"),
    "noise/handshake": _noise_handshake,
}


def json_summary(obj: dict[str, Any]) -> tuple[str, str]:
    """(type, key fields) of a decoded JSON message."""
    mtype = obj.get("type")
    name = mtype if isinstance(mtype, str) else "(no type)"
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        return name, "(no payload object)"
    fn = _SUMMARIES.get(name)
    # a type we do not know: its first fields
    fields = fn(payload) if fn is not None else [f"{k}={_v(v)}" for k, v in list(payload.items())[:4]]
    return name, " ".join(fields)


def binary_summary(head: bytes, size: int) -> tuple[str, int | None, str]:
    """(name, timestamp µs or None, text) of a binary message from its first bytes."""
    if size < HEADER_SIZE or len(head) < HEADER_SIZE:
        return "short binary", None, f"{size} B: shorter than the {HEADER_SIZE}-byte header"
    mtype = head[0]
    ts = int.from_bytes(head[1:HEADER_SIZE], "big", signed=True)
    name = binary_name(mtype)
    return name, ts, f"type={mtype} ts={ts_text(ts)} {size_text(size - HEADER_SIZE)}"


ENDED = {"eof": "FIN", "rst": "RST", "closed": "socket closed", "open": "still open"}


def close_summary(rec: dict[str, Any]) -> str:
    """A relay's `close` event in words: what each side sent, how it ended, the message counts."""
    parts = []
    for side in ("client", "server"):
        d = rec.get(side) or {}
        if "close_code" in d:
            code = d["close_code"]
            how = f"close {code}" if code is not None else "close (no code)"
            if d.get("close_reason"):
                how += f' "{d["close_reason"]}"'
        else:
            how = "no close frame"
        ended = ENDED.get(d.get("ended", ""), str(d.get("ended")))
        text = f"{side}: {how}, then {ended}" + (f" ({d['error']})" if d.get("error") else "")
        if d.get("sent") in ("close", "rst"):  # the proxy ended it (a fault, or shutdown), not the peer
            text += f", proxy sent it {'a close frame' if d['sent'] == 'close' else 'RST'}"
        parts.append(text)
    up, down = rec.get("upstream") or {}, rec.get("downstream") or {}
    counts = (f"c→s {up.get('messages', 0)} msgs {size_text(int(up.get('bytes', 0)))}, "
              f"s→c {down.get('messages', 0)} msgs {size_text(int(down.get('bytes', 0)))}")
    profile = " (noise session)" if rec.get("profile") == "noise" else ""
    return f"closed after {rec.get('seconds', 0):.1f} s{profile}; " + "; ".join(parts) + "; " + counts


# a `fault` event's fields that are not the fault's own
FAULT_RECORD_KEYS = {"t_us", "proc", "session", "event", "seq", "conn_seq", "fault", "type", "direction", "params",
                     "selector", "json_type", "binary_type", "index", "size", "encrypted"}


def fault_target(rec: dict[str, Any]) -> str | None:
    """What a `fault` event hit: a JSON type or a binary type's name (None: no message)."""
    if rec.get("json_type"):
        return str(rec["json_type"])
    if rec.get("encrypted"):
        return "encrypted"
    if rec.get("binary_type") is not None:
        return binary_name(int(rec["binary_type"]))
    return None


def fault_extras(rec: dict[str, Any]) -> dict[str, Any]:
    """The fields a fault added to its `fault` event (frames=, delay_ms=, ...)."""
    return {k: v for k, v in rec.items() if k not in FAULT_RECORD_KEYS and v is not None}


def fault_applied(rec: dict[str, Any]) -> str:
    """A `fault` event in words: the fault, what it hit, its own fields."""
    what = [t] if (t := fault_target(rec)) is not None else []
    if rec.get("size") is not None:
        what.append(size_text(int(rec["size"])))
    extra = [f"{k}={v}" for k, v in fault_extras(rec).items()]
    return " ".join([fault_name(rec.get("fault"), rec.get("type")), *what, *extra])


DISTINCT_VALUES = 3  # a summed-up non-numeric field lists this many values, then "…"


class FaultTally:
    """Applications of one fault in one direction of one connection, summed up for the
    view: how many, over how long, what they hit, the range of each field of theirs."""

    def __init__(self) -> None:
        self.count = 0
        self.first: dict[str, Any] = {}  # a tally of one is shown as that application's own line
        self.t_first_us = self.t_last_us = 0
        self.hits: dict[str, list[int]] = {}  # target -> [applications, bytes]
        self.ranges: dict[str, tuple[float, float]] = {}  # numeric field -> (min, max)
        self.values: dict[str, list[str]] = {}  # other field -> distinct values, the first few

    def add(self, rec: dict[str, Any]) -> None:
        t = int(rec.get("t_us") or 0)
        if not self.count:
            self.first, self.t_first_us = rec, t
        self.count += 1
        self.t_last_us = max(self.t_last_us, t)
        target = fault_target(rec)
        if target is not None:
            hit = self.hits.setdefault(target, [0, 0])
            hit[0] += 1
            hit[1] += int(rec.get("size") or 0)
        for k, v in fault_extras(rec).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                lo, hi = self.ranges.get(k, (v, v))
                self.ranges[k] = (min(lo, v), max(hi, v))
            else:
                seen = self.values.setdefault(k, [])
                if plain(v) not in seen and len(seen) <= DISTINCT_VALUES:
                    seen.append(plain(v))

    def text(self) -> str:
        """`slice (slicer) ×40 in 0.98 s: player audio ×39 183.6 KiB, server/time 127 B (frames=1–10)`"""
        if self.count == 1:
            return fault_applied(self.first)
        span = (self.t_last_us - self.t_first_us) / 1e6
        out = f"{fault_name(self.first.get('fault'), self.first.get('type'))} ×{self.count} in {span:.2f} s"
        hits = [f"{t}{f' ×{n}' if n > 1 else ''} {size_text(b)}" for t, (n, b) in self.hits.items()]
        if hits:
            out += ": " + ", ".join(hits)
        fields = [f"{k}={lo}" + (f"–{hi}" if hi != lo else "") for k, (lo, hi) in self.ranges.items()]
        fields += [f"{k}=" + ",".join(v[:DISTINCT_VALUES]) + (",…" if len(v) > DISTINCT_VALUES else "")
                   for k, v in self.values.items()]
        return out + (f" ({' '.join(fields)})" if fields else "")


def fault_spec_text(spec: dict[str, Any]) -> str:
    """A fault's spec in one line: name (type), direction, selector, parameters, limits."""
    sel = spec.get("selector") or {}
    params = spec.get("params") or {}
    bits = [fault_name(spec.get("name"), spec.get("type")), ARROW.get(spec.get("direction", ""), "")]
    bits += [f"{k}={plain(v)}" for k, v in {**sel, **params}.items()]
    bits += [f"{k}={spec[k]}" for k in ("count", "duration") if spec.get(k) is not None]
    if spec.get("toxicity", 1.0) != 1.0:
        bits.append(f"toxicity={spec['toxicity']}")
    return " ".join(b for b in bits if b)


def fault_name(name: Any, kind: Any) -> str:
    return str(name) if name == kind else f"{name} ({kind})"


def plain(v: Any) -> str:
    return ",".join(str(x) for x in v) if isinstance(v, list) else str(v)


def fields_text(rec: dict[str, Any], skip: Collection[str] = ()) -> str:
    """`key=value` for each field of an event but `skip`, long values cut as in the view."""
    return " ".join(f"{k}={_v(v)}" for k, v in rec.items() if k not in skip)


# What each fault type does, short enough for a table column (`sendspin-proxy fault types`);
# a type missing here is described by the first sentence of its docstring, cut.
FAULT_PURPOSE = {
    "bandwidth": "at most rate_bps bytes/s (token bucket)",
    "close": "a close frame with code and reason to both peers",
    "corrupt": "XOR one payload byte of each selected message",
    "delay": "hold each selected message back delay_ms",
    "down": "reset every new connection at accept",
    "drop": "drop the selected messages",
    "duplicate": "send each selected message again, copies times",
    "inject": "send a message of the proxy's own to one peer",
    "latency": "delay every chunk by latency ± jitter, in order",
    "limit_data": "forward limit_bytes, then end the connection",
    "orphan_header": "a message's header or first part, never the rest",
    "reset_peer": "TCP RST both ways after after_s",
    "slicer": "re-send selected messages as small fragments",
    "slow_close": "pass the FIN on delay_ms late",
    "slow_reader": "read the sender at rate_bps: real backpressure",
    "stalled_payload": "a message stops partway, for stall_s or for good",
    "timeout": "stop forwarding, keep the sockets open",
    "truncate": "cut each selected message to keep_bytes",
    "worker_crash": "SIGKILL or SIGSTOP a worker, or RST its connections",
}
PURPOSE_CHARS = 52


def fault_purpose(kind: str, description: str) -> str:
    """What a fault type does, in one short line."""
    if kind in FAULT_PURPOSE:
        return FAULT_PURPOSE[kind]
    first = re.split(r"(?<=[.:;])\s", description.strip(), maxsplit=1)[0].rstrip(".:;")
    return first if len(first) <= PURPOSE_CHARS else first[:PURPOSE_CHARS - 1] + "…"
