"""Group 8: connection loss."""

from __future__ import annotations

from ...settings import Bounds
from ..case import Severity
from ..client import ClientWorld
from ..verdict import Judgement
from .common import client_case, exited, judge_recovery, streaming

SERVER_REDIALS = ("Server-initiated, it is the server that dials again (spec: a client gone without "
                  "client/goodbye is assumed to restart, and the server reconnects; ours after 0.1 s, backing off): "
                  "the client must keep listening and accept the new dial.")


@client_case("8.1", "Reconnects when its worker is killed (SIGKILL)",
             description="Two workers behind the proxy; once audio flows, the worker serving the client is killed.",
             expectation="The client notices the lost connection, reconnects (the proxy's pool sends it to the "
                         "live worker) and streams again within the bound.",
             source="field: a client that never reconnects after its server restarts", workers=2,
             inapplicable={"server": "server-initiated: one reference server process dials, there is no worker to "
                                     "kill; what the client sees of its server dying (the connection lost without a "
                                     "close, then the server's next dial) is case 8.2"})
async def worker_killed(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    up = await streaming(w, j)
    if up is None:
        return
    fault = await w.proxy.add({"type": "worker_crash", "action": "kill", "upstream": up["upstream"]})
    applied = await w.proxy.applied(fault["name"])
    await judge_recovery(w, b, j, applied["t_us"])


@client_case("8.2", "Reconnects after a TCP RST",
             description="Once audio flows, the proxy resets the client's connection (RST both ways). "
                         + SERVER_REDIALS,
             expectation="The client reconnects (server-initiated: accepts the server's next dial) and streams "
                         "again within the bound.",
             source="spec: connections may drop; field: half-open and reset sockets (sendspin-go#115)")
async def tcp_reset(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    if await streaming(w, j) is None:
        return
    fault = await w.proxy.add({"type": "reset_peer", "direction": "downstream", "count": 1})
    applied = await w.proxy.applied(fault["name"])
    await judge_recovery(w, b, j, applied["t_us"])


OUTAGE_S = 15.0


@client_case("8.6", "Backs off while the server is down; no reconnect storm",
             description=f"Once audio flows, the server becomes unreachable for {OUTAGE_S:.0f} s: the proxy resets "
                         "the connection and refuses every new one. Then it is back.",
             expectation="The client retries with a backoff (a bounded number of attempts in the outage), and "
                         "streams again once the server is back.",
             source="RFC 6455 §7.2.3 (clients SHOULD back off); field: a client reconnecting every ~20 s all day "
                    "(music-assistant support#6314), thousands of handshakes a day",
             severity=Severity.SHOULD, timeout_s=90.0,
             inapplicable={"server": "server-initiated: retrying is the server's job (it dials again, with backoff), "
                                     "and a client that listens must not dial (spec: \"Do not manually connect to "
                                     "servers if you are advertising _sendspin._tcp\"); accepting the next dial is "
                                     "case 8.2"})
async def no_storm(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    if await streaming(w, j) is None:
        return
    fault = await w.proxy.add({"type": "down", "existing": "reset", "duration": OUTAGE_S})
    start = w.events().select("fault_added")[-1]["t_us"]
    await w.observe(OUTAGE_S)
    if exited(w, j):
        j.require(False, "the client gave up during the outage: it does not reconnect at all")
        return
    ev = w.events()
    attempts = [r for r in ev.select("refused") if r["t_us"] >= start]
    j.check(f"connection attempts in a {OUTAGE_S:.0f} s outage", len(attempts), "<=", b.client_attempts_per_outage,
            "", "client_attempts_per_outage")
    ended = next((r["t_us"] for r in ev.select("fault_removed", fault=fault["name"])), None)
    if j.require(ended is not None, f"the outage fault {fault['name']} was not retired after {OUTAGE_S:.0f} s"):
        assert ended is not None
        await judge_recovery(w, b, j, ended)
