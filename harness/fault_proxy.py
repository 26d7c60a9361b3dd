"""The fault proxy as the harness sees it: a process and its control API.

The harness never imports `proxy`: it starts `python -m proxy` like any tool and
talks to it over HTTP, exactly as a user's CI script would (README: control API).
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .topology import ManagedProcess, spawn


class ControlError(RuntimeError):
    """The control API answered with an error (its message names what was wrong)."""


class FaultProxy:
    """A running `sendspin-proxy` process: its URL and a small control client."""

    def __init__(self, process: ManagedProcess) -> None:
        self.process = process
        self.url: str = process.ready["listen"]["url"]
        self.control: str = process.ready["control"]["url"]
        self._added_seq: dict[str, int] = {}  # fault name -> the event ring's last seq before it was added

    def call(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.control + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raise ControlError(f"{method} {path}: {e.code} {e.read().decode(errors='replace')}") from None

    async def acall(self, method: str, path: str, body: Any = None) -> Any:
        return await asyncio.to_thread(self.call, method, path, body)

    async def add(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Add one fault; returns it as the proxy holds it (with its `name`)."""
        # a proxy that outlives one test may have applied an earlier fault of this name:
        # `applied` looks only at events after this point of the event ring
        last_seq = (await self.acall("GET", "/events?limit=1&since=1000000000000"))["last"]
        fault = (await self.acall("POST", "/faults", spec))["fault"]
        self._added_seq[fault["name"]] = last_seq
        return fault

    async def remove(self, name: str) -> None:
        await self.acall("DELETE", f"/faults/{name}")

    async def reset(self) -> None:
        await self.acall("POST", "/reset")

    async def register_pid(self, upstream: int, pid: int) -> None:
        await self.acall("PATCH", f"/upstreams/{upstream}", {"pid": pid})

    async def applied(self, fault_name: str, timeout: float = 5.0) -> dict[str, Any]:
        """The first `fault` event of this fault (waits for it: a fault may act later)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            since = self._added_seq.get(fault_name, 0)
            events = (await self.acall("GET", f"/events?event=fault&since={since}"))["events"]
            hit = next((e for e in events if e.get("fault") == fault_name), None)
            if hit is not None:
                return hit
            if loop.time() > deadline:
                raise TimeoutError(f"the proxy logged no application of fault {fault_name!r} within {timeout} s")
            await asyncio.sleep(0.02)

    async def connections(self) -> list[dict[str, Any]]:
        return (await self.acall("GET", "/connections"))["connections"]

    async def upstreams(self) -> list[dict[str, Any]]:
        return (await self.acall("GET", "/upstreams"))["upstreams"]


def fault_proxy(workdir: Path, upstreams: list[str], *args: str, name: str = "proxy") -> ManagedProcess:
    """`sendspin-proxy` in front of `upstreams`, logging into `workdir` (`proxy.jsonl`)."""
    argv = [sys.executable, "-m", "proxy", "--listen", "127.0.0.1:0", "--control", "127.0.0.1:0",
            "--log-dir", str(workdir), "--proc", name, "--quiet"]
    for u in upstreams:
        argv += ["--upstream", u]
    return spawn(name, [*argv, *args], workdir)
