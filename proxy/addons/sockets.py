"""Kernel socket buffers of the proxy's own sockets: fixed, small, set before data flows.

Linux autotunes a TCP receive buffer up to `net.ipv4.tcp_rmem` max (32 MiB here) while
the proxy reads; a fault that then holds a sender (slow_reader, timeout, a paused pipe)
would see that much in-flight data absorbed in the proxy's kernel before the sender met
any backpressure (measured: a `slow_reader` at 0 B/s not felt by the server for > 20 s).
A fixed SO_RCVBUF/SO_SNDBUF bounds it. It must be set before the peer has sent much:
shrinking the buffer of a live connection below its advertised window makes the kernel
drop in-window segments and both directions back off (NOTES.md §2). So: the client
socket when mitmproxy reports it connected (it has sent at most the HTTP upgrade), the
upstream socket right after its TCP connect (nothing sent either way yet).

On loopback a 128 KiB buffer (the kernel doubles it) carries several GB/s, so the cost
is nothing there; across a real network raise `--socket-buffer` or set it to 0 (the
kernel's autotuning, and slow backpressure).
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from mitmproxy import connection, ctx
from mitmproxy.proxy import server_hooks


class SocketBuffers:
    name = "socketbuffers"

    def __init__(self, size: int) -> None:
        self.size = size

    def _apply(self, client: connection.Client, conn: connection.Connection) -> None:
        handler = ctx.master.addons.get("proxyserver").connections.get(client.id)
        io = handler.transports.get(conn) if handler is not None else None
        sock: Any = io.writer.get_extra_info("socket") if io is not None and io.writer is not None else None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.size)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.size)

    def client_connected(self, client: connection.Client) -> None:
        if self.size:
            self._apply(client, client)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        if self.size:
            self._apply(data.client, data.server)
