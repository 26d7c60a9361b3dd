"""Group 2: clock sync."""

from __future__ import annotations

from typing import Any

from ...settings import Bounds
from ..client import ClientWorld
from ..verdict import Judgement
from .common import (
    RUNS_IN_NOISE,
    SPEC_TIME,
    TERMINATED,
    check_gap,
    client_case,
    fault_acted,
    hello_passed,
    ms,
    time_gaps,
)

TIME_OBSERVE_S = 8.0


@client_case("2.1", noise=RUNS_IN_NOISE, title="client/time starts promptly and keeps a cadence",
             description=f"A normal session, watched for {TIME_OBSERVE_S:.0f} s.",
             expectation="The first client/time follows server/hello promptly, and client/time never pauses "
                         "for long.",
             source=SPEC_TIME)
async def time_cadence(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    hello = await hello_passed(w, j)
    if hello is None:
        return
    await w.observe(TIME_OBSERVE_S)
    ev = w.events()
    end = max(r["t_us"] for r in ev.records)
    times, gap = time_gaps(ev, hello["t_us"], end)
    first = times[0] - hello["t_us"] if times else None
    j.check("first client/time after server/hello", None if first is None else ms(first), "<=",
            ms(b.client_time_start_us), "ms", "client_time_start_us", (hello["t_us"], times[0] if times else end))
    check_gap(j, b, gap)
    j.report("client/time messages", len(times))


def _time_fault_case(case_id: str, title: str, spec: dict[str, Any], what: str, after_s: float) -> None:
    @client_case(case_id, title, noise=RUNS_IN_NOISE, noise_proxy=TERMINATED,
                 description=f"Once clock sync runs, the proxy {what}; the session is then watched for "
                             f"{after_s:.0f} s more.",
                 expectation="The client goes on sending client/time during and after it (on this connection or "
                             "a new one): clock sync never stops for good.",
                 source=f"{SPEC_TIME}; field: clients that wait for every reply stop syncing after one loss")
    async def run(w: ClientWorld, b: Bounds, j: Judgement) -> None:
        await w.start_client()
        hello = await hello_passed(w, j)
        if hello is None:
            return
        synced = await w.until("client/time", lambda ev: ev.select("recv", type="client/time"), 5)
        if not j.require(bool(synced), "no client/time within 5 s of server/hello: nothing to disturb"):
            return
        fault = await w.proxy.add({"direction": "downstream", "json_type": "server/time", **spec})
        start = w.events().select("fault_added")[-1]["t_us"]
        await w.observe(after_s)
        ev = w.events()
        fault_acted(ev, fault["name"], j)
        end = max(r["t_us"] for r in ev.records)
        times, gap = time_gaps(ev, start, end)
        check_gap(j, b, gap)
        j.report("client/time messages", len(times))


_time_fault_case("2.2", "Clock sync goes on when server/time is late",
                 {"type": "delay", "delay_ms": 2000, "duration": 6.0}, "delays every server/time by 2 s for 6 s",
                 12.0)
_time_fault_case("2.3", "Clock sync goes on when server/time is lost",
                 {"type": "drop", "count": 3}, "drops the next 3 server/time messages", 12.0)
_time_fault_case("2.4", "Clock sync goes on when server/time stalls mid-message",
                 {"type": "stalled_payload", "stall_s": 3.0, "count": 1},
                 "stalls a server/time for 3 s after its first bytes (FIN=0, then nothing)", 12.0)
