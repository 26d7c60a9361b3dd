"""The client under test: how it is started, and one case's world around it.

`ClientUnderTest` is what the implementer declared (`--client-cmd` or `--client-adapter`,
`--client-listen-cmd`, `--client-roles`, `--client-codecs`, `--client-initiator`).
`Topology` is what the client talks to; `ClientWorld` is one case. Who opens the
connection (the spec's "Establishing a Connection"):

    initiator client:  client ──dials──► sendspin-proxy (--wire-log) ──► reference server (1..N workers)
    initiator server:  client ◄──dials── sendspin-proxy (--wire-log, --server-dials) ◄──dials── reference server

Client-initiated, the client gets the proxy's URL. Server-initiated, it gets the URL it
must listen on (a free port per case); once its process holds that listening socket,
the reference server dials the proxy (`POST /api/dial`) and the proxy dials the client.
After the handshake the session is the same, and so is every case's judgement: the
proxy keeps directions in Sendspin terms (downstream = server to client) whoever dialled.

A conformance client adapter (`--client-adapter CMD`, docs/adapter-contract.md) runs
unchanged: the gate passes the conformance runner's flags, writes the registry and
reads the ready and summary files as the runner does, and ends the run from the server
side (`POST /api/close`). Its summary is the client's own account: kept as a note, never
judged. In the noise profile the gate pre-pairs it as Sendspin/conformance's runner does
(`conformance_pairing`): its aiosendspin adapters derive both static keys and a long-term
PSK from `--server-id` and `--client-id` and leave unpaired access off, so the server
presents the derived key and references that PSK (`--identity`, `--psks`), and the proxy
holds the same file (`--noise-keys`) to terminate such a session.

The harness judges only from outside: the server's and the proxy's event logs, the
kernel's count of what the client left unread, and the client's exit status and output
(`client.log` in the case's directory).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shlex
import socket
import string
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from ..events import Events
from ..fault_proxy import FaultProxy, fault_proxy
from ..protocol import now_us
from ..protocol.noise_crypto import Identity, b64url
from ..scenario import Scenario
from ..topology import Child, ManagedProcess, StartupClock, listening_pid, reference_server, spawn_child
from .case import WIRE_PROFILES

QUEUE_SAMPLE_S = 0.1
PLACEHOLDERS = ("url", "host", "port", "path", "client_id", "name")
INITIATORS = ("client", "server")  # who opens the connection: the client dials, or the server does
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL to its process group
# every message recorded (extensions are kept off by default: every fault sees plain payloads)
PROXY_ARGS = ("--wire-log",)
LISTEN_HOST, LISTEN_PATH = "127.0.0.1", "/sendspin"  # where a server-initiated client listens (spec's path)
LISTEN_TIMEOUT_S = 15.0  # a server-initiated client has this long to listen
# the conformance runner's waits (docs/adapter-contract.md §1): for the ready file, and for
# the client to exit once the server ended the session
ADAPTER_READY_S = 10.0
ADAPTER_EXIT_S = 10.0
ADAPTER_TIMEOUT_MARGIN_S = 30.0  # --timeout-seconds = the case's own timeout plus this: it covers the session
SERVER_NAME, SERVER_ID = "sendspin-harness reference server", "reference-server"  # the registry key, server/hello


def case_client_id(case_id: str) -> str:
    """The client_id the gate gives a case's client (legacy: its `client_id`; an adapter's `--client-id`)."""
    return f"gate-{case_id.replace('.', '-')}"


def conformance_pairing(path: Path, server_id: str, client_id: str) -> Path:
    """Writes what Sendspin/conformance's aiosendspin adapters are pre-paired with (facts
    from its `_aiosendspin_pairing.py`: X25519 private key = SHA-256 of
    `sendspin-conformance-identity:<side>:<id>`, long-term PSK = SHA-256 of
    `sendspin-conformance-psk:<server_id>:<client_id>`), as a `--noise-keys` file that
    `--psks` reads too; the server's private key alone goes to `path.with_suffix(".key")`
    for `--identity`. Returns the keys file."""
    def derived(seed: str) -> Identity:
        return Identity(hashlib.sha256(f"sendspin-conformance-identity:{seed}".encode()).digest())

    server, client = derived(f"server:{server_id}"), derived(f"client:{client_id}")
    psk = hashlib.sha256(f"sendspin-conformance-psk:{server_id}:{client_id}".encode()).digest()
    key_file = path.with_suffix(".key")
    key_file.write_text(b64url(server.private) + "\n")
    key_file.chmod(0o600)
    path.write_text(json.dumps({"identities": [b64url(server.private), b64url(client.private)],
                                "psks": [{"key": b64url(psk), "category": "lt", "client_id": client.peer_id,
                                          "server_id": server.peer_id}]}))
    path.chmod(0o600)
    return path


class ClientCommandError(ValueError):
    """--client-cmd is not a usable template."""


@dataclass(frozen=True)
class ClientUnderTest:
    template: str  # e.g. "my-player --server {url} --id {client_id}"; with `adapter`: the adapter's command
    roles: tuple[str, ...] = ("player@v1",)
    codecs: tuple[str, ...] = ("pcm",)
    name: str = "client under test"
    listen_template: str | None = None  # server-initiated runs (--client-listen-cmd); None: `template`
    adapter: bool = False  # `template` is a conformance client adapter (--client-adapter): no placeholders
    initiators: tuple[str, ...] = ("client",)  # --client-initiator: client, server, or both
    profile: str = "legacy"  # --client-profile: the wire revision the client speaks (one per run)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.initiators) - set(INITIATORS))
        if not self.initiators or unknown:
            raise ClientCommandError(f"--client-initiator: {', '.join(unknown) or 'none'}; the initiators are "
                                     f"{', '.join(INITIATORS)} (or both)")
        if self.profile not in WIRE_PROFILES:
            raise ClientCommandError(f"--client-profile {self.profile!r}: the profiles are {', '.join(WIRE_PROFILES)}")
        if self.profile == "noise" and not self.adapter:
            for option, template in (("--client-cmd", self.template), ("--client-listen-cmd", self.listen_template)):
                if template is not None and "client_id" in _fields(template, option):
                    raise ClientCommandError(f"{option}: {{client_id}} in the noise profile: there a client's "
                                             "client_id is its X25519 public key, which the client makes (and keeps) "
                                             "itself, so the gate cannot choose it; it learns it from the handshake. "
                                             "Label the client with {name} instead")
        if self.adapter:
            if _fields(self.template, "--client-adapter"):
                raise ClientCommandError("--client-adapter takes no placeholders: the gate passes the conformance "
                                         "runner's flags (docs/adapter-contract.md)")
            if self.listen_template is not None:
                raise ClientCommandError("--client-listen-cmd goes with --client-cmd, not --client-adapter (an "
                                         "adapter is told --initiator-role)")
        else:
            if "client" in self.initiators:
                _check_template(self.template, "--client-cmd", "where to connect: {url}, or {host} and {port}",
                                lambda f: "url" in f or {"host", "port"} <= f)
            if "server" in self.initiators:
                _check_template(self.command("server"), self._listen_option,
                                "where to listen (server-initiated): {url}, or {port}",
                                lambda f: bool(f & {"url", "port"}))
        if not shlex.split(self.template):
            raise ClientCommandError(f"{'--client-adapter' if self.adapter else '--client-cmd'} is empty")

    @property
    def _listen_option(self) -> str:
        return "--client-listen-cmd" if self.listen_template is not None else "--client-cmd"

    def command(self, initiator: str = "client") -> str:
        """The command line the implementer gave for this initiator."""
        return self.listen_template if initiator == "server" and self.listen_template is not None else self.template

    def argv(self, url: str, client_id: str, name: str, initiator: str = "client") -> list[str]:
        """The command for one case: the template's words, each with its placeholders filled (no shell).
        `url`: where to connect (client-initiated) or where to listen (server-initiated)."""
        parts = urlsplit(url)
        values = {"url": url, "host": parts.hostname or "127.0.0.1", "port": str(parts.port or 80),
                  "path": parts.path or "/", "client_id": client_id, "name": name}
        return [word.format(**values) for word in shlex.split(self.command(initiator))]

    def adapter_argv(self, files: AdapterFiles, client_id: str, name: str, initiator: str, listen_port: int,
                     timeout_s: float) -> list[str]:
        """The conformance runner's command line (docs/adapter-contract.md §2): every flag, no others."""
        words = [*shlex.split(self.template),
                 "--summary", str(files.summary), "--ready", str(files.ready), "--registry", str(files.registry),
                 "--scenario-id", f"{initiator}-initiated-pcm", "--initiator-role", initiator,
                 "--preferred-codec", "pcm", "--timeout-seconds", f"{timeout_s:g}",
                 "--client-name", name, "--client-id", client_id, "--server-name", SERVER_NAME,
                 "--server-id", SERVER_ID]
        if initiator == "server":
            words += ["--port", str(listen_port), "--path", LISTEN_PATH]
        return words


