"""Group 6: stalled payloads (the server's side of a message stops coming)."""

from __future__ import annotations

from typing import Any

from ...protocol import PLAYER_AUDIO
from ...settings import Bounds
from ..case import Severity
from ..client import ClientWorld
from ..verdict import Judgement
from .common import (
    RUNS_IN_NOISE,
    SPEC_TIME,
    TERMINATED,
    check_gap,
    client_case,
    fault_acted,
    flow_seq,
    judge_dead_session,
    judge_recovery,
    streaming,
    time_gaps,
)

STALL_S = 3.0  # a stall a live server recovers from: shorter than any sensible dead-session timer
AFTER_STALL_S = 1.0  # watched after the stall ended
AFTER_RECOVERY_S = 0.5  # watched once the client streams again
READ_SETTLE_US = 500_000  # what piled up in the stall is read within this after it ends
FIELD_BLACKHOLE = "field: sendspin-cpp#119 (a client never notices a blackholed socket)"


def _stall(**params: Any) -> dict[str, Any]:
    """An audio chunk cut after its first fragment (FIN=0); the rest withheld for `stall_s`
    (None: for good), and everything behind it, pongs and server/time included."""
    return {"type": "stalled_payload", "direction": "downstream", "binary_type": PLAYER_AUDIO, "count": 1,
            "mode": "frame", **params}


@client_case("6.1", noise=RUNS_IN_NOISE, noise_proxy=TERMINATED,
             title=f"An audio message stalled for {STALL_S:.0f} s mid-message, then completed",
             description=f"Once audio flows, the proxy sends the first fragment (FIN=0) of an audio chunk and "
                         f"withholds the rest, and everything after it, for {STALL_S:.0f} s; then all follows "
                         f"intact. The session is watched for {AFTER_STALL_S:.0f} s more.",
             expectation="The client keeps sending client/time through the stall, and afterwards reads the rest "
                         "and streams on (on this connection, or on a new one if it gave the stalled one up).",
             source=f"{SPEC_TIME}; RFC 6455 §5.4 (a message may be fragmented, its frames arrive when they "
                    "arrive); field: a reader that waits for the whole message starves everything else",
             roles=("player",))
async def stall_then_resume(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    if await streaming(w, j) is None:
        return
    fault = await w.proxy.add(_stall(stall_s=STALL_S))
    start = (await w.proxy.applied(fault["name"]))["t_us"]
    ended = start + int(STALL_S * 1e6)
    await w.observe(STALL_S + AFTER_STALL_S)
    ev = w.events()
    fault_acted(ev, fault["name"], j)
    end = max(r["t_us"] for r in ev.records)
    times, gap = time_gaps(ev, start, end)
    check_gap(j, b, gap)
    await judge_recovery(w, b, j, ended, lost=None, what="the stall")  # it may stream on the stalled one
    unread = [r["bytes"] for r in w.events().select("client_queue") if r["t_us"] >= ended + READ_SETTLE_US]
    j.check("most bytes the client left unread after the stall", max(unread, default=0), "<=",
            b.client_unread_bytes, "bytes", "client_unread_bytes")
    j.report("client/time messages from the stall on", len(times))


@client_case("6.2", noise=RUNS_IN_NOISE, noise_proxy=TERMINATED,
             title="An audio message stalled for good mid-message",
             description="Once audio flows, the proxy sends the first fragment (FIN=0) of an audio chunk and "
                         "nothing more on that connection: no continuation, no server/time, no pong. The TCP "
                         "connection stays open.",
             expectation="The client keeps sending client/time while the downstream is stalled, notices that the "
                         "session is dead (e.g. several server/time replies missing) within the bound, gives the "
                         "connection up, reconnects and streams again.",
             source=f"{SPEC_TIME} (a live server answers each); {FIELD_BLACKHOLE}",
             roles=("player",), timeout_s=90.0)
async def stall_for_good(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    up = await streaming(w, j)
    if up is None:
        return
    fault = await w.proxy.add(_stall(stall_s=None))
    start = (await w.proxy.applied(fault["name"]))["t_us"]
    if await judge_dead_session(w, b, j, up["session"], start) is not None:
        await w.observe(AFTER_RECOVERY_S)
    ev = w.events()
    fault_acted(ev, fault["name"], j)
    times, gap = time_gaps(ev, start, max(r["t_us"] for r in ev.records))
    check_gap(j, b, gap)
    j.report("client/time messages from the stall on", len(times))


@client_case("6.3", noise=RUNS_IN_NOISE, noise_proxy=TERMINATED,
             title="The server stops sending but still answers pings",
             description="Once audio flows, the proxy swallows every data message the server sends on the "
                         "client's connection (audio, server/time, everything); control frames (ping, pong, "
                         "close) still pass, so a WebSocket keepalive sees a healthy peer.",
             expectation="The client notices from the missing server/time replies that the session is dead, "
                         "within the bound, gives the connection up, reconnects and streams again.",
             source=f"{SPEC_TIME} (a live server answers each: the only liveness signal of the protocol; nothing "
                    f"says a client must act on it, hence SHOULD); {FIELD_BLACKHOLE}",
             severity=Severity.SHOULD, roles=("player",), timeout_s=90.0)
async def deaf_server(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    up = await streaming(w, j)
    if up is None:
        return
    # kept to this connection: the client's next one must get a working server
    fault = await w.proxy.add({"type": "drop", "direction": "downstream",
                               "connections": {"conn_seq": flow_seq(w.events(), up["session"])}})
    start = (await w.proxy.applied(fault["name"]))["t_us"]
    if await judge_dead_session(w, b, j, up["session"], start) is not None:
        await w.observe(AFTER_RECOVERY_S)
    ev = w.events()
    fault_acted(ev, fault["name"], j)
    _, gap = time_gaps(ev, start, max(r["t_us"] for r in ev.records))
    check_gap(j, b, gap)
    j.report("server messages swallowed", len(ev.select("fault", fault=fault["name"])))
