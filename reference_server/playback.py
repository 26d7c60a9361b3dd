"""Playback: groups, the timeline's demand, controller commands and metadata.

No network here. Playback sees clients only as `Listener`s (what it needs of a
session: its roles, its client state, and a few outbound calls), so it never
imports the session or the endpoint; the session reaches playback through its
own narrow `PlaybackPort`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, get_args

from harness.protocol import UNSET, EventLog, Message, ProtocolError, now_us
from harness.protocol import messages as m

from .groups import Group, Member, PlaybackState, apply_group_volume, switch_cycle
from .timeline import ChunkStore

TRACK_MS = 180_000
CONTROLLER_COMMANDS: list[m.ControllerCommandName] = list(get_args(m.ControllerCommandName))
SERVED_BIT_DEPTHS = (16, 24)
Repeat = Literal["off", "one", "all"]
REPEAT_COMMANDS: dict[str, Repeat] = {"repeat_off": "off", "repeat_one": "one", "repeat_all": "all"}

Demand = Callable[[bool], None]  # the timeline should (True) or need not (False) produce


class Listener(Member, Protocol):
    """A client as playback sees it: a group member that can be sent messages and streams."""

    group: Group | None

    @property
    def hello(self) -> m.ClientHello | None: ...

    @property
    def player_format(self) -> m.PlayerStream | None: ...

    def has_role(self, family: str) -> bool: ...

    def enqueue(self, message: Message) -> None: ...

    def reject(self, exc: ProtocolError) -> None: ...

    def start_player_stream(self, fmt: m.PlayerStream) -> None: ...

    def end_streams(self, roles: list[str] | None = None) -> None: ...

    def clear_player(self) -> None: ...

    def send_artwork(self, channel: int, image_format: str) -> None: ...


class Playback:
    """Groups and playback over a ChunkStore; `demand` is told when the
    timeline should run (some playing group has a player) or may pause."""

    def __init__(self, timeline: ChunkStore, log: EventLog, demand: Demand, autoplay: bool) -> None:
        self.timeline = timeline
        self.log = log
        self._demand = demand
        self.sessions: dict[str, Listener] = {}
        self.main_group = Group("main", "Main", "playing" if autoplay else "stopped")
        self.groups: list[Group] = [self.main_group]
        self.previous_group: dict[str, Group] = {}
        self.track = 1
        self.repeat: Repeat = "off"
        self.shuffle = False

    def status(self) -> dict[str, Any]:
        listeners = sum(1 for s in self.sessions.values() if s.player_format is not None)
        return {"listeners": listeners, "sessions": len(self.sessions), "playing": self.timeline.running,
                "groups": [{"group_id": g.group_id, "members": [s.session_id for s in g.members],
                            "playback_state": g.playback_state} for g in self.groups]}

    # --- membership ------------------------------------------------------------------

    def join(self, session: Listener) -> None:
        self.sessions[session.session_id] = session
        self._move(session, self.main_group)

    def leave(self, session: Listener) -> None:
        self.sessions.pop(session.session_id, None)
        self.previous_group.pop(session.session_id, None)
        if session.group is not None:
            group, session.group = session.group, None
            group.members.remove(session)
            if not group.members and group is not self.main_group:
                self.groups.remove(group)
            self.group_changed(group)
        self._update_timeline()

    def _move(self, session: Listener, group: Group) -> None:
        old = session.group
        if old is not None:
            old.members.remove(session)
            if not old.members and old is not self.main_group:
                self.groups.remove(old)
            self.group_changed(old)
        if group not in self.groups:
            self.groups.append(group)
        if session not in group.members:
            group.members.append(session)
        session.group = group
        session.enqueue(m.GroupUpdate(playback_state=group.playback_state, group_id=group.group_id,
                                      group_name=group.name))
        if session.has_role("metadata"):
            session.enqueue(m.ServerState(metadata=self._metadata(group)))
        if group.playback_state == "playing":
            self._start_streams(session)
        elif old is not None:
            session.end_streams()
        self.group_changed(group)
        self._update_timeline()

    def _start_streams(self, session: Listener) -> None:
        hello = session.hello
        if session.is_player and hello and hello.player_support:
            chosen = self.choose_format(hello.player_support.supported_formats)
            if chosen is None:
                session.reject(ProtocolError("client/hello", "payload.player@v1_support.supported_formats",
                                             f"no format the server can serve (pcm, {self.timeline.rate} Hz, "
                                             "16/24-bit, 1-2 channels)"))
            else:
                session.start_player_stream(chosen)
        if session.has_role("artwork") and hello and hello.artwork_support:
            for channel, support in enumerate(hello.artwork_support.channels):
                if support.source != "none":
                    session.send_artwork(channel, support.format)

    def choose_format(self, formats: list[m.AudioFormat]) -> m.PlayerStream | None:
        """The client's most preferred format we serve: PCM at the timeline rate."""
        served = self.served_formats(formats)
        return served[0] if served else None

    def served_formats(self, formats: list[m.AudioFormat]) -> list[m.PlayerStream]:
        """Those of `formats` we serve (PCM at the timeline rate, 16/24-bit, 1-2 channels), in their order."""
        return [m.PlayerStream(codec="pcm", sample_rate=f.sample_rate, channels=f.channels, bit_depth=f.bit_depth)
                for f in formats if f.codec == "pcm" and f.sample_rate == self.timeline.rate
                and f.bit_depth in SERVED_BIT_DEPTHS and f.channels in (1, 2)]

    def _update_timeline(self) -> None:
        """The source plays while some playing group has a player; otherwise it pauses."""
        wanted = any(g.playback_state == "playing" and g.players for g in self.groups)
        if wanted != self.timeline.running:
            self.timeline.running = wanted
            self._demand(wanted)

    # --- state broadcast -------------------------------------------------------------

    def group_changed(self, group: Group | None) -> None:
        if group is None:
            return
        state = m.ControllerState(supported_commands=CONTROLLER_COMMANDS, volume=group.volume(), muted=group.muted())
        for member in group.members:
            session = self.sessions.get(member.session_id)
            if session is not None and session.has_role("controller"):
                session.enqueue(m.ServerState(controller=state))

    def _metadata(self, group: Group) -> m.MetadataState:
        position_ms = self.timeline.position_us() // 1000 % TRACK_MS if self.timeline.running else 0
        return m.MetadataState(
            timestamp=now_us(), title=f"Watermark {self.track}", artist="sendspin-harness", album_artist=None,
            album="Reference signals", artwork_url=None, year=2026, track=self.track,
            progress=m.Progress(track_progress=position_ms, track_duration=TRACK_MS,
                                playback_speed=1000 if group.playback_state == "playing" else 0),
            repeat=self.repeat, shuffle=self.shuffle)

    def _broadcast_metadata(self, group: Group) -> None:
        for s in self._members(group):
            if s.has_role("metadata"):
                s.enqueue(m.ServerState(metadata=self._metadata(group)))

    def _members(self, group: Group) -> list[Listener]:
        return [s for s in (self.sessions.get(x.session_id) for x in group.members) if s is not None]

    # --- commands ----------------------------------------------------------------------

    def controller_command(self, session: Listener, cmd: m.ControllerCommand) -> None:
        group = session.group
        if group is None:
            return
        self.log.emit("command", session.session_id, command=cmd.command, group=group.group_id)
        match cmd.command:
            case "play" | "pause" | "stop":
                self._set_playback(group, "playing" if cmd.command == "play" else "stopped")
            case "next" | "previous":
                self.track = max(1, self.track + (1 if cmd.command == "next" else -1))
                for s in self._members(group):
                    if s.player_format is not None:
                        s.clear_player()
                self._broadcast_metadata(group)
            case "volume":
                if cmd.volume is UNSET:
                    session.reject(ProtocolError(m.ClientCommand.TYPE, "payload.controller.volume",
                                                 "required when command is 'volume'"))
                    return
                players = self._members_players(group)
                for s, v in zip(players, apply_group_volume([p.volume for p in players], cmd.volume), strict=True):
                    if v != s.volume:
                        s.volume = v
                        s.enqueue(m.ServerCommand(player=m.PlayerCommand(command="volume", volume=v)))
                self.group_changed(group)
            case "mute":
                if cmd.mute is UNSET:
                    session.reject(ProtocolError(m.ClientCommand.TYPE, "payload.controller.mute",
                                                 "required when command is 'mute'"))
                    return
                for s in self._members_players(group):
                    s.muted = cmd.mute
                    s.enqueue(m.ServerCommand(player=m.PlayerCommand(command="mute", mute=cmd.mute)))
                self.group_changed(group)
            case "repeat_off" | "repeat_one" | "repeat_all":
                self.repeat = REPEAT_COMMANDS[cmd.command]
                self._broadcast_metadata(group)
            case "shuffle" | "unshuffle":
                self.shuffle = cmd.command == "shuffle"
                self._broadcast_metadata(group)
            case "switch":
                self._switch(session)

    def _members_players(self, group: Group) -> list[Listener]:
        return [s for s in self._members(group) if s.is_player]

    def _set_playback(self, group: Group, state: PlaybackState) -> None:
        if group.playback_state == state:
            return
        group.playback_state = state
        for s in self._members(group):
            s.enqueue(m.GroupUpdate(playback_state=state))
            if state == "playing":
                self._start_streams(s)
            else:
                s.end_streams()
        self._broadcast_metadata(group)
        self._update_timeline()

    def _switch(self, session: Listener) -> None:
        current = session.group
        assert current is not None
        previous = self.previous_group.pop(session.session_id, None)
        if previous is not None and previous in self.groups and current.members == [session]:
            self._move(session, previous)
            return
        cycle = switch_cycle(self.groups, session, current)
        if not cycle:
            return
        target = cycle[(cycle.index(current) + 1) % len(cycle)] if current in cycle else cycle[0]
        if target is not current:
            self._move(session, target)

    def external_source(self, session: Listener) -> None:
        """Spec, "External Source Handling"."""
        group = session.group
        if group is None:
            return
        if len(group.members) > 1:
            self.previous_group[session.session_id] = group
            self._move(session, Group.solo(session))
        else:
            self._set_playback(group, "stopped")
