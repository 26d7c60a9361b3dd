"""The control endpoint: scripted actions on live sessions, on a test's cue.

`POST /actions/<name>` with a JSON object of parameters; `GET /actions` lists the
actions and their parameters. An answer is JSON: 200 with what was done, or a 4xx
`{"error": "..."}` naming what was wrong (400 a bad body or parameter, 404 an unknown
path or action, 405 a wrong method, 409 no session could take the action, with each
one's reason, 413 a body over 64 KiB).

Its own port (`control` in the readiness file), not the WebSocket port's: websockets'
HTTP parser takes only GET requests without a body. A minimal HTTP/1.1 server on
asyncio streams, one request per connection, so the server does not pay aiohttp's
import time (0.3-0.8 s) on every start. No sessions here: what an action does is the
caller's (`Apply`: the server's sessions, or the coordinator's forwarding to workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

MAX_BODY = 64 * 1024
MAX_HEAD = 16 * 1024
READ_TIMEOUT_S = 5.0
REQUIRED = object()


class ControlError(Exception):
    """An action refused: the HTTP status and what was wrong, in words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Param:
    kind: type  # int, bool or str
    default: Any = None  # None: optional and absent; REQUIRED: must be given
    low: int | None = None
    high: int | None = None
    help: str = ""

    def check(self, name: str, value: Any) -> Any:
        # bool is an int in Python; JSON true is not a number here, nor 1 a boolean
        if type(value) is not self.kind:
            raise ControlError(400, f"{name}: expected {self.kind.__name__}, got {json.dumps(value)}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ControlError(400, f"{name}: {value} is out of range {self.low}..{self.high}")
        return value

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.kind.__name__, "help": self.help}
        if self.default is REQUIRED:
            d["required"] = True
        elif self.default is not None:
            d["default"] = self.default
        if self.low is not None:
            d["min"] = self.low
        if self.high is not None:
            d["max"] = self.high
        return d


@dataclass(frozen=True)
class Action:
    name: str
    doc: str
    params: dict[str, Param]

    def parse(self, body: Any) -> dict[str, Any]:
        """The parameters, checked and with their defaults; ControlError(400) names the first problem."""
        if not isinstance(body, dict):
            raise ControlError(400, f"the body must be a JSON object, got {json.dumps(body)[:80]}")
        unknown = sorted(set(body) - set(self.params))
        if unknown:
            raise ControlError(400, f"{self.name}: unknown parameter(s) {unknown}; known: {sorted(self.params)}")
        out: dict[str, Any] = {}
        for name, param in self.params.items():
            if name in body:
                out[name] = param.check(name, body[name])
            elif param.default is REQUIRED:
                raise ControlError(400, f"{self.name}: {name} is required ({param.help})")
            elif param.default is not None:
                out[name] = param.default
        return out


MiB = 1024 * 1024
# Every action: which client's sessions (all, if absent), and how its message goes out.
_TARGET = {"client_id": Param(str, help="only the sessions of this client/hello client_id (default: every session)")}
_SPLIT = {"frames": Param(int, 1, 1, 100_000, "send the message as this many WebSocket frames"),
          "pings": Param(bool, False, help="a ping between each two of its frames")}

