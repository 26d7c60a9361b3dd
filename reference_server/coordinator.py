"""The coordinator: one source, one timeline, N worker processes.

It generates (or decodes) the source once, stamps every chunk on the shared
timeline and sends it to every live worker over a non-blocking socketpair
(see ipc.py for the drop policy). It never waits on a worker:

- death (SIGKILL, crash) is seen through the process itself — its pidfd
  becomes readable, its end of the socketpair gives EOF — within milliseconds;
- a hang is seen when heartbeats stop: a stopped process (SIGSTOP; /proc
  state T) after `heartbeat_timeout_s`, a running one (a deadlock, or a loop
  merely busy, e.g. with a burst of handshakes) only after `stall_timeout_s`,
  so an overloaded worker is not killed and its listeners dumped on the others;
  the worker is then killed and treated as dead;
- a dead worker leaves the pool and the status at once; with `respawn` it is
  restarted on its port, otherwise the coordinator exits non-zero as soon as
  no worker is left.

Its own port answers `/api/status` (all workers) and redirects `/sendspin`
(HTTP 307) to the live worker with the fewest sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from harness.protocol import EventLog, LoopLagMonitor, now_us
from harness.protocol.cpuwait import FairTimeout

from . import ipc
from .config import ServerConfig
from .control import ControlEndpoint, ControlError, post_json
from .profiles import load_identity, load_psks
from .sources import open_source
from .timeline import Batch, Producer

# A worker's start and stop: a wait for a CPU is not counted (cpuwait.FairTimeout), up to
# FAIR_CAP times the timeout: a worker is killed for hanging, not for a busy machine.
READY_TIMEOUT_S = 15.0
FAIR_CAP = 4
FORWARD_TIMEOUT_S = 30.0  # an action with a large artwork waits for the image to be made
STOP_TIMEOUT_S = 3.0
EXIT_ALL_DEAD = 3


@dataclass(eq=False)
class Worker:
    index: int
    port: int = 0
    control_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    pidfd: int | None = None
    sock: socket.socket | None = None
    alive: bool = False
    last_heartbeat_us: int = 0
    heartbeat: ipc.Heartbeat = field(default_factory=lambda: ipc.Heartbeat(0, 0, False))
    ipc_drops: int = 0
    restarts: int = 0
    redirected: int = 0  # clients sent here since its last heartbeat (not yet in its counts)
    ready: asyncio.Future[ipc.Ready] | None = None

    @property
    def proc(self) -> str:
        return f"worker-{self.index}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


STOPPED_STATES = frozenset("Tt")  # /proc/PID/stat: stopped by a signal, or by a tracer


async def _exits(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether `process` exits (reaped) within `timeout` s, not counting its waits for a CPU."""
    clock = FairTimeout(lambda: [process.pid], timeout, FAIR_CAP * timeout)
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(process.wait, max(0.05, clock.remaining()))
            return True
        if clock.expired():
            return False


