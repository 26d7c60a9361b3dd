"""Noise termination: the proxy completes a handshake with each peer and relays plaintext.

With `sendspin-proxy --noise terminate`, a connection whose client opens with a
well-formed `client/init` is not relayed as ciphertext (`noise-opaque`): the proxy is the
client towards the server and the server towards the client, as a TLS-terminating load
balancer is, and the pipes and their faults see plaintext (mode `noise-terminated`).
Which keys it uses on each side: noise_keys.py.

The pipes see a WebSocket stream of the plaintext, so every fault works on it as on
legacy: a JSON message (type 0) is a text message holding the JSON; every other
transport message is a binary message holding its plaintext as is (type byte first:
player audio with its 13-byte header, a fragment with `[1][flags]`); control frames pass
as they came. What leaves a pipe is sealed for the other peer: a text message becomes a
JSON message (fragmented if it must be), a binary message is sealed as is, and a
message a fault cut into WebSocket fragments (orphan_header, stalled_payload) becomes a
Noise fragment sequence with the same cuts: the Noise form of the same fault. A message
is sealed once its frame is whole (half a message cannot be authenticated), so a fault
that stops inside a frame stalls the whole message.

Order: the proxy answers the client only once the server has accepted the proxy.
`client/init` goes upstream (the client's version and suite, the proxy's key for that
client); the server's `server/init` and message 1 are answered; then the client gets
`server/init` and message 1 from the proxy. A `server/error` reaches the client as it came.
A first message that is not a `client/init` the proxy can parse is relayed untouched,
and the connection is what it would be without termination (`legacy`, `noise-opaque`).
Faults act from the transport phase on; the handshakes themselves are the proxy's.

A re-handshake the server starts is answered by the proxy (the server's client) and not
passed on: the client keeps its keys. Until the server's next `server/activate`, the
client's messages are withheld (a client sends nothing new then: connection.md).

A failure ends the connection as a peer would end it, silently (FIN both ways): a failed
handshake, an authentication failure, cleartext after the switch. The `noise_terminate`
event says which side and why.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from harness.protocol import wsframes as fr
from harness.protocol.errors import ProtocolError
from harness.protocol.fragments import (
    FIRST_DATA,
    FLAG_FIRST,
    FLAG_LAST,
    FRAGMENT,
    MAX_PLAINTEXT,
    NEXT_DATA,
    fragment_plaintexts,
)
from harness.protocol.messages import NoiseHandshake, ServerActivate
from harness.protocol.noise_plaintext import JSON_BODY
from harness.protocol.noise_session import NoiseSession, check_client_init

from .noise_keys import NoiseKeys

if TYPE_CHECKING:
    import asyncio

    from .relay import Relay

SIDES = ("client", "server")
REHANDSHAKE = "noise-rehandshake"  # the upstream withhold during a server's re-handshake


class _Reader:
    """One side's raw bytes as whole messages: (opcode, unmasked payload) for data
    messages, (opcode, raw frame bytes) for control frames."""

    def __init__(self) -> None:
        self.scanner = fr.FrameScanner()
        self.assembler = fr.MessageAssembler()
        self.header: fr.Header | None = None
        self.control = bytearray()

    def feed(self, data: bytes | memoryview) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        for p in self.scanner.split(data):
            if p.header is not None:
                self.header = p.header
            assert self.header is not None
            if self.header.is_control:
                self.control += p.data
                if p.frame_end:
                    out.append((self.header.opcode, bytes(self.control)))
                    self.control.clear()
                continue
            out.extend((opcode, payload) for opcode, payload, _sizes, _rsv in self.assembler.feed(p))
        return out


class SealedTransport:
    """Stands in for one socket's transport once the connection is terminated: what the
    pipe writes (frames of plaintext) is sealed into Noise transport messages towards
    that peer; everything else is the real transport's."""

    def __init__(self, real: asyncio.Transport, session: NoiseSession, mask: bool) -> None:
        self.real = real
        self.session = session
        self.mask = mask  # towards the peer the proxy dialled (RFC 6455 §5.3)
        self._scanner = fr.FrameScanner()
        self._header: fr.Header | None = None
        self._frame = bytearray()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def write(self, data: bytes | memoryview) -> None:
        out: list[bytes] = []
        for p in self._scanner.split(data):
            if p.header is not None:
                self._header = p.header
                self._frame = bytearray()
            h = self._header
            assert h is not None
            if h.is_control:  # as it came: the pipe made it valid for this peer
                out.append(bytes(p.data))
                continue
            self._frame += p.data[p.header.size:] if p.header is not None else p.data
            if p.frame_end:
                payload = fr.mask_bytes(self._frame, h.mask) if h.masked else bytes(self._frame)
                out.extend(fr.encode_frame(fr.BINARY, self.session.seal(pt), mask=self.mask)
                           for pt in self._plaintexts(h, payload))
        if out:
            self.real.write(b"".join(out))

    @staticmethod
    def _plaintexts(h: fr.Header, payload: bytes) -> list[bytes]:
        """The plaintexts of one whole frame of the pipe's stream."""
        if h.opcode == fr.CONT:  # a later WebSocket fragment: later Noise fragments
            chunks = [payload[i:i + NEXT_DATA] for i in range(0, len(payload), NEXT_DATA)] or [b""]
            return [bytes([FRAGMENT, FLAG_LAST if h.fin and i == len(chunks) - 1 else 0]) + c
                    for i, c in enumerate(chunks)]
        orig, data = (JSON_BODY, payload) if h.opcode == fr.TEXT else (payload[0] if payload else 0, payload[1:])
        if h.fin:
            if h.opcode == fr.BINARY and len(payload) <= MAX_PLAINTEXT:
                return [payload]  # as is, whatever it holds: a fault's malformed plaintext included
            return list(fragment_plaintexts(orig, data))
        # the first WebSocket fragment of a message: a first Noise fragment, never the last
        first = bytes([FRAGMENT, FLAG_FIRST, orig]) + data[:FIRST_DATA]
        rest = data[FIRST_DATA:]
        return [first] + [bytes([FRAGMENT, 0]) + rest[i:i + NEXT_DATA] for i in range(0, len(rest), NEXT_DATA)]


