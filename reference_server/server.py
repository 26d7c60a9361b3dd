"""The reference server's network endpoint: accept, HTTP status, WebSocket sessions.

It wires the parts together and owns none of their rules: `Playback` (groups,
timeline demand, commands, metadata; playback.py) over a `ChunkStore`, and a
`Session` (session.py) per connection, which speaks the wire profile through
its own `SessionCodec`.
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

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from harness.protocol import EventLog, LoopLagMonitor, get_profile

from . import actions
from .artwork import make_image
from .config import ServerConfig
from .control import ControlEndpoint
from .playback import Demand, Playback
from .session import Session
from .sources import open_source
from .timeline import ChunkStore, Producer

PROFILE = "legacy"  # the wire revision served


class ReferenceServer:
    """The endpoint over Playback and a ChunkStore. Embedded mode (no `store`
    given) runs its own Producer; a worker gets its store fed by the
    coordinator and reports its demand for audio back through `demand`."""

    def __init__(self, config: ServerConfig, store: ChunkStore | None = None, demand: Demand | None = None) -> None:
        self.config = config
        log_path = config.log_dir / f"{config.proc}.jsonl" if config.log_dir else None
        self.log = EventLog(log_path, config.proc)
        self.profile = get_profile(PROFILE)
        self.producer: Producer | None = None
        if store is None:
            source = open_source(config.source, config.sample_rate)
            store = ChunkStore(source.sample_rate, source.kind, self.profile)
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
        await self.stopping.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        self.log.emit("shutdown", sessions=len(self.playback.sessions))
        await self.control.close()
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
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            # A fixed send buffer (instead of Linux autotuning up to megabytes)
            # bounds the kernel memory per session and lets backpressure from a
            # slow reader reach the writer within a fraction of a second.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.socket_send_buffer)
        session = Session(ws, f"s{next(self._ids)}", self.playback, self.profile.session("server"), self.config,
                          self.log)
        self.sessions[session.session_id] = session
        try:
            await session.run()
        finally:
            del self.sessions[session.session_id]

    async def act(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """A scripted action from the control endpoint, on this process's sessions."""
        return await actions.apply(name, params, list(self.sessions.values()), self.playback.served_formats,
                                   self.log, self.config.proc)

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
        mine = self.playback.status()
        if self.cluster is None:
            return mine
        # A worker: totals across the cluster (as of the coordinator's last update), then its own figures.
        return {**self.cluster, "this_worker": {"proc": self.config.proc, **mine}}
