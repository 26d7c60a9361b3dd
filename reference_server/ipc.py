"""Coordinator <-> worker messages over one SOCK_SEQPACKET socketpair per worker.

Why this IPC: a datagram-like socketpair keeps message boundaries, costs one
send per chunk per worker, and never blocks the coordinator: its end is
non-blocking and a chunk the worker's socket buffer cannot take is dropped
(`ipc_drop` in the log; the worker's sessions skip it like any late chunk).
A stopped worker therefore costs the coordinator nothing, and a dead one
shows at once as EOF/EPIPE on the socket, besides its process sentinel.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .timeline import Chunk

MAX_MESSAGE = 256 * 1024

HELLO = 1      # coordinator -> worker: rate, the noise private key (the cluster's one identity), source kind
CHUNK = 2      # coordinator -> worker: one timeline chunk + canonical bytes
READY = 3      # worker -> coordinator: its bound ports (WebSocket, control)
HEARTBEAT = 4  # worker -> coordinator: every heartbeat interval, with its counts
STATUS = 5     # coordinator -> worker: the cluster's status (JSON), for the worker's /api/status

_KIND = struct.Struct("B")
_HELLO = struct.Struct(">IB")  # rate, key length (0: noise not served)
_CHUNK = struct.Struct(">qqIqq")
_READY = struct.Struct(">HH")
_HEARTBEAT = struct.Struct(">IIB")


@dataclass(frozen=True)
class Hello:
    rate: int
    source_kind: str
    identity: bytes = b""  # X25519 private key; empty when the cluster does not serve noise


@dataclass(frozen=True)
class Ready:
    port: int
    control_port: int


@dataclass(frozen=True)
class Heartbeat:
    listeners: int
    sessions: int
    wants_audio: bool


def hello(rate: int, source_kind: str, identity: bytes = b"") -> bytes:
    return _KIND.pack(HELLO) + _HELLO.pack(rate, len(identity)) + identity + source_kind.encode()


def chunk(c: Chunk, canonical: bytes) -> bytes:
    return _KIND.pack(CHUNK) + _CHUNK.pack(c.seq, c.start_frame, c.frames, c.ts_us, c.end_us) + canonical


def ready(port: int, control_port: int) -> bytes:
    return _KIND.pack(READY) + _READY.pack(port, control_port)


def heartbeat(listeners: int, sessions: int, wants_audio: bool) -> bytes:
    return _KIND.pack(HEARTBEAT) + _HEARTBEAT.pack(listeners, sessions, wants_audio)


def status(cluster_json: str) -> bytes:
    return _KIND.pack(STATUS) + cluster_json.encode()


def decode(data: bytes) -> Hello | tuple[Chunk, bytes] | Ready | Heartbeat | str:
    """One message: Hello, (Chunk, canonical), Ready, Heartbeat, or STATUS JSON text."""
    if not data:
        raise ValueError("empty IPC message")
    kind, body = data[0], memoryview(data)[1:]
    if kind == HELLO:
        rate, key_len = _HELLO.unpack_from(body)
        key_end = _HELLO.size + key_len
        return Hello(rate, bytes(body[key_end:]).decode(), bytes(body[_HELLO.size : key_end]))
    if kind == CHUNK:
        seq, start, frames, ts, end = _CHUNK.unpack_from(body)
        return Chunk(seq, start, frames, ts, end), bytes(body[_CHUNK.size :])
    if kind == READY:
        return Ready(*_READY.unpack_from(body))
    if kind == HEARTBEAT:
        listeners, sessions, wants = _HEARTBEAT.unpack_from(body)
        return Heartbeat(listeners, sessions, bool(wants))
    if kind == STATUS:
        return bytes(body).decode()
    raise ValueError(f"unknown IPC message kind {kind}")
