"""The fault interface (Toxiproxy's `toxics/toxic.go` is the model: a small interface,
one fault per file). Every fault is one file in `proxy/faults/` with one `Fault`
subclass; defining the class (with `kind`) registers it, nothing else to edit.

A fault has two parts:

  * the SPEC, a `Fault` object: what the control API accepts and returns (type, name,
    direction, selector, toxicity, connections, count, duration, params; `spec()`
    rebuilds it), plus the fault table's bookkeeping (`applied`, `retired`). One
    object serves every connection: it keeps no per-connection data.
  * the per-pipe STATE, a `FaultState` the spec makes for every pipe (one direction of
    one connection) it is attached to: `Fault.attach(conn)`, by default
    `self.State(self, conn)`. It holds that pipe's runtime data, implements the hooks
    the pipe calls (proxy/relay/hooks.py) and is dropped when the fault leaves the pipe
    or the connection ends. `conn` is the pipe's `Channel` (proxy/relay/connection.py):
    everything a fault may read and do with the connection.

Spec (JSON/TOML, control API, plan file, CLI) -> `build_fault` in `proxy.faults`::

    {"type": "drop",                 # Fault.kind (registry key)
     "name": "drop-time",            # unique in the table; default: the type (then type-2, ...)
     "direction": "upstream",        # upstream = client->server, downstream = server->client, both
     "selector": {"json_type": "client/time", "nth": 2},   # or the same keys at top level
     "toxicity": 1.0,                # share of CONNECTIONS affected (drawn once per connection)
     "connections": {"client_port": 51234},   # only these connections (or "upstream": worker index)
     "count": 3,                     # at most 3 applications in total, then the fault retires
     "duration": 10.0,               # seconds after being added, then the fault retires
     "params": {...}}                # the fault's own parameters, or the same keys at top level

Selector and connection filter: selector.py. Parameters: params.py. `toxicity` is
Toxiproxy's: the share of connections the fault is attached to at all (per
connection, seeded by the selector's `seed` and the connection's sequence number).

Writing a fault::

    class DropState(FaultState["Drop"]):       # self.fault: the spec; self.conn: the pipe's Channel
        def on_message(self, msg):
            if not self.selects(msg):          # selector + count/duration check
                return None                    # None = unchanged (original bytes, masks, fragments)
            self.record(msg)                   # event log (index, json_type, binary_type, size) + count
            return []                          # the replacement: [] = dropped

    class Drop(Fault):
        kind = "drop"
        needs_messages = True                  # its state sees whole messages (on_message)
        modes = {LEGACY: "", NOISE_TERMINATED: ""}  # where it means something (see Modes below)
        refusals = {NOISE_OPAQUE: "..."}       # and why not elsewhere, if MODE_REFUSAL says it less well
        PARAMS = {}                            # name -> Param(type, default, min, max, ...)
        State = DropState                      # made for every pipe the fault is attached to

Modes. A connection's mode says what the proxy can read of it (proxy/relay/identify.py,
from the client's first message): `legacy` (plain messages) or `noise-opaque` (a noise
session: a cleartext handshake, then AEAD ciphertext the proxy holds no keys for). Every
fault class declares the modes it means something in, `modes = {mode: note}` (the note
says what it means there when that differs from its description), and may say why it
means nothing in the others (`refusals`, else `MODE_REFUSAL`). A fault met by a
connection in a mode it does not declare is refused there like a deflate connection:
`fault_not_applied`, with the reason. A proxy that terminates Noise reports the mode
`noise-terminated`, and each fault that works on its plaintext declares it.

Hooks of the spec (`Fault`), 7:
  * `validate()`: cross-parameter checks of the spec (raise FaultSpecError).
  * `cannot_act_on(conn) -> str | None`: why this fault cannot act on that connection at
    all (None: it can), asked before `attach` and again when the connection is
    identified. A message fault cannot act on a connection whose 101 negotiated an
    extension (permessage-deflate: compressed payloads); no fault acts on a connection
    whose mode it means nothing in (`mode_refusal`). The table then logs
    `fault_not_applied` instead (and detaches it, if it was attached before the
    connection was identified) and the fault's `not_applied` lists it.
  * `mode_refusal(mode) -> str | None`: why this fault (with its parameters and selector)
    means nothing in `mode`; by default: `mode` not among its `modes`, or, on a noise
    session, a selector that can only match encrypted messages.
  * `attach(conn) -> FaultState`: the fault meets a pipe (new connections right after
    the WebSocket upgrade, existing ones when the fault is added); whatever it does
    then (timers, holds, an event) happens here, by default in `State.__init__`.
  * `on_added(proxy)` / `on_removed(proxy)`: the fault enters / leaves the table (proxy =
    `ProxyServices`: events, live connections, upstreams with registered pids).
  * `on_connect(info) -> str | None`: every new TCP connection before any upstream is
    chosen; a string refuses it with a RST and is the logged reason (used by `down`).

Hooks of the per-pipe state (`FaultState`; the relay's `PipeHooks`), 5:
  * `might_act(opcode, prefix, header) -> bool` (message faults, `needs_messages`):
    at the first frame of each data message; False streams it through untouched. The
    default asks the selector; it must not count.
  * `on_message(msg) -> None | list[Msg | bytes]`: None = unchanged; otherwise the
    replacement: `Msg` items are encoded as one frame each (masked towards the
    server), `bytes` items are frames already encoded (`conn.encode(...)`) and pass
    later message faults untouched. Faults run in the order they were added; each sees
    what the previous one let through (copies keep the original `msg.index`, so
    selectors answer the same for them).
  * `on_bytes(data, nxt)` / `on_eof(nxt)` (byte faults, `byte_level`): the wire bytes
    of this direction (after message faults) and the source's FIN; call `nxt(data)` /
    `nxt()` now or later (order is yours to keep). Faults that queue data must bound it
    and `conn.hold(...)` their source above the bound (real TCP backpressure), and flush
    or drop it in `detach`.
  * `detach()`: the fault is removed or retires; it is still in the pipe's chain (so
    `conn.emit(data, after=self)` still works). NOT called when the connection itself
    ends (its timers are cancelled then).
An exception raised by a hook resets that connection and is logged (event `error`).

Every application must be recorded: `self.record(msg=None, **fields)` on the state
(`Fault.record(conn, ...)` underneath; proxy-wide faults call that with conn None)
writes a `fault` event (t_us, session = flow id, fault name, type, direction, params,
selector; with `msg`: index, json_type, binary_type, size, and `encrypted` for a noise
session's ciphertext; then `fields`) to the event log through `conn.log`, counts it, and
retires the fault when `count` is reached.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from harness.protocol import wsframes as fr
from harness.protocol.messages import NOISE_CLEARTEXT

from ..relay.connection import Channel, Connection
from ..relay.message import Msg
from .params import FaultSpecError, Param
from .selector import ConnectionFilter, Selector, SelectorState

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

DIRECTIONS = ("upstream", "downstream", "both")
REGISTRY: dict[str, type[Fault]] = {}

# What the proxy can read of a connection (proxy/relay/identify.py): its mode.
LEGACY, NOISE_OPAQUE, NOISE_TERMINATED = "legacy", "noise-opaque", "noise-terminated"
MODES = {
    LEGACY: "plain Sendspin messages (the legacy revision, or any first message that is not client/init)",
    NOISE_OPAQUE: "a noise session the proxy holds no keys for: a cleartext handshake (client/init, server/init, "
                  "noise/handshake, server/error), then every message is AEAD ciphertext",
    NOISE_TERMINATED: "a noise session the proxy terminates (--noise terminate: proxy/relay/terminate.py): faults "
                      "see each message's plaintext, JSON as text messages and the rest as binary plaintexts "
                      "(type byte first), and what they send on is sealed for the receiver",
}
# The messages of a noise session the proxy can read: its cleartext handshake (sent as text)
NOISE_READABLE = frozenset(m.TYPE for m in NOISE_CLEARTEXT)
# Why a fault that does not declare a mode means nothing there (a fault may say it better: `refusals`)
MODE_REFUSAL = {
    LEGACY: "it means something on noise sessions only",
    NOISE_OPAQUE: "a noise session: after its cleartext handshake every message is AEAD ciphertext and the proxy "
                  "holds no keys, so it can neither select a message by content nor drop, repeat, reorder or change "
                  "one without the receiver's authentication failing (a silent close); corrupt and truncate make "
                  "such a tampered message on purpose",
    NOISE_TERMINATED: "it means something on ciphertext only; on a terminated session the proxy holds the keys",
}
NOT_APPLIED_KEPT = 100  # connections a fault could not act on, newest kept (GET /faults shows them)


def opaque_payloads(extensions: Sequence[str]) -> str:
    """Why a message fault cannot act on a connection with these extensions negotiated."""
    if "permessage-deflate" in extensions:
        return ("permessage-deflate negotiated: its messages are compressed, so a message fault can neither "
                "select them by content nor change one without breaking the receiver's inflate context "
                "(sendspin-proxy strips the offer unless --keep-extensions)")
    return (f"extension {', '.join(extensions)} negotiated: its payloads and RSV bits are the extension's, "
            "so a message fault cannot read or change them (sendspin-proxy strips the offer unless "
            "--keep-extensions)")


@dataclass
class ConnectInfo:
    """A new TCP connection, before an upstream is chosen (for `Fault.on_connect`)."""

    client: tuple[str, int]
    seq: int  # connection sequence number in this proxy process (1, 2, ...)


class EventSinkLike(Protocol):
    def emit(self, event: str, session: str | None = None, **fields: Any) -> None: ...


class UpstreamInfo(Protocol):
    """An upstream as faults see it (proxy.state.Upstream)."""

    index: int
    url: str
    pid: int | None
    alive: bool


class ProxyServices(Protocol):
    """What the proxy offers to faults that act beyond one pipe (proxy/state.py)."""

    events: EventSinkLike

    def connections(self) -> list[Connection]: ...  # the live ones

    @property
    def upstreams(self) -> Sequence[UpstreamInfo]: ...


class FaultState[F: Fault]:
    """A fault's runtime on one pipe: the relay's `PipeHooks` (see the module docstring).
    The defaults pass everything through untouched."""

    def __init__(self, fault: F, conn: Channel) -> None:
        self.fault = fault
        self.conn = conn
        self._sel: SelectorState | None = None

    # --- what the pipe reads ------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.fault.name

    @property
    def needs_messages(self) -> bool:
        return self.fault.needs_messages

    @property
    def byte_level(self) -> bool:
        return self.fault.byte_level

    # --- hooks (override what you need) -------------------------------------------------
    def might_act(self, opcode: int, prefix: bytes | memoryview, header: fr.Header) -> bool:
        return self.fault.active and self.fault.sel.might_match(opcode, prefix, header)

    def on_message(self, msg: Msg) -> list[Msg | bytes] | None:
        return None

    def on_bytes(self, data: bytes | memoryview, nxt: Callable[[bytes | memoryview], None]) -> None:
        nxt(data)

    def on_eof(self, nxt: Callable[[], None]) -> None:
        nxt()

    def detach(self) -> None:
        pass

    # --- helpers ------------------------------------------------------------------------
    def selects(self, msg: Msg) -> bool:
        """The selector's verdict for this message, False once the fault retired."""
        if not self.fault.active:
            return False
        if self._sel is None:
            self._sel = self.fault.sel.new_state()
        return self.fault.sel.match(self._sel, msg)

    def record(self, msg: Msg | None = None, **fields: Any) -> None:
        """Log one application on this pipe (event `fault`), count it; see Fault.record."""
        self.fault.record(self.conn, msg, **fields)


