"""Scripted actions (the control endpoint, control.py) applied to the sessions of one process.

Each action is one session's outbound call (session.py), so the action's messages
go out in wire order with everything else that session sends. A session that
cannot take an action says why (`Refused`); the endpoint answers 409 with those
reasons when no session took it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from harness.protocol import EventLog, ProtocolError, closecodes, wsframes
from harness.protocol import messages as m
from harness.protocol.fragments import FLAG_FIRST, FLAG_LAST, FRAGMENT
from harness.protocol.noise import NoiseSession
from harness.protocol.noise_plaintext import JSON_BODY

from .artwork import make_image
from .control import ControlError
from .session import Session, Split

ServedFormats = Callable[[list[m.AudioFormat]], list[m.PlayerStream]]


class Refused(Exception):
    """This session cannot take the action; the message says why."""


def _fmt(f: m.PlayerStream | m.AudioFormat) -> str:
    return f"{f.codec}/{f.sample_rate}/{f.channels}/{f.bit_depth}"


def _player(s: Session) -> m.PlayerSupport:
    support = s.hello.player_support if s.hello is not None else None
    if not s.is_player or not support:
        raise Refused("not a player (no player@v1 role with its support object)")
    return support


_NOISE_FRAMES = ("a noise session: every message goes out as whole Noise transport messages (one WebSocket "
                 "message each), never split into frames")


def _split(s: Session, kind: str, p: dict[str, Any]) -> None:
    """The action's own message goes out as `frames` frames, if asked."""
    if p["frames"] > 1:
        if s.noise is not None:
            raise Refused(_NOISE_FRAMES)
        s.split_next(Split(frames=p["frames"], pings=p["pings"], type=kind))


def stream_clear(s: Session, p: dict[str, Any], served: ServedFormats) -> dict[str, Any]:
    _player(s)
    if s.player_format is None:
        raise Refused("no player stream to clear (none started, or ended)")
    _split(s, m.StreamClear.TYPE, p)
    s.clear_player()
    return {}


def stream_end(s: Session, p: dict[str, Any], served: ServedFormats) -> dict[str, Any]:
    _split(s, m.StreamEnd.TYPE, p)
    s.end_streams()
    return {}


def stream_start(s: Session, p: dict[str, Any], served: ServedFormats) -> dict[str, Any]:
    declared = _player(s).supported_formats
    ours = served(declared)
    if not ours:
        raise Refused(f"the client declared no format this server serves ({', '.join(map(_fmt, declared))})")
    current = s.player_format or ours[0]
    if p["format"] == "current":
        chosen = current
    elif p["format"] == "other":
        others = [f for f in ours if _fmt(f) != _fmt(current)]
        if not others:
            raise Refused(f"the client declared no other format this server serves: it declared "
                          f"{', '.join(map(_fmt, declared))}; the server serves pcm at its rate, 16/24-bit, 1-2 "
                          f"channels; the stream is {_fmt(current)}")
        chosen = others[0]
    else:
        raise ControlError(400, f"stream/start: format must be 'current' or 'other', got {p['format']!r}")
    _split(s, m.StreamStart.TYPE, p)
    s.start_player_stream(chosen)
    return {"format": _fmt(chosen), "previous": _fmt(current)}


def server_command(s: Session, p: dict[str, Any], served: ServedFormats) -> dict[str, Any]:
    support = _player(s)
    command = "volume" if "volume" in p else "mute"
    if command not in support.supported_commands:
        raise Refused(f"the client did not declare {command!r} in supported_commands "
                      f"({support.supported_commands}); the spec has it ignore such a command")
    _split(s, m.ServerCommand.TYPE, p)
    # The server's idea of the player's volume changes only when the client reports it (client/state).
    value = {"volume": p["volume"]} if command == "volume" else {"mute": p["mute"]}
    s.enqueue(m.ServerCommand(player=m.PlayerCommand(command=command, **value)))
    return {"command": command, "value": p.get("volume", p.get("mute"))}


