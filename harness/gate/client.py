"""The client under test: how it is started, and one case's world around it.

`ClientUnderTest` is what the implementer declared (`--client-cmd`, `--client-roles`,
`--client-codecs`). `Topology` is what the client talks to; `ClientWorld` is one case:

    client under test ──► sendspin-proxy (--wire-log) ──► reference server (1..N workers)

The client gets the proxy's URL; the harness judges it only from outside: the
server's and the proxy's event logs, and the client's exit status and output
(`client.log` in the case's directory).
"""

from __future__ import annotations

import asyncio
import shlex
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..events import Events
from ..fault_proxy import FaultProxy, fault_proxy
from ..protocol import now_us
from ..scenario import Scenario
from ..topology import Child, ManagedProcess, reference_server, spawn_child

QUEUE_SAMPLE_S = 0.1
PLACEHOLDERS = ("url", "host", "port", "path", "client_id", "name")
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL to its process group
# every message recorded (extensions are kept off by default: every fault sees plain payloads)
PROXY_ARGS = ("--wire-log",)


class ClientCommandError(ValueError):
    """--client-cmd is not a usable template."""


@dataclass(frozen=True)
class ClientUnderTest:
    template: str  # e.g. "my-player --server {url} --id {client_id}"
    roles: tuple[str, ...] = ("player@v1",)
    codecs: tuple[str, ...] = ("pcm",)
    name: str = "client under test"

    def __post_init__(self) -> None:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        except ValueError as exc:
            raise ClientCommandError(f"--client-cmd {self.template!r}: {exc}") from None
        unknown = sorted(f for f in fields if f not in PLACEHOLDERS)
        if unknown:
            raise ClientCommandError(f"--client-cmd: unknown placeholder(s) {', '.join('{' + f + '}' for f in unknown)}"
                                     f"; the placeholders are {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
        if "url" not in fields and not {"host", "port"} <= fields:
            raise ClientCommandError("--client-cmd must say where to connect: {url}, or {host} and {port}")
        if not shlex.split(self.template):
            raise ClientCommandError("--client-cmd is empty")

    def argv(self, url: str, client_id: str, name: str) -> list[str]:
        """The command for one case: the template's words, each with its placeholders filled (no shell)."""
        parts = urlsplit(url)
        values = {"url": url, "host": parts.hostname or "127.0.0.1", "port": str(parts.port or 80),
                  "path": parts.path or "/", "client_id": client_id, "name": name}
        return [word.format(**values) for word in shlex.split(self.template)]


@dataclass
class Topology:
    """The reference server (or a coordinator with workers) and the proxy in front of it.

    Cases that leave it as they found it share one (started once per run: starting
    mitmproxy and a server costs seconds); a case that kills a worker gets its own."""

    directory: Path
    workers: int = 0
    servers: list[ManagedProcess] = field(default_factory=list)
    proxy: FaultProxy = field(init=False)

    @classmethod
    def start(cls, directory: Path, workers: int = 0, server_args: tuple[str, ...] = ()) -> Topology:
        """Starts it (blocking: a few seconds); stops what it started if a part fails."""
        topology = cls(directory, workers)
        try:
            extra = ("--workers", str(workers)) if workers else ()
            server = reference_server(directory, *extra, *server_args)
            topology.servers.append(server)
            upstreams = [w["url"] for w in server.ready["workers"]] if workers else [server.ready["url"]]
            process = fault_proxy(directory, upstreams, *PROXY_ARGS)
            topology.servers.append(process)
            topology.proxy = FaultProxy(process)
            for w in server.ready.get("workers", []) if workers else []:
                topology.proxy.call("PATCH", f"/upstreams/{w['worker']}", {"pid": w["pid"]})
            topology.proxy.url += urlsplit(upstreams[0]).path
        except BaseException:
            topology.stop()
            raise
        return topology

    def alive(self) -> bool:
        return all(p.popen.poll() is None for p in self.servers)

    def stop(self) -> list[str]:
        """Stops the proxy, then the servers; returns what did not run cleanly (exit code,
        stderr): an error logged by our own server is never hidden in a file."""
        problems = []
        for process in reversed(self.servers):
            code = process.stop()
            text = process.tail(2000).strip()
            if code != 0 or text:
                problems.append(f"{process.name} exited {code}:\n{text}")
        return problems

    def reset(self, timeout: float = 5.0) -> None:
        """Between two cases: no fault left, and no connection of the last client."""
        self.proxy.call("POST", "/reset")
        deadline = time.monotonic() + timeout
        while self.proxy.call("GET", "/connections")["connections"] and time.monotonic() < deadline:
            time.sleep(0.05)


class TopologyPool:
    """The shared single-server topology of a run: started on first use, checked before
    each case (a case reset its faults and waits out the last client's connection), and
    started anew if a process of it died. `close` stops it and says what went wrong."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.current: Topology | None = None
        self.problems: list[str] = []
        self.generation = 0

    def shared(self) -> Topology:
        if self.current is not None and not self.current.alive():
            self.problems += ["a shared topology died during a case", *self.current.stop()]
            self.current = None
        if self.current is None:
            self.generation += 1
            self.current = Topology.start(self.directory / f"topology-{self.generation}")
        else:
            self.current.reset()
        return self.current

    def close(self) -> list[str]:
        if self.current is not None:
            self.problems += self.current.stop()
            self.current = None
        return self.problems


@dataclass
class ClientWorld:
    """One case: a topology (shared, or its own), and the client under test, fresh.

    `async with ClientWorld(dir, client, case_id, topology) as w:` measures our own loop
    (`harness.jsonl` in the case's directory); `await w.start_client()` starts the client;
    leaving stops it (its exit status and output stay in `exit_code` / `client.log`).
    `events()` is what the topology logged since the case began, plus the case's own log."""

    directory: Path
    client: ClientUnderTest
    case_id: str
    topology: Topology
    scenario: Scenario = field(init=False)
    process: Child | None = None
    exit_code: int | None = None  # once it exited (by itself, or when stopped)
    exited_by_itself: bool = False
    begun_us: int = field(default_factory=now_us)
    started_us: int = 0
    stop_us: int = 0  # when the harness stopped it: what ended after that, the harness ended
    stopped: str = ""
    _watcher: asyncio.Task[None] | None = None

    @property
    def proxy(self) -> FaultProxy:
        return self.topology.proxy

    @property
    def client_id(self) -> str:
        return f"gate-{self.case_id.replace('.', '-')}"

    @property
    def log_path(self) -> Path:
        return self.directory / "client.log"

    async def __aenter__(self) -> ClientWorld:
        self.scenario = Scenario(self.directory)  # our loop's stalls and the client's queue, in harness.jsonl
        await self.scenario.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.stop_client()
        finally:
            await self.scenario.__aexit__(*exc)

    async def _watch_queue(self) -> None:
        """Samples the client's unread bytes (its sockets' receive queues, as the kernel
        counts them) and logs each change as `client_queue`: a client that stops reading
        shows here within a sample, long before loopback's megabytes of buffers fill up."""
        port = urlsplit(self.proxy.url).port
        last: dict[int, int] = {}
        while True:
            for local_port, unread in receive_queues(port).items():
                if last.get(local_port) != unread:
                    last[local_port] = unread
                    self.scenario.log.emit("client_queue", port=local_port, bytes=unread)
            await asyncio.sleep(QUEUE_SAMPLE_S)

    async def start_client(self) -> None:
        argv = self.client.argv(self.proxy.url, self.client_id, f"Gate {self.case_id}")
        self.started_us = time.monotonic_ns() // 1000
        try:
            self.process = spawn_child("client", argv, self.log_path)
        except OSError as exc:
            raise ClientCommandError(f"--client-cmd: cannot start {argv[0]!r}: {exc.strerror}") from None
        self._watcher = asyncio.create_task(self._watch_queue())

    async def stop_client(self) -> None:
        if self.process is None or self.stopped:
            return
        self.stop_us = time.monotonic_ns() // 1000
        if self._watcher is not None:
            self._watcher.cancel()
        self.exited_by_itself = self.process.exited()
        self.stopped = await self.process.astop(timeout=STOP_GRACE_S)
        self.exit_code = self.process.returncode

    def running(self) -> bool:
        return self.process is not None and not self.process.exited()

    def output(self, limit: int = 4000) -> str:
        return self.process.tail(limit) if self.process is not None else ""

    def events(self) -> Events:
        shared = Events.load(self.topology.directory, since_us=self.begun_us)
        return Events(sorted(shared.records + Events.load(self.directory).records, key=lambda r: r["t_us"]))

    async def until(self, what: str, found: Callable[[Events], Any], timeout: float) -> Any:
        """Polls the event logs until `found(events)` is truthy; returns it, or None after
        `timeout` s or once the client has exited (the judge then says what was missing)."""
        deadline = time.monotonic() + timeout
        while True:
            result = found(self.events())
            if result or time.monotonic() >= deadline or not self.running():
                return result or None
            await asyncio.sleep(0.05)

    async def observe(self, seconds: float) -> None:
        """Lets the session run; returns early if the client exits."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.running():
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def receive_queues(remote_port: int) -> dict[int, int]:
    """{local port: bytes received but not read} of this machine's TCP sockets connected
    to `remote_port` on loopback (/proc/net/tcp and tcp6: the kernel's count, not the
    client's own account)."""
    queues: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, queue = fields[1], fields[2], fields[3], fields[4]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == remote_port:  # 01: ESTABLISHED
                queues[int(local.rsplit(":", 1)[1], 16)] = int(queue.split(":")[1], 16)
    return queues