def process_state(pid: int | None) -> str:
    """The one-letter state in /proc/PID/stat ("?" once the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError, TypeError):
        return "?"


class Coordinator:
    def __init__(self, config: ServerConfig, workers: int, worker_argv: list[str], respawn: bool = False,
                 heartbeat_s: float = 0.1, heartbeat_timeout_s: float = 1.0, stall_timeout_s: float = 5.0) -> None:
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        self.config = config
        self.workers = [Worker(i) for i in range(workers)]
        self.worker_argv = worker_argv
        self.respawn = respawn
        self.heartbeat_s = heartbeat_s
        self.heartbeat_timeout_us = int(heartbeat_timeout_s * 1e6)
        self.stall_timeout_us = max(self.heartbeat_timeout_us, int(stall_timeout_s * 1e6))
        log_path = config.log_dir / "coordinator.jsonl" if config.log_dir else None
        self.log = EventLog(log_path, "coordinator")
        source = open_source(config.source, config.sample_rate)
        # One identity for the cluster: every worker presents the same server_id (profiles.py).
        identity = load_identity(config.identity_file) if "noise" in config.profiles else None
        load_psks(config.psks_file)  # a bad file is a usage error here, not in every worker
        self.server_id = identity.peer_id if identity else None
        self.source_hello = ipc.hello(source.sample_rate, source.kind, identity.private if identity else b"")
        self.producer = Producer(source, config.chunk_ms, config.max_lead_ms, config.start_delay_ms,
                                 config.batch_ms, self.log, self._fan_out)
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self._http: Server | None = None
        self.control = ControlEndpoint(config.host, config.control_port, self._act)
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle -----------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop_lag = LoopLagMonitor(loop, self.log).start()  # its own stalls, told apart from a worker's
        try:
            await asyncio.gather(*(self._spawn(w) for w in self.workers))
            await self._serve_http()
            monitor = self._start(self._monitor())
            await self.stopping.wait()
            monitor.cancel()
        finally:
            loop_lag.stop()
            await self._shutdown()
        return self.exit_code

    def _start(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _serve_http(self) -> None:
        c = self.config
        self._http = await serve(self._refuse_ws, c.host, c.port, process_request=self._on_http)
        await self.control.start()
        c.announce(self.log, self._http, control=self.control.url,
                   workers=[self._worker_info(w) for w in self.workers])

    async def _shutdown(self) -> None:
        self.log.emit("shutdown", live_workers=sum(w.alive for w in self.workers))
        self.stopping.set()
        for w in self.workers:
            w.alive = False  # from here on an exit is expected, not a crash
        task = self.producer.stop()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, *([task] if task else []), return_exceptions=True)
        await self.control.close()
        if self._http is not None:
            self._http.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._http.wait_closed(), STOP_TIMEOUT_S)
        await asyncio.gather(*(self._stop_worker(w) for w in self.workers))
        self.log.close()

    async def _stop_worker(self, w: Worker) -> None:
        """SIGTERM, then close its socket once it is gone (an EOF first would
        start its own shutdown and race the signal)."""
        self._close_pidfd(w)
        process = w.process
        if process is None or process.poll() is not None:
            self._detach(w)
            return
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)  # a stopped worker must run to see SIGTERM
        if not await _exits(process, STOP_TIMEOUT_S):
            process.kill()
            await asyncio.to_thread(process.wait, STOP_TIMEOUT_S)
        self._detach(w)
        self.log.emit("worker_stop", worker=w.index, pid=process.pid, code=process.returncode)

    # --- workers -----------------------------------------------------------------------

    async def _spawn(self, w: Worker) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        argv = [*self.worker_argv, "--ipc-fd", str(theirs.fileno()), "--proc", w.proc, "--port", str(w.port),
                "--heartbeat", str(self.heartbeat_s)]
        loop = asyncio.get_running_loop()
        w.process = subprocess.Popen(argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        w.sock = ours
        w.ready = loop.create_future()
        ours.send(self.source_hello)
        loop.add_reader(ours, self._on_ipc, w)
        w.pidfd = os.pidfd_open(w.process.pid)
        loop.add_reader(w.pidfd, self._on_exit, w, w.process)
        pid = w.process.pid
        clock = FairTimeout(lambda: [pid], READY_TIMEOUT_S, FAIR_CAP * READY_TIMEOUT_S)
        while not w.ready.done() and not clock.expired():
            await asyncio.wait({w.ready}, timeout=max(0.05, clock.remaining()))
        try:
            if not w.ready.done():
                raise RuntimeError(f"no READY {clock}")
            ready = w.ready.result()
        except RuntimeError as exc:
            self._detach(w)
            self._close_pidfd(w)
            w.process.kill()
            await asyncio.to_thread(w.process.wait, STOP_TIMEOUT_S)
            raise RuntimeError(f"{w.proc} did not start: {exc}") from None
        w.port, w.control_port = ready.port, ready.control_port
        w.alive = True
        w.last_heartbeat_us = now_us()
        self.log.emit("worker_start", worker=w.index, pid=w.pid, port=w.port, restarts=w.restarts)

    def _on_exit(self, w: Worker, process: subprocess.Popen[bytes]) -> None:
        """The pidfd is readable: the process has ended. Reap it now."""
        code = process.poll()
        self._close_pidfd(w)
        if w.process is process:
            self._worker_gone(w, "process exit", code=code)

    def _close_pidfd(self, w: Worker) -> None:
        if w.pidfd is not None:
            asyncio.get_running_loop().remove_reader(w.pidfd)
            os.close(w.pidfd)
            w.pidfd = None

    def _on_ipc(self, w: Worker) -> None:
        assert w.sock is not None
        while True:
            try:
                data = w.sock.recv(ipc.MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._worker_gone(w, "ipc eof")
                return
            message = ipc.decode(data)
            if isinstance(message, ipc.Heartbeat):
                w.last_heartbeat_us = now_us()
                w.redirected = 0
                if message != w.heartbeat:
                    w.heartbeat = message
                    self._update_demand()
            elif isinstance(message, ipc.Ready) and w.ready is not None and not w.ready.done():
                w.ready.set_result(message)

    def _detach(self, w: Worker) -> None:
        if w.sock is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(w.sock)
            w.sock.close()
            w.sock = None

    def _worker_gone(self, w: Worker, how: str, code: int | None = None) -> None:
        """Take a dead or hung worker out of the pool now; reap it; respawn or exit."""
        if w.ready is not None and not w.ready.done():
            w.ready.set_exception(RuntimeError(f"{how} before it was ready (code {code})"))
        if not w.alive:
            return  # already handled, or an expected exit during shutdown
        w.alive = False
        self._detach(w)
        process = w.process
        if process is not None and process.poll() is None:
            process.kill()  # hung or half-dead: make sure it is gone before its port is reused
        w.heartbeat = ipc.Heartbeat(0, 0, False)
        self.log.emit("worker_exit", worker=w.index, pid=w.pid, how=how, code=code)
        self._update_demand()
        self._broadcast_status()
        if self.respawn and not self.stopping.is_set():
            self._start(self._respawn(w, process))
        elif not any(x.alive for x in self.workers):
            print(f"sendspin-reference-server: all {len(self.workers)} workers are dead ({w.proc}: {how}); "
                  "exiting", file=sys.stderr)
            self.log.emit("exit", code=EXIT_ALL_DEAD, reason="all workers dead")
            self.exit_code = EXIT_ALL_DEAD
            self.stopping.set()

    async def _respawn(self, w: Worker, old: subprocess.Popen[bytes] | None) -> None:
        if old is not None:
            await asyncio.to_thread(old.wait, STOP_TIMEOUT_S)  # its port is free once it is gone
        self._close_pidfd(w)
        w.restarts += 1
        try:
            await self._spawn(w)
        except RuntimeError as exc:
            self.log.emit("respawn_failed", worker=w.index, error=str(exc))
            return
        self._broadcast_status()

    async def _monitor(self) -> None:
        """Hung-worker detection and the status the workers show."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            now = now_us()
            for w in self.workers:
                silent_us = now - w.last_heartbeat_us
                if not w.alive or silent_us <= self.heartbeat_timeout_us:
                    continue
                state = process_state(w.pid)
                if state in STOPPED_STATES or silent_us > self.stall_timeout_us:
                    how = "stopped" if state in STOPPED_STATES else f"running (state {state}) but silent"
                    self._worker_gone(w, f"no heartbeat for {silent_us / 1e6:.2f} s, {how}")
            self._broadcast_status()

    # --- audio fan-out ------------------------------------------------------------------

    def _update_demand(self) -> None:
        wanted = any(w.alive and w.heartbeat.wants_audio for w in self.workers)
        if wanted and not self.producer.running:
            self.producer.start()
        elif not wanted and self.producer.running:
            self.producer.stop()

    def _fan_out(self, batch: Batch) -> None:
        messages = [(chunk.seq, ipc.chunk(chunk, canonical)) for chunk, canonical in batch]
        for w in self.workers:
            for seq, message in messages:
                if not w.alive or w.sock is None:
                    break
                try:
                    w.sock.send(message)
                except BlockingIOError:
                    w.ipc_drops += 1  # the worker is not keeping up: it loses this chunk, we lose nothing
                    if w.ipc_drops == 1 or w.ipc_drops % 100 == 0:
                        self.log.emit("ipc_drop", worker=w.index, seq=seq, total=w.ipc_drops)
                except OSError:
                    self._worker_gone(w, "ipc broken")

    # --- status and HTTP ---------------------------------------------------------------

    def _worker_info(self, w: Worker) -> dict[str, Any]:
        host = self.config.host
        return {"worker": w.index, "pid": w.pid, "port": w.port, "url": f"ws://{host}:{w.port}{self.config.path}",
                "control": f"http://{host}:{w.control_port}",
                "alive": w.alive, "listeners": w.heartbeat.listeners, "sessions": w.heartbeat.sessions,
                "heartbeat_age_ms": (now_us() - w.last_heartbeat_us) // 1000 if w.alive else None,
                "ipc_drops": w.ipc_drops, "restarts": w.restarts}

    def status(self) -> dict[str, Any]:
        live = [w for w in self.workers if w.alive]
        return {"listeners": sum(w.heartbeat.listeners for w in live),
                "sessions": sum(w.heartbeat.sessions for w in live), "playing": self.producer.running,
                "profiles": list(self.config.profiles), "server_id": self.server_id,
                "live_workers": len(live), "workers": [self._worker_info(w) for w in self.workers]}

    def _broadcast_status(self) -> None:
        message = ipc.status(json.dumps(self.status()))
        for w in self.workers:
            if w.alive and w.sock is not None:
                with contextlib.suppress(OSError):  # includes BlockingIOError: status is best effort
                    w.sock.send(message)

    def _on_http(self, connection: ServerConnection, request: Request) -> Response:
        path = request.path.split("?", 1)[0]
        if path == "/api/status":
            response = connection.respond(http.HTTPStatus.OK, json.dumps(self.status()) + "\n")
            response.headers["Content-Type"] = "application/json"
        elif path == self.config.path:
            live = [w for w in self.workers if w.alive]
            if not live:
                response = connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "no live worker\n")
            else:
                target = min(live, key=lambda w: (w.heartbeat.sessions + w.redirected, w.index))
                target.redirected += 1
                response = connection.respond(http.HTTPStatus.TEMPORARY_REDIRECT, f"use worker {target.index}\n")
                response.headers["Location"] = self._worker_info(target)["url"]
        else:
            response = connection.respond(http.HTTPStatus.NOT_FOUND, f"no such path {path!r}; try "
                                          f"{self.config.path} or /api/status\n")
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    async def _act(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """A scripted action, forwarded to every live worker's control endpoint: the
        client's session may be on any of them (its worker's log shows which took it)."""
        live = [w for w in self.workers if w.alive]
        answers = await asyncio.gather(*(post_json(self.config.host, w.control_port, f"/actions/{name}", params,
                                                   FORWARD_TIMEOUT_S) for w in live), return_exceptions=True)
        applied: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        problems: list[str] = []
        for w, answer in zip(live, answers, strict=True):
            if isinstance(answer, BaseException):
                problems.append(f"{w.proc}: no answer ({type(answer).__name__}: {answer})")
            elif answer[0] == 200:
                applied += answer[1]["sessions"]
                refused += [{**r, "proc": w.proc} for r in answer[1]["refused"]]
            else:
                problems.append(f"{w.proc}: {answer[1].get('error')}")
        why = "; ".join(problems) or "no live worker"
        self.log.emit("action", action=name, params=params, workers=[w.index for w in live],
                      **({"result": {"sessions": len(applied)}} if applied else {"refused": why}))
        if not applied:
            raise ControlError(409, f"{name}: no worker's session took it: {why}")
        return {"action": name, "sessions": applied, "refused": refused}

    async def _refuse_ws(self, ws: ServerConnection) -> None:  # every request is answered in _on_http
        await ws.close()