class Fault:
    """A fault's spec; see the module docstring for the contract."""

    kind: ClassVar[str] = ""  # the spec's "type"; setting it registers the class
    PARAMS: ClassVar[dict[str, Param]] = {}
    State: ClassVar[type[FaultState[Any]]] = FaultState  # made by `attach` for every pipe
    needs_messages: ClassVar[bool] = False
    byte_level: ClassVar[bool] = False
    default_direction: ClassVar[str] = "downstream"
    allowed_directions: ClassVar[tuple[str, ...]] = DIRECTIONS
    uses_selector: ClassVar[bool] = True  # False: a selector in the spec is an error
    description: ClassVar[str] = ""
    # The modes it means something in -> what it means there when that is not what its
    # description says (""). Every registered fault declares its own (see the module
    # docstring); an unregistered one (a test's) means something in legacy only.
    modes: ClassVar[Mapping[str, str]] = {LEGACY: ""}
    refusals: ClassVar[Mapping[str, str]] = {}  # mode it is not in -> why (default: MODE_REFUSAL)

    _BASE_ATTRS: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if not cls.kind:
            return
        clash = set(cls.PARAMS) & Fault._BASE_ATTRS
        if clash:
            raise TypeError(f"fault {cls.kind}: parameter name(s) {sorted(clash)} clash with Fault attributes")
        if cls.kind in REGISTRY and REGISTRY[cls.kind].__qualname__ != cls.__qualname__:
            raise TypeError(f"fault type {cls.kind!r} registered twice ({REGISTRY[cls.kind]} and {cls})")
        if not any("modes" in c.__dict__ for c in cls.__mro__ if c is not Fault):
            raise TypeError(f"fault {cls.kind}: declare `modes` (the modes it means something in: {list(MODES)})")
        modes = cls.modes
        unknown = (set(modes) | set(cls.refusals)) - set(MODES)
        if unknown or set(modes) & set(cls.refusals):
            raise TypeError(f"fault {cls.kind}: `modes` and `refusals` name each mode of {list(MODES)} at most once "
                            f"(got modes {list(modes)}, refusals {list(cls.refusals)})")
        REGISTRY[cls.kind] = cls
        if "description" not in cls.__dict__ and cls.__doc__:  # its own doc, not a parent's
            cls.description = " ".join(cls.__doc__.strip().split("\n\n")[0].split())

    def __init__(self, name: str | None = None, direction: str | None = None, selector: Selector | None = None,
                 toxicity: float = 1.0, count: int | None = None, duration: float | None = None,
                 connections: ConnectionFilter | None = None, **params: Any) -> None:
        k = self.kind or type(self).__name__
        self.name = name or k
        self.named = name is not None  # an explicit name must be unique; a default one gets numbered
        direction = direction or self.default_direction
        if direction not in self.allowed_directions:
            raise FaultSpecError(f"{k}: direction must be one of {list(self.allowed_directions)}, got {direction!r}")
        self.direction = direction
        if selector is not None and not self.uses_selector and not selector.matches_everything:
            raise FaultSpecError(f"{k}: takes no selector (it acts on whole connections)")
        self.sel = selector or Selector()
        self.toxicity = Param(float, min=0.0, max=1.0).check(f"{k}: toxicity", toxicity)
        self.connections = connections
        self.count = Param(int, min=1, nullable=True).check(f"{k}: count", count)
        self.duration = Param(float, min=0.0, nullable=True).check(f"{k}: duration", duration)
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            raise FaultSpecError(f"{k}: unknown parameter(s) {unknown} (known: {sorted(self.PARAMS)})")
        self.params: dict[str, Any] = {}
        for pname, p in self.PARAMS.items():
            if pname in params:
                v = p.check(f"{k}: parameter {pname!r}", params[pname])
            elif p.required:
                raise FaultSpecError(f"{k}: missing required parameter {pname!r} ({p.describe()['type']})")
            else:
                v = p.default
            self.params[pname] = v
            setattr(self, pname, v)
        # Bookkeeping, set by the fault table.
        self.applied = 0
        self.retired: str | None = None  # why it stopped: "count", "duration", "removed"
        self.added_us: int | None = None
        self.events: EventSinkLike | None = None
        self.proxy: ProxyServices | None = None
        self.on_retire: Callable[[Fault, str], None] | None = None
        # connections it met and could not act on (cannot_act_on), newest last
        self.not_applied: deque[dict[str, Any]] = deque(maxlen=NOT_APPLIED_KEPT)
        self.validate()

    # --- hooks (override what you need) ---------------------------------------------------
    def validate(self) -> None:
        """Cross-parameter checks; raise FaultSpecError."""

    def cannot_act_on(self, conn: Connection) -> str | None:
        """Why this fault cannot act on `conn` at all; None: it can. A message fault reads
        and changes plain payloads, which a negotiated extension takes away; and no fault
        acts where it means nothing (the connection's mode, once identified)."""
        if self.needs_messages and conn.extensions:
            return opaque_payloads(conn.extensions)
        return self.refused_by_mode(conn)

    def refused_by_mode(self, conn: Connection) -> str | None:
        """`mode_refusal` for the connection's mode; None while it is not yet identified."""
        return None if conn.mode is None else self.mode_refusal(conn.mode)

    def mode_refusal(self, mode: str) -> str | None:
        """Why this fault, as specified, means nothing on a connection in `mode`; None: it
        means something there."""
        if mode not in self.modes:
            return self.refusals.get(mode) or MODE_REFUSAL[mode]
        if mode == NOISE_OPAQUE and self.needs_messages:
            return self.sel.opaque_refusal(NOISE_READABLE)
        return None

    def attach(self, conn: Channel) -> FaultState[Any]:
        """This fault's state on one pipe (`conn`); what it does on meeting the pipe."""
        return self.State(self, conn)

    def on_added(self, proxy: ProxyServices) -> None: ...

    def on_removed(self, proxy: ProxyServices) -> None: ...

    def on_connect(self, info: ConnectInfo) -> str | None:
        return None

    # --- helpers --------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.retired is None

    def affects(self, seq: int, client_port: int | None = None, upstream: int | None = None) -> bool:
        """Is this connection affected at all? `connections` filter, then toxicity."""
        if self.connections is not None and not self.connections.matches(client_port, upstream, seq):
            return False
        if self.toxicity >= 1.0:
            return True
        return random.Random(f"{self.sel.seed}/{self.name}/{seq}").random() < self.toxicity

    def record(self, conn: Channel | None, msg: Msg | None = None, *, session: str | None = None,
               counted: bool = True, **fields: Any) -> None:
        """Log one application (event `fault`; through `conn.log` on a pipe, else with
        `session`) and, if `counted`, count it; retire at `count`."""
        if counted:
            self.applied += 1
        if self.events is not None:
            ev: dict[str, Any] = {"fault": self.name, "type": self.kind,
                                  "direction": conn.direction if conn is not None else self.direction,
                                  "params": self.params}
            sel = self.sel.to_dict()
            if sel:
                ev["selector"] = sel
            if msg is not None:
                ev.update(msg.fields())
                if conn is not None and conn.mode == NOISE_OPAQUE and not msg.is_text:
                    # ciphertext: its first byte is no type byte, and nothing else of it can be named
                    ev.update(binary_type=None, encrypted=True)
            ev.update(fields)
            if conn is not None:
                conn.log("fault", **ev)
            else:
                self.events.emit("fault", session=session, **ev)
        if self.count is not None and self.applied >= self.count and self.retired is None:
            self.retire("count")

    def retire(self, why: str) -> None:
        """Stop acting; the table detaches it from every pipe soon (never re-entrantly)."""
        if self.retired is None:
            self.retired = why
            if self.on_retire is not None:
                self.on_retire(self, why)

    def spec(self) -> dict[str, Any]:
        """The spec that rebuilds this fault (PATCH merges into it)."""
        d: dict[str, Any] = {"type": self.kind, "name": self.name, "direction": self.direction}
        sel = self.sel.to_dict()
        if sel:
            d["selector"] = sel
        if self.toxicity != 1.0:
            d["toxicity"] = self.toxicity
        if self.connections is not None:
            d["connections"] = self.connections.to_dict()
        if self.count is not None:
            d["count"] = self.count
        if self.duration is not None:
            d["duration"] = self.duration
        d["params"] = dict(self.params)
        return d

    def to_dict(self) -> dict[str, Any]:
        d = self.spec()
        d["applied"] = self.applied
        d["added_us"] = self.added_us
        if self.not_applied:
            d["not_applied"] = list(self.not_applied)
        return d

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {"type": cls.kind, "description": cls.description, "default_direction": cls.default_direction,
                "directions": list(cls.allowed_directions), "message_aware": cls.needs_messages,
                "byte_level": cls.byte_level, "selector": cls.uses_selector, "modes": dict(cls.modes),
                "refused_in": {m: cls.refusals.get(m) or MODE_REFUSAL[m] for m in MODES if m not in cls.modes},
                "params": {k: p.describe() for k, p in cls.PARAMS.items()}}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.direction} {self.params}>"


Fault._BASE_ATTRS = frozenset(
    {"name", "named", "direction", "sel", "toxicity", "connections", "count", "duration", "params", "applied",
     "retired", "added_us", "events", "proxy", "on_retire", "not_applied", "kind", "active", "record", "retire",
     "spec", "affects", "attach", "State", "modes", "refusals", "refused_by_mode", "mode_refusal"}
    | {n for n in dir(Fault) if not n.startswith("__")})
