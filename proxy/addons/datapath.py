"""The data phase: after the 101, our relay owns both sockets.

mitmproxy's own WebSocket layer buffers whole messages, re-fragments modified ones,
couples the two directions through one drain lock, answers close handshakes itself
and turns a peer's RST or EOF into a clean 1000 (docs/architecture.md §8, NOTES.md §1). A transparent fault
proxy cannot have any of that, so `DetachLayer` replaces
`mitmproxy.proxy.layers.websocket.WebsocketLayer` (HttpStream looks the class up as a
module attribute when a 101 completes) and hands the sockets to `proxy.relay.Relay`.

Takeover, inside mitmproxy's synchronous event handling (Start of our layer):
  1. find the ConnectionIO (StreamReader/StreamWriter) of both sides, swap in our
     protocol (`transport.set_protocol`) with reading held, disarm the idle watchdog;
  2. mitmproxy keeps delivering what it has already read, in order, as DataReceived
     events: bytes the HTTP layer read past the 101, a read in flight (taken from the
     StreamReader but waiting for mitmproxy's event lock) and whatever is still in the
     StreamReader. They go where the sockets' bytes go (`Relay.receive`). Taking the StreamReader's buffer
     ourselves would reorder it with the read in flight (seen: a 64 KiB chunk late);
  3. once each StreamReader is empty and mitmproxy's read loop waits on it (nothing
     older is left anywhere), our protocol starts reading the socket;
  4. when the relay is done, EOF is fed to the old StreamReaders so mitmproxy's
     connection tasks end normally (ConnectionClosed -> CloseConnection).
With `server_dials` the Sendspin roles are the reverse of mitmproxy's: its client (who
dialled the proxy) is the Sendspin server, its server (the upstream the proxy dialled)
the Sendspin client. The relay is keyed by Sendspin role (`role_of`), so directions
keep their Sendspin meaning (relay.py).
This reads private StreamReader attributes (`_buffer`, `_paused`): mitmproxy is pinned
to >=12.2,<13 and tests/test_proxy_transparency.py guards it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import websocket as mitm_websocket

from ..relay.noise_keys import NoiseKeys
from ..relay.pipe import other
from ..relay.relay import SIDES, WRITE_HIGH, Relay
from ..state import ProxyState

log = logging.getLogger(__name__)
UPSTREAM_KEY = "sendspin_upstream"  # flow.metadata: index of the chosen upstream
TAKEOVER = "takeover"  # hold reason while mitmproxy still delivers bytes it read
TAKEOVER_TIMEOUT = 2.0  # s; mitmproxy's read loop normally parks within a millisecond


class DetachLayer(layer.Layer):
    """Stands in for mitmproxy's WebsocketLayer: the relay takes the sockets."""

    def __init__(self, context: Context, flow: http.HTTPFlow) -> None:
        super().__init__(context)
        self.flow = flow
        self.relay: Relay | None = None

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            dp: DataPath | None = ctx.master.addons.get("datapath")
            if dp is None:  # not ours to handle: behave like a closed connection
                yield commands.CloseConnection(self.context.client)
                return
            self.relay = dp.take_over(self.context, self.flow)
        elif isinstance(event, events.DataReceived):
            if self.relay is not None:
                side = role_of(self.context, event.connection, self.relay.dialled)
                try:
                    self.relay.receive(side, event.data)
                except Exception as e:  # a fault's bug: the relay logs it and resets
                    self.relay.fail(e)
        elif isinstance(event, events.ConnectionClosed):
            relay = self.relay
            if relay is not None and not relay.finished:
                # mitmproxy read the end before our protocol took the socket (step 2):
                # pass it on in order, as the relay would have seen it
                side = role_of(self.context, event.connection, relay.dialled)
                dp = ctx.master.addons.get("datapath")
                exc = dp.reader_exception(self.context, side) if dp is not None else None
                if exc is not None:
                    relay.on_lost(side, exc)
                else:
                    relay.on_eof(side)
            # after the relay ended (it fed EOF to mitmproxy's readers): let mitmproxy finish
            yield commands.CloseConnection(event.connection)
        yield from ()


def role_of(context: Context, conn: Any, dialled: str) -> str:
    """The Sendspin role of one of mitmproxy's two connections: its server is the peer
    the proxy dialled (`dialled`: "server", or "client" with --server-dials)."""
    return dialled if conn == context.server else other(dialled)


def by_role(context: Context, of: Any, dialled: str) -> dict[str, Any]:
    """{role: what `of(connection)` gives} for mitmproxy's client and server connections."""
    return {role_of(context, c, dialled): of(c) for c in (context.client, context.server)}


