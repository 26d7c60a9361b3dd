"""The uniform fault interface. Every fault is one file in `proxy/faults/` with one
`Fault` subclass; defining the class (with `kind`) registers it, nothing else to edit.

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

Selector (which messages; see `Selector`): `json_type` (str or list), `binary_type`
(int 0..255 or list), `min_size`/`max_size` (payload bytes of the whole message),
`nth` (every nth match: n, 2n, ...), `probability` (per matching message), `seed`.
Counters and the random stream are per connection and direction, so a run is
reproducible whatever other connections do. `toxicity` is Toxiproxy's: the share of
connections the fault is attached to at all (per connection, seeded by `seed` and the
connection's sequence number). `connections` narrows the fault to some connections:
`client_port` (the client's TCP source port, as `GET /connections` shows it) and/or
`upstream` (the index of the upstream the connection went to), each an int or a list.

Writing a fault::

    class Drop(Fault):
        kind = "drop"
        needs_messages = True                  # see whole messages (on_message)
        PARAMS = {}                            # name -> Param(type, default, min, max, ...)

        def on_message(self, pipe, msg):
            if not self.selects(pipe, msg):    # selector + count/duration check
                return None                    # None = unchanged (original bytes, masks, fragments)
            self.record(pipe, index=msg.index, size=len(msg.payload))   # event log + count
            return []                          # the replacement: [] = dropped

Kinds of fault (class flags; a fault may be several):
  * message faults, `needs_messages = True`:
      `might_act(pipe, opcode, prefix, header) -> bool` at the first frame of each data
      message (prefix = first <=16 payload bytes, unmasked; header = frames.Header; its
      length is the whole message's when header.fin). False means the message streams
      through untouched (no buffering). The default asks the selector; it must not count.
      `on_message(pipe, msg) -> None | list[Msg | bytes]`: None = unchanged; otherwise the
      replacement: `Msg` items are encoded as one frame each (masked towards the server),
      `bytes` items are frames already encoded (`pipe.encode(...)`) and pass later message
      faults untouched. Faults run in the order they were added; each sees what the
      previous one let through (copies keep the original `msg.index`, so selectors answer
      the same for them).
  * byte faults, `byte_level = True`:
      `on_bytes(pipe, data, nxt)`: the wire bytes of this direction (after message faults);
      call `nxt(data)` now or later (order is yours to keep). `on_eof(pipe, nxt)`: the
      source sent FIN; call `nxt()` when the EOF may follow (after your queued data).
      Faults that queue data must bound it and `pipe.hold(...)` their source above the
      bound (real TCP backpressure), and flush or drop it in `on_detach`.
  * connection faults: `on_attach(pipe)` / `on_detach(pipe)` are called for every pipe
      (one direction of one connection) the fault is attached to: new connections right
      after the WebSocket upgrade, existing ones when the fault is added. Timers via
      `pipe.later`. `on_detach` is called while the fault is still in the pipe's chain
      (so `pipe.emit(data, after=self)` still works) when the fault is removed or retires;
      it is NOT called when the connection itself ends (its timers are cancelled then).
  * proxy faults: `on_added(proxy)` / `on_removed(proxy)` (proxy = `ProxyServices`:
      events, live relays, upstreams with registered pids) and `on_connect(info) -> str |
      None` for every new TCP connection before any upstream is chosen (a string refuses
      it with a RST and is the logged reason; used by `down`).

Per-connection state: `self.state(pipe)` returns an object private to this fault and
pipe (created by `new_state(pipe)`, default a `SimpleNamespace`), dropped with the pipe.
Do not keep per-connection data on `self`: one Fault object serves every connection.

What a Pipe gives a fault (proxy/relay/pipe.py): `direction`, `src`/`dst` ("client" |
"server"), `flow_id`, `loop`, `hold(why)`/`release(why)` (pause/resume reading the source
socket: real backpressure), `withhold(why)`/`unwithhold(why)` (queue this direction's
output; the source is held once 1 MiB is queued), `emit(data, after=fault)` /
`emit_eof(after=fault)` (into the byte chain after `fault`), `write(data)` (to the socket,
honouring withhold), `inject(frame, then=None)` (a whole frame at the next frame boundary
for control frames, message boundary for data frames: never inside another message),
`encode(opcode, payload, fin)`, `later(delay, fn, *args)` (timers cancelled when the
connection ends), `close_input()`, and `relay`: `relay.seq`, `relay.upstream` (the
`Upstream`), `relay.reset(side)` (TCP RST; the other side then gets one too),
`relay.close_with_code(code, reason)`, `relay.shutdown(grace_s)` (FIN both ways).
An exception raised by a fault resets that connection and is logged (event `error`).

Every application must call `self.record(pipe, **fields)`: it writes a `fault` event
(t_us, session = flow id, fault name, type, direction, params, selector, fields) to the
event log, counts it, and retires the fault when `count` is reached.

Parameter names carry their unit when it is not obvious (`latency_ms`, `after_s`,
`rate_bps`, `limit_bytes`); a `None`-able parameter means "forever"/"unset".
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from harness.protocol import wsframes as fr

if TYPE_CHECKING:
    from ..relay.pipe import Pipe

DIRECTIONS = ("upstream", "downstream", "both")
REGISTRY: dict[str, type[Fault]] = {}


class FaultSpecError(ValueError):
    """A fault spec is wrong; the message names the fault type, the field and the rule."""


_REQUIRED: Any = object()


@dataclass(frozen=True)
class Param:
    """A fault parameter: type, default (omit = required), bounds, choices, None allowed."""

    type: type
    default: Any = _REQUIRED
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def check(self, where: str, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise FaultSpecError(f"{where} must not be null")
        t = self.type
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if t is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, t) or (t in (int, float) and isinstance(value, bool)):
            raise FaultSpecError(f"{where} must be {_type_name(t)}, got {json.dumps(value, default=str)}")
        if self.min is not None and value < self.min:
            raise FaultSpecError(f"{where} must be >= {self.min}, got {value}")
        if self.max is not None and value > self.max:
            raise FaultSpecError(f"{where} must be <= {self.max}, got {value}")
        if self.choices is not None and value not in self.choices:
            raise FaultSpecError(f"{where} must be one of {list(self.choices)}, got {json.dumps(value)}")
        return value

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": _type_name(self.type)}
        if not self.required:
            d["default"] = self.default
        for k in ("min", "max", "choices", "help"):
            v = getattr(self, k)
            if v not in (None, ""):
                d[k] = list(v) if k == "choices" else v
        if self.nullable:
            d["nullable"] = True
        return d


def _type_name(t: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}.get(t, t.__name__)


class Msg:
    """One whole data message seen by message faults. `payload` is unmasked."""

    __slots__ = ("_json", "index", "opcode", "payload", "rsv", "sizes")

    def __init__(self, opcode: int, payload: bytes, index: int, sizes: Sequence[int] = (), rsv: int = 0) -> None:
        self.opcode = opcode  # frames.TEXT or frames.BINARY
        self.payload = payload
        self.index = index  # 0-based number of the original message in this pipe
        self.sizes = list(sizes)  # original fragment payload sizes ([] for made-up messages)
        self.rsv = rsv  # RSV bits of the first frame (RSV1: compressed payload)
        self._json: Any = _REQUIRED

    def replace(self, payload: bytes, opcode: int | None = None) -> Msg:
        """A modified copy that keeps the original index (for selectors)."""
        return Msg(self.opcode if opcode is None else opcode, payload, self.index, (), self.rsv)

    @property
    def is_text(self) -> bool:
        return self.opcode == fr.TEXT

    def json(self) -> Any:
        """The parsed JSON of a text message (None if not text or not JSON); parsed once."""
        if self._json is _REQUIRED:
            self._json = None
            if self.opcode == fr.TEXT:
                with contextlib.suppress(ValueError):
                    self._json = json.loads(self.payload)
        return self._json

    def json_type(self) -> str | None:
        j = self.json()
        t = j.get("type") if isinstance(j, dict) else None
        return t if isinstance(t, str) else None

    def binary_type(self) -> int | None:
        return self.payload[0] if self.opcode == fr.BINARY and self.payload else None

    def __repr__(self) -> str:
        what = self.json_type() if self.is_text else f"binary type={self.binary_type()}"
        return f"Msg(#{self.index} {what} {len(self.payload)} B)"


class _SelState:
    __slots__ = ("count", "last", "rng")

    def __init__(self, seed: int) -> None:
        self.count = 0
        self.rng = random.Random(seed)
        self.last: tuple[int, bool] = (-1, False)


class Selector:
    """Which data messages: JSON `type`, binary type byte, size range, every nth, probability."""

    FIELDS: ClassVar[tuple[str, ...]] = ("json_type", "binary_type", "min_size", "max_size", "nth",
                                         "probability", "seed")

    def __init__(self, json_type: str | Sequence[str] | None = None, binary_type: int | Sequence[int] | None = None,
                 min_size: int = 0, max_size: int | None = None, nth: int | None = None,
                 probability: float = 1.0, seed: int = 0) -> None:
        self.json_type = _as_set("selector.json_type", json_type, str)
        self.binary_type = _as_set("selector.binary_type", binary_type, int)
        if self.binary_type is not None and not all(0 <= b <= 255 for b in self.binary_type):
            raise FaultSpecError(f"selector.binary_type must be 0..255, got {sorted(self.binary_type)}")
        if self.json_type is not None and self.binary_type is not None:
            raise FaultSpecError("selector: json_type and binary_type exclude each other "
                                 "(a message is one or the other)")
        self.min_size = Param(int, min=0).check("selector.min_size", min_size)
        self.max_size = Param(int, min=0, nullable=True).check("selector.max_size", max_size)
        if self.max_size is not None and self.max_size < self.min_size:
            raise FaultSpecError(f"selector.max_size ({self.max_size}) < min_size ({self.min_size})")
        self.nth = Param(int, min=1, nullable=True).check("selector.nth", nth)
        self.probability = Param(float, min=0.0, max=1.0).check("selector.probability", probability)
        self.seed = Param(int).check("selector.seed", seed)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> Selector:
        if spec is None:
            return cls()
        if not isinstance(spec, Mapping):
            raise FaultSpecError(f"selector must be an object, got {json.dumps(spec, default=str)}")
        unknown = sorted(set(spec) - set(cls.FIELDS))
        if unknown:
            raise FaultSpecError(f"selector: unknown field(s) {unknown} (known: {list(cls.FIELDS)})")
        return cls(**spec)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.json_type is not None:
            d["json_type"] = sorted(self.json_type)
        if self.binary_type is not None:
            d["binary_type"] = sorted(self.binary_type)
        if self.min_size:
            d["min_size"] = self.min_size
        if self.max_size is not None:
            d["max_size"] = self.max_size
        if self.nth is not None:
            d["nth"] = self.nth
        if self.probability != 1.0:
            d["probability"] = self.probability
        if self.seed:
            d["seed"] = self.seed
        return d

    @property
    def matches_everything(self) -> bool:
        d = self.to_dict()
        d.pop("seed", None)
        return not d

    def might_match(self, opcode: int, prefix: bytes | memoryview, header: fr.Header) -> bool:
        """Decided at the first frame without counting: False = certainly not selected."""
        if self.json_type is not None and opcode != fr.TEXT:
            return False
        if self.binary_type is not None and (
                opcode != fr.BINARY or (len(prefix) and prefix[0] not in self.binary_type)):
            return False
        if header.fin and not self._size_ok(header.length):  # single frame: size known now
            return False
        return not (self.max_size is not None and header.length > self.max_size)

    def match(self, pipe: Pipe, msg: Msg) -> bool:
        """Counts each original message once per pipe (copies share its index and answer)."""
        st: _SelState = pipe.state_for(self, lambda: _SelState(self.seed))
        if msg.index == st.last[0]:
            return st.last[1]
        r = self._decide(st, msg)
        st.last = (msg.index, r)
        return r

    def _size_ok(self, n: int) -> bool:
        return self.min_size <= n and (self.max_size is None or n <= self.max_size)

    def _decide(self, st: _SelState, m: Msg) -> bool:
        if m.opcode not in (fr.TEXT, fr.BINARY):
            return False
        if self.json_type is not None and m.json_type() not in self.json_type:
            return False
        if self.binary_type is not None and m.binary_type() not in self.binary_type:
            return False
        if not self._size_ok(len(m.payload)):
            return False
        st.count += 1
        if self.nth is not None and st.count % self.nth:
            return False
        return self.probability >= 1.0 or st.rng.random() < self.probability


def _as_set(where: str, v: Any, t: type) -> frozenset[Any] | None:
    if v is None:
        return None
    items = v if isinstance(v, list | tuple | set | frozenset) else [v]
    for x in items:
        if not isinstance(x, t) or isinstance(x, bool):
            raise FaultSpecError(f"{where} must be {_type_name(t)} or a list of them, got {json.dumps(v, default=str)}")
    if not items:
        raise FaultSpecError(f"{where} must not be an empty list")
    return frozenset(items)


class ConnectionFilter:
    """Which connections a fault attaches to: by client TCP port and/or upstream index."""

    FIELDS: ClassVar[tuple[str, ...]] = ("client_port", "upstream")

    def __init__(self, client_port: int | Sequence[int] | None = None,
                 upstream: int | Sequence[int] | None = None) -> None:
        self.client_port = _as_set("connections.client_port", client_port, int)
        self.upstream = _as_set("connections.upstream", upstream, int)

    @classmethod
    def from_spec(cls, spec: Any) -> ConnectionFilter | None:
        if spec is None:
            return None
        if not isinstance(spec, Mapping):
            raise FaultSpecError(f"connections must be an object, got {json.dumps(spec, default=str)}")
        unknown = sorted(set(spec) - set(cls.FIELDS))
        if unknown:
            raise FaultSpecError(f"connections: unknown field(s) {unknown} (known: {list(cls.FIELDS)})")
        return cls(**spec)

    def matches(self, client_port: int | None, upstream: int | None) -> bool:
        return ((self.client_port is None or client_port in self.client_port)
                and (self.upstream is None or upstream in self.upstream))

    def to_dict(self) -> dict[str, Any]:
        return {k: sorted(v) for k in self.FIELDS if (v := getattr(self, k)) is not None}


@dataclass
class ConnectInfo:
    """A new TCP connection, before an upstream is chosen (for `Fault.on_connect`)."""

    client: tuple[str, int]
    seq: int  # connection sequence number in this proxy process (1, 2, ...)


class EventSinkLike(Protocol):
    def emit(self, event: str, session: str | None = None, **fields: Any) -> None: ...


class ProxyServices(Protocol):
    """What the proxy offers to faults that act beyond one connection (relay/state.py)."""

    events: EventSinkLike

    def relays(self) -> list[Any]: ...  # live proxy.relay.relay.Relay objects

    @property
    def upstreams(self) -> list[Any]: ...  # proxy.relay.state.Upstream (index, url, pid, alive, ...)


class Fault:
    """Base class; see the module docstring for the contract."""

    kind: ClassVar[str] = ""  # the spec's "type"; setting it registers the class
    PARAMS: ClassVar[dict[str, Param]] = {}
    needs_messages: ClassVar[bool] = False
    byte_level: ClassVar[bool] = False
    default_direction: ClassVar[str] = "downstream"
    allowed_directions: ClassVar[tuple[str, ...]] = DIRECTIONS
    uses_selector: ClassVar[bool] = True  # False: a selector in the spec is an error
    description: ClassVar[str] = ""

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
        # Runtime state, set by the fault table.
        self.applied = 0
        self.retired: str | None = None  # why it stopped: "count", "duration", "removed"
        self.added_us: int | None = None
        self.events: EventSinkLike | None = None
        self.proxy: ProxyServices | None = None
        self.on_retire: Callable[[Fault, str], None] | None = None
        self.validate()

    # --- hooks (override what you need) ---------------------------------------------------
    def validate(self) -> None:
        """Cross-parameter checks; raise FaultSpecError."""

    def on_added(self, proxy: ProxyServices) -> None: ...

    def on_removed(self, proxy: ProxyServices) -> None: ...

    def on_connect(self, info: ConnectInfo) -> str | None:
        return None

    def on_attach(self, pipe: Pipe) -> None: ...

    def on_detach(self, pipe: Pipe) -> None: ...

    def might_act(self, pipe: Pipe, opcode: int, prefix: bytes | memoryview, header: fr.Header) -> bool:
        return self.active and self.sel.might_match(opcode, prefix, header)

    def on_message(self, pipe: Pipe, msg: Msg) -> list[Msg | bytes] | None:
        return None

    def on_bytes(self, pipe: Pipe, data: bytes | memoryview, nxt: Callable[[bytes | memoryview], None]) -> None:
        nxt(data)

    def on_eof(self, pipe: Pipe, nxt: Callable[[], None]) -> None:
        nxt()

    def new_state(self, pipe: Pipe) -> Any:
        return SimpleNamespace()

    # --- helpers --------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.retired is None

    def selects(self, pipe: Pipe, msg: Msg) -> bool:
        """The selector's verdict for this message, False once the fault retired."""
        return self.active and self.sel.match(pipe, msg)

    def state(self, pipe: Pipe) -> Any:
        return pipe.state_for(self, lambda: self.new_state(pipe))

    def affects(self, seq: int, client_port: int | None = None, upstream: int | None = None) -> bool:
        """Is this connection affected at all? `connections` filter, then toxicity."""
        if self.connections is not None and not self.connections.matches(client_port, upstream):
            return False
        if self.toxicity >= 1.0:
            return True
        return random.Random(f"{self.sel.seed}/{self.name}/{seq}").random() < self.toxicity

    def record(self, pipe: Pipe | None, session: str | None = None, counted: bool = True, **fields: Any) -> None:
        """Log one application (event `fault`) and, if `counted`, count it; retire at `count`."""
        if counted:
            self.applied += 1
        if self.events is not None:
            ev: dict[str, Any] = {"fault": self.name, "type": self.kind,
                                  "direction": pipe.direction if pipe is not None else self.direction,
                                  "params": self.params}
            sel = self.sel.to_dict()
            if sel:
                ev["selector"] = sel
            ev.update(fields)
            self.events.emit("fault", session=pipe.flow_id if pipe is not None else session, **ev)
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
        return d

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {"type": cls.kind, "description": cls.description, "default_direction": cls.default_direction,
                "directions": list(cls.allowed_directions), "message_aware": cls.needs_messages,
                "byte_level": cls.byte_level, "selector": cls.uses_selector,
                "params": {k: p.describe() for k, p in cls.PARAMS.items()}}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.direction} {self.params}>"


Fault._BASE_ATTRS = frozenset(
    {"name", "named", "direction", "sel", "toxicity", "connections", "count", "duration", "params", "applied",
     "retired", "added_us", "events", "proxy", "on_retire", "kind", "active", "state", "record", "retire", "spec",
     "selects", "affects"}
    | {n for n in dir(Fault) if not n.startswith("__")})
