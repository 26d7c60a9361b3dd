"""The client catalogue: what the client gate runs against a client under test.

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

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from ..events import Events, Record
from ..protocol import PLAYER_AUDIO
from ..settings import Bounds
from .case import Case, Catalogue, Severity
from .client import ClientWorld
from .verdict import Judgement
from .wire import data_messages, describe, first_wire, flows

GROUPS = {1: "Handshake", 2: "Clock sync", 3: "Streaming", 4: "Chunked and large messages",
          5: "Orphan headers downstream", 6: "Stalled payloads", 7: "Slow network", 8: "Connection loss",
          9: "Bad input"}
CLIENT = Catalogue("client", GROUPS)

Run = Callable[[ClientWorld, Bounds, Judgement], Awaitable[None]]


@dataclass(frozen=True)
class ClientCase:
    case: Case
    run: Run
    workers: int = 0  # 0: the single-process server; N: a coordinator with N workers
    timeout_s: float = 60.0


RUNS: dict[str, ClientCase] = {}

SPEC_HELLO = "spec: server/hello — \"Only after receiving this message should the client send any other messages\""
SPEC_TIME = "spec: Clock Synchronization — \"Clients continuously send client/time messages\""


def client_case(case_id: str, title: str, *, description: str, expectation: str, source: str,
                severity: Severity = Severity.MUST, roles: tuple[str, ...] = (), workers: int = 0,
                thorough: bool = False, timeout_s: float = 60.0) -> Callable[[Run], Run]:
    def register(run: Run) -> Run:
        case = CLIENT.add(Case(case_id, "client", title, description, expectation, source, severity, roles,
                               thorough=thorough))
        RUNS[case_id] = ClientCase(case, run, workers, timeout_s)
        return run
    return register


def server_sessions(ev: Events) -> list[Record]:
    """Each server session's client/hello read (in order): every session here is the client's."""
    return ev.select("recv", type="client/hello")


def ms(us: float) -> float:
    return round(us / 1000, 1)


def time_gaps(ev: Events, start_us: int, end_us: int) -> tuple[list[int], tuple[int, int]]:
    """client/time messages the server read in [start, end] over all the client's sessions,
    and the longest silence between them (from `start` to the first, and from the last to `end`)."""
    times = [r["t_us"] for r in ev.select("recv", type="client/time") if start_us <= r["t_us"] <= end_us]
    return times, max(pairwise([start_us, *times, end_us]), key=lambda edge: edge[1] - edge[0])


def check_gap(j: Judgement, b: Bounds, gap: tuple[int, int]) -> None:
    j.check("longest pause between client/time", ms(gap[1] - gap[0]), "<=", ms(b.client_time_gap_us), "ms",
            "client_time_gap_us", gap)


async def hello_passed(w: ClientWorld, j: Judgement, timeout: float = 15.0) -> Record | None:
    """The first server/hello that went down to the client (None: the handshake never got there)."""
    hello = await w.until("server/hello", lambda ev: next(iter(ev.select("wire", type="server/hello")), None),
                          timeout)
    j.require(hello is not None, f"no server/hello reached the proxy within {timeout:.0f} s: the client never "
              "sent a client/hello the server accepted")
    return hello


def fault_acted(ev: Events, name: str, j: Judgement) -> bool:
    acted = [r for r in ev.select("fault", fault=name)]
    return j.require(bool(acted), f"the fault {name} never acted: the case tested nothing")


# --- 1 Handshake -------------------------------------------------------------------------------------

HELLO_DELAY_MS = 1000


@client_case("1.1", "client/hello first, and nothing else before server/hello",
             description=f"The proxy holds server/hello back for {HELLO_DELAY_MS} ms; it records every message "
                         "the client sends meanwhile.",
             expectation="The client's first message is client/hello, and it sends nothing else until "
                         "server/hello has reached it.",
             source=f"{SPEC_HELLO}; field: esphome#16551 (client/state and client/time sent before server/hello)")
async def hello_first(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    fault = await w.proxy.add({"type": "delay", "direction": "downstream", "json_type": "server/hello",
                               "delay_ms": HELLO_DELAY_MS, "count": 1})
    await w.start_client()
    hello = await hello_passed(w, j)
    if hello is None:
        return
    await w.observe(HELLO_DELAY_MS / 1000 + 1.0)
    ev = w.events()
    fault_acted(ev, fault["name"], j)
    sent = data_messages(ev, hello["session"], "upstream")
    if not j.require(bool(sent) and sent[0].get("type") == "client/hello",
                     f"the first message was {describe(sent[0]) if sent else 'nothing'}, not client/hello"):
        return
    # the proxy forwarded server/hello HELLO_DELAY_MS after it arrived: anything the client
    # sent before then, it sent without having server/hello
    released_us = hello["t_us"] + HELLO_DELAY_MS * 1000
    early = [r for r in sent[1:] if r["t_us"] < released_us]
    j.check("messages sent before server/hello reached the client", len(early), "==", 0)
    if early:
        j.note("sent early: " + ", ".join(f"{describe(r)} {ms(released_us - r['t_us'])} ms before"
                                          for r in early[:5]))


@client_case("1.2", "Initial client/state follows server/hello",
             description="A normal handshake; the proxy records when client/state passes.",
             expectation="A client with a player role sends its initial client/state promptly after "
                         "server/hello.",
             source="spec: server/hello — the initial client/state follows it \"if the client has roles that "
                    "require state updates\"", roles=("player",))
async def initial_state(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    hello = await hello_passed(w, j)
    if hello is None:
        return
    state = await w.until("client/state", lambda ev: first_wire(ev, hello["session"], "upstream", "client/state"),
                          b.client_state_us / 1e6 + 1)
    after = None if state is None else state["t_us"] - hello["t_us"]
    j.check("client/state after server/hello", None if after is None else ms(after), "<=", ms(b.client_state_us),
            "ms", "client_state_us", (hello["t_us"], hello["t_us"] + (after or b.client_state_us)))
    j.require(after is None or after >= 0, "client/state was sent before server/hello")


ROLES_WITH_SUPPORT = {"player@v1", "artwork@v1", "visualizer@v1"}


@client_case("1.3", "The hello is well formed, its roles and formats consistent",
             description="A normal handshake; the reference server validates client/hello field by field "
                         "(types, role versions, a player's formats and buffer) and logs which support "
                         "objects it carried.",
             expectation="The server accepts the client/hello, and each declared role that has a support object "
                         "(player, artwork, visualizer) comes with it, and no support object without its role.",
             source="spec: client/hello — `player@v1_support`: \"only if `player@v1` is listed\"")
async def hello_well_formed(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    await w.until("a hello read", lambda ev: server_sessions(ev) or ev.select("reject"), 15)
    await w.observe(0.5)
    ev = w.events()
    for r in ev.select("reject"):
        j.require(False, f"the server refused {r['type']}: {r.get('field') or ''} {r['rule']}".replace("  ", " "))
    hellos = server_sessions(ev)
    if not j.require(bool(hellos), "no client/hello was read within 15 s"):
        return
    j.require(bool(ev.select("send_end", type="server/hello")), "the server sent no server/hello")
    roles, supports = set(hellos[0]["roles"]), set(hellos[0].get("supports") or ())
    for role in sorted(roles & ROLES_WITH_SUPPORT):
        j.require(f"{role}_support" in supports, f"it declares {role} but sends no {role}_support: a server "
                  "cannot know what to send it")
    for key in sorted(supports):
        j.require(key.removesuffix("_support") in roles, f"it sends {key} without declaring that role")


# --- 2 Clock sync ------------------------------------------------------------------------------------

TIME_OBSERVE_S = 8.0


@client_case("2.1", "client/time starts promptly and keeps a cadence",
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
    @client_case(case_id, title,
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


# --- 3 Streaming -------------------------------------------------------------------------------------

STREAM_OBSERVE_S = 10.0
LEAD_SETTLE_US = 2_000_000  # the first chunks go out in a burst ahead of real time


@client_case("3.1", "The client reads audio at the rate it is sent",
             description=f"A player session streams PCM for {STREAM_OBSERVE_S:.0f} s; the server logs what it "
                         "holds for the session every half second.",
             expectation="The server's buffers for the session stay small, no chunk goes stale unsent, and "
                         "every chunk passes the proxy well before its play time: the client reads as fast as "
                         "audio is produced.",
             source="field: a slow reader held 20 MB on the server and dragged its other listeners",
             roles=("player",))
async def reads_at_rate(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    hello = await hello_passed(w, j)
    if hello is None:
        return
    await w.observe(STREAM_OBSERVE_S)
    ev = w.events()
    ended = [r for r in ev.select("close", proc="proxy") if r["t_us"] < ev.records[-1]["t_us"]]
    j.check("connections that ended while streaming", len(ended), "==", 0)
    if ended:
        j.note(f"the first ended after {ended[0]['seconds']} s: server side {ended[0]['server']}, "
               f"client side {ended[0]['client']}")
    stats = ev.select("session_stats", session=ev.select("accept", proc="server")[0]["session"])
    sent = max((r["audio_sent"] for r in stats), default=0)
    if not j.require(sent > 0, "the server sent no audio to the client: nothing to judge (did it declare a "
                     "player format the server has?)"):
        return
    unread = [r["bytes"] for r in ev.select("client_queue")]
    j.check("most bytes the client left unread in its socket", max(unread, default=0), "<=",
            b.client_unread_bytes, "bytes", "client_unread_bytes")
    j.check("most bytes the server held for the client", max(r["held"] for r in stats), "<=", b.client_held_bytes,
            "bytes", "client_held_bytes")
    # A client that reads slower than real time holds the stream back through the proxy:
    # its chunks pass later and later, until they would arrive after their play time.
    audio = [r for r in ev.select("wire", direction="downstream", kind="binary", type=str(PLAYER_AUDIO))
             if "ts_us" in r]
    if j.require(bool(audio), "no audio chunk passed the proxy"):
        settled = [r for r in audio if r["t_us"] >= audio[0]["t_us"] + LEAD_SETTLE_US] or audio[-1:]
        worst = min(settled, key=lambda r: r["ts_us"] - r["t_us"])
        j.check("least lead of an audio chunk passing the proxy", ms(worst["ts_us"] - worst["t_us"]), ">=",
                ms(b.min_lead_us), "ms", "min_lead_us", (settled[0]["t_us"], worst["t_us"]))
    j.check("audio chunks gone stale unsent", max(r["audio_skipped"] for r in stats), "==", 0)
    j.report("audio chunks sent", sent)


# --- 8 Connection loss -------------------------------------------------------------------------------

def audio_since(ev: Events, t_us: int) -> Record | None:
    """The first audio chunk that went down to the client after `t_us`."""
    return next((r for r in ev.select("wire", direction="downstream", kind="binary") if r["t_us"] > t_us), None)


async def streaming(w: ClientWorld, j: Judgement) -> Record | None:
    """Waits until audio flows to the client; returns the proxy's `upstream` record of its connection."""
    if await hello_passed(w, j) is None:
        return None
    flowing = await w.until("audio", lambda ev: len(ev.select("wire", direction="downstream", kind="binary")) >= 10,
                            10)
    if not j.require(bool(flowing), "no audio reached the client within 10 s: nothing to lose"):
        return None
    return w.events().select("upstream")[0]


