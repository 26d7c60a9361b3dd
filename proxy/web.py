"""`sendspin-proxy --web`: mitmweb's UI on our embedded Master, with Sendspin messages.

mitmweb's `WebMaster` is a Master with every default addon (TLS, a dumper, an error check
that exits the process...). We keep our bare Master and add only what the web app
(`mitmproxy.tools.web.app.Application`) reads from its master: the flow `View`, the
`EventStore` (the UI's event log), `WebAddon`/`WebAuth` (options, the token), `Intercept`
(the UI's intercept box), `master.proxyserver`; plus the View signals that
`WebMaster` forwards to the browsers. Tornado serves it on the same asyncio loop.

After the 101 our relay, not mitmproxy's WebSocket layer, moves the frames, so mitmproxy
records no messages. This recorder appends them to `flow.websocket.messages` itself
(from `proxy/observe.py`) and tells the UI (`View.update`, at most every
`UPDATE_INTERVAL` per flow). Memory stays bounded on long sessions:
  * each message keeps its first `MESSAGE_BYTES` bytes (`contentview.trim` marks the cut);
  * each flow keeps at most `max_messages` messages: its first `PINNED` (the handshake,
    the first stream/start) and the newest, of which at most a quarter are audio or
    visualizer chunks (else one second of audio would push every control message out);
    trimming removes a quarter at a time, so the count the UI watches changes and it
    re-fetches the list (a full flow keeps 3/4 of `max_messages`, less at most a quarter
    of the chunk quota when a chunk cut follows);
  * all flows together keep at most `budget_bytes` of message content (oldest flows
    lose their messages first), and at most `max_flows` finished flows stay in the view.
Faults that hit a connection are noted in the flow's comment (and mark the flow); the
relay's end fills `flow.websocket`'s close fields. A noise session (identified by its
`client/init`) is marked with its mode in `flow.metadata["sendspin_profile"]` and its
comment. Opaque: the content view decodes its cleartext handshake and shows each later
binary message as ciphertext (size and first bytes); for the quotas every encrypted
message counts as a stream chunk (most are audio, and the proxy cannot tell which are
not). Terminated (`--noise terminate`): its plaintext shows as a legacy flow's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from mitmproxy import http
from mitmproxy.addons import eventstore, intercept
from mitmproxy.addons import view as view_addon
from mitmproxy.master import Master
from mitmproxy.websocket import WebSocketMessage

from harness.protocol import HEADER_SIZE
from harness.protocol import wsframes as fr

from . import contentview  # noqa: F401 - registers the Sendspin content view
from .contentview import PROFILE_KEY, trim
from .describe import ARROW, close_summary, fault_applied, fault_name, is_stream_chunk
from .observe import ObservedMessage
from .relay.relay import Relay

MESSAGE_BYTES = 64 * 1024
UPDATE_INTERVAL = 0.25  # s between two UI updates of one flow
COMMENT_LINES = 20  # fault notes kept in a flow's comment
PINNED = 10  # a flow's first messages are kept while there is budget: hello, server/hello, stream/start
PENDING_UPGRADES = 1000  # 101s seen whose relay has not started yet (normally: none for long)


def _is_stream_chunk(m: WebSocketMessage, noise: bool = False) -> bool:
    c = m.content
    return not m.is_text and (noise or (len(c) >= HEADER_SIZE and is_stream_chunk(c[0])))


@dataclass
class _Record:
    """What the recorder keeps for one WebSocket flow."""

    flow: http.HTTPFlow
    content_bytes: int = 0
    stream_chunks: int = 0
    pinned: int = 0  # the first messages, at the start of the list, kept by the count limits
    added: int = 0
    update: asyncio.TimerHandle | None = None
    noise: bool = False  # a noise session: binary messages are ciphertext

    def is_chunk(self, m: WebSocketMessage) -> bool:
        return _is_stream_chunk(m, self.noise)

    @property
    def messages(self) -> list[WebSocketMessage]:
        assert self.flow.websocket is not None
        return self.flow.websocket.messages

    def remove(self, doomed: set[int]) -> int:
        """Drop the messages at these indices; returns the bytes freed."""
        keep, freed, unpinned = [], 0, 0
        for i, m in enumerate(self.messages):
            if i not in doomed:
                keep.append(m)
                continue
            freed += len(m.content)
            if i < self.pinned:
                unpinned += 1
            elif self.is_chunk(m):
                self.stream_chunks -= 1
        self.messages[:] = keep
        self.pinned -= unpinned
        self.content_bytes -= freed
        return freed


class WebUI:
    """A `TrafficConsumer` and a mitmproxy addon: the web UI and the message recorder."""

    name = "sendspin-web"
    capture_text = MESSAGE_BYTES
    capture_binary = MESSAGE_BYTES

    def __init__(self, host: str = "127.0.0.1", port: int = 8081, *, max_messages: int = 200,
                 budget_bytes: int = 64 * 1024 * 1024, max_flows: int = 500) -> None:
        self.host = host
        self.port = port
        self.max_messages = max_messages
        self.max_stream_chunks = max(1, max_messages // 4)
        self.budget_bytes = budget_bytes
        self.max_flows = max_flows
        self.url = ""
        self.master: Master | None = None
        self.view: Any = None  # mitmproxy's View addon, from install() on
        self.store: Any = None
        self.content_bytes = 0  # message content kept over all flows
        self._upgraded: OrderedDict[str, http.HTTPFlow] = OrderedDict()  # client conn id -> flow, 101 seen
        self._live: dict[str, _Record] = {}  # relay flow id (client conn id) -> record
        self._kept: OrderedDict[str, _Record] = OrderedDict()  # flow.id -> record with messages, oldest first
        self._flows: OrderedDict[str, http.HTTPFlow] = OrderedDict()  # every flow in the view, oldest first
        self._server: Any = None

    # --- wiring ---------------------------------------------------------------------------
    def install(self, master: Master) -> None:
        """Add the addons the web app needs; before `master.run()`."""
        from mitmproxy.tools.web import app, webaddons

        self.master = master
        self.view = view_addon.View()
        self.store = eventstore.EventStore()  # installs a logging handler; the master's `done` removes it
        m: Any = master  # the attributes tools.web.app reads from a WebMaster
        m.view, m.events, m.proxyserver = self.view, self.store, master.addons.get("proxyserver")
        master.addons.add(webaddons.WebAddon(), webaddons.WebAuth(), intercept.Intercept(), self.view, self.store,
                          self)
        cc = app.ClientConnection
        self.view.sig_view_add.connect(lambda flow: cc.broadcast_flow("flows/add", flow))
        self.view.sig_view_update.connect(lambda flow: cc.broadcast_flow("flows/update", flow))
        self.view.sig_view_remove.connect(lambda flow, index: cc.broadcast(type="flows/remove", payload=flow.id))
        self.view.sig_view_refresh.connect(cc.broadcast_flow_reset)
        self.store.sig_add.connect(lambda entry: cc.broadcast(type="events/add", payload=app.logentry_to_json(entry)))
        self.store.sig_refresh.connect(lambda: cc.broadcast(type="events/reset"))
        master.options.changed.connect(self._options_changed)
        master.options.update(web_open_browser=False, web_host=self.host)

    def _options_changed(self, updated: set[str]) -> None:
        from mitmproxy import optmanager
        from mitmproxy.tools.web import app

        assert self.master is not None
        app.ClientConnection.broadcast(type="options/update", payload=optmanager.dump_dicts(self.master.options,
                                                                                            updated))

    async def start(self) -> None:
        """Listen (port 0: any free port); then `url` holds the address with the access token."""
        from mitmproxy.tools.web import app
        from tornado import httpserver, netutil

        assert self.master is not None
        sockets = netutil.bind_sockets(self.port, self.host)
        self._server = httpserver.HTTPServer(app.Application(self.master, False))  # type: ignore[arg-type]
        self._server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self.master.options.update(web_port=self.port)
        self.url = self.master.addons.get("webauth").web_url

    async def stop(self) -> None:
        from mitmproxy.tools.web import app

        for rec in self._kept.values():
            if rec.update is not None:
                rec.update.cancel()
        if self._server is None:
            return
        self._server.stop()  # no new connections
        for conn in list(app.ClientConnection.connections):  # the browsers' update sockets
            conn.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.close_all_connections(), 3)
        self._server = None

    # --- mitmproxy hooks ----------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._flows[flow.id] = flow
        if len(self._flows) > self.max_flows:
            self._forget_old_flows()

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is not None:  # a 101: our relay takes over next (DataPath) and tells us
            self._upgraded[flow.client_conn.id] = flow
            while len(self._upgraded) > PENDING_UPGRADES:
                self._upgraded.popitem(last=False)

    def _forget_old_flows(self) -> None:
        doomed = []
        for flow in self._flows.values():
            if len(self._flows) - len(doomed) <= self.max_flows * 3 // 4:
                break
            if not flow.live:
                doomed.append(flow)
        for flow in doomed:
            del self._flows[flow.id]
            rec = self._kept.pop(flow.id, None)
            if rec is not None:
                self.content_bytes -= rec.content_bytes
                if rec.update is not None:
                    rec.update.cancel()
        if doomed:
            self.view.remove(doomed)

    # --- TrafficConsumer ------------------------------------------------------------------
    def relay_opened(self, relay: Relay) -> None:
        flow = self._upgraded.pop(relay.flow_id, None)
        if flow is None or flow.websocket is None:
            return
        rec = _Record(flow)
        self._live[relay.flow_id] = rec
        self._kept[flow.id] = rec

    def message(self, relay: Relay, msg: ObservedMessage) -> None:
        rec = self._live.get(relay.flow_id)
        if rec is None:
            return
        ws = rec.flow.websocket
        assert ws is not None
        if msg.opcode == fr.CLOSE:
            if ws.close_code is None:  # the first close frame: who closed, and how
                ws.closed_by_client = msg.from_client
                ws.close_code = msg.close_code if msg.close_code is not None else 1005
                ws.close_reason = msg.close_reason
            self._schedule(rec)
            return
        if msg.opcode not in (fr.TEXT, fr.BINARY):
            return
        content = trim(msg.head, msg.plain_size)
        m = WebSocketMessage(msg.opcode, msg.from_client, content, msg.t)
        rec.messages.append(m)
        rec.content_bytes += len(content)
        self.content_bytes += len(content)
        rec.added += 1
        if rec.added <= PINNED:
            rec.pinned += 1
        elif rec.is_chunk(m):
            rec.stream_chunks += 1
            if rec.stream_chunks > self.max_stream_chunks:  # a quarter of them go, oldest first
                excess = rec.stream_chunks - self.max_stream_chunks * 3 // 4
                chunks = [i for i, x in enumerate(rec.messages) if i >= rec.pinned and rec.is_chunk(x)]
                self.content_bytes -= rec.remove(set(chunks[:excess]))
        if len(rec.messages) > self.max_messages:
            pinned = min(rec.pinned, self.max_messages // 2)
            excess = len(rec.messages) - self.max_messages * 3 // 4
            self.content_bytes -= rec.remove(set(range(pinned, pinned + excess)))
        if self.content_bytes > self.budget_bytes:
            self._over_budget()
        self._schedule(rec)

    def _over_budget(self) -> None:
        """Oldest flows first lose their messages until a quarter of the budget is free."""
        target = self.budget_bytes * 3 // 4
        for fid, rec in list(self._kept.items()):
            if self.content_bytes <= target:
                break
            msgs = rec.messages
            n = 0
            freed = 0
            while n < len(msgs) and self.content_bytes - freed > target:
                freed += len(msgs[n].content)
                n += 1
            self.content_bytes -= rec.remove(set(range(n)))
            if not rec.messages and not rec.flow.live:
                del self._kept[fid]
            self._schedule(rec)

    def _schedule(self, rec: _Record) -> None:
        if rec.update is None:
            rec.update = asyncio.get_running_loop().call_later(UPDATE_INTERVAL, self._update, rec)

    def _update(self, rec: _Record) -> None:
        rec.update = None
        self.view.update([rec.flow])

    def event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "fault":
            rec = self._live.get(ev.get("session") or "")
            if rec is not None:
                self._note(rec, f"{time.strftime('%H:%M:%S')} FAULT {ARROW.get(ev.get('direction', ''), '')} "
                           f"{fault_applied(ev)}")
                rec.flow.marked = ":warning:"
                self._schedule(rec)
        elif kind == "fault_not_applied":  # as loud as an application: the fault did not happen here
            rec = self._live.get(ev.get("session") or "")
            if rec is not None:
                self._note(rec, f"{time.strftime('%H:%M:%S')} FAULT {fault_name(ev.get('fault'), ev.get('type'))} "
                           f"cannot apply on this connection: {ev.get('why')}")
                rec.flow.marked = ":warning:"
                self._schedule(rec)
        elif kind == "identified" and ev.get("profile") == "noise":
            rec = self._live.get(ev.get("session") or "")
            if rec is not None:
                terminated = ev.get("mode") == "noise-terminated"
                rec.noise = not terminated
                rec.flow.metadata[PROFILE_KEY] = ev.get("mode")
                self._note(rec, f"{time.strftime('%H:%M:%S')} noise session (client/init): " + (
                    "terminated by the proxy, its plaintext shown" if terminated else
                    "encrypted after its handshake, and the proxy holds no keys"))
                self._schedule(rec)
        elif kind == "close":
            rec = self._live.pop(ev.get("session") or "", None)
            if rec is None:
                return
            ws = rec.flow.websocket
            assert ws is not None
            ws.timestamp_end = time.time()
            if ws.close_code is None:  # no close frame: an abnormal end (RFC 6455 §7.1.5)
                ws.close_code = 1006
                ws.close_reason = "no close frame"
            rec.flow.live = False
            self._note(rec, f"{time.strftime('%H:%M:%S')} {close_summary(ev)}")
            if rec.update is not None:
                rec.update.cancel()
            self._update(rec)

    def _note(self, rec: _Record, line: str) -> None:
        lines = [*rec.flow.comment.splitlines(), line][-COMMENT_LINES:]
        rec.flow.comment = "\n".join(lines)

