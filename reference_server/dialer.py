"""Server-initiated connections: the server dials a client that listens.

The spec's recommended way to connect ("Server Initiated Connections"): the client
advertises `_sendspin._tcp` over mDNS and the server dials `ws://host:port/path`. We are
told the URL instead (`--dial URL`, or `POST /api/dial?url=URL` on the HTTP endpoint).

A `Dialer` opens the WebSocket connection and runs the very same `Session` over it: the
client still sends its first message (legacy client/hello, noise client/init: the server
is the Noise initiator whoever opened the socket), and after the handshake nothing depends
on who dialled but the masking of our frames. When a session ends the dialer dials again, as the spec's server does: a
client that closed without client/goodbye (or said `restart`) is assumed to restart;
`shutdown`, `user_request` and `another_server` say not to. server/hello's
`connection_reason` is `playback` on the first dial (the server dials to play to it) and
`discovery` on the dials after a loss (the spec's own example of discovery). A failed dial backs off
(REDIAL_BACKOFF_S, then its last value), so a client that is gone is not hammered.
Every attempt is in the event log (`dial`, `dial_failed`, `dial_end`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidURI

from harness.protocol import EventLog

REDIAL_BACKOFF_S = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)  # first retry at 100 ms, doubling, then every 3.2 s
NO_REDIAL = frozenset({"shutdown", "user_request", "another_server"})  # client/goodbye reasons: do not dial again
DIAL_TIMEOUT_S = 5.0  # TCP connect and WebSocket upgrade

# runs one session over a dialled connection (with server/hello's connection_reason);
# returns the client's goodbye reason, if any
RunSession = Callable[[ClientConnection, str], Awaitable[str | None]]


class Dialer:
    """Dials one client URL and keeps a session with it (see the module docstring)."""

    _ids = itertools.count(1)

    def __init__(self, url: str, run_session: RunSession, log: EventLog, *, redial: bool = True,
                 connect_options: dict[str, Any] | None = None) -> None:
        self.id = next(self._ids)
        self.url = url
        self.run_session = run_session
        self.log = log
        self.redial = redial
        self.connect_options = connect_options or {}
        self.attempts = 0
        self.sessions = 0
        self.state = "new"  # dialling | backoff | session | ended
        self.why_ended = ""
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"dialer-{self.id}")
        return self._task

    def stop(self, why: str) -> None:
        """No more dials. A pending attempt or backoff ends now; a session in progress
        runs on until it ends (closing it is the session's business)."""
        if self._stopping:
            return
        self._stopping = True
        self.why_ended = why
        if self._task is not None and self.state != "session":
            self._task.cancel()

    async def wait(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def status(self) -> dict[str, Any]:
        return {"id": self.id, "url": self.url, "state": self.state, "redial": self.redial,
                "attempts": self.attempts, "sessions": self.sessions, "ended": self.why_ended or None}

    async def _run(self) -> None:
        failures = 0  # in a row; a session starts the backoff again
        try:
            while not self._stopping:
                ws = await self._dial(failures)
                if ws is None:
                    failures += 1
                    if not self.redial:
                        self.why_ended = self.why_ended or "the dial failed (no redial)"
                        return
                    await self._backoff(REDIAL_BACKOFF_S[min(failures, len(REDIAL_BACKOFF_S)) - 1])
                    continue
                failures = 0
                reason = await self._session(ws)
                if self._stopping:
                    return
                if not self.redial or reason in NO_REDIAL:
                    self.why_ended = self.why_ended or (f"client/goodbye: {reason}" if reason else "no redial")
                    return
                await self._backoff(REDIAL_BACKOFF_S[0])
        finally:
            self.state = "ended"
            self.log.emit("dial_end", url=self.url, dialer=self.id, why=self.why_ended or "stopped")

    async def _dial(self, failures: int) -> ClientConnection | None:
        self.attempts += 1
        self.state = "dialling"
        self.log.emit("dial", url=self.url, dialer=self.id, attempt=self.attempts, reason=self._reason())
        try:
            return await connect(self.url, open_timeout=DIAL_TIMEOUT_S, **self.connect_options)
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            retry = None if not self.redial else REDIAL_BACKOFF_S[min(failures + 1, len(REDIAL_BACKOFF_S)) - 1]
            self.log.emit("dial_failed", url=self.url, dialer=self.id, attempt=self.attempts,
                          error=str(exc) or type(exc).__name__, retry_s=retry)
            return None

    async def _session(self, ws: ClientConnection) -> str | None:
        reason = self._reason()
        self.state = "session"
        self.sessions += 1
        try:
            return await self.run_session(ws, reason)
        finally:
            self.state = "backoff"

    def _reason(self) -> str:
        """server/hello's connection_reason for the next session."""
        return "playback" if self.sessions == 0 else "discovery"

    async def _backoff(self, seconds: float) -> None:
        self.state = "backoff"
        await asyncio.sleep(seconds)