def _fields(template: str, option: str) -> set[str]:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ClientCommandError(f"{option} {template!r}: {exc}") from None


def _check_template(template: str, option: str, where: str, says_where: Callable[[set[str]], bool]) -> None:
    fields = _fields(template, option)
    unknown = sorted(f for f in fields if f not in PLACEHOLDERS)
    if unknown:
        raise ClientCommandError(f"{option}: unknown placeholder(s) {', '.join('{' + f + '}' for f in unknown)}"
                                 f"; the placeholders are {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    if not says_where(fields):
        raise ClientCommandError(f"{option} must say {where}")
    if not shlex.split(template):
        raise ClientCommandError(f"{option} is empty")


@dataclass(frozen=True)
class AdapterFiles:
    """The files the conformance runner shares with a client adapter, in the case's directory."""

    directory: Path

    @property
    def summary(self) -> Path:
        return self.directory / "client-summary.json"

    @property
    def ready(self) -> Path:
        return self.directory / "client-ready.json"

    @property
    def registry(self) -> Path:
        return self.directory / "registry.json"


def free_port(host: str = LISTEN_HOST) -> int:
    """A TCP port nobody listens on now (the client under test binds it a moment later)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_call(method: str, url: str, timeout: float = 5.0) -> Any:
    """One request to the reference server's HTTP endpoint; its JSON answer."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {url}: {exc.code} {exc.read().decode(errors='replace')}") from None


@dataclass
class Topology:
    """The reference server (or a coordinator with workers) and the proxy in front of it.

    Every case gets its own: a case may change the server's state (a stream ended, a
    format switched), and sharing one let the next case's client inherit it.
    Server-initiated (`initiator="server"`): the proxy runs with `--server-dials`, its one
    upstream is the listening client, pointed at each case's fresh port (`listen_url`)."""

    directory: Path
    workers: int = 0
    initiator: str = "client"
    noise: str = "opaque"  # the proxy's --noise: opaque, or terminate (a case's message faults act on plaintext)
    servers: list[ManagedProcess] = field(default_factory=list)
    proxy: FaultProxy = field(init=False)
    server_http: str = ""  # the reference server's HTTP endpoint (dial, close)

    @classmethod
    def start(cls, directory: Path, workers: int = 0, server_args: tuple[str, ...] = (),
              initiator: str = "client", profile: str = "legacy", noise: str = "opaque",
              keys: Path | None = None) -> Topology:
        """Starts it (blocking: a few seconds); stops what it started if a part fails. The
        server speaks only `profile`, the client's: a client that speaks another is refused.
        `noise`: what the proxy does with a noise session (`--noise`). `keys`: a
        `conformance_pairing` file (noise): the server's key and PSKs, and the proxy's keys."""
        if initiator == "server" and workers:
            raise ValueError("server-initiated: one reference server process dials; it has no workers")
        topology = cls(directory, workers, initiator, noise if profile == "noise" else "opaque")
        try:
            extra = ("--workers", str(workers)) if workers else ()
            extra += ("--profiles", profile)
            if keys is not None:
                extra += ("--identity", str(keys.with_suffix(".key")), "--psks", str(keys))
            server = reference_server(directory, *extra, *server_args)
            topology.servers.append(server)
            topology.server_http = server.ready["http"]
            path = urlsplit(server.ready["url"]).path
            if initiator == "server":  # until a case's client listens: a port nobody holds
                upstreams, args = [f"ws://{LISTEN_HOST}:{free_port()}{LISTEN_PATH}"], (*PROXY_ARGS, "--server-dials")
            else:
                upstreams = [w["url"] for w in server.ready["workers"]] if workers else [server.ready["url"]]
                args = PROXY_ARGS
            if keys is not None and topology.noise == "terminate":  # opaque: the proxy holds no keys
                args = (*args, "--noise-keys", str(keys))
            process = fault_proxy(directory, upstreams, *args, "--noise", topology.noise)
            topology.servers.append(process)
            topology.proxy = FaultProxy(process)
            for w in server.ready.get("workers", []) if workers else []:
                topology.proxy.call("PATCH", f"/upstreams/{w['worker']}", {"pid": w["pid"]})
            topology.proxy.url += path if initiator == "client" else LISTEN_PATH
        except BaseException:
            topology.stop()
            raise
        return topology

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

    # --- server-initiated ---------------------------------------------------------------------

    def listen_url(self) -> str:
        """A fresh URL for this case's client to listen on; the proxy will dial it. A port
        per case: a client that binds without SO_REUSEADDR is not refused its port by the
        last case's connections in TIME_WAIT."""
        url = f"ws://{LISTEN_HOST}:{free_port()}{LISTEN_PATH}"
        self.proxy.call("PATCH", "/upstreams/0", {"url": url})
        return url

    def dial(self) -> dict[str, Any]:
        """The reference server dials the proxy, which dials the client; the server dials
        again after a loss (with backoff) unless the client's goodbye says not to."""
        return http_call("POST", f"{self.server_http}/api/dial?url={quote(self.proxy.url, safe='')}")["dialer"]

    def end_sessions(self) -> int:
        """The server ends every session (1000) and dials no more: how a conformance run
        ends. Returns how many sessions it closes."""
        return int(http_call("POST", f"{self.server_http}/api/close")["closing"])


@dataclass
class ClientWorld:
    """One case: its own topology, and the client under test, fresh.

    `async with ClientWorld(dir, client, case_id, topology) as w:` measures our own loop
    (`harness.jsonl` in the case's directory); `await w.start_client()` starts the client
    (server-initiated: waits until it listens, then has the server dial it); leaving stops
    it (its exit status and output stay in `exit_code` / `client.log`). `events()` is what
    the topology logged since the case began, plus the case's own log. `notes` is what the
    gate saw while starting and stopping it (the adapter's summary among them)."""

    directory: Path
    client: ClientUnderTest
    case_id: str
    topology: Topology
    timeout_s: float = 60.0  # the case's own: an adapter's --timeout-seconds must cover it
    scenario: Scenario = field(init=False)
    process: Child | None = None
    exit_code: int | None = None  # once it exited (by itself, or when stopped)
    exited_by_itself: bool = False
    begun_us: int = field(default_factory=now_us)
    started_us: int = 0
    stop_us: int = 0  # when the harness stopped it: what ended after that, the harness ended
    stopped: str = ""
    listen_url: str = ""  # server-initiated: where the client listens
    start_problem: str = ""  # why the client could not be reached (it never listened, ...)
    notes: list[str] = field(default_factory=list)
    adapter_summary: dict[str, Any] | None = None  # an adapter's own account of its run (never judged)
    _watcher: asyncio.Task[None] | None = None

    @property
    def initiator(self) -> str:
        return self.topology.initiator

    @property
    def proxy(self) -> FaultProxy:
        return self.topology.proxy

    @property
    def profile(self) -> str:
        return self.client.profile

    @property
    def sealed_wire(self) -> bool:
        """The proxy sees ciphertext: a noise session it does not terminate (its wire log
        then names no message type)."""
        return self.profile == "noise" and self.topology.noise == "opaque"

    @property
    def client_id(self) -> str:
        """Legacy: the client_id the gate gives the client ({client_id}). Noise: the client's
        public key, which only the handshake shows (`peer_id`)."""
        return case_client_id(self.case_id)

    def peer_id(self) -> str | None:
        """The client_id the server saw in the client's last client/hello (noise: its key)."""
        hellos = self.events().select("recv", type="client/hello")
        return hellos[-1].get("client_id") if hellos else None

    @property
    def client_name(self) -> str:
        return f"Gate {self.case_id}"

    @property
    def log_path(self) -> Path:
        return self.directory / "client.log"

    @property
    def files(self) -> AdapterFiles:
        return AdapterFiles(self.directory)

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
        shows here within a sample, long before loopback's megabytes of buffers fill up.
        Its sockets: connected to the proxy's port, or (server-initiated) accepted on its own."""
        if self.initiator == "server":
            port, local = urlsplit(self.listen_url).port or 0, True
        else:
            port, local = urlsplit(self.proxy.url).port or 0, False
        last: dict[int, int] = {}
        while True:
            now = receive_queues(port, local=local)
            for other_port, unread in now.items():
                if last.get(other_port) != unread:
                    last[other_port] = unread
                    self.scenario.log.emit("client_queue", port=other_port, bytes=unread)
            for gone in set(last) - set(now):
                del last[gone]
                self.scenario.log.emit("client_socket_gone", port=gone)
            await asyncio.sleep(QUEUE_SAMPLE_S)

    async def start_client(self) -> None:
        """Starts the client; server-initiated, once it listens, the server dials it."""
        if self.initiator == "server":
            self.listen_url = await asyncio.to_thread(self.topology.listen_url)
        url = self.listen_url or self.proxy.url
        if self.client.adapter:
            if self.initiator == "client":  # the conformance runner's discovery handoff, before the client
                _write_json(self.files.registry, {SERVER_NAME: {"url": self.proxy.url}})
            argv = self.client.adapter_argv(self.files, self.client_id, self.client_name, self.initiator,
                                            urlsplit(url).port or 0, self.timeout_s + ADAPTER_TIMEOUT_MARGIN_S)
        else:
            argv = self.client.argv(url, self.client_id, self.client_name, self.initiator)
        self.started_us = now_us()
        try:
            self.process = spawn_child("client", argv, self.log_path)
        except OSError as exc:
            raise ClientCommandError(f"{'--client-adapter' if self.client.adapter else '--client-cmd'}: "
                                     f"cannot start {argv[0]!r}: {exc.strerror}") from None
        self._watcher = asyncio.create_task(self._watch_queue())
        if self.client.adapter:
            await self._adapter_ready()
        if self.initiator == "server" and await self._listening():
            dialer = await asyncio.to_thread(self.topology.dial)
            self.notes.append(f"server-initiated: the client listened on {self.listen_url}; the server dials it "
                              f"through the proxy ({self.proxy.url}), dialer {dialer['id']}")

    async def _listening(self) -> bool:
        """Until the client's process group holds the listening socket of its port (read
        from the kernel's table: a probe connection would be a stray dial the client has
        to handle). False, with the reason in `start_problem`, if it exits or times out."""
        assert self.process is not None
        port = urlsplit(self.listen_url).port or 0
        clock = StartupClock(self.process, LISTEN_TIMEOUT_S)  # a client starved of CPU by the machine is not late
        while listening_pid(port, self.process.group_pids()) is None:
            if self.process.exited():
                self.start_problem = f"the client exited before it listened on {self.listen_url}"
                return False
            if clock.expired():
                self.start_problem = (f"the client did not listen on {self.listen_url} {clock}"
                                      f" (server-initiated: it must serve {{url}} / {{port}} {{path}})")
                return False
            await asyncio.sleep(0.05)
        return True

    async def _adapter_ready(self) -> None:
        """As the conformance runner: wait up to 10 s for the ready file, not counting the time
        the machine kept the adapter from a CPU. Server-initiated, the URL it announces (ready
        file, else the registry under its name) must be ours."""
        assert self.process is not None
        clock = StartupClock(self.process, ADAPTER_READY_S)
        while not self.files.ready.exists():
            if self.process.exited() or clock.expired():
                self.notes.append(f"adapter: no ready file {clock} ({self.files.ready.name})")
                return
            await asyncio.sleep(0.05)
        if self.initiator == "server":
            announced = _read_json(self.files.ready).get("url") or \
                _read_json(self.files.registry).get(self.client_name, {}).get("url")
            if announced != self.listen_url:
                self.notes.append(f"adapter: it announced {announced!r}, the gate told it {self.listen_url}")

    async def stop_client(self) -> None:
        if self.process is None or self.stopped:
            return
        self.stop_us = now_us()
        if self._watcher is not None:
            self._watcher.cancel()
        self.exited_by_itself = self.process.exited()
        if self.client.adapter and not self.exited_by_itself:
            await self._end_adapter_run()
        self.stopped = await self.process.astop(timeout=STOP_GRACE_S)
        self.exit_code = self.process.returncode
        if self.client.adapter:
            self._read_summary()

    async def _end_adapter_run(self) -> None:
        """As a conformance server: end the session from the server side and give the
        adapter 10 s to exit (adapters need not handle SIGTERM); the signals come after."""
        assert self.process is not None
        closing = await asyncio.to_thread(self.topology.end_sessions)
        if closing and await self.process.wait_exited(ADAPTER_EXIT_S):
            self.notes.append("adapter: exited after the server ended the session")
        elif closing:
            self.notes.append(f"adapter: still running {ADAPTER_EXIT_S:.0f} s after the server ended the session")
        else:
            self.notes.append("adapter: no session to end when the case was over; stopped by signal")

    def _read_summary(self) -> None:
        """The adapter's summary: extra evidence, shown as a note, never trusted over the logs."""
        summary = _read_json(self.files.summary)
        if not summary:
            self.notes.append(f"adapter summary: none written ({self.files.summary.name}), exit {self.exit_code}")
            return
        self.adapter_summary = summary
        audio = summary.get("audio") or {}
        self.notes.append(f"adapter summary (its own account, not judged): status {summary.get('status')!r}"
                          f"{', ' + repr(summary['reason']) if summary.get('reason') else ''}; "
                          f"{audio.get('audio_chunk_count', 0)} audio chunks; exit {self.exit_code}")

    def running(self) -> bool:
        return self.process is not None and not self.process.exited()

    def output(self, limit: int = 4000) -> str:
        return self.process.tail(limit) if self.process is not None else ""

    def events(self) -> Events:
        return Events.merge(Events.load(self.topology.directory, since_us=self.begun_us), Events.load(self.directory))

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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)  # an adapter polling it never sees half a file


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file another process writes; {} if missing or not (yet) whole."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def receive_queues(port: int, local: bool = False) -> dict[int, int]:
    """{other port: bytes received but not read} of this machine's established TCP
    sockets on loopback whose remote port is `port` (or, `local`, whose own port is: the
    connections a listening client accepted). The kernel's count, not the client's own
    account (/proc/net/tcp and tcp6)."""
    queues: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_addr, remote_addr, state, queue = fields[1], fields[2], fields[3], fields[4]
            matched, keyed = (local_addr, remote_addr) if local else (remote_addr, local_addr)
            if state == "01" and int(matched.rsplit(":", 1)[1], 16) == port:  # 01: ESTABLISHED
                queues[int(keyed.rsplit(":", 1)[1], 16)] = int(queue.split(":")[1], 16)
    return queues
