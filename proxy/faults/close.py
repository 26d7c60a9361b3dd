"""close: the proxy closes the connection with a given WebSocket close code and reason."""

from __future__ import annotations

import asyncio
from typing import Any

from harness.protocol import wsframes as fr

from ..relay.connection import Channel, Connection
from ..relay.message import Msg
from .fault import LEGACY, NOISE_OPAQUE, NOISE_TERMINATED, Fault, FaultState
from .params import FaultSpecError, Param

MAX_REASON_BYTES = 123  # a control frame carries at most 125 bytes: 2 for the code


def sendable(code: int) -> bool:
    """RFC 6455 §7.4: codes an endpoint may put on the wire (1004 reserved; 1005, 1006 and
    1015 only describe a missing code, an abnormal end and a TLS failure)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class CloseState(FaultState["Close"]):
    def __init__(self, fault: Close, conn: Channel) -> None:
        super().__init__(fault, conn)
        self.timer: asyncio.TimerHandle | None = None
        if fault.after_s is not None and fault.active:
            self.timer = conn.later(fault.after_s, self._fire, None)

    def might_act(self, opcode: int, prefix: bytes | memoryview, header: fr.Header) -> bool:
        # a timed close leaves every message alone: they stream through untouched
        return self.fault.after_s is None and super().might_act(opcode, prefix, header)

    def on_message(self, msg: Msg) -> list[Msg | bytes] | None:
        if self.fault.after_s is not None or not self.selects(msg):
            return None
        self._fire(msg)
        return []  # the trigger is not forwarded: the close takes its place

    def _fire(self, msg: Msg | None) -> None:
        self.timer = None
        f, conn = self.fault, self.conn
        if not f.active or conn.ending:
            return  # ending already (the other direction's timer, a reset, a shutdown)
        trigger: dict[str, Any] = {"after_s": f.after_s} if msg is None else {
            "index": msg.index, "json_type": msg.json_type(), "binary_type": msg.binary_type()}
        self.record(code=f.code, reason=f.reason, **trigger)
        conn.close(f.code, f.reason, grace_s=f.grace_s)

    def detach(self) -> None:
        # a timer still pending is a close not made yet: removed, expired or counted out,
        # the connection is left alone
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Close(Fault):
    """Close the connection with a close frame carrying `code` and `reason`, sent by the
    proxy to both peers (masked towards the server), each as if the other peer had closed;
    then forwarding stops, FIN follows, and the sockets are closed once both peers sent
    FIN or after `grace_s`. The close frame never lands inside another frame or between
    a message's fragments.

    Trigger: `after_s` seconds after the fault meets the connection (its upgrade, or the
    fault's addition for live connections), or, with `after_s` null, the first data
    message of the fault's direction that matches the selector (that message is not
    forwarded). `code` null sends a close frame without a status code. Codes a peer may
    not send (1004-1006, 1015, outside 1000-4999) need `allow_invalid: true`: a way to
    check that a receiver fails the connection (1002) on them."""

    kind = "close"
    modes = {LEGACY: "", NOISE_TERMINATED: "", NOISE_OPAQUE: (  # noqa: RUF012 - class-level declaration, never mutated
        "the close frame is WebSocket's, outside the encryption: as described; a close at a message "
        "selects it by size, nth or a cleartext handshake type (the others are encrypted)"
    )}
    needs_messages = True
    default_direction = "downstream"
    PARAMS = {  # noqa: RUF012 - class-level declaration, never mutated
        "code": Param(int, 1000, min=0, max=65535, nullable=True, help="close code (null: no code at all)"),
        "reason": Param(str, "", help=f"close reason, at most {MAX_REASON_BYTES} UTF-8 bytes"),
        "after_s": Param(float, None, min=0.0, nullable=True,
                         help="close this long after meeting the connection; null = at the first selected message"),
        "grace_s": Param(float, 2.0, min=0.0, help="then the sockets are closed even if a peer did not close"),
        "allow_invalid": Param(bool, False, help="allow codes RFC 6455 forbids on the wire"),
    }
    State = CloseState
    code: int | None
    reason: str
    after_s: float | None
    grace_s: float
    allow_invalid: bool

    def cannot_act_on(self, conn: Connection) -> str | None:
        if self.after_s is None:
            return super().cannot_act_on(conn)
        # a timed close reads no message: it works whatever the extensions did to the payloads
        return self.refused_by_mode(conn)

    def validate(self) -> None:
        if len(self.reason.encode()) > MAX_REASON_BYTES:
            raise FaultSpecError(f"close: parameter 'reason' must be at most {MAX_REASON_BYTES} UTF-8 bytes "
                                 f"(a control frame holds 125), got {len(self.reason.encode())}")
        if self.code is None and self.reason:
            raise FaultSpecError("close: a reason needs a code (a close frame without a code has no reason)")
        if self.code is not None and not self.allow_invalid and not sendable(self.code):
            raise FaultSpecError(f"close: parameter 'code' {self.code} must not be sent on the wire "
                                 "(RFC 6455 §7.4: 1000-1003, 1007-1014, 3000-4999); set allow_invalid to send it")
        if self.after_s is not None and not self.sel.matches_everything:
            raise FaultSpecError("close: after_s (a timed close) and a selector (a close at a message) exclude "
                                 "each other")
