"""The client catalogue's registry and the log readings several groups share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise

from ...events import Events, Record
from ...settings import Bounds
from ..case import Case, Catalogue, Severity
from ..client import ClientWorld
from ..verdict import Judgement
from ..wire import flows

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
    # initiator ("client" | "server": who opens the connection) -> why the case does not
    # apply then (UNIMPLEMENTED with that reason); a case runs with every other initiator
    inapplicable: Mapping[str, str] = field(default_factory=dict)


RUNS: dict[str, ClientCase] = {}

SPEC_HELLO = "spec: server/hello — \"Only after receiving this message should the client send any other messages\""
SPEC_TIME = "spec: Clock Synchronization — \"Clients continuously send client/time messages\""


def client_case(case_id: str, title: str, *, description: str, expectation: str, source: str,
                severity: Severity = Severity.MUST, roles: tuple[str, ...] = (), workers: int = 0,
                thorough: bool = False, timeout_s: float = 60.0,
                inapplicable: Mapping[str, str] | None = None) -> Callable[[Run], Run]:
    def register(run: Run) -> Run:
        case = CLIENT.add(Case(case_id, "client", title, description, expectation, source, severity, roles,
                               thorough=thorough))
        RUNS[case_id] = ClientCase(case, run, workers, timeout_s, dict(inapplicable or {}))
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
    j.require(hello is not None, w.start_problem or f"no server/hello reached the proxy within {timeout:.0f} s: "
              "the client never sent a client/hello the server accepted")
    return hello


def fault_acted(ev: Events, name: str, j: Judgement) -> bool:
    acted = [r for r in ev.select("fault", fault=name)]
    return j.require(bool(acted), f"the fault {name} never acted: the case tested nothing")



# --- connection loss and recovery ----------------------------------------------------------------

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
