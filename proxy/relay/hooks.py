"""`PipeHooks`: what a pipe needs from a fault attached to it.

The relay knows no fault class: whatever is attached to a pipe (one object per fault
and pipe, made by the fault with the pipe's `Channel`, see connection.py) only has to
answer these. Called by the pipe, in the order the faults were attached:

  * `might_act(opcode, prefix, header)` at the first frame of each data message, for
    objects with `needs_messages`: False lets the message stream through untouched (no
    buffering); True has it reassembled and handed to `on_message`. `prefix` is the
    first <=16 payload bytes, unmasked; `header.length` is the whole message's when
    `header.fin`. Must not count or change anything.
  * `on_message(msg)`: None = unchanged (original bytes, masks, fragments); otherwise
    the replacement: `Msg` items are encoded as one frame each, `bytes` items are frames
    already encoded (`Channel.encode`) and pass later message hooks untouched.
  * `on_bytes(data, nxt)` / `on_eof(nxt)`, for objects with `byte_level`: this
    direction's wire bytes (after the message hooks) and the source's FIN; call `nxt`
    now or later, in order.
  * `detach()`: the fault leaves the pipe (removed or retired, not when the connection
    ends); it is still in the chain, so `Channel.emit(data, after=self)` works.

An exception raised by a hook resets the connection and is logged (event `error`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from harness.protocol import wsframes as fr

from .message import Msg


class PipeHooks(Protocol):
    @property
    def name(self) -> str: ...  # shown in the pipe's stats

    @property
    def needs_messages(self) -> bool: ...

    @property
    def byte_level(self) -> bool: ...

    def might_act(self, opcode: int, prefix: bytes | memoryview, header: fr.Header) -> bool: ...

    def on_message(self, msg: Msg) -> list[Msg | bytes] | None: ...

    def on_bytes(self, data: bytes | memoryview, nxt: Callable[[bytes | memoryview], None]) -> None: ...

    def on_eof(self, nxt: Callable[[], None]) -> None: ...

    def detach(self) -> None: ...