def _artwork_channel(s: Session, channel: int) -> m.ArtworkChannelSupport:
    support = s.hello.artwork_support if s.hello is not None else None
    if not s.has_role("artwork") or not support:
        raise Refused("no artwork role (no artwork@v1 with its support object)")
    if channel >= len(support.channels) or support.channels[channel].source == "none":
        raise Refused(f"artwork channel {channel} is not one the client declared with a source")
    return support.channels[channel]


def artwork(s: Session, p: dict[str, Any], served: ServedFormats) -> dict[str, Any]:
    channel = _artwork_channel(s, p["channel"])
    step = p.get("fragment_bytes") or s.config.fragment_bytes
    s.send_artwork(p["channel"], channel.format, p["bytes"], Split(fragment_bytes=step, pings=p["pings"]))
    image = make_image(channel.format, p["bytes"])  # made already (prepare): the cached image
    return {"format": image.format, "bytes": len(image.data), "sha256": image.sha256, "fragment_bytes": step}


def fragment(s: Session, p: dict[str, Any], served: ServedFormats) -> dict[str, Any]:
    if s.noise is not None:
        raise Refused(_NOISE_FRAMES)
    s.split_next(Split(frames=p["frames"], pings=p["pings"], type=p.get("type"), count=p["count"]))
    return {}


# --- the noise profile: misbehaviour on a live session's codec and writer -----------------------
# Each writes at once, in one synchronous step: the writer encrypts and writes each message
# in one step too (session.py), so nothing comes between and the nonces stay in wire order.

def _noise(s: Session) -> NoiseSession:
    if s.noise is None or not s.noise.ready:
        raise Refused("not a noise session in transport mode")
    if s.ws.protocol.state is not State.OPEN:
        raise Refused("the connection is closing")
    return s.noise


def _write_binary(s: Session, messages: list[bytes]) -> int:
    if not s.writelines([wsframes.encode_frame(wsframes.BINARY, w, mask=s.dialled) for w in messages]):
        raise Refused("the connection is closing")
    return sum(len(w) for w in messages)


def _json_body(message_type: str, payload: dict[str, Any]) -> bytes:
    return json.dumps({"type": message_type, "payload": payload}, separators=(",", ":")).encode()


# An application-specific type (messaging.md: a receiver "MUST ignore JSON messages with an
# unrecognized `type`"), so what the action sends changes nothing in a client that reads it.
HARNESS_TYPE = "_harness/noise-test"


def noise_fragments(s: Session, p: dict[str, Any], served: ServedFormats) -> dict[str, Any]:
    """A malformed Sendspin fragment sequence (messaging.md "Malformed sequences")."""
    codec = _noise(s)
    body = _json_body(HARNESS_TYPE, {"variant": p["variant"]})
    if p["variant"] == "next-without-first":  # a last fragment with no fragmented message in flight
        plaintexts = [bytes([FRAGMENT, FLAG_LAST]) + body]
    elif p["variant"] == "reserved-flags":  # a whole message in one fragment, a reserved flag bit set
        plaintexts = [bytes([FRAGMENT, FLAG_FIRST | FLAG_LAST | 0x04, JSON_BODY]) + body]
    elif p["variant"] == "first-then-other":  # a first fragment, then a whole (non-fragment) message
        plaintexts = [bytes([FRAGMENT, FLAG_FIRST, JSON_BODY]) + body[:16], bytes([JSON_BODY]) + body]
    else:
        raise ControlError(400, f"noise/fragments: variant must be one of {', '.join(FRAGMENT_VARIANTS)}, "
                                f"got {p['variant']!r}")
    size = _write_binary(s, [codec.encrypt_plaintext(pt) for pt in plaintexts])
    return {"variant": p["variant"], "messages": len(plaintexts), "bytes": size}


