"""Negative controls for the client gate: a small Sendspin player with one bug at a time.

    python tests/bad_clients/bad_client.py --url ws://... --bug BUG
    python tests/bad_clients/bad_client.py --listen HOST:PORT --path /sendspin --bug BUG   # server-initiated

Without a bug (`--bug none`) it behaves: client/hello, waits for server/hello, sends
client/state, sends client/time every 200 ms whatever the replies, reads everything as
it comes (ignoring text that is not a JSON object and binaries it cannot use), answers
server/command volume/mute with client/state, gives a session up once no server/time
reply came for 5 s (a stalled or blackholed connection), and reconnects with a backoff
(0.5 s doubling to 4 s); with `--listen` it serves the WebSocket endpoint instead, runs
the same session on each connection a server dials, and keeps listening for the next.
Built on websockets' asyncio client and server, not on our probe, so the gate is shown
to judge another code base.

Bugs (each should make the gate FAIL the case named):
  no-support    declares player@v1 without its player@v1_support object           (1.3)
  early         sends client/state and client/time right after client/hello     (1.1)
  no-time-sync  never sends client/time                                          (2.1)
  time-waits    sends the next client/time only after the last one's reply        (2.3)
  gated-reads   reads one message per client/time it sends (reads behind sends)   (3.1)
  no-reassembly does not reassemble fragmented messages: takes a message's first frame
                for the whole and drops the rest (a fragmented JSON message is then
                unparsable and ignored)                                          (4.1)
  no-reconnect  exits when its connection is lost                                (8.1-8.5)
  storm         reconnects at once, over and over, with no backoff               (8.6, NON-STRICT)
  stall-blocks  waits for ever on a message the server stalled: it never notices a
                dead session (no watchdog on server/time, no keepalive)            (6.2)
  orphan-crash  unpacks every binary's 9-byte header unchecked: a shorter one kills it  (5.2)
  bad-json-crash  parses every text message unguarded: malformed JSON kills it    (9.1)
  listen-once   server-initiated: stops listening after its first session (the   (8.2 server-initiated)
                process stays), so the server's next dial is refused
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import struct
import sys
import time
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import WebSocketException

BUGS = ("none", "no-support", "early", "no-time-sync", "time-waits", "gated-reads", "no-reassembly", "no-reconnect",
        "storm", "stall-blocks", "orphan-crash", "bad-json-crash", "listen-once")
TIME_INTERVAL_S = 0.2
DEAD_SESSION_S = 5.0  # no server/time reply for this long: the session is dead


PLAYER_SUPPORT = {"supported_formats": [{"codec": "pcm", "channels": 2, "sample_rate": 48000, "bit_depth": 16}],
                  "buffer_capacity": 1_000_000, "supported_commands": ["volume", "mute"]}


def hello(client_id: str, name: str, bug: str) -> str:
    payload = {"client_id": client_id, "name": name, "version": 1, "supported_roles": ["player@v1"]}
    if bug != "no-support":
        payload["player@v1_support"] = PLAYER_SUPPORT
    return json.dumps({"type": "client/hello", "payload": payload})


def state(player: dict[str, Any] | None = None) -> str:
    return json.dumps({"type": "client/state", "payload": {"state": "synchronized",
                                                            "player": player or {"volume": 100, "muted": False}}})


def client_time() -> str:
    return json.dumps({"type": "client/time", "payload": {"client_transmitted": time.monotonic_ns() // 1000}})


def message_type(message: str, bug: str) -> str | None:
    """The `type` of a JSON text message; None for text that is not a JSON object (ignored)."""
    if bug == "bad-json-crash":
        return json.loads(message).get("type")  # unguarded: malformed JSON raises, and nothing catches it
    try:
        doc = json.loads(message)
    except ValueError:
        return None
    return doc.get("type") if isinstance(doc, dict) else None


def on_binary(message: bytes, bug: str) -> None:
    """Audio is read and dropped; the orphan-crash bug unpacks the header without checking
    the length first (struct.error on fewer than 9 bytes, and nothing catches it)."""
    if bug == "orphan-crash":
        struct.unpack_from(">Bq", message)


async def receive(ws: Connection, bug: str) -> str | bytes:
    """The next message; with no-reassembly, its first frame taken for the whole."""
    if bug != "no-reassembly":
        return await ws.recv()
    first: str | bytes | None = None
    async for frame in ws.recv_streaming():
        if first is None:
            first = frame  # the continuation frames are read and dropped
    assert first is not None
    return first


def obey(message: str, player: dict[str, Any]) -> bool:
    """A well-formed server/command volume or mute applied to `player`; True if it changed."""
    payload = json.loads(message).get("payload")  # a JSON object: message_type said so
    order = payload.get("player") if isinstance(payload, dict) else None
    if not isinstance(order, dict):
        return False
    if order.get("command") == "volume" and isinstance(order.get("volume"), int) and 0 <= order["volume"] <= 100:
        player["volume"] = order["volume"]
    elif order.get("command") == "mute" and isinstance(order.get("mute"), bool):
        player["muted"] = order["mute"]
    else:
        return False  # bad input is ignored, never echoed back
    return True


async def session(ws: Connection, bug: str, client_id: str, name: str) -> None:
    await ws.send(hello(client_id, name, bug))
    if bug == "early":
        await ws.send(state())
        await ws.send(client_time())
    while True:  # server/hello first
        message = await ws.recv()
        if isinstance(message, str) and message_type(message, bug) == "server/hello":
            break
    if bug != "early":
        await ws.send(state())
    replied = asyncio.Event()
    replied.set()
    sent = asyncio.Semaphore(0)
    last_reply = time.monotonic()

    def dead() -> bool:
        """No server/time reply for DEAD_SESSION_S: drop the connection (recv then fails)."""
        if bug == "stall-blocks" or time.monotonic() - last_reply < DEAD_SESSION_S:
            return False
        print(f"no server/time reply for {DEAD_SESSION_S} s: giving the session up", file=sys.stderr, flush=True)
        ws.transport.abort()
        return True

    async def time_loop() -> None:
        while bug != "no-time-sync" and not dead():
            if bug == "time-waits":
                await replied.wait()
                replied.clear()
            await ws.send(client_time())
            sent.release()
            await asyncio.sleep(TIME_INTERVAL_S)

    timer = asyncio.create_task(time_loop())
    player = {"volume": 100, "muted": False}
    try:
        while True:
            if bug == "gated-reads":
                await sent.acquire()
            message = await receive(ws, bug)
            if isinstance(message, bytes):
                on_binary(message, bug)
                continue
            kind = message_type(message, bug)
            if kind == "server/time":
                last_reply = time.monotonic()
                replied.set()
            elif kind == "server/command" and obey(message, player):
                await ws.send(state(player))
    finally:
        timer.cancel()


async def listen(args: argparse.Namespace, stop: asyncio.Event) -> int:
    """Server-initiated: each dial gets the same session; `listen-once` closes the listener
    as soon as it has one (closing it when that session ended let a re-dial that came
    first, on a busy machine, in)."""
    host, _, port = args.listen.rpartition(":")

    async def handler(ws: ServerConnection) -> None:
        if ws.request is None or ws.request.path != args.path:
            await ws.close(1008, "wrong path")
            return
        if args.bug == "listen-once":
            server.close(close_connections=False)
        with contextlib.suppress(WebSocketException):
            await session(ws, args.bug, args.client_id, args.name)

    async with serve(handler, host, int(port), compression=None) as server:
        await stop.wait()
    return 0


async def main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.listen:
        return await listen(args, stop)
    backoff = 0.5
    while not stop.is_set():
        try:
            # stall-blocks: no keepalive either (websockets pings every 20 s by default)
            keepalive = {"ping_interval": None} if args.bug == "stall-blocks" else {}
            async with connect(args.url, compression=None, open_timeout=5, close_timeout=1, **keepalive) as ws:
                backoff = 0.5
                runner = asyncio.create_task(session(ws, args.bug, args.client_id, args.name))
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    runner.cancel()
                    return 0
                runner.result()  # the session's error, if it ended on one
        except (OSError, WebSocketException, TimeoutError) as exc:
            print(f"connection lost: {exc!r}", file=sys.stderr, flush=True)
        if args.bug == "no-reconnect":
            return 1
        if args.bug != "storm":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, 4.0)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url")
    where.add_argument("--listen", metavar="HOST:PORT", help="server-initiated: listen here for the server's dial")
    p.add_argument("--path", default="/sendspin", help="with --listen: the WebSocket path")
    p.add_argument("--bug", choices=BUGS, default="none")
    p.add_argument("--client-id", default="bad-client")
    p.add_argument("--name", default="Bad client")
    sys.exit(asyncio.run(main(p.parse_args())))
