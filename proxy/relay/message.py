"""`Msg`: one whole data message, as the pipe hands it to message faults."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

from harness.protocol import wsframes as fr

_UNPARSED: Any = object()


class Msg:
    """One whole data message seen by message faults. `payload` is unmasked."""

    __slots__ = ("_json", "index", "opcode", "payload", "rsv", "sizes")

    def __init__(self, opcode: int, payload: bytes, index: int, sizes: Sequence[int] = (), rsv: int = 0) -> None:
        self.opcode = opcode  # fr.TEXT or fr.BINARY
        self.payload = payload
        self.index = index  # 0-based number of the original message in this pipe
        self.sizes = list(sizes)  # original fragment payload sizes ([] for made-up messages)
        self.rsv = rsv  # RSV bits of the first frame (RSV1: compressed payload)
        self._json: Any = _UNPARSED

    def replace(self, payload: bytes, opcode: int | None = None) -> Msg:
        """A modified copy that keeps the original index (for selectors)."""
        return Msg(self.opcode if opcode is None else opcode, payload, self.index, (), self.rsv)

    @property
    def is_text(self) -> bool:
        return self.opcode == fr.TEXT

    def json(self) -> Any:
        """The parsed JSON of a text message (None if not text or not JSON); parsed once."""
        if self._json is _UNPARSED:
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

    def fields(self) -> dict[str, Any]:
        """What an event says about this message: index, json_type, binary_type, size."""
        return {"index": self.index, "json_type": self.json_type(), "binary_type": self.binary_type(),
                "size": len(self.payload)}

    def __repr__(self) -> str:
        what = self.json_type() if self.is_text else f"binary type={self.binary_type()}"
        return f"Msg(#{self.index} {what} {len(self.payload)} B)"
