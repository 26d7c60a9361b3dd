"""The embedded mitmproxy: a bare Master in reverse mode with only what we need.

Why bare: DumpMaster exits the process if anything logs an ERROR during start-up, and
`ctx.master`/`ctx.options` are process-global, so this runs once per process (the CLI
is its own process). Addons: Core, Proxyserver, NextLayer (no TlsConfig: ws:// only,
and it would write a CA on every start) + ours: DataPath (our relay after the 101),
UpstreamPool (load balancer), SocketBuffers (small fixed kernel buffers, so a held sender
meets backpressure at once). The control API (aiohttp) shares the loop.

`Master.shutdown()` closes neither the listener nor live connections (NOTES §1), so
`close()` stops the listener, ends every relay (FIN, then RST after a grace period),
cancels what mitmproxy still holds, then stops the master.

Observation (`--view`, `--web`; proxy/observe.py) is wired in only when asked for: then
the event sink and the state are their observed subclasses, which show every event and
every new relay to the consumers; otherwise nothing in the data path changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from mitmproxy import options as moptions
from mitmproxy.addons import core, next_layer, proxyserver
from mitmproxy.master import Master

from harness.protocol import LoopLagMonitor

from .addons.control import ControlServer
from .addons.datapath import DataPath
from .addons.sockets import SocketBuffers
from .addons.upstreams import UpstreamPool
from .faults import Fault, fault_types
from .observe import Observation, ObservedProxyState, TappedEventSink, TrafficConsumer
from .relay.noise_keys import NoiseKeys
from .state import EventSink, ProxyState

log = logging.getLogger(__name__)
DEFAULT_SOCKET_BUFFER = 128 * 1024  # SO_RCVBUF/SO_SNDBUF of the proxy's sockets (addons/sockets.py)


class EmbeddedProxy:
    """Start/stop the proxy in the running loop; one per process (mitmproxy's ctx is global)."""

    def __init__(self, upstreams: list[str], *, listen_host: str = "127.0.0.1", listen_port: int = 0,
                 control_host: str | None = "127.0.0.1", control_port: int = 0, log_dir: Path | None = None,
                 faults: list[Fault] | None = None, health_interval: float = 0.1, strip_extensions: bool = True,
                 socket_buffer: int = DEFAULT_SOCKET_BUFFER,
                 extra_addons: list[Any] | None = None, proc: str = "proxy",
                 observers: list[TrafficConsumer] | None = None, web: tuple[str, int] | None = None,
                 web_max_messages: int = 200, wire_log: bool = False, server_dials: bool = False,
                 noise_keys: NoiseKeys | None = None) -> None:
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.control_host = control_host
        self.control_port = control_port
        self.log_dir = log_dir
        consumers = list(observers or [])
        self.web: Any = None
        if web is not None:
            from .web import WebUI  # imports mitmweb (tornado): only when asked for

            self.web = WebUI(web[0], web[1], max_messages=web_max_messages)
            consumers.append(self.web)
        wire = None
        if wire_log:
            from .wirelog import WireLog

            wire = WireLog()
            consumers.append(wire)
        log_path = log_dir / f"{proc}.jsonl" if log_dir is not None else None
        if consumers:
            self.observation: Observation | None = Observation(consumers)
            self.events: EventSink = TappedEventSink(log_path, proc, self.observation)
            self.state: ProxyState = ObservedProxyState(self.events, upstreams, self.observation)
        else:
            self.observation = None
            self.events = EventSink(log_path, proc)
            self.state = ProxyState(self.events, upstreams)
        if wire is not None:
            wire.events = self.events
        self.initial_faults = faults or []
        # the Sendspin server dials the proxy, the proxy dials the client (relay.py): the
        # spec's server-initiated connections
        self.server_dials = server_dials
        self.noise_keys = noise_keys  # None: noise sessions stay opaque; else terminated (relay/terminate.py)
        self.health_interval = health_interval
        self.strip_extensions = strip_extensions  # False (--keep-extensions): the peers may negotiate compression
        self.socket_buffer = socket_buffer
        self.extra_addons = extra_addons or []
        self.master: Master | None = None
        self.datapath: DataPath | None = None
        self.pool: UpstreamPool | None = None
        self.control: ControlServer | None = None
        self.port = 0
        self.startup_s = 0.0
        self._task: asyncio.Task[None] | None = None
        self._confdir: tempfile.TemporaryDirectory[str] | None = None
        self._loop_lag: LoopLagMonitor | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.listen_host}:{self.port}"

    async def start(self) -> EmbeddedProxy:
        t0 = time.perf_counter()
        # The whole catalogue now, not at the first POST /faults: importing 18 modules on the
        # event loop then read them from disk while every connection waited (NOTES.md §6).
        fault_types()
        if self.log_dir is not None:
            confdir = self.log_dir / "mitmproxy"
            confdir.mkdir(parents=True, exist_ok=True)
        else:  # mitmproxy insists on a confdir; never the user's ~/.mitmproxy
            self._confdir = tempfile.TemporaryDirectory(prefix="sendspin-proxy-")
            confdir = Path(self._confdir.name)
        opts = moptions.Options()
        self.master = m = Master(opts)  # no termlog, no error check, no dumper
        self.datapath = DataPath(self.state, self.server_dials, self.noise_keys)
        self.pool = UpstreamPool(self.state, self.health_interval, self.strip_extensions, self.server_dials)
        m.addons.add(core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer())
        m.addons.add(self.datapath, self.pool, SocketBuffers(self.socket_buffer), *self.extra_addons)
        if self.web is not None:
            self.web.install(m)
        first = self.state.upstreams[0]
        opts.update(mode=[f"reverse:http://{first.host}:{first.port}"], listen_host=self.listen_host,
                    listen_port=self.listen_port, confdir=str(confdir), connection_strategy="lazy")
        for f in self.initial_faults:
            self.state.add_fault(f)
        self._task = asyncio.get_running_loop().create_task(m.run(), name="mitmproxy-master")
        ps = m.addons.get("proxyserver")
        deadline = time.monotonic() + 10
        while not ps.listen_addrs():
            if self._task.done():
                exc = self._task.exception()
                raise RuntimeError(f"mitmproxy stopped before listening: {exc!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("mitmproxy did not listen within 10 s")
            await asyncio.sleep(0.005)
        self.port = ps.listen_addrs()[0][1]
        # mitmweb's status bar shows `listen_port or 8080`; tell it the port we got. Only a
        # change of `mode` or `server` makes mitmproxy rebind (Proxyserver.configure).
        m.options.update(listen_port=self.port)
        if self.control_host is not None:
            self.control = ControlServer(self.state, self.control_host, self.control_port)
            await self.control.start()
        if self.web is not None:
            await self.web.start()
        self.startup_s = time.perf_counter() - t0
        # The proxy is an instrument: a violation during its own stall is inconclusive (harness/checkers.py).
        self._loop_lag = LoopLagMonitor(asyncio.get_running_loop(), self.events).start()
        self.events.emit("ready", listen=self.url, control=self.control.url if self.control else None,
                         upstreams=[u.url for u in self.state.upstreams], startup_s=round(self.startup_s, 3),
                         server_dials=self.server_dials, noise=self.noise)
        return self

    @property
    def noise(self) -> str:
        """What it does with noise sessions (`--noise`): opaque, or terminate."""
        return "opaque" if self.noise_keys is None else "terminate"

    def readiness(self, pid: int) -> dict[str, Any]:
        return {"pid": pid,
                "listen": {"host": self.listen_host, "port": self.port, "url": self.url},
                "control": {"url": self.control.url if self.control else None},
                "upstreams": [u.url for u in self.state.upstreams], "server_dials": self.server_dials,
                "noise": self.noise,
                "log": str(self.log_dir / f"{self.events.proc}.jsonl") if self.log_dir else None,
                "web": {"url": self.web.url} if self.web is not None else None}

    async def close(self) -> None:
        m, self.master = self.master, None
        if m is None:
            return
        ps = m.addons.get("proxyserver")
        for inst in list(ps.servers):  # 1. no new connections
            if inst.is_running:
                with contextlib.suppress(Exception):
                    await inst.stop()
        if self.control is not None:  # 2. no more API calls changing things
            await self.control.stop()
        if self.web is not None:
            await self.web.stop()
        if self.pool is not None:
            await self.pool.stop()
        if self.datapath is not None:  # 3. every relay: FIN, then RST after a grace period
            await self.datapath.close_all()
        tasks = []  # 4. what mitmproxy still holds (upgrades in progress, plain HTTP)
        for h in list(ps.connections.values()):
            for io in list(h.transports.values()):
                if io.handler is not None and not io.handler.done():
                    io.handler.cancel("proxy shutdown")
                    tasks.append(io.handler)
        if tasks:
            await asyncio.wait(tasks, timeout=3)
        deadline = time.monotonic() + 3
        while ps.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        m.shutdown()  # 5. the master itself
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, 5)
        if self.datapath is not None:
            self.datapath.uninstall()
        self.state.close()
        if self._loop_lag is not None:
            self._loop_lag.stop()
        self.events.emit("stopped")
        self.events.close()
        if self._confdir is not None:
            self._confdir.cleanup()

    async def __aenter__(self) -> EmbeddedProxy:
        try:
            return await self.start()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
