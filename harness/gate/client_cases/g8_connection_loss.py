"""Group 8: connection loss."""

from __future__ import annotations

from ...settings import Bounds
from ..case import Severity
from ..client import ClientWorld
from ..verdict import Judgement
from ..wire import flows
from .common import RUNS_IN_NOISE, client_case, exited, fault_acted, judge_dead_session, judge_recovery, ms, streaming

FIELD_BLACKHOLE = "field: sendspin-cpp#119 (a client never notices a blackholed socket)"

SERVER_REDIALS = ("Server-initiated, it is the server that dials again (spec: a client gone without "
                  "client/goodbye is assumed to restart, and the server reconnects; ours after 0.1 s, backing off): "
                  "the client must keep listening and accept the new dial.")


@client_case("8.1", noise=RUNS_IN_NOISE, title="Reconnects when its worker is killed (SIGKILL)",
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
    await judge_recovery(w, b, j, applied["t_us"], lost=up["session"])


@client_case("8.2", noise=RUNS_IN_NOISE, title="Reconnects after a TCP RST",
             description="Once audio flows, the proxy resets the client's connection (RST both ways). "
                         + SERVER_REDIALS,
             expectation="The client reconnects (server-initiated: accepts the server's next dial) and streams "
                         "again within the bound.",
             source="spec: connections may drop; field: half-open and reset sockets (sendspin-go#115)")
async def tcp_reset(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    up = await streaming(w, j)
    if up is None:
        return
    fault = await w.proxy.add({"type": "reset_peer", "direction": "downstream", "count": 1})
    applied = await w.proxy.applied(fault["name"])
    await judge_recovery(w, b, j, applied["t_us"], lost=up["session"])


@client_case("8.3", noise=RUNS_IN_NOISE, title="Reconnects when its worker hangs (SIGSTOP)",
             description="Two workers behind the proxy; once audio flows, the worker serving the client is "
                         "stopped (SIGSTOP): its TCP connections stay open, nothing answers (no audio, no "
                         "server/time, no pong). The reference coordinator kills a worker hung for its heartbeat "
                         "timeout (1 s), which then ends the connection; a client that notices the silence "
                         "itself may leave sooner.",
             expectation="The client gives the hung session up within the bound, reconnects (the proxy's pool "
                         "sends it to the live worker) and streams again.",
             source=f"field: a server that hangs (a deadlock, a stopped VM) sends no FIN; {FIELD_BLACKHOLE}",
             workers=2, timeout_s=90.0,
             inapplicable={"server": "server-initiated: one reference server process dials, there is no worker to "
                                     "stop; what the client sees of a hung server (a connection where nothing "
                                     "arrives) is case 8.4"})
async def worker_hung(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    up = await streaming(w, j)
    if up is None:
        return
    fault = await w.proxy.add({"type": "worker_crash", "action": "stop", "upstream": up["upstream"]})
    applied = await w.proxy.applied(fault["name"])
    if not j.require("error" not in applied, f"the worker could not be stopped: {applied.get('error')}"):
        return
    await judge_dead_session(w, b, j, up["session"], applied["t_us"])
    exits = w.events().select("worker_exit")
    if exits:
        j.note(f"the coordinator found the worker {exits[0]['how']} {ms(exits[0]['t_us'] - applied['t_us'])} ms "
               "after the stop")


@client_case("8.4", noise=RUNS_IN_NOISE, title="Notices a half-open connection (blackhole)",
             description="Once audio flows, the proxy stops forwarding the client's connection both ways, for "
                         "good: no FIN, no RST, no close frame; both sockets stay open and nothing arrives (as "
                         "when a NAT entry or a Wi-Fi link silently dies).",
             expectation="The client notices the dead connection (missing server/time replies, or a keepalive "
                         "without its pong) within the bound, gives it up, reconnects and streams again.",
             source=f"RFC 6455 §5.5.2 (a ping verifies that the peer is still responsive); {FIELD_BLACKHOLE}; "
                    "sendspin-go#115 (half-open sockets)", timeout_s=90.0)
async def half_open(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    up = await streaming(w, j)
    if up is None:
        return
    # count 1: this connection only (it is the only one); the client's next one works
    fault = await w.proxy.add({"type": "timeout", "direction": "both", "count": 1})
    applied = await w.proxy.applied(fault["name"])
    # Server-initiated, the client's give-up never reaches the dialling server (the proxy
    # reads neither side): the server dialling again is its own watchdog's job, not judged here.
    dialled = w.initiator == "server"
    if dialled:
        j.note("server-initiated: judged until the client gives the connection up (the kernel's view of its "
               "socket); dialling again is the server's job")
    await judge_dead_session(w, b, j, up["session"], applied["t_us"], recover=not dialled)
    fault_acted(w.events(), fault["name"], j)


CLOSE_CODES = ((1001, "going away"), (1011, "internal error"), (4001, "slow reader"))


@client_case("8.5", noise=RUNS_IN_NOISE, title="Reconnects after the server closes with 1001, 1011 and 4001",
             description="Once audio flows, the server's side closes the connection with a close frame: 1001 "
                         "(going away), then, once the client streams again, 1011 (internal error), then 4001 "
                         "(the reference server's slow-reader close).",
             expectation="After each close the client reconnects (after a short backoff: its delay is reported) "
                         "and streams again within the bound.",
             source="RFC 6455 §7.2.3 (reconnect with a backoff); field: a client that never reconnects after its "
                    "server restarts", timeout_s=90.0)
async def server_closes(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    if await streaming(w, j) is None:
        return
    for code, reason in CLOSE_CODES:
        before, current = len(j.failures), flows(w.events())[-1]
        # named apart: a fault's events are found by its name, and a retired one's name is free again
        fault = await w.proxy.add({"type": "close", "name": f"close-{code}", "direction": "downstream",
                                   "code": code, "reason": reason, "after_s": 0.0, "count": 1})
        applied = await w.proxy.applied(fault["name"])
        await judge_recovery(w, b, j, applied["t_us"], lost=current, what=f"close {code}")
        if len(j.failures) > before:
            return  # it did not come back: the next close would test nothing
        reconnect = next(r for r in w.events().select("accept", proc="proxy") if r["t_us"] > applied["t_us"])
        j.report(f"reconnected after close {code}", ms(reconnect["t_us"] - applied["t_us"]), "ms")


OUTAGE_S = 15.0
RETIRE_GRACE_S = 2.0


@client_case("8.6", noise=RUNS_IN_NOISE, title="Backs off while the server is down; no reconnect storm",
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
    up = await streaming(w, j)
    if up is None:
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
    # the proxy retires it on its own timer: its event may land just after our wait ended
    ended = await w.until("the outage's end", lambda ev: next(
        (r["t_us"] for r in ev.select("fault_removed", fault=fault["name"])), None), RETIRE_GRACE_S)
    if j.require(ended is not None, f"the outage fault {fault['name']} was not retired after {OUTAGE_S:.0f} s"):
        assert ended is not None
        await judge_recovery(w, b, j, ended, lost=up["session"])
