"""What one scenario run owns: a directory, servers, probes, and their logs.

Used as ``async with Scenario(directory) as sc:``; leaving it closes every
probe and stops (and reaps) every process, whatever happened inside. While it
runs, the harness's own event loop (the probes' loop) is measured: its stalls go
to `harness.jsonl` as `loop_lag`, so a checker can tell a violation the harness
caused from one the implementation did (checkers.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from .events import Events
from .fault_proxy import FaultProxy, fault_proxy
from .probe import ProbeClient, ProbeConfig
from .protocol import EventLog, LoopLagMonitor, now_us
from .topology import ManagedProcess, reference_server


class Scenario:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.servers: list[ManagedProcess] = []
        self.probes: list[ProbeClient] = []
        self.log = EventLog(self.dir / "harness.jsonl", "harness")
        self._logs: list[EventLog] = [self.log]
        self._loop_lag: LoopLagMonitor | None = None
        self.started_us = now_us()

    async def __aenter__(self) -> Scenario:
        self._loop_lag = LoopLagMonitor(asyncio.get_running_loop(), self.log).start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close_probes()
        codes = await asyncio.to_thread(self.stop_servers)
        if self._loop_lag is not None:
            self._loop_lag.stop()
        for log in self._logs:
            log.close()
        # A clean exit and a silent stderr: an exception logged by a server
        # (even one it survived) fails the run instead of hiding in a file.
        unclean = [(s.name, code) for s, code in zip(self.servers, codes, strict=True)
                   if code != 0 or self._stderr(s.name)]
        if unclean and exc is None:
            details = "\n".join(f"{name} exited {code}:\n{self._stderr(name)}" for name, code in unclean)
            raise RuntimeError(f"server did not run cleanly:\n{details}")

    async def server(self, *args: str) -> ManagedProcess:
        name = "server" if not self.servers else f"server-{len(self.servers)}"
        process = await asyncio.to_thread(reference_server, self.dir, *args, name=name)
        self.servers.append(process)
        return process

    async def proxy(self, upstreams: list[str], *args: str) -> FaultProxy:
        """The fault proxy in front of `upstreams` (stopped and judged like a server)."""
        name = "proxy" if not any(s.name == "proxy" for s in self.servers) else f"proxy-{len(self.servers)}"
        process = await asyncio.to_thread(fault_proxy, self.dir, upstreams, *args, name=name)
        self.servers.append(process)
        return FaultProxy(process)

    async def cluster_behind_proxy(self, workers: int, *server_args: str, proxy_args: tuple[str, ...] = ()
                                   ) -> tuple[ManagedProcess, FaultProxy]:
        """A coordinator with `workers` workers and the fault proxy in front of them,
        each worker's pid registered (for `worker_crash`). Clients use `proxy.url`."""
        server = await self.server("--workers", str(workers), *server_args)
        info = server.ready["workers"]
        proxy = await self.proxy([w["url"] for w in info], *proxy_args)
        for w in info:
            await proxy.register_pid(w["worker"], w["pid"])
        proxy.url += urlsplit(info[0]["url"]).path
        return server, proxy

    async def probe(self, url: str, config: ProbeConfig | None = None, connect: bool = True) -> ProbeClient:
        config = config or ProbeConfig(name=f"probe-{len(self.probes) + 1}")
        log = EventLog(self.dir / f"{config.name}.jsonl", config.name)
        self._logs.append(log)
        probe = ProbeClient(url, config, log)
        self.probes.append(probe)
        if connect:
            await probe.connect()
        return probe

    async def close_probes(self) -> None:
        await asyncio.gather(*(p.close() for p in self.probes), return_exceptions=True)

    def stop_servers(self) -> list[int]:
        """Last started, first stopped (a proxy before the servers behind it)."""
        return [server.stop() for server in reversed(self.servers)][::-1]

    def _stderr(self, name: str) -> str:
        return (self.dir / f"{name}.stderr").read_text(errors="replace")[-2000:]

    def events(self) -> Events:
        return Events.load(self.dir)