def noise_large(s: Session, p: dict[str, Any], served: ServedFormats) -> dict[str, Any]:
    """A well-formed JSON message of `bytes` bytes, in Sendspin fragments (an application
    type the client must ignore, once reassembled)."""
    codec = _noise(s)
    pad = "x" * max(0, p["bytes"] - len(_json_body(HARNESS_TYPE, {"data": ""})))
    body = _json_body(HARNESS_TYPE, {"data": pad})
    messages = codec.encode_raw(JSON_BODY, body)
    size = _write_binary(s, messages)
    return {"bytes": len(body), "fragments": len(messages), "wire_bytes": size,
            "sha256": hashlib.sha256(body).hexdigest()}


def noise_tamper(s: Session, p: dict[str, Any], served: ServedFormats) -> dict[str, Any]:
    """A transport message whose ciphertext has one bit flipped (its AEAD tag, by default):
    authentication fails at the client (connection.md: a silent failure)."""
    codec = _noise(s)
    (message,) = codec.encode_raw(JSON_BODY, _json_body(HARNESS_TYPE, {"tampered": True}))
    at = p["at"] if p["at"] >= 0 else len(message) + p["at"]
    if not 0 <= at < len(message):
        raise ControlError(400, f"noise/tamper: at {p['at']} is outside the {len(message)}-byte message")
    tampered = bytearray(message)
    tampered[at] ^= 0x01
    _write_binary(s, [bytes(tampered)])
    return {"bytes": len(message), "flipped_byte": at}


def noise_cleartext(s: Session, p: dict[str, Any], served: ServedFormats) -> dict[str, Any]:
    """A cleartext WebSocket text message after the switch to transport mode (connection.md:
    a silent failure for the receiver)."""
    _noise(s)
    text = _json_body("server/time", {"client_transmitted": 0, "server_received": 0, "server_transmitted": 0})
    s.ws.transport.write(wsframes.encode_frame(wsframes.TEXT, text, mask=s.dialled))
    return {"bytes": len(text)}


def noise_rehandshake(s: Session, p: dict[str, Any], served: ServedFormats) -> dict[str, Any]:
    """Noise message 1 of a re-handshake to the session's PSK, under the current keys; the
    session's writer holds everything until the client's message 2 (Session.rehandshaking)."""
    codec = _noise(s)
    if s.rehandshaking:
        raise Refused("a re-handshake is already in progress")
    try:
        step = codec.rehandshake()
    except ProtocolError as exc:  # a fragmented message still open towards the client
        raise Refused(str(exc)) from None
    size = _write_binary(s, list(step.send))
    s.begin_rehandshake()
    return {"bytes": size}


# --- the noise profile: the next handshakes of this process ------------------------------------

@dataclass
class Armed:
    """What the next `count` noise handshakes of this process do at `step` (the message
    the server is about to send): stall there `hold_s` (then close silently), or answer
    client/init with server/error `error` and close."""

    action: str
    step: str
    count: int
    hold_s: float = 0.0
    error: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


ARMED: list[Armed] = []
HANDSHAKE_STEPS = ("server/init", "noise/handshake", "server/hello", "server/activate")


def _arm(name: str, p: dict[str, Any]) -> Armed:
    if name == "noise/handshake-stall":
        if p["step"] not in HANDSHAKE_STEPS:
            raise ControlError(400, f"{name}: step must be one of {', '.join(HANDSHAKE_STEPS)}, got {p['step']!r}")
        return Armed(name, p["step"], p["count"], hold_s=p["hold_ms"] / 1000, params=p)
    if p["reason"] not in INIT_ERRORS:
        raise ControlError(400, f"{name}: reason must be one of {', '.join(INIT_ERRORS)}, got {p['reason']!r}")
    return Armed(name, "server/init", p["count"], error=p["reason"], params=p)


