"""Negative control: a Sendspin server with the field's bulk-send bug.

What is wrong with it
---------------------
It is built on websockets' *synchronous* API (``websockets.sync.server``), as
the field server was, and sends a big artwork image as ONE WebSocket message
in ONE frame: ``ws.send(big_bytes)``, no fragmentation.

In websockets 17 (read in 17.4, ``websockets/sync/connection.py``) every send
runs inside ``Connection.send_context()``, which holds the connection's
``protocol_mutex`` (a ``threading.Lock``) while ``send_data()`` calls
``socket.sendall()`` on a blocking socket. The library's own reader thread,
``recv_events()``, must take the same lock after every ``socket.recv()`` to
feed the bytes to the protocol parser. So while ``sendall`` of a 32 MiB frame
waits for a slow peer to drain it, no inbound frame is parsed at all: this
server's reading thread sits in ``ws.recv()`` and gets nothing, the peer's
client/time messages pile up in the kernel's receive buffer, and they are
read (and stamped) only after the whole image has left. Reads starve for as
long as the peer takes to read the image (8 s for 32 MiB at 4 MiB/s); a peer
that gates its reads behind its own sends deadlocks with it, and keepalive
(whose pings need the same lock) eventually kills the session.

What is *not* wrong with it
---------------------------
The application code does everything else right, so the lock is the only
cause: each connection's handler thread does nothing but read, stamp
(``server_received`` = ``now_us()`` when ``ws.recv()`` returned) and answer;
the image goes out from a separate sender thread. (Its server/time replies
need the same lock, so they wait too; I2 judges the read stamps.) The fix is the reference
server's: send big payloads as fragments (``ws.send(iterable_of_pieces)``
takes and releases the lock once per fragment), e.g. 256 KiB each.

Verified on websockets 17.4 (loopback, probe reading at 4 MiB/s with a
16 KiB SO_RCVBUF, 32 MiB image): sampled every 0.5 s during the send,
``protocol_mutex.locked()`` was always true, the sender thread was in
``socket.sendall`` and the ``recv_events`` thread was parked on the
``with self.protocol_mutex`` right after its ``socket.recv()``. Read latency
of client/time went from < 5 ms idle to 7.8-8.3 s; the worst one was read
0.3 ms after ``ws.send`` returned, and the whole backlog within 2-3 ms of it
(see tests/test_negative_control.py and bench/bulk_send.py).

It writes the event-log records the checkers read (``recv`` client/hello and
client/time, ``artwork_queued``, ``session_stats``) and takes the reference
server's CLI (``--host``, ``--port``, ``--ready-file``, ``--log-dir``,
``--proc``, ``--artwork-bytes``), so ``harness.topology.spawn`` runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import queue
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from harness.protocol import (
    UNSET,
    EventLog,
    ProtocolError,
    activate_roles,
    artwork_type,
    decode_json,
    encode_binary,
    encode_json,
    now_us,
    peek_type,
)
from harness.protocol import messages as m
from harness.topology import ManagedProcess, spawn
from reference_server.artwork import make_image

MiB = 1024 * 1024
SERVER_ID = "sync-bulk-server"
ROLES = ("artwork@v1",)
HELLO_TIMEOUT_S = 5.0
STATS_INTERVAL_S = 0.5
THREAD_JOIN_S = 5.0


class _Log:
    """EventLog shared by many threads: one lock so lines never interleave."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._lock = threading.Lock()

    def emit(self, event: str, session: str | None = None, t_us: int | None = None, **fields: Any) -> None:
        with self._lock:
            self._log.emit(event, session, t_us, **fields)

    def close(self) -> None:
        with self._lock:
            self._log.close()