def exited(w: ClientWorld, j: Judgement) -> bool:
    """True (with a note) if the client process ended by itself."""
    if w.process is None or not w.process.exited():
        return False
    last = (w.output(400).strip().splitlines() or ["(no output)"])[-1]
    j.note(f"the client exited by itself: {last}")
    return True


async def judge_recovery(w: ClientWorld, b: Bounds, j: Judgement, lost_us: int) -> None:
    back = await w.until("audio again", lambda ev: audio_since(ev, lost_us), b.client_recovery_us / 1e6 + 1)
    if back is None:
        exited(w, j)
    j.check("streaming again after the loss", None if back is None else ms(back["t_us"] - lost_us), "<=",
            ms(b.client_recovery_us), "ms", "client_recovery_us",
            (lost_us, back["t_us"] if back else lost_us + b.client_recovery_us))
    ev = w.events()
    j.report("connections", len(flows(ev)))


@client_case("8.1", "Reconnects when its worker is killed (SIGKILL)",
             description="Two workers behind the proxy; once audio flows, the worker serving the client is killed.",
             expectation="The client notices the lost connection, reconnects (the proxy's pool sends it to the "
                         "live worker) and streams again within the bound.",
             source="field: a client that never reconnects after its server restarts", workers=2)
async def worker_killed(w: ClientWorld, b: Bounds, j: Judgement) -> None:
    await w.start_client()
    up = await streaming(w, j)
    if up is None:
        return
    fault = await w.proxy.add({"type": "worker_crash", "action": "kill", "upstream": up["upstream"]})
    applied = await w.proxy.applied(fault["name"])
    await judge_recovery(w, b, j, applied["t_us"])


@client_case("8.2", "Reconnects after a TCP RST",
             description="Once audio flows, the proxy resets the client's connection (RST both ways).",
             expectation="The client reconnects and streams again within the bound.",
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
             severity=Severity.SHOULD, timeout_s=90.0)
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