class DataPath:
    """Installs DetachLayer and creates a Relay for every upgraded connection."""

    name = "datapath"

    def __init__(self, state: ProxyState, server_dials: bool = False, noise_keys: NoiseKeys | None = None) -> None:
        self.state = state
        self.noise_keys = noise_keys
        self.dialled = "client" if server_dials else "server"  # the Sendspin role of the peer we dial
        self._saved = mitm_websocket.WebsocketLayer
        mitm_websocket.WebsocketLayer = DetachLayer  # type: ignore[misc, assignment]

    def uninstall(self) -> None:
        mitm_websocket.WebsocketLayer = self._saved  # type: ignore[misc]

    def take_over(self, context: Context, flow: http.HTTPFlow) -> Relay:
        ps = ctx.master.addons.get("proxyserver")
        handler = ps.connections[context.client.id]
        io = by_role(context, lambda c: handler.transports[c], self.dialled)
        tr = {side: io[side].writer.transport for side in SIDES}
        old = {side: tr[side].get_protocol() for side in SIDES}
        flow.metadata.pop("sendspin_counted", None)  # from now on the relay's end uncounts it
        idx = flow.metadata.get(UPSTREAM_KEY)
        upstream = self.state.upstreams[idx] if isinstance(idx, int) and idx < len(self.state.upstreams) else None
        negotiated = flow.response.headers.get("Sec-WebSocket-Extensions") if flow.response is not None else None
        relay = Relay(tr["client"], tr["server"], flow_id=context.client.id, seq=flow.metadata.get("sendspin_seq", 0),
                      upstream=upstream, events=self.state.events, path=flow.request.path, extensions=negotiated,
                      server_dials=self.dialled == "client", noise_keys=self.noise_keys)
        self.state.register(relay)
        for side in SIDES:  # step 3 releases this; until then the socket stays unread
            relay.pipe_from(side).hold(TAKEOVER)
            io[side].reader._paused = False  # else its flow control would resume OUR socket
        wd = handler.timeout_watchdog
        wd.blocker += 1  # mitmproxy sees no events while we relay: no idle timeout
        wd.can_timeout.clear()
        relay.on_finish.append(lambda r: self._finished(r, handler, io))
        self.state.events.emit("relay", session=relay.flow_id, path=flow.request.path,
                               upstream=upstream.index if upstream else None, extensions=negotiated,
                               stripped=flow.metadata.get("sendspin_stripped"))
        relay.start()
        for side in SIDES:
            # the old protocol gets no resume_writing any more: wake whoever waits in
            # drain() on it (mitmproxy's read loop does), our pipes take over the flow control
            if getattr(old[side], "_paused", False):
                old[side].resume_writing()
            if tr[side].get_write_buffer_size() > WRITE_HIGH:
                relay.pipe_to(side).hold("write-buffer")
        deadline = asyncio.get_running_loop().time() + TAKEOVER_TIMEOUT
        asyncio.get_running_loop().call_soon(self._release_when_drained, relay, io, deadline)
        return relay

    def reader_exception(self, context: Context, side: str) -> BaseException | None:
        ps = ctx.master.addons.get("proxyserver")
        handler = ps.connections.get(context.client.id)
        conn = by_role(context, lambda c: c, self.dialled)[side]
        io = handler.transports.get(conn) if handler is not None else None
        return io.reader.exception() if io is not None and io.reader is not None else None

    def _release_when_drained(self, relay: Relay, io: dict[str, Any], deadline: float) -> None:
        if relay.finished:
            return
        loop = asyncio.get_running_loop()
        for side in SIDES:
            pipe = relay.pipe_from(side)
            if TAKEOVER not in pipe.holds:
                continue
            r = io[side].reader
            drained = not r._buffer and (r._waiter is not None or r.at_eof() or r.exception() is not None)
            if drained or loop.time() > deadline:
                if not drained:
                    log.warning("takeover of %s (%s) timed out; relaying anyway", relay.flow_id, side)
                pipe.release(TAKEOVER)
        if any(TAKEOVER in p.holds for p in relay.pipes.values()):
            loop.call_later(0.0005, self._release_when_drained, relay, io, deadline)

    def _finished(self, relay: Relay, handler: Any, io: dict[str, Any]) -> None:
        wd = handler.timeout_watchdog
        wd.blocker -= 1
        if wd.blocker == 0:
            wd.register_activity()
            wd.can_timeout.set()
        for side in SIDES:  # hand the end back to mitmproxy: its connection tasks finish
            reader = io[side].reader
            if reader is not None and not reader.at_eof():
                reader.feed_eof()

    async def close_all(self, timeout: float = 2.0) -> None:
        """Shutdown: FIN both sides of every relay, wait, then RST what is left."""
        relays = self.state.relays()
        for r in relays:
            r.shutdown()
        pending = [r.done for r in relays if not r.done.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for r in relays:
            if not r.finished:
                for side in SIDES:
                    r.reset(side)
        pending = [r.done for r in relays if not r.done.done()]
        if pending:
            await asyncio.wait(pending, timeout=1.0)