class Session:
    """One connection: the handler thread reads, a sender thread sends the image."""

    def __init__(self, server: SyncBulkServer, ws: ServerConnection, session_id: str) -> None:
        self.server = server
        self.ws = ws
        self.id = session_id
        self.log = server.log
        self.outbox: queue.Queue[tuple[int, str, str] | None] = queue.Queue()
        self.in_flight = 0          # bytes of the message inside ws.send() right now
        self.done = threading.Event()

    def run(self) -> None:
        self.log.emit("accept", self.id, remote=str(self.ws.remote_address))
        threads = [threading.Thread(target=self._sender, name=f"{self.id}-sender", daemon=True),
                   threading.Thread(target=self._stats, name=f"{self.id}-stats", daemon=True)]
        try:
            if not self._handshake():
                return
            for t in threads:
                t.start()
            self._reader()
        except ConnectionClosed:
            pass
        finally:
            self.done.set()
            self.outbox.put(None)
            for t in threads:
                if t.is_alive():
                    t.join(THREAD_JOIN_S)
            self.log.emit("close", self.id, code=self.ws.close_code, reason=self.ws.close_reason or "")

    def abort(self) -> None:
        """Break a sendall that may never finish (shutdown only): the peer gets an RST."""
        with contextlib.suppress(OSError):
            self.ws.socket.shutdown(socket.SHUT_RDWR)

    # --- reading: the handler thread ------------------------------------------------

    def _handshake(self) -> bool:
        try:
            data = self.ws.recv(timeout=HELLO_TIMEOUT_S)
        except TimeoutError:
            self.log.emit("reject", self.id, type="client/hello", field="", rule="no client/hello", action="close")
            self.ws.close(4000, "no client/hello")
            return False
        t_received = now_us()
        try:
            hello = decode_json(data)
            if not isinstance(hello, m.ClientHello):
                raise ProtocolError(hello.TYPE, "", "first message must be client/hello")
        except ProtocolError as exc:
            self.log.emit("reject", self.id, type=exc.message_type, field=exc.field, rule=exc.rule, action="close")
            self.ws.close(1002, exc.rule[:120])
            return False
        self.log.emit("recv", self.id, t_us=t_received, type=hello.TYPE, client_id=hello.client_id,
                      roles=hello.supported_roles)
        active = activate_roles(hello.supported_roles, ROLES)
        if m.HARNESS_ROLE in hello.supported_roles:
            active.append(m.HARNESS_ROLE)
        self.ws.send(encode_json(m.ServerHello(server_id=SERVER_ID, name="sync bulk server (negative control)",
                                               active_roles=active, connection_reason="playback")))
        # Like the reference server: every artwork channel the client wants gets an image now.
        if "artwork@v1" in active and hello.artwork_support is not UNSET:
            for channel, support in enumerate(hello.artwork_support.channels):
                if support.source != "none":
                    self.outbox.put((channel, support.source, support.format))
        return True

    def _reader(self) -> None:
        while True:
            data = self.ws.recv()
            t_received = now_us()   # stamped when read: this is what I2 measures
            if isinstance(data, bytes):
                self.log.emit("recv", self.id, t_us=t_received, type="binary", bytes=len(data))
                continue
            try:
                message = decode_json(data)
            except ProtocolError as exc:
                self.log.emit("recv", self.id, t_us=t_received, type=peek_type(data), bytes=len(data))
                self.log.emit("reject", self.id, type=exc.message_type, field=exc.field, rule=exc.rule,
                              action="ignore")
                continue
            fields: dict[str, Any] = {}
            if isinstance(message, m.ClientTime):
                fields["client_transmitted"] = message.client_transmitted
            self.log.emit("recv", self.id, t_us=t_received, type=message.TYPE, bytes=len(data), **fields)
            match message:
                case m.ClientTime():
                    self.ws.send(encode_json(m.ServerTime(client_transmitted=message.client_transmitted,
                                                          server_received=t_received, server_transmitted=now_us())))
                case m.StreamRequestFormat(artwork=art) if art is not UNSET and art.source != "none":
                    source = art.source if art.source is not UNSET else "album"
                    self.outbox.put((art.channel, source, art.format if art.format is not UNSET else "png"))
                case m.ClientGoodbye():
                    self.log.emit("goodbye", self.id, reason=message.reason)
                    self.ws.close(1000, f"goodbye: {message.reason}")
                    return
                case _:
                    pass  # client/state and the rest: nothing this control needs to do

    # --- sending: the sender thread ------------------------------------------------------

    def _sender(self) -> None:
        try:
            while (item := self.outbox.get()) is not None:
                channel, source, image_format = item
                image = make_image(image_format, self.server.artwork_bytes)
                self.log.emit("artwork_queued", self.id, channel=channel, bytes=len(image.data), sha256=image.sha256)
                self.ws.send(encode_json(m.StreamStart(artwork=m.ArtworkStream(channels=[m.ArtworkStreamChannel(
                    source=source, format=image.format, width=image.width, height=image.height)]))))  # type: ignore[arg-type]
                data = encode_binary(artwork_type(channel), now_us(), image.data)
                self.log.emit("send_begin", self.id, type=f"artwork/{channel}", bytes=len(data), fragments=1)
                self.in_flight = len(data)
                try:
                    # THE BUG: one frame, so protocol_mutex is held until sendall() has
                    # pushed every byte into the kernel, and recv_events() cannot parse.
                    self.ws.send(data)
                finally:
                    self.in_flight = 0
                self.log.emit("send_end", self.id, type=f"artwork/{channel}", bytes=len(data))
        except ConnectionClosed:
            pass

    def _stats(self) -> None:
        # `held`: the whole encoded frame stays referenced until sendall() returns.
        while not self.done.wait(STATS_INTERVAL_S):
            self.log.emit("session_stats", self.id, held=self.in_flight, in_flight=self.in_flight)


