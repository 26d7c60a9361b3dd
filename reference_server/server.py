"""The reference server: WebSocket endpoint, HTTP status, groups and playback."""

from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
import json
import signal
import socket
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from harness.protocol import UNSET, EventLog, LegacyProfile, ProtocolError, now_us
from harness.protocol import messages as m

from .artwork import make_image
from .config import ServerConfig
from .groups import Group, apply_group_volume, switch_cycle
from .session import Session
from .sources import open_source
from .timeline import ChunkStore, Producer

TRACK_MS = 180_000
CONTROLLER_COMMANDS = list(m.ControllerCommandName.__args__)  # type: ignore[attr-defined]
SERVED_BIT_DEPTHS = (16, 24)


Demand = Callable[[bool], None]


class ReferenceServer:
    """Sessions, groups and playback over a ChunkStore. Embedded mode (no
    `store` given) runs its own Producer; a worker gets its store fed by the
    coordinator and reports its demand for audio back through `demand`."""

    def __init__(self, config: ServerConfig, store: ChunkStore | None = None, demand: Demand | None = None) -> None:
        self.config = config
        log_path = config.log_dir / f"{config.proc}.jsonl" if config.log_dir else None
        self.log = EventLog(log_path, config.proc)
        self.profile = LegacyProfile()
        self.producer: Producer | None = None
        if store is None:
            source = open_source(config.source, config.sample_rate)
            store = ChunkStore(source.sample_rate, source.kind)
            self.producer = Producer(source, config.chunk_ms, config.max_lead_ms, config.start_delay_ms,
                                     config.batch_ms, self.log, store.add_batch)
        self.timeline = store
        self._demand = demand or self._local_demand
        for image_format in ("png", "bmp"):
            make_image(image_format, config.artwork_bytes)  # now, not on the event loop mid-session
        self.sessions: dict[str, Session] = {}
        self.main_group = Group("main", "Main", "playing" if config.autoplay else "stopped")
        self.groups: list[Group] = [self.main_group]
        self.previous_group: dict[str, Group] = {}
        self.track = 1
        self.repeat = "off"
        self.shuffle = False
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self.port = 0
        self.cluster: dict[str, Any] | None = None  # set in a worker: the coordinator's view of all workers
        self.stopping = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        self._server = await serve(
            self._handle, c.host, c.port, process_request=self._http, max_size=c.max_message_bytes,
            ping_interval=c.ping_interval_s, ping_timeout=c.ping_timeout_s, write_limit=c.write_limit_bytes,
            close_timeout=2.0,
        )
        self.port = c.announce(self.log, self._server)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.start()
        await self.stopping.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        self.log.emit("shutdown", sessions=len(self.sessions))
        if self._server is not None:
            self._server.close(close_connections=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
        task = self.producer.stop() if self.producer is not None else None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        self.log.close()

    async def _handle(self, ws: ServerConnection) -> None:
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            # A fixed send buffer (instead of Linux autotuning up to megabytes)
            # bounds the kernel memory per session and lets backpressure from a
            # slow reader reach the writer within a fraction of a second.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.socket_send_buffer)
        session = Session(self, ws, f"s{next(self._ids)}")
        await session.run()

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == self.config.path and "upgrade" in request.headers.get("Connection", "").lower():
            return None
        if path == "/api/status":
            response = connection.respond(http.HTTPStatus.OK, json.dumps(self.status()) + "\n")
            response.headers["Content-Type"] = "application/json"
        elif path == self.config.path:
            response = connection.respond(http.HTTPStatus.UPGRADE_REQUIRED, "WebSocket upgrade required\n")
        else:
            response = connection.respond(http.HTTPStatus.NOT_FOUND, f"no such path {path!r}; try {self.config.path} "
                                          "or /api/status\n")
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    def status(self) -> dict[str, Any]:
        listeners = sum(1 for s in self.sessions.values() if s.player_format is not None)
        mine = {"listeners": listeners, "sessions": len(self.sessions), "playing": self.timeline.running,
                "groups": [{"group_id": g.group_id, "members": [s.session_id for s in g.members],
                            "playback_state": g.playback_state} for g in self.groups]}
        if self.cluster is None:
            return mine
        # A worker: totals across the cluster (as of the coordinator's last update), then its own figures.
        return {**self.cluster, "this_worker": {"proc": self.config.proc, **mine}}

    # --- membership ------------------------------------------------------------------

    def join(self, session: Session) -> None:
        self.sessions[session.session_id] = session
        self._move(session, self.main_group)

    def leave(self, session: Session) -> None:
        self.sessions.pop(session.session_id, None)
        self.previous_group.pop(session.session_id, None)
        if session.group is not None:
            group, session.group = session.group, None
            group.members.remove(session)  # type: ignore[arg-type]
            if not group.members and group is not self.main_group:
                self.groups.remove(group)
            self.group_changed(group)
        self._update_timeline()

    def _move(self, session: Session, group: Group) -> None:
        old = session.group
        if old is not None:
            old.members.remove(session)  # type: ignore[arg-type]
            if not old.members and old is not self.main_group:
                self.groups.remove(old)
            self.group_changed(old)
        if group not in self.groups:
            self.groups.append(group)
        if session not in group.members:
            group.members.append(session)  # type: ignore[arg-type]
        session.group = group
        session.enqueue(m.GroupUpdate(playback_state=group.playback_state, group_id=group.group_id,  # type: ignore[arg-type]
                                      group_name=group.name))
        if session.has_role("metadata"):
            session.enqueue(m.ServerState(metadata=self._metadata(group)))
        if group.playback_state == "playing":
            self._start_streams(session)
        elif old is not None:
            session.end_streams()
        self.group_changed(group)
        self._update_timeline()

    def _start_streams(self, session: Session) -> None:
        if session.is_player and session.hello and session.hello.player_support:
            chosen = self.choose_format(session.hello.player_support.supported_formats)
            if chosen is None:
                session.reject(ProtocolError("client/hello", "payload.player@v1_support.supported_formats",
                                                 f"no format the server can serve (pcm, {self.timeline.rate} Hz, "
                                                 "16/24-bit, 1-2 channels)"))
            else:
                session.start_player_stream(chosen)
        if session.has_role("artwork") and session.hello and session.hello.artwork_support:
            for channel, support in enumerate(session.hello.artwork_support.channels):
                if support.source != "none":
                    session.send_artwork(channel, support.format)

    def choose_format(self, formats: list[m.AudioFormat]) -> m.PlayerStream | None:
        """The client's most preferred format we serve: PCM at the timeline rate."""
        for f in formats:
            if f.codec == "pcm" and f.sample_rate == self.timeline.rate and f.bit_depth in SERVED_BIT_DEPTHS \
                    and f.channels in (1, 2):
                return m.PlayerStream(codec="pcm", sample_rate=f.sample_rate, channels=f.channels,
                                      bit_depth=f.bit_depth)
        return None

    def _update_timeline(self) -> None:
        """The source plays while some playing group has a player; otherwise it pauses."""
        wanted = any(g.playback_state == "playing" and g.players for g in self.groups)
        if wanted != self.timeline.running:
            self.timeline.running = wanted
            self._demand(wanted)

    def _local_demand(self, wanted: bool) -> None:
        assert self.producer is not None
        if wanted:
            self.producer.start()
        else:
            self.producer.stop()

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
            repeat=self.repeat, shuffle=self.shuffle)  # type: ignore[arg-type]

    def _broadcast_metadata(self, group: Group) -> None:
        for s in self._members(group):
            if s.has_role("metadata"):
                s.enqueue(m.ServerState(metadata=self._metadata(group)))

    def _members(self, group: Group) -> list[Session]:
        return [s for s in (self.sessions.get(x.session_id) for x in group.members) if s is not None]

    # --- commands ----------------------------------------------------------------------

    def controller_command(self, session: Session, cmd: m.ControllerCommand) -> None:
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
                self.repeat = cmd.command.removeprefix("repeat_")
                self._broadcast_metadata(group)
            case "shuffle" | "unshuffle":
                self.shuffle = cmd.command == "shuffle"
                self._broadcast_metadata(group)
            case "switch":
                self._switch(session)

    def _members_players(self, group: Group) -> list[Session]:
        return [s for s in self._members(group) if s.is_player]

    def _set_playback(self, group: Group, state: str) -> None:
        if group.playback_state == state:
            return
        group.playback_state = state
        for s in self._members(group):
            s.enqueue(m.GroupUpdate(playback_state=state))  # type: ignore[arg-type]
            if state == "playing":
                self._start_streams(s)
            else:
                s.end_streams()
        self._broadcast_metadata(group)
        self._update_timeline()

    def _switch(self, session: Session) -> None:
        current = session.group
        assert current is not None
        previous = self.previous_group.pop(session.session_id, None)
        if previous is not None and previous in self.groups and current.members == [session]:
            self._move(session, previous)
            return
        cycle = switch_cycle(self.groups, session, current)  # type: ignore[arg-type]
        if not cycle:
            return
        target = cycle[(cycle.index(current) + 1) % len(cycle)] if current in cycle else cycle[0]
        if target is not current:
            self._move(session, target)

    def external_source(self, session: Session) -> None:
        """Spec, "External Source Handling"."""
        group = session.group
        if group is None:
            return
        if len(group.members) > 1:
            self.previous_group[session.session_id] = group
            self._move(session, Group.solo(session))  # type: ignore[arg-type]
        else:
            self._set_playback(group, "stopped")
