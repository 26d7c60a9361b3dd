"""What one scenario run owns: a directory, servers, probes, and their logs.

Used as ``async with Scenario(directory) as sc:``; leaving it closes every
probe and stops (and reaps) every process, whatever happened inside.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType

from .events import Events
from .probe import ProbeClient, ProbeConfig
from .protocol import EventLog, now_us
from .topology import ManagedProcess, reference_server


class Scenario:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.servers: list[ManagedProcess] = []
        self.probes: list[ProbeClient] = []
        self._logs: list[EventLog] = []
        self.started_us = now_us()

    async def __aenter__(self) -> Scenario:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close_probes()
        codes = await asyncio.to_thread(self.stop_servers)
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
        return [server.stop() for server in self.servers]

    def _stderr(self, name: str) -> str:
        return (self.dir / f"{name}.stderr").read_text(errors="replace")[-2000:]

    def events(self) -> Events:
        return Events.load(self.dir)