class SyncBulkServer:
    def __init__(self, host: str, port: int, log: EventLog, artwork_bytes: int, ready_file: Path | None) -> None:
        self.host = host
        self.port = port
        self.log = _Log(log)
        self.artwork_bytes = artwork_bytes
        self.ready_file = ready_file
        self.sessions: set[Session] = set()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stopper: threading.Thread | None = None

    def handler(self, ws: ServerConnection) -> None:
        session = Session(self, ws, f"s{next(self._ids)}")
        with self._lock:
            self.sessions.add(session)
        try:
            session.run()
        finally:
            with self._lock:
                self.sessions.discard(session)

    def run(self) -> int:
        # Made before listening (as the reference server does), so that image generation
        # never competes with a session: the one-frame send is the only difference.
        make_image("png", self.artwork_bytes)
        # compression=None: the field server sent raw bytes, and deflate would shrink the
        # synthetic image and hide the stall whenever a client offers it.
        server = serve(self.handler, self.host, self.port, compression=None, close_timeout=2.0,
                       max_size=4 * MiB)
        host, port = server.socket.getsockname()[:2]
        ready = {"pid": os.getpid(), "host": host, "port": port, "url": f"ws://{host}:{port}/sendspin"}
        self.log.emit("ready", **ready)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._request_stop(server))
        if self.ready_file is not None:
            tmp = Path(f"{self.ready_file}.tmp")
            tmp.write_text(json.dumps(ready))
            tmp.rename(self.ready_file)
        try:
            server.serve_forever()
        finally:
            self._request_stop(server)
            assert self._stopper is not None
            self._stopper.join(THREAD_JOIN_S * 2)
            self.log.emit("shutdown")
            self.log.close()
        return 0

    def _request_stop(self, server: Server) -> None:
        # Server.shutdown() waits for serve_forever() to notice, so it cannot run in the
        # signal handler (which interrupts serve_forever() on the main thread).
        if self._stopper is None:
            self._stopper = threading.Thread(target=self._stop, args=(server,), name="stopper")
            self._stopper.start()

    def _stop(self, server: Server) -> None:
        with self._lock:
            sending = [s for s in self.sessions if s.in_flight]
        for s in sending:
            s.abort()   # a close frame would queue behind the unsent image, forever for a non-reader
        server.shutdown()


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sync_bulk_server", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ready-file", type=Path)
    p.add_argument("--log-dir", type=Path)
    p.add_argument("--proc", default="server")
    p.add_argument("--artwork-bytes", type=_positive_int, default=32 * MiB)
    a = p.parse_args(argv)
    log = EventLog(a.log_dir / f"{a.proc}.jsonl" if a.log_dir else None, a.proc)
    return SyncBulkServer(a.host, a.port, log, a.artwork_bytes, a.ready_file).run()


def spawn_sync_bulk_server(workdir: Path, *args: str, name: str = "server") -> ManagedProcess:
    """Start this server as a child process logging into `workdir` (reap with .stop())."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--log-dir", str(workdir), "--proc", name, *args]
    return spawn(name, argv, workdir)


if __name__ == "__main__":
    sys.exit(main())