class NoiseTerminator:
    """The handshakes of one relayed connection, then the plaintext in and out of its pipes."""

    def __init__(self, relay: Relay, keys: NoiseKeys) -> None:
        self.relay = relay
        self.keys = keys
        self.phase = "first-message"  # -> server-handshake -> client-handshake -> transport; or relayed, ended
        self.readers = {side: _Reader() for side in SIDES}
        self.raw: dict[str, list[bytes]] = {side: [] for side in SIDES}  # read before the decision
        self.early_control: list[tuple[str, bytes]] = []  # (side, frame) read before it: passed on either way
        self.waiting: dict[str, list[tuple[int, bytes]]] = {side: [] for side in SIDES}  # early messages
        self.upstream: NoiseSession | None = None  # the proxy as the client, towards the server
        self.downstream: NoiseSession | None = None  # the proxy as the server, towards the client
        self.client_init = ""
        self.client_id: str | None = None
        self.rehandshaking = False

    @property
    def terminated(self) -> bool:
        return self.phase not in ("first-message", "relayed")

    # --- input from the sockets ----------------------------------------------------------
    def receive(self, side: str, data: bytes | memoryview) -> None:
        if self.phase == "relayed":
            self.relay.pipe_from(side).feed(data)
            return
        if self.phase == "ended":
            return
        if self.phase == "first-message":
            self.raw[side].append(bytes(data))
        for opcode, payload in self.readers[side].feed(data):
            if self.phase in ("relayed", "ended"):  # the rest of this chunk went with `raw`
                return
            if opcode >= 8 and self.phase == "first-message":
                self.early_control.append((side, payload))  # relayed with `raw`, or sent on when terminating
            elif opcode >= 8 and self.phase != "transport":
                self._write(self.relay.pipe_from(side).dst, payload)  # a ping or close: on at once
            elif self.phase == "first-message":
                self._first(side, opcode, payload)
            elif self.phase == "transport":
                self._transport(side, opcode, payload)
            elif (side == "server") == (self.phase == "server-handshake"):
                self._handshake(side, opcode, payload)
            else:  # the other peer's turn: kept for when the proxy is ready for it
                self.waiting[side].append((opcode, payload))

    def eof(self, side: str) -> bool:
        """The peer sent FIN; True if the relay should handle it as usual."""
        if self.phase == "first-message":  # before anything to terminate: relayed as it came
            self._relay_untouched()
        if self.phase in ("relayed", "transport"):
            return True
        self._end(side, "the peer closed during the handshake")
        return False

    # --- the handshakes ------------------------------------------------------------------
    def _first(self, side: str, opcode: int, payload: bytes) -> None:
        init = None
        if side == "client" and opcode == fr.TEXT and not self.relay.extensions:
            try:
                init = check_client_init(payload.decode())
            except (ProtocolError, UnicodeDecodeError):
                init = None
        if init is None:  # not ours to terminate: relayed untouched, identified as usual
            self._relay_untouched()
            return
        self.raw = {s: [] for s in SIDES}
        for s, frame in self.early_control:
            self._write(self.relay.pipe_from(s).dst, frame)
        self.client_init = payload.decode()
        self.client_id = init.client_id
        self.phase = "server-handshake"
        self.relay.identify("noise", "client/init")
        self.upstream = NoiseSession("client", self.keys.towards_server(init.client_id), suite=init.suite,  # type: ignore[arg-type]
                                     client_psks=self.keys.psks)
        self._send("server", self.upstream.handshake(None).send)

    def _relay_untouched(self) -> None:
        """Nothing to terminate: the relay feeds its pipes itself from now on."""
        self.phase = "relayed"
        self.relay.terminator = None
        for s in SIDES:
            chunks, self.raw[s] = self.raw[s], []
            for chunk in chunks:
                self.relay.pipe_from(s).feed(chunk)

    def _handshake(self, side: str, opcode: int, payload: bytes) -> None:
        session = self.upstream if side == "server" else self.downstream
        assert session is not None
        text: str | bytes = payload.decode(errors="replace") if opcode == fr.TEXT else payload
        step = session.handshake(text)
        if step.server_error is not None:  # the server refused the client's init: the client hears it
            self._write("client", fr.encode_frame(fr.TEXT, payload, mask=self.relay.dialled == "client"))
            self._log("refused", side="server", reason=step.server_error)
            self.phase = "relayed"
            return
        if step.close:
            self._end(side, str(step.error) if step.error else "the handshake failed")
            return
        self._send(side, step.send)
        if not step.done:
            return
        if side == "server":
            assert self.upstream is not None
            self.downstream = NoiseSession("server", self.keys.towards_client(self.upstream.peer_id),
                                           server_psks=self.keys.psk_for_client)
            self.phase = "client-handshake"
            self._handshake("client", fr.TEXT, self.client_init.encode())
            return
        self._enter_transport()

    def _enter_transport(self) -> None:
        assert self.upstream is not None and self.downstream is not None
        self.phase = "transport"
        for side, session in (("client", self.downstream), ("server", self.upstream)):
            self.relay.tr[side] = SealedTransport(self.relay.tr[side], session, mask=self.relay.dialled == side)  # type: ignore[assignment]
        self._log("established", suite=self.downstream.suite, upstream_client_id=self.upstream.identity.peer_id,
                  server_id=self.upstream.peer_id, proxy_server_id=self.downstream.identity.peer_id)
        for side in SIDES:
            early, self.waiting[side] = self.waiting[side], []
            for opcode, payload in early:
                if self.phase == "transport":
                    self._transport(side, opcode, payload)

    # --- transport -----------------------------------------------------------------------
    def _transport(self, side: str, opcode: int, payload: bytes) -> None:
        pipe = self.relay.pipe_from(side)
        if opcode >= 8:
            pipe.feed(payload)
            return
        session = self.downstream if side == "client" else self.upstream
        assert session is not None
        if opcode != fr.BINARY:
            self._end(side, "a text message after the switch to transport mode")
            return
        try:
            plaintext = session.open(payload)
        except ProtocolError as exc:
            self._end(side, str(exc))
            return
        if plaintext[:1] == bytes([JSON_BODY]):
            if side == "server" and self._server_rehandshake(plaintext[1:]):
                return
            pipe.feed(fr.encode_frame(fr.TEXT, plaintext[1:]))
        else:
            pipe.feed(fr.encode_frame(fr.BINARY, plaintext))

    def _server_rehandshake(self, body: bytes) -> bool:
        """A server's re-handshake message 1 is the proxy's to answer (True: consumed); its
        next server/activate lets the client's messages through again."""
        if b"noise/handshake" not in body and not (self.rehandshaking and ServerActivate.TYPE.encode() in body):
            return False
        try:
            doc = json.loads(body)
        except ValueError:
            return False
        kind = doc.get("type") if isinstance(doc, dict) else None
        if kind == ServerActivate.TYPE and self.rehandshaking:
            self.rehandshaking = False
            self.relay.pipes["upstream"].unwithhold(REHANDSHAKE)
            return False
        if kind != NoiseHandshake.TYPE or not isinstance(doc.get("payload"), dict):
            return False
        assert self.upstream is not None
        self.relay.pipes["upstream"].withhold(REHANDSHAKE)
        self.rehandshaking = True
        step = self.upstream.handshake(NoiseHandshake(data=str(doc["payload"].get("data", ""))))
        if step.close:
            self._end("server", str(step.error) if step.error else "the re-handshake failed")
            return True
        for ciphertext in step.send:  # message 2, under the old keys
            self._write("server", fr.encode_frame(fr.BINARY, ciphertext, mask=self.relay.dialled == "server"))
        self._log("rehandshake", side="server")
        return True

    # --- output and endings --------------------------------------------------------------
    def _send(self, side: str, messages: tuple[str | bytes, ...]) -> None:
        mask = self.relay.dialled == side
        self._write(side, b"".join(fr.encode_frame(fr.TEXT if isinstance(m, str) else fr.BINARY,
                                                   m.encode() if isinstance(m, str) else m, mask=mask)
                                   for m in messages))

    def _write(self, side: str, data: bytes) -> None:
        """Frames of the proxy's own to the peer's socket (already sealed where they must be)."""
        tr = self.relay.tr[side]
        tr = tr.real if isinstance(tr, SealedTransport) else tr
        if data and not tr.is_closing():
            tr.write(data)

    def _end(self, side: str, reason: str) -> None:
        """Close both peers without a word, as a peer ends a failed Noise session."""
        self._log("failed", side=side, reason=reason)
        self.phase = "ended"
        self.relay.shutdown()

    def _log(self, stage: str, **fields: Any) -> None:
        if self.relay.events is not None:
            self.relay.events.emit("noise_terminate", session=self.relay.flow_id, stage=stage,
                                   conn_seq=self.relay.seq, client_id=self.client_id, **fields)