async def scripted_handshake(s: Session, step: str) -> None:
    """Session.handshake_script: called before the server sends each handshake-phase
    message of a noise session (`step`: its type). Does what an armed action says, once
    per session; raises ConnectionClosed when the session must end there."""
    armed = next((a for a in ARMED if a.step == step), None)
    if armed is None or s.noise is None:
        return
    armed.count -= 1
    if armed.count <= 0:
        ARMED.remove(armed)
    if armed.error is not None:
        s.log.emit("action", s.session_id, action=armed.action, params=armed.params, result={"sent": "server/error"})
        await s.ws.send(_json_body("server/error", {"reason": armed.error}).decode())
        await s.close(closecodes.PROTOCOL_ERROR, "")
        raise ConnectionClosed(None, None)
    s.log.emit("action", s.session_id, action=armed.action, params=armed.params, result={"stalled": step})
    try:
        await asyncio.wait_for(s.ws.wait_closed(), armed.hold_s)
    except TimeoutError:
        await s.close(closecodes.NORMAL, "")  # held long enough: a silent close (connection.md)
    raise ConnectionClosed(None, None)


Session.handshake_script = staticmethod(scripted_handshake)  # called as a plain function

FRAGMENT_VARIANTS = ("next-without-first", "reserved-flags", "first-then-other")
INIT_ERRORS = ("unsupported_version", "unsupported_suite", "malformed")
ARMING = ("noise/handshake-stall", "noise/init-error")  # process-wide: no session needed

APPLY: dict[str, Callable[[Session, dict[str, Any], ServedFormats], dict[str, Any]]] = {
    "stream/clear": stream_clear, "stream/end": stream_end, "stream/start": stream_start,
    "server/command": server_command, "artwork": artwork, "fragment": fragment,
    "noise/fragments": noise_fragments, "noise/large": noise_large, "noise/tamper": noise_tamper,
    "noise/cleartext": noise_cleartext, "noise/rehandshake": noise_rehandshake}


async def prepare(name: str, p: dict[str, Any], sessions: list[Session]) -> None:
    """What an action needs made before any session gets it, off the event loop (a large image)."""
    if name != "artwork":
        return
    formats = set()
    for s in sessions:
        try:
            formats.add(_artwork_channel(s, p["channel"]).format)
        except Refused:
            continue
    for image_format in sorted(formats):
        await asyncio.to_thread(make_image, image_format, p["bytes"])


async def apply(name: str, p: dict[str, Any], sessions: list[Session], served: ServedFormats, log: EventLog,
                proc: str) -> dict[str, Any]:
    """Apply action `name` to each of `sessions` (those of `p["client_id"]`, if given) that can
    take it; each application and each refusal is an `action` event. ControlError(409) if
    no session took it. An arming action (ARMING) acts on the next handshakes instead."""
    if name in ARMING:
        armed = _arm(name, p)
        ARMED.append(armed)
        log.emit("action", action=name, params=p, result={"armed": armed.step, "count": armed.count})
        # shaped like a session's answer, so a coordinator forwarding it counts each worker armed
        return {"action": name, "sessions": [{"proc": proc, "session": None, "armed": armed.step,
                                              "count": armed.count}], "refused": []}
    targets = [s for s in sessions if s.hello is not None
               and ("client_id" not in p or s.hello.client_id == p["client_id"])]
    await prepare(name, p, targets)
    applied, refused = [], []
    for s in targets:
        assert s.hello is not None
        try:
            result = APPLY[name](s, p, served)
        except Refused as exc:
            refused.append({"session": s.session_id, "client_id": s.hello.client_id, "why": str(exc)})
            log.emit("action", s.session_id, action=name, params=p, client_id=s.hello.client_id, refused=str(exc))
            continue
        applied.append({"proc": proc, "session": s.session_id, "client_id": s.hello.client_id, **result})
        log.emit("action", s.session_id, action=name, params=p, client_id=s.hello.client_id, result=result)
    if not applied:
        whom = f" of client {p['client_id']!r}" if "client_id" in p else ""
        why = "; ".join(f"{r['session']} ({r['client_id']}): {r['why']}" for r in refused) or \
            f"there is no session{whom} past its hello"
        if not refused:
            log.emit("action", action=name, params=p, refused=why)
        raise ControlError(409, f"{name}: no session took it: {why}")
    return {"action": name, "sessions": applied, "refused": refused}
