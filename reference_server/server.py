"""The reference server's network endpoint: accept, dial, HTTP, WebSocket sessions.

It wires the parts together and owns none of their rules: `Playback` (groups,
timeline demand, commands, metadata; playback.py) over a `ChunkStore`, and a
`Session` (session.py) per connection, which speaks the wire profile its first
message picks (profiles.py: `--profiles legacy,noise`) through its own
`SessionCodec`. A connection is either accepted (client-initiated) or
dialled by a `Dialer` (dialer.py: server-initiated, `--dial URL` or `POST /api/dial`);
the session is the same.

HTTP (besides the WebSocket path): `GET /api/status`; `POST /api/dial?url=URL[&redial=0]`
dials a listening client (202, the dialer's status); `DELETE /api/dial` stops every
dialer; `POST /api/close` stops every dialer and closes every session with 1000 (the
server ends the run, as a conformance server does). A request body is not possible
(websockets' HTTP parser refuses one), hence the query string.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
import json
import signal
import socket
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from harness.protocol import EventLog, LoopLagMonitor, closecodes

from . import actions
from .artwork import make_image
from .config import ServerConfig
from .control import ControlEndpoint
from .dialer import Dialer
from .playback import Demand, Playback
from .profiles import ServedProfiles, load_identity, load_psks
from .session import Session
from .sources import open_source
from .timeline import ChunkStore, Producer


class ReferenceServer:
    """The endpoint over Playback and a ChunkStore. Embedded mode (no `store`
    given) runs its own Producer; a worker gets its store fed by the
    coordinator and reports its demand for audio back through `demand`."""

    def __init__(self, config: ServerConfig, store: ChunkStore | None = None, demand: Demand | None = None,
                 profiles: ServedProfiles | None = None) -> None:
        self.config = config
        # Made before the log: a bad --identity file is a usage error, not a run.
        self.profiles = profiles or ServedProfiles(
            config.profiles, load_identity(config.identity_file) if "noise" in config.profiles else None,
            load_psks(config.psks_file))
        log_path = config.log_dir / f"{config.proc}.jsonl" if config.log_dir else None
        self.log = EventLog(log_path, config.proc)
        self.producer: Producer | None = None
        if store is None:
            source = open_source(config.source, config.sample_rate)
            store = ChunkStore(source.sample_rate, source.kind, self.profiles.legacy)
            self.producer = Producer(source, config.chunk_ms, config.max_lead_ms, config.start_delay_ms,
                                     config.batch_ms, self.log, store.add_batch)
        self.timeline = store
        self.playback = Playback(store, self.log, demand or self._local_demand, config.autoplay)
        for image_format in ("png", "bmp"):
            make_image(image_format, config.artwork_bytes)  # now, not on the event loop mid-session
        self._ids = itertools.count(1)
        self.sessions: dict[str, Session] = {}  # every live connection, also before its hello
        self.control = ControlEndpoint(config.host, config.control_port, self.act)
        self._server: Server | None = None
        self.port = 0
        self.cluster: dict[str, Any] | None = None  # set in a worker: the coordinator's view of all workers
        self.stopping = asyncio.Event()
        self._loop_lag: LoopLagMonitor | None = None
        self.dialers: dict[int, Dialer] = {}  # live ones, by id
        self._tasks: set[asyncio.Task[Any]] = set()  # closes started from HTTP requests

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        self._server = await serve(
            self._handle, c.host, c.port, process_request=self._http, max_size=c.max_message_bytes,
            ping_interval=c.ping_interval_s, ping_timeout=c.ping_timeout_s, write_limit=c.write_limit_bytes,
            close_timeout=2.0,
        )
        await self.control.start()
        self.port = c.announce(self.log, self._server, control=self.control.url)
        # Its own stalls are logged so that a checker can tell them from the harness's (checkers.py).
        self._loop_lag = LoopLagMonitor(asyncio.get_running_loop(), self.log).start()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.start()
        for url in self.config.dial:
            self.dial(url)
        await self.stopping.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        self.log.emit("shutdown", sessions=len(self.playback.sessions))
        await self.control.close()
        dialers = list(self.dialers.values())
        for d in dialers:
            d.stop("shutdown")
        await self._close_sessions(closecodes.GOING_AWAY, "server shutting down")
        if dialers:
            await asyncio.wait([asyncio.ensure_future(d.wait()) for d in dialers], timeout=5.0)
        if self._server is not None:
            self._server.close(close_connections=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
        task = self.producer.stop() if self.producer is not None else None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        if self._loop_lag is not None:
            self._loop_lag.stop()
        self.log.close()

    def _local_demand(self, wanted: bool) -> None:
        assert self.producer is not None
        if wanted:
            self.producer.start()
        else:
            self.producer.stop()

    # --- connections -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        await self._run_session(ws, dialled=False)

    async def _run_session(self, ws: Connection, dialled: bool, reason: str = "playback") -> str | None:
        """One session over an accepted or a dialled connection; returns the client's
        goodbye reason, if it said goodbye (a dialer decides by it whether to dial again)."""
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            # A fixed send buffer (instead of Linux autotuning up to megabytes)
            # bounds the kernel memory per session and lets backpressure from a
            # slow reader reach the writer within a fraction of a second.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.socket_send_buffer)
        # the session picks its codec from the first message; having dialled, it masks its frames
        session = Session(ws, f"s{next(self._ids)}", self.playback, self.profiles, self.config, self.log,
                          dialled=dialled, connection_reason=reason)
        self.sessions[session.session_id] = session
        try:
            await session.run()
        finally:
            del self.sessions[session.session_id]
        return session.goodbye_reason

    # --- server-initiated connections --------------------------------------------------------

    def dial(self, url: str, redial: bool = True) -> Dialer:
        """Dial a listening client and keep a session with it (dialer.py)."""
        c = self.config
        options = {"max_size": c.max_message_bytes, "ping_interval": c.ping_interval_s,
                   "ping_timeout": c.ping_timeout_s, "write_limit": c.write_limit_bytes, "close_timeout": 2.0}
        dialer = Dialer(url, lambda ws, reason: self._run_session(ws, dialled=True, reason=reason), self.log,
                        redial=redial, connect_options=options)
        self.dialers[dialer.id] = dialer
        dialer.start().add_done_callback(lambda _: self.dialers.pop(dialer.id, None))
        return dialer

    def stop_dialing(self, why: str) -> list[int]:
        stopped = list(self.dialers)
        for d in list(self.dialers.values()):
            d.stop(why)
        return stopped

    async def _close_sessions(self, code: int, reason: str) -> None:
        sessions = list(self.sessions.values())
        if sessions:
            await asyncio.gather(*(s.close(code, reason) for s in sessions), return_exceptions=True)

    def _later(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def act(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """A scripted action from the control endpoint, on this process's sessions."""
        return await actions.apply(name, params, list(self.sessions.values()), self.playback.served_formats,
                                   self.log, self.config.proc)

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == self.config.path and "upgrade" in request.headers.get("Connection", "").lower():
            return None
        if path == "/api/status":
            response = _json(connection, http.HTTPStatus.OK, self.status())
        elif path in ("/api/dial", "/api/close"):
            response = self._api(connection, request, path)
        elif path == self.config.path:
            response = connection.respond(http.HTTPStatus.UPGRADE_REQUIRED, "WebSocket upgrade required\n")
        else:
            response = connection.respond(http.HTTPStatus.NOT_FOUND, f"no such path {path!r}; try {self.config.path} "
                                          "or /api/status\n")
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    def _api(self, connection: ServerConnection, request: Request, path: str) -> Response:
        """The operator's requests: dial a client, stop dialling, end every session."""
        query = parse_qs(urlsplit(request.path).query)
        if path == "/api/dial" and request.method == "POST":
            url = (query.get("url") or [""])[0]
            if urlsplit(url).scheme != "ws" or not urlsplit(url).hostname:
                return _json(connection, http.HTTPStatus.BAD_REQUEST,
                             {"error": f"POST /api/dial?url=ws://HOST:PORT/PATH: a ws:// URL, got {url!r}"})
            dialer = self.dial(url, redial=(query.get("redial") or ["1"])[0] not in ("0", "false", "no"))
            return _json(connection, http.HTTPStatus.ACCEPTED, {"dialer": dialer.status()})
        if path == "/api/dial" and request.method == "DELETE":
            return _json(connection, http.HTTPStatus.OK, {"stopped": self.stop_dialing("DELETE /api/dial")})
        if path == "/api/close" and request.method == "POST":
            stopped = self.stop_dialing("POST /api/close")
            self._later(self._close_sessions(closecodes.NORMAL, "the server ends the session"))
            return _json(connection, http.HTTPStatus.OK, {"stopped": stopped, "closing": len(self.sessions)})
        return _json(connection, http.HTTPStatus.METHOD_NOT_ALLOWED,
                     {"error": f"{request.method} {path}: try POST /api/dial?url=URL, DELETE /api/dial, "
                               "POST /api/close"})

    def status(self) -> dict[str, Any]:
        mine = {**self.playback.status(), "dialers": [d.status() for d in self.dialers.values()],
                "profiles": list(self.profiles.names), "server_id": self.profiles.server_id}
        if self.cluster is None:
            return mine
        # A worker: totals across the cluster (as of the coordinator's last update), then its own figures.
        return {**self.cluster, "this_worker": {"proc": self.config.proc, **mine}}


def _json(connection: ServerConnection, status: http.HTTPStatus, body: Any) -> Response:
    response = connection.respond(status, json.dumps(body) + "\n")
    response.headers["Content-Type"] = "application/json"
    return response
