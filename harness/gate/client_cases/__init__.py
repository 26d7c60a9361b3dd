"""The client catalogue: what the client gate runs against a client under test.

One module per group (g1_handshake.py, ...); common.py holds the registry and what
several groups read from the logs.

Every case starts from a fresh world (client.py): the client under test, the fault
proxy (with its wire log) and the reference server. A case's `run` sets up its fault,
starts the client, lets the session run, and judges from the server's and the
proxy's event logs only. Bounds are named in harness/settings.py.

Judged only from outside:
  * what crossed the proxy, and when (`wire` events: before any fault acted);
  * what the server read (`recv`), sent (`send_end`) and held (`session_stats`);
  * the client's connections (`accept`, the proxy's `close`) and its process.
"""

from __future__ import annotations

from . import (  # noqa: F401  (they register)
    g1_handshake,
    g2_clock_sync,
    g3_streaming,
    g4_chunked,
    g5_orphan_headers,
    g6_stalled_payloads,
    g7_slow_network,
    g8_connection_loss,
    g9_bad_input,
    g10_noise,
)
from .common import CLIENT, GROUPS, RUNS, ClientCase

__all__ = ["CLIENT", "GROUPS", "RUNS", "ClientCase"]
