"""Scripted actions (the control endpoint, control.py) applied to the sessions of one process.

Each action is one session's outbound call (session.py), so the action's messages
go out in wire order with everything else that session sends. A session that
cannot take an action says why (`Refused`); the endpoint answers 409 with those
reasons when no session took it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from harness.protocol import EventLog
from harness.protocol import messages as m

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


APPLY: dict[str, Callable[[Session, dict[str, Any], ServedFormats], dict[str, Any]]] = {
    "stream/clear": stream_clear, "stream/end": stream_end, "stream/start": stream_start,
    "server/command": server_command, "artwork": artwork, "fragment": fragment}


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
    no session took it."""
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
