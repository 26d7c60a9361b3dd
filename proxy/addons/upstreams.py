"""Load balancer: each new connection goes to a live upstream (least connections).

Policy: among upstreams marked alive, the one with the fewest active connections;
ties go round robin (the next index after the last one chosen), so an idle pool
spreads connections evenly. If none is alive, the client gets HTTP 502 at once.

Liveness ("dead" = refuses or resets connections):
  * passive: a failed connect to an upstream (refused, reset, unreachable) marks it
    down at once (that one client gets a 502 and may reconnect);
  * active: every `health_interval` (default 0.1 s) each upstream gets a TCP connect
    (timeout 0.5 s, closed at once). Refused/reset -> down, accepted -> up again.
So a dead upstream stops receiving connections within health_interval + one connect
on loopback (≈0.1 s), or at its first failed connection, whichever comes first. A hung
upstream (SIGSTOP) still accepts TCP in its kernel backlog: that is the orchestrator's
or the client's to notice, not a connect probe's.

With `--server-dials` the upstreams are Sendspin clients listening for the server's dial
(the client under test): none is probed (a probe is a stray connection the client would
have to handle) and none is taken out of the pool (a client not listening yet may be at
the next dial); a failed connect gives that dial a 502.

Requires `connection_strategy=lazy` (set by proxy.master): with the eager default
mitmproxy also connects every client to the default target, and a dead default target
resets every client (NOTES §1).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from typing import Any

from mitmproxy import connection, http
from mitmproxy.proxy import server_hooks

from harness.protocol import now_us

from ..faults import ConnectInfo
from ..state import ProxyState, Upstream
from .datapath import UPSTREAM_KEY

SEQ_KEY = "sendspin_seq"
COUNTED_KEY = "sendspin_counted"
STRIPPED_KEY = "sendspin_stripped"  # flow.metadata: the client's extension offer, removed before forwarding


class UpstreamPool:
    name = "upstreams"

    def __init__(self, state: ProxyState, health_interval: float = 0.1, strip_extensions: bool = True,
                 server_dials: bool = False) -> None:
        self.state = state
        self.server_dials = server_dials
        self.health_interval = 0.0 if server_dials else health_interval
        self.strip_extensions = strip_extensions
        self._rr = 0
        self._task: asyncio.Task[None] | None = None
        self._client_seq: dict[str, int] = {}
        self._connect_failed: dict[str, bool] = {}  # client connection ids whose upstream connect failed

    # --- lifecycle ------------------------------------------------------------------------
    def running(self) -> None:
        if self.health_interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._health_loop(), name="upstream-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # --- choosing -------------------------------------------------------------------------
    def choose(self) -> Upstream | None:
        ups = self.state.upstreams
        live = [u for u in ups if u.alive]
        if not live:
            return None
        n = len(ups)
        # least active connections; ties: round robin from the one after the last pick
        best = min(live, key=lambda u: (u.active, (u.index - self._rr) % n))
        self._rr = best.index + 1
        return best

    def set_alive(self, u: Upstream, alive: bool, why: str) -> None:
        if not alive and self.server_dials:
            u.last_error = why  # a client under test stays in the pool (module docstring)
            return
        if u.alive == alive:
            return
        u.alive = alive
        u.changed_us = now_us()
        if not alive:
            u.last_error = why
        self.state.events.emit("upstream_up" if alive else "upstream_down", upstream=u.index, url=u.url, why=why)

    # --- mitmproxy hooks ------------------------------------------------------------------
    def client_connected(self, client: connection.Client) -> None:
        seq = self.state.next_seq()
        self._client_seq[client.id] = seq
        peer = tuple(client.peername[:2]) if client.peername else ("?", 0)
        self.state.events.emit("accept", session=client.id, client=f"{peer[0]}:{peer[1]}", conn_seq=seq)
        why = self.state.on_connect(ConnectInfo((str(peer[0]), int(peer[1])), seq))
        if why:
            self._refuse(client, why)

    def client_disconnected(self, client: connection.Client) -> None:
        self._client_seq.pop(client.id, None)

    def _refuse(self, client: connection.Client, why: str) -> None:
        """A RST right after accept (SO_LINGER 0; mitmproxy closes a client with an error)."""
        import socket
        import struct

        from mitmproxy import ctx

        h = ctx.master.addons.get("proxyserver").connections.get(client.id)
        if h is not None and client in h.transports:
            sock = h.transports[client].writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.error = f"refused: {why}"
        self.state.events.emit("refused", session=client.id, why=why)

    def request(self, flow: http.HTTPFlow) -> None:
        if self.strip_extensions:
            # No offer, no extension: neither side compresses, so every message fault can read
            # and change every message (a compressed one it can do neither with). Sendspin
            # needs no compression; --keep-extensions forwards the offer.
            offer = flow.request.headers.get_all("Sec-WebSocket-Extensions")
            if offer:
                del flow.request.headers["Sec-WebSocket-Extensions"]
                flow.metadata[STRIPPED_KEY] = ", ".join(offer)
        u = self.choose()
        flow.metadata[SEQ_KEY] = self._client_seq.get(flow.client_conn.id, 0)
        if u is None:
            flow.response = http.Response.make(502, b"sendspin-proxy: no live upstream\n",
                                               {"Content-Type": "text/plain"})
            self.state.events.emit("upstream", session=flow.client_conn.id, upstream=None, path=flow.request.path,
                                   why="no live upstream")
            return
        flow.request.scheme = "http"
        flow.request.host = u.host
        flow.request.port = u.port
        flow.metadata[UPSTREAM_KEY] = u.index
        flow.metadata[COUNTED_KEY] = True
        u.active += 1
        u.total += 1
        self.state.events.emit("upstream", session=flow.client_conn.id, upstream=u.index, url=u.url,
                               path=flow.request.path, active=u.active)

    def response(self, flow: http.HTTPFlow) -> None:
        # a WebSocket flow stays counted until its relay ends (see datapath/master)
        if flow.response is not None and flow.response.status_code != 101:
            self._uncount(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        u = self._uncount(flow)
        if u is None or flow.error is None or flow.response is not None:
            return
        if self._connect_failed.pop(flow.client_conn.id, False):
            return  # counted in server_connect_error already
        # connected, then reset or closed before the 101
        msg = str(flow.error.msg)
        u.failures += 1
        if _is_dead_error(msg):
            self.set_alive(u, False, msg)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        addr = data.server.address
        for u in self.state.upstreams:
            if addr is not None and (u.host, u.port) == (addr[0], addr[1]):
                u.failures += 1
                self._connect_failed[data.client.id] = True
                if len(self._connect_failed) > 1000:  # bounded: entries whose flow never errored
                    self._connect_failed.pop(next(iter(self._connect_failed)))
                self.set_alive(u, False, str(data.server.error))

    def _uncount(self, flow: http.HTTPFlow) -> Upstream | None:
        idx = flow.metadata.get(UPSTREAM_KEY)
        if not isinstance(idx, int):
            return None
        u = self.state.upstreams[idx]
        if flow.metadata.pop(COUNTED_KEY, False):
            u.active = max(0, u.active - 1)
        return u

    # --- active health probe --------------------------------------------------------------
    async def _health_loop(self) -> None:
        while True:
            await asyncio.gather(*(self._probe(u) for u in self.state.upstreams))
            await asyncio.sleep(self.health_interval)

    async def _probe(self, u: Upstream) -> None:
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(u.host, u.port), 0.5)
        except (OSError, TimeoutError) as e:
            if not isinstance(e, TimeoutError):  # refused/reset; a slow accept is not death
                self.set_alive(u, False, f"health probe: {e.strerror or e!r}")
            return
        w.close()
        self.set_alive(u, True, "health probe: accepted")


def _is_dead_error(msg: str) -> bool:
    m = msg.lower()
    return any(s in m for s in ("refused", "reset", "unreachable", errno.errorcode[errno.ECONNREFUSED].lower()))


def describe(state: ProxyState) -> list[dict[str, Any]]:
    return [u.to_dict() for u in state.upstreams]