ACTIONS: dict[str, Action] = {a.name: a for a in [
    Action("stream/clear", "stream/clear for the player role: the client drops its buffered audio; audio "
           "continues from a new start point", {**_TARGET, **_SPLIT}),
    Action("stream/end", "stream/end for every role: no more audio until a stream/start", {**_TARGET, **_SPLIT}),
    Action("stream/start", "a new player stream/start, in the current format or in another one the client "
           "declared and the server serves (409 if there is none)",
           {**_TARGET, **_SPLIT, "format": Param(str, "current", help="`current` or `other`")}),
    Action("server/command", "server/command to a player: `volume` or `mute`, one of them, which the client "
           "declared in supported_commands (409 if not)",
           {**_TARGET, **_SPLIT, "volume": Param(int, None, 0, 100, "the volume to set"),
            "mute": Param(bool, None, help="true to mute, false to unmute")}),
    Action("artwork", "stream/start for an artwork channel, then an image of about `bytes` bytes on it, in "
           "fragments of `fragment_bytes` (the client must have that artwork channel)",
           {**_TARGET, "bytes": Param(int, REQUIRED, 1, 64 * MiB, "image size"),
            "channel": Param(int, 0, 0, 3, "artwork channel"),
            "fragment_bytes": Param(int, None, 16, 64 * MiB, "fragment size (default: --fragment-bytes)"),
            "pings": Param(bool, False, help="a ping between each two fragments")}),
    Action("fragment", "the next JSON message(s) the session sends (of `type`, if given) go out in `frames` "
           "frames each", {**_TARGET, "frames": Param(int, REQUIRED, 2, 100_000, "frames per message"),
                           "pings": Param(bool, False, help="a ping between each two frames"),
                           "count": Param(int, 1, 1, 1000, "how many messages"),
                           "type": Param(str, None, help="only messages of this type (e.g. server/time)")}),
    # the noise profile (a noise session in transport mode; 409 on any other)
    Action("noise/fragments", "a malformed Sendspin fragment sequence (messaging.md: the receiver MUST close): "
           "`next-without-first` a last fragment with none in flight, `reserved-flags` a fragment with a reserved "
           "flag bit set, `first-then-other` a first fragment then a whole message",
           {**_TARGET, "variant": Param(str, "next-without-first", help="which malformed sequence")}),
    Action("noise/large", "a well-formed JSON message of `bytes` bytes (an application type a client ignores) in "
           "Sendspin fragments", {**_TARGET, "bytes": Param(int, MiB + 1, 1, 64 * MiB, "the message's size")}),
    Action("noise/tamper", "a transport message with one bit of its ciphertext flipped (its AEAD tag by default)",
           {**_TARGET, "at": Param(int, -1, -65535, 65535, "the byte to flip (negative: from the end)")}),
    Action("noise/cleartext", "a cleartext WebSocket text message (a server/time) after the switch to transport "
           "mode", {**_TARGET}),
    Action("noise/rehandshake", "a server-initiated re-handshake (connection.md): Noise message 1 under the current "
           "keys; nothing more goes to the client until its message 2, then server/activate under the new keys",
           {**_TARGET}),
    # the noise profile: the next handshakes of this process (armed now, no session needed)
    Action("noise/handshake-stall", "the next `count` noise handshakes stall before the server sends `step` "
           "(server/init, noise/handshake: message 1, server/hello, server/activate), for `hold_ms` or until the "
           "client closes; then a silent close",
           {"step": Param(str, REQUIRED, help="the message the server holds back"),
            "count": Param(int, 1, 1, 1000, "how many handshakes"),
            "hold_ms": Param(int, 60_000, 0, 600_000, "how long the server holds the session")}),
    Action("noise/init-error", "the next `count` noise handshakes get server/error `reason` in place of "
           "server/init, then a close (as if the client's client/init were refused)",
           {"reason": Param(str, REQUIRED, help="unsupported_version, unsupported_suite or malformed"),
            "count": Param(int, 1, 1, 1000, "how many handshakes")}),
]}


def check_action(name: str, body: Any) -> dict[str, Any]:
    action = ACTIONS.get(name)
    if action is None:
        raise ControlError(404, f"no action {name!r}; the actions are {', '.join(ACTIONS)}")
    params = action.parse(body)
    if name == "server/command" and ("volume" in params) == ("mute" in params):
        raise ControlError(400, "server/command: give exactly one of volume and mute")
    return params


def catalogue() -> dict[str, Any]:
    return {"actions": {a.name: {"doc": a.doc, "params": {n: p.describe() for n, p in a.params.items()}}
                        for a in ACTIONS.values()}}


Apply = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]  # (action, checked params) -> the answer


class ControlEndpoint:
    """The HTTP side: parse, route, check the parameters, answer; `apply` does the action."""

    def __init__(self, host: str, port: int, apply: Apply) -> None:
        self.host = host
        self.port = port
        self._apply = apply
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                method, path, body = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT_S)
                status, answer = await self._route(method, path, body)
            except ControlError as exc:
                status, answer = exc.status, {"error": exc.message}
            except TimeoutError:
                status, answer = 408, {"error": f"request not complete within {READ_TIMEOUT_S:g} s"}
            writer.write(_response(status, answer))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the caller went away: nobody to answer
        finally:
            writer.close()

    async def _route(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if path in ("/", "/actions"):
            if method != "GET":
                raise ControlError(405, f"{path} takes GET")
            return 200, catalogue()
        name = path.removeprefix("/actions/")
        if name == path:
            raise ControlError(404, f"no such path {path!r}; try GET /actions or POST /actions/<name>")
        if method != "POST":
            raise ControlError(405, f"{path} takes POST")
        try:
            parsed = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            raise ControlError(400, f"the body is not JSON: {exc}") from None
        params = check_action(name, parsed)
        return 200, await self._apply(name, params)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise ControlError(431, f"request head over {MAX_HEAD} bytes") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ControlError(400, f"not an HTTP/1.x request line: {lines[0][:80]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if "transfer-encoding" in headers:
        raise ControlError(411, "send the body with a Content-Length, not a transfer encoding")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise ControlError(400, f"Content-Length {headers['content-length']!r} is not a number") from None
    if length > MAX_BODY:
        raise ControlError(413, f"body of {length} bytes; at most {MAX_BODY}")
    return parts[0], parts[1].split("?", 1)[0], await reader.readexactly(length)


def _response(status: int, answer: dict[str, Any]) -> bytes:
    body = (json.dumps(answer) + "\n").encode()
    phrase = http.HTTPStatus(status).phrase
    return (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Access-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n").encode() + body


async def post_json(host: str, port: int, path: str, body: dict[str, Any], timeout: float) -> tuple[int, Any]:
    """One POST to another control endpoint (the coordinator to a worker): (status, JSON answer)."""
    async def exchange() -> tuple[int, Any]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            data = json.dumps(body).encode()
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
            await writer.drain()
            raw = await reader.read()  # until EOF: one request per connection
        finally:
            writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, json.loads(payload)

    return await asyncio.wait_for(exchange(), timeout)
