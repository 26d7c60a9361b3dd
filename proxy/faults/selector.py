"""Which messages and which connections a fault acts on.

`Selector` (data messages): `json_type` (str or list), `binary_type` (int 0..255 or
list), `min_size`/`max_size` (payload bytes of the whole message), `nth` (every nth
match: n, 2n, ...), `probability` (per matching message), `seed`. Its counters and
random stream are per pipe (`new_state()`, one per connection and direction), so a run
is reproducible whatever other connections do.

`ConnectionFilter` (the spec's `connections`): `client_port` (the client's TCP source
port, as `GET /connections` shows it) and/or `upstream` (the index of the upstream the
connection went to), each an int or a list.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from harness.protocol import wsframes as fr

from ..relay.message import Msg
from .params import FaultSpecError, Param, type_name


class SelectorState:
    """A selector's counter and random stream on one pipe."""

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

    def opaque_refusal(self, readable: frozenset[str]) -> str | None:
        """Why this selector can match nothing on a noise session the proxy holds no keys
        for, whose only readable messages are text ones of the `readable` JSON types (its
        cleartext handshake); None: it can match something (sizes, nth and probability
        need no content)."""
        if self.binary_type is not None:
            return (f"it selects binary_type {','.join(map(str, sorted(self.binary_type)))}, but a noise session's "
                    "binary messages are AEAD ciphertext: the type byte is inside the encryption, and the first "
                    "byte the proxy sees is random")
        if self.json_type is not None and not self.json_type & readable:
            return (f"it selects json_type {','.join(sorted(self.json_type))}, which a noise session sends only "
                    f"inside the encryption (the proxy reads JSON only in the cleartext handshake: "
                    f"{', '.join(sorted(readable))})")
        return None

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

    def new_state(self) -> SelectorState:
        """Per-pipe counter and random stream (seeded by `seed` alone: every connection
        draws the same choices)."""
        return SelectorState(self.seed)

    def match(self, st: SelectorState, msg: Msg) -> bool:
        """Counts each original message once per pipe (copies share its index and answer)."""
        if msg.index == st.last[0]:
            return st.last[1]
        r = self._decide(st, msg)
        st.last = (msg.index, r)
        return r

    def _size_ok(self, n: int) -> bool:
        return self.min_size <= n and (self.max_size is None or n <= self.max_size)

    def _decide(self, st: SelectorState, m: Msg) -> bool:
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
            raise FaultSpecError(f"{where} must be {type_name(t)} or a list of them, got {json.dumps(v, default=str)}")
    if not items:
        raise FaultSpecError(f"{where} must not be an empty list")
    return frozenset(items)


class ConnectionFilter:
    """Which connections a fault attaches to: by client TCP port, upstream index and/or the
    proxy's connection number (`conn_seq` in its events: one connection whoever dialled;
    a listening client's port is the same for every connection the server dials)."""

    FIELDS: ClassVar[tuple[str, ...]] = ("client_port", "upstream", "conn_seq")

    def __init__(self, client_port: int | Sequence[int] | None = None,
                 upstream: int | Sequence[int] | None = None, conn_seq: int | Sequence[int] | None = None) -> None:
        self.client_port = _as_set("connections.client_port", client_port, int)
        self.upstream = _as_set("connections.upstream", upstream, int)
        self.conn_seq = _as_set("connections.conn_seq", conn_seq, int)

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

    def matches(self, client_port: int | None, upstream: int | None, conn_seq: int | None = None) -> bool:
        return ((self.client_port is None or client_port in self.client_port)
                and (self.upstream is None or upstream in self.upstream)
                and (self.conn_seq is None or conn_seq in self.conn_seq))

    def to_dict(self) -> dict[str, Any]:
        return {k: sorted(v) for k in self.FIELDS if (v := getattr(self, k)) is not None}
