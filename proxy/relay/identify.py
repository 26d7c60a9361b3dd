"""Which Sendspin revision a connection speaks, learnt from the client's first data message.

The two revisions differ from the first message on (docs/architecture.md §1): a `noise`
client opens with a text `client/init`, a `legacy` one with a text `client/hello`.
Anything else (binary, not JSON, another type, a compressed payload) is `unknown`: its
messages are still plain to the proxy, so it is treated like legacy.

What the profile means for the proxy is the connection's *mode*: on a `noise`
connection every message after the cleartext handshake is AEAD ciphertext, and the
proxy holds no keys (`noise-opaque`). The seam for a proxy that terminates Noise towards
each side (a later job): such a connection would report `noise-terminated`, and the
faults that declare that mode would act on its plaintext.

`FirstMessage` sits on the upstream pipe (`Pipe.sniffer`) until the first data message is
whole, so it costs nothing afterwards. It runs before the pipe's faults see the chunk
that completes the message: faults that mean nothing in the connection's mode leave
before they can act on it (proxy/state.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from harness.protocol import wsframes as fr
from harness.protocol.messages import ClientHello, ClientInit

PROFILES = ("legacy", "noise", "unknown")
MODE_OF = {"legacy": "legacy", "noise": "noise-opaque", "unknown": "legacy"}  # what the proxy can read
FIRST_MESSAGE_LIMIT = 256 * 1024  # a first message longer than this is not read whole: `unknown`


def classify(opcode: int, payload: bytes, rsv: int) -> tuple[str, str | None]:
    """(profile, JSON type or None) of a connection from its client's first data message."""
    if opcode != fr.TEXT or rsv & 0x40:  # binary, or compressed (permessage-deflate): not a first message we know
        return "unknown", None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return "unknown", None
    kind = obj.get("type") if isinstance(obj, dict) else None
    if not isinstance(kind, str):
        return "unknown", None
    return {ClientInit.TYPE: "noise", ClientHello.TYPE: "legacy"}.get(kind, "unknown"), kind


class FirstMessage:
    """Reads the client's wire bytes (as `Pipe.sniffer`) until its first data message is
    whole, then calls `done(profile, json_type)` once. Control frames are skipped."""

    def __init__(self, done: Callable[[str, str | None], None]) -> None:
        self.done = done
        self.finished = False
        self._scanner = fr.FrameScanner()
        self._assembler = fr.MessageAssembler()
        self._header: fr.Header | None = None
        self._bytes = 0

    def __call__(self, data: bytes | memoryview) -> None:
        if self.finished:
            return
        for p in self._scanner.split(data):
            if p.header is not None:
                self._header = p.header
            h = self._header
            if h is None or h.is_control:
                continue
            self._bytes += len(p.data)
            if self._bytes > FIRST_MESSAGE_LIMIT:
                self._finish("unknown", None)
                return
            for opcode, payload, _sizes, rsv in self._assembler.feed(p):
                self._finish(*classify(opcode, payload, rsv))
                return

    def _finish(self, profile: str, json_type: str | None) -> None:
        self.finished = True
        self._assembler.reset()
        self.done(profile, json_type)
