"""The client catalogue's registry and the log readings several groups share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest

from ...events import Events, Record
from ...server_control import ActionRefused, ServerControl
from ...settings import Bounds
from ..case import Case, Catalogue, Severity
from ..client import ClientWorld
from ..verdict import Judgement
from ..wire import close_verdict, flows

GROUPS = {1: "Handshake", 2: "Clock sync", 3: "Streaming", 4: "Chunked and large messages",
          5: "Orphan headers downstream", 6: "Stalled payloads", 7: "Slow network", 8: "Connection loss",
          9: "Bad input", 10: "Noise"}
CLIENT = Catalogue("client", GROUPS)

Run = Callable[[ClientWorld, Bounds, Judgement], Awaitable[None]]


@dataclass(frozen=True)
class ClientCase:
    case: Case
    run: Run
    workers: int = 0  # 0: the single-process server; N: a coordinator with N workers
    timeout_s: float = 60.0
    noise_proxy: str = "opaque"  # the proxy's --noise in the noise profile: terminate for message faults
    # initiator ("client" | "server": who opens the connection) -> why the case does not
    # apply then (UNIMPLEMENTED with that reason); a case runs with every other initiator
    inapplicable: Mapping[str, str] = field(default_factory=dict)


RUNS: dict[str, ClientCase] = {}

# Why a case does not run in the noise profile (`noise=` of client_case; "" = it runs there).
RUNS_IN_NOISE = ""
# How the proxy treats the noise session of a case (`noise_proxy=`). Opaque: it relays the
# ciphertext, and only network faults act. Terminated (proxy/relay/terminate.py): it completes
# a handshake with each side, so message faults act on the plaintext (a Noise fragment
# sequence for a WebSocket one) and its wire log names every message; the server then sees
# the proxy's key for the client, the same on every reconnect.
OPAQUE, TERMINATED = "opaque", "terminate"
LEGACY_FRAMES = ("legacy-only: it checks WebSocket fragmentation (RFC 6455 frames), which a noise session does not "
                 "use (one Noise transport message per WebSocket message, never split into frames by the server); "
                 "its noise form is Sendspin fragments, group 10")
NOISE_HELLO = ("legacy-only: it checks the legacy client/hello (client_id, version, support objects); the noise "
               "revision's client/hello is another message (messaging.md: no client_id or version, unpaired_access, "
               "supported_pair_methods), checked by the reference server's flow (noise_flow.py)")
NOISE_ARTWORK = ("the reference server serves no artwork in the noise profile: the revision's artwork is an announce "
                 "plus paced parts (roles/artwork/v1.md), not built yet")
NOISE_ONLY = "a noise-only case: the legacy revision has no Noise layer (--client-profile noise)"
# Noise: a downstream transport message this large is audio (the reference server's JSON
# messages are a few hundred bytes, it sends no artwork in noise, and a 48 kHz PCM chunk
# is kilobytes): the proxy cannot read the type byte, which is encrypted.
NOISE_AUDIO_MIN_BYTES = 1024

SPEC_HELLO = "spec: server/hello — \"Only after receiving this message should the client send any other messages\""
SPEC_TIME = "spec: Clock Synchronization — \"Clients continuously send client/time messages\""


def client_case(case_id: str, title: str, *, description: str, expectation: str, source: str, noise: str,
                severity: Severity = Severity.MUST, roles: tuple[str, ...] = (), workers: int = 0,
                thorough: bool = False, timeout_s: float = 60.0, legacy: str = RUNS_IN_NOISE,
                noise_proxy: str = OPAQUE, inapplicable: Mapping[str, str] | None = None) -> Callable[[Run], Run]:
    """`noise`: why the case cannot run in the noise profile, or RUNS_IN_NOISE (every case
    says which); `legacy`: likewise for the legacy profile (the Noise group: NOISE_ONLY);
    `noise_proxy`: OPAQUE or TERMINATED (its faults act on messages, or it reads their types)."""
    skip_in = tuple((p, why) for p, why in (("legacy", legacy), ("noise", noise)) if why)

    def register(run: Run) -> Run:
        case = CLIENT.add(Case(case_id, "client", title, description, expectation, source, severity, roles,
                               thorough=thorough, skip_in=skip_in))
        RUNS[case_id] = ClientCase(case, run, workers, timeout_s, noise_proxy, dict(inapplicable or {}))
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


def first_hello(ev: Events, sealed: bool = False) -> Record | None:
    """The proxy's record of the first server/hello down to the client. `sealed` (a noise
    session the proxy does not terminate): the first binary message down (server/hello is
    the first message after the cleartext handshake)."""
    if sealed:
        return next(iter(ev.select("wire", direction="downstream", kind="binary")), None)
    return next(iter(ev.select("wire", type="server/hello")), None)


def downstream_audio(ev: Events, sealed: bool = False, **match: Any) -> list[Record]:
    """The proxy's records of audio going down to the client. `sealed`: the transport
    messages of audio's size (NOISE_AUDIO_MIN_BYTES): the type byte is encrypted."""
    records = ev.select("wire", direction="downstream", kind="binary", **match)
    if sealed:
        return [r for r in records if r.get("size", 0) >= NOISE_AUDIO_MIN_BYTES]
    return records


async def hello_passed(w: ClientWorld, j: Judgement, timeout: float = 15.0) -> Record | None:
    """The first server/hello that went down to the client (None: the handshake never got there)."""
    hello = await w.until("server/hello", lambda ev: first_hello(ev, w.sealed_wire), timeout)
    j.require(hello is not None, w.start_problem or f"no server/hello reached the proxy within {timeout:.0f} s: "
              "the client never sent a client/hello the server accepted")
    return hello


def fault_acted(ev: Events, name: str, j: Judgement) -> bool:
    acted = [r for r in ev.select("fault", fault=name)]
    return j.require(bool(acted), f"the fault {name} never acted: the case tested nothing")



# --- connection loss and recovery ----------------------------------------------------------------

def audio_since(ev: Events, t_us: int, besides: str | None = None, sealed: bool = False) -> Record | None:
    """The first audio chunk that went down to the client after `t_us` (on a connection other
    than `besides`: the proxy logs what a server sends before a fault swallows it)."""
    return next((r for r in downstream_audio(ev, sealed) if r["t_us"] > t_us and r["session"] != besides), None)


async def streaming(w: ClientWorld, j: Judgement) -> Record | None:
    """Waits until audio flows to the client; returns the proxy's `upstream` record of its connection."""
    if await hello_passed(w, j) is None:
        return None
    flowing = await w.until("audio", lambda ev: len(downstream_audio(ev, w.sealed_wire)) >= 10, 10)
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


async def judge_recovery(w: ClientWorld, b: Bounds, j: Judgement, lost_us: int, *, lost: str | None,
                         what: str = "the loss") -> None:
    """Audio flows to the client again within the bound after `lost_us`, on a connection other
    than `lost` (None only where the same connection may stream on): the proxy logs what it
    read from the server on a lost connection after the loss, and a client that never came
    back would pass on it."""
    back = await w.until("audio again", lambda ev: audio_since(ev, lost_us, lost, w.sealed_wire),
                         b.client_recovery_us / 1e6 + 1)
    if back is None:
        exited(w, j)
    j.check(f"streaming again after {what}", None if back is None else ms(back["t_us"] - lost_us), "<=",
            ms(b.client_recovery_us), "ms", "client_recovery_us",
            (lost_us, back["t_us"] if back else lost_us + b.client_recovery_us))
    ev = w.events()
    j.report("connections", len(flows(ev)))


# --- what a client must survive: orphans and bad input (groups 5 and 9) ------------------------

def flow_port(w: ClientWorld, ev: Events, flow: str) -> int | None:
    """The client's TCP port of connection `flow`, as the proxy accepted it; None when the
    server dialled (the proxy accepted the server, and every connection reaches the client
    on its one listening port): then judge all of the client's sockets."""
    if w.initiator == "server":
        return None
    accepted = next(iter(ev.select("accept", proc="proxy", session=flow)), None)
    return int(accepted["client"].rsplit(":", 1)[1]) if accepted else None


def flow_seq(ev: Events, flow: str) -> int:
    """The proxy's number for connection `flow` (a fault's `connections.conn_seq`)."""
    return next(iter(ev.select("accept", proc="proxy", session=flow)))["conn_seq"]


def queue_samples(ev: Events, port: int | None, end_us: int) -> list[Record]:
    """The client's unread-bytes samples (`client_queue`) on `port` (None: any) up to `end_us`."""
    return [r for r in ev.select("client_queue") if (port is None or r["port"] == port) and r["t_us"] <= end_us]


def unread_during(ev: Events, port: int | None, start_us: int, end_us: int) -> int:
    """The most bytes the client left unread on `port` (None: on any of its connections) in
    [start, end]: the value in effect at `start` (samples are logged only when they change)
    and every sample after it."""
    samples = queue_samples(ev, port, end_us)
    before = [r["bytes"] for r in samples if r["t_us"] <= start_us][-1:]
    return max(before + [r["bytes"] for r in samples if r["t_us"] > start_us], default=0)


def longest_undrained(ev: Events, port: int | None, start_us: int, end_us: int) -> int:
    """The longest time (µs) in [start, end] one of the client's sockets (`port`; None: any)
    held unread bytes without once being empty. A client that reads drains it within a
    chunk's time; one that stopped reading never does, however large its buffer grew (the
    most bytes unread depends on how far the kernel had grown that buffer before)."""
    longest = 0
    by_port: dict[int, list[Record]] = {}
    for r in queue_samples(ev, port, end_us):
        by_port.setdefault(r["port"], []).append(r)
    for samples in by_port.values():
        before = [r for r in samples if r["t_us"] <= start_us][-1:]
        since = start_us if before and before[0]["bytes"] > 0 else None
        for r in samples:
            if r["t_us"] <= start_us:
                continue
            if r["bytes"] > 0 and since is None:
                since = r["t_us"]
            elif r["bytes"] == 0 and since is not None:
                longest, since = max(longest, r["t_us"] - since), None
        if since is not None:
            longest = max(longest, end_us - since)
    return longest


async def faults_acted(w: ClientWorld, j: Judgement, names: list[str], timeout: float) -> list[Record] | None:
    """Waits until each fault in `names` acted; their first `fault` events, in time order.
    A client that exits meanwhile is judged on those that acted before (None: none did,
    or one never acted on a client still running: then the case tested nothing)."""
    def hits(ev: Events) -> list[Record]:
        found = (next(iter(ev.select("fault", fault=n)), None) for n in names)
        return sorted((h for h in found if h is not None), key=lambda r: r["t_us"])
    await w.until("the faults acted", lambda ev: len(hits(ev)) == len(names), timeout)
    acted = hits(w.events())
    if not acted or (len(acted) < len(names) and w.running()):
        for name in names:
            fault_acted(w.events(), name, j)
        return None
    return acted


def observe_s(b: Bounds) -> float:
    """How long a case watches after its fault: a client that stopped syncing its clock
    then shows a pause longer than the bound."""
    return b.client_time_gap_us / 1e6 + 1.0


def flow_ended(ev: Events, flow: str, after_us: int) -> Record | None:
    return next((r for r in ev.select("close", proc="proxy", session=flow) if r["t_us"] >= after_us), None)


def judge_kept_session(w: ClientWorld, b: Bounds, j: Judgement, flow: str, start_us: int,
                       settle_us: int = 0) -> None:
    """The client went on as if nothing happened, on connection `flow`, from `start_us` on:
    running, the connection open, client/time flowing, audio passing and read (what it
    left unread, from `start_us + settle_us` on, under the bound)."""
    ev = w.events()
    end = max(r["t_us"] for r in ev.records)
    if exited(w, j):
        j.require(False, "the client process ended: it did not survive what it was sent")
        return
    ended = flow_ended(ev, flow, start_us)
    if ended is not None:
        j.require(False, f"the connection ended {ms(ended['t_us'] - start_us)} ms after the fault: "
                  f"{close_verdict(ev, flow, end + 1, b.client_time_gap_us)}")
        return
    _, gap = time_gaps(ev, start_us, end)
    check_gap(j, b, gap)
    audio = [r for r in downstream_audio(ev, w.sealed_wire, session=flow) if r["t_us"] > start_us]
    j.require(bool(audio), "no audio passed to the client after the fault: nothing shows it kept playing")
    port = flow_port(w, ev, flow)
    j.check("most bytes the client left unread after the fault", unread_during(ev, port, start_us + settle_us, end),
            "<=", b.client_unread_bytes, "bytes", "client_unread_bytes")
    j.check("longest the client left its socket undrained after the fault",
            ms(longest_undrained(ev, port, start_us + settle_us, end)), "<=", ms(b.client_undrained_us), "ms",
            "client_undrained_us")
    j.report("audio chunks passed after the fault", len(audio))


async def judge_survived(w: ClientWorld, b: Bounds, j: Judgement, flow: str, start_us: int,
                         settle_us: int = 0) -> None:
    """Either the client went on as if nothing happened (judge_kept_session), or it closed
    connection `flow` itself with a close frame and a code, then connected again and
    streams: never a crash, a connection dropped without a word, or a session gone quiet."""
    ev = w.events()
    ended = flow_ended(ev, flow, start_us)
    if ended is None:
        judge_kept_session(w, b, j, flow, start_us, settle_us)
        return
    verdict = close_verdict(ev, flow, max(r["t_us"] for r in ev.records) + 1, b.client_time_gap_us)
    j.note(f"the connection ended {ms(ended['t_us'] - start_us)} ms after the fault: {verdict}")
    if not j.require(verdict.closed_by == "client" and verdict.code is not None,
                     f"the connection ended without the client closing it with a code ({verdict}): a client that "
                     "refuses input says so with a close frame"):
        exited(w, j)
        return
    back = await w.until("audio on a new connection",
                         lambda ev: audio_since(ev, ended["t_us"], flow, w.sealed_wire), b.client_recovery_us / 1e6 + 1)
    if back is None and exited(w, j):
        j.require(False, f"the client closed the connection ({verdict.code}) and its process ended instead of "
                  "connecting again")
    took = None if back is None else back["t_us"] - ended["t_us"]
    j.check("streaming again after it closed the connection", None if took is None else ms(took), "<=",
            ms(b.client_recovery_us), "ms", "client_recovery_us",
            (ended["t_us"], ended["t_us"] + (b.client_recovery_us if took is None else took)))

# --- scripted server actions (the reference server's control endpoint) ----------------------------

class NotApplicable(pytest.skip.Exception):  # type: ignore[misc,name-defined]
    """The client lacks what the case needs, which only its hello shows (a second format,
    a player command): UNIMPLEMENTED with the reason, like a role it did not declare
    (client_suite.py records it, then the test is skipped)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"UNIMPLEMENTED: {reason}", pytrace=False)
        self.reason = reason


def server_control(w: ClientWorld) -> ServerControl:
    """The reference server's control endpoint (in a cluster the coordinator's: it reaches every worker)."""
    return ServerControl(w.topology.servers[0].ready["control"])


async def act(w: ClientWorld, action: str, **params: Any) -> dict[str, Any]:
    """Has the server do `action` to the client's session; a 409 (no session could take it,
    e.g. the client did not declare what it needs) makes the case not applicable."""
    client_id = w.peer_id() if w.profile == "noise" else w.client_id  # noise: the key it chose
    if client_id is None:
        raise RuntimeError(f"{action}: the server has read no client/hello, so no session of the client to act on")
    try:
        return await server_control(w).act(action, client_id=client_id, **params)
    except ActionRefused as exc:
        if exc.status == 409:
            raise NotApplicable(exc.error) from None
        raise


def action_at(ev: Events, action: str) -> int:
    """When the server applied the last `action` to the client's session."""
    return [r for r in ev.select("action", action=action) if r["session"] is not None][-1]["t_us"]


def first_after(ev: Events, t_us: int, **match: Any) -> Record | None:
    """The first `wire` record after `t_us` with these fields."""
    return next((r for r in ev.select("wire", **match) if r["t_us"] > t_us), None)


def sent_after(ev: Events, sealed: bool, t_us: int, message_type: str) -> Record | None:
    """When the first `message_type` after `t_us` went to the client: the proxy's record,
    or the server's own `send_end` when the wire is `sealed` (the proxy cannot read the type)."""
    if sealed:
        return next((r for r in ev.select("send_end", type=message_type) if r["t_us"] > t_us), None)
    return first_after(ev, t_us, direction="downstream", type=message_type)


def time_window_s(b: Bounds) -> float:
    """How long a case watches after it disturbed the session, so that a client that stops
    sending client/time there can fail the pause bound at all."""
    return b.client_time_gap_us / 1e6 + 0.5


def judge_kept(w: ClientWorld, j: Judgement, since_us: int) -> None:
    """The session outlived what the case did: the client's one connection still open, no
    close frame either way (1002 above all: a legal message taken for a protocol error),
    the client still running."""
    ev = w.events()
    if exited(w, j):
        j.require(False, "the client exited")
    closes = [r for r in ev.select("wire", kind="close") if r["t_us"] >= since_us]
    j.check("close frames with 1002 (protocol error)", sum(r.get("code") == 1002 for r in closes), "==", 0)
    ended = [r for r in ev.select("close", proc="proxy") if r["t_us"] >= since_us]
    j.check("connections that ended", len(ended), "==", 0)
    if closes:
        first = closes[0]
        j.note(f"the {'client' if first['direction'] == 'upstream' else 'server'} closed with {first.get('code')} "
               f"{ms(first['t_us'] - since_us)} ms after the case began to act")
    j.check("connections", len(flows(ev)), "==", 1)


def judge_time(j: Judgement, b: Bounds, ev: Events, start_us: int) -> None:
    """client/time went on from `start_us` to the end of the logs."""
    end = ev.records[-1]["t_us"]
    times, gap = time_gaps(ev, start_us, end)
    check_gap(j, b, gap)
    j.report("client/time messages meanwhile", len(times))


def judge_reading(j: Judgement, b: Bounds, ev: Events, start_us: int) -> None:
    """The client kept reading from `start_us` on: its unread bytes (the kernel's count)
    stayed small, counting the level it was at when `start_us` came."""
    unread = unread_during(ev, None, start_us, ev.records[-1]["t_us"])
    j.check("most bytes the client left unread in its socket", unread, "<=", b.client_unread_bytes, "bytes",
            "client_unread_bytes")


async def judge_reply(w: ClientWorld, b: Bounds, j: Judgement, command: dict[str, Any]) -> None:
    """The player answered the server/command the server just sent (`command`: its action's
    answer for the session) with a client/state carrying the new value, promptly. Timed
    from when the command passed the proxy to when the server read the answer."""
    field = "volume" if command["command"] == "volume" else "muted"
    value = command["value"]
    sent = await w.until("server/command", lambda ev: sent_after(ev, w.sealed_wire, action_at(ev, "server/command"),
                                                                 "server/command"), 5)
    if not j.require(sent is not None, "the server/command never passed the proxy"):
        return
    assert sent is not None

    def answer(ev: Events) -> Record | None:
        return next((r for r in ev.select("recv", type="client/state") if r["t_us"] > sent["t_us"]
                     and r.get(field) == value), None)

    got = await w.until("client/state", answer, b.client_command_reply_us / 1e6 + 1)
    took = None if got is None else got["t_us"] - sent["t_us"]
    j.check(f"client/state with {field} {value} after server/command {command['command']}",
            None if took is None else ms(took), "<=", ms(b.client_command_reply_us), "ms", "client_command_reply_us",
            (sent["t_us"], sent["t_us"] + (took or b.client_command_reply_us)))
    if got is None:
        states = [r for r in w.events().select("recv", type="client/state") if r["t_us"] > sent["t_us"]]
        j.note("client/state after the command: " + (", ".join(
            f"{field}={r.get(field, 'absent')}" for r in states[:5]) or "none"))


VOLUMES = (37, 63)  # a volume to set: the first that differs from what the client reported


def new_command_values(ev: Events) -> dict[str, Any]:
    """A volume and a mute that differ from what the client last reported in client/state."""
    states = ev.select("recv", type="client/state")
    volume = next((r["volume"] for r in reversed(states) if "volume" in r), None)
    muted = next((r["muted"] for r in reversed(states) if "muted" in r), False)
    return {"volume": next(v for v in VOLUMES if v != volume), "mute": not muted}


def session_over(w: ClientWorld, ev: Events, flow: str, since_us: int) -> int | None:
    """When connection `flow` was over after `since_us`: the client's close frame, the end of
    the connection (either side's), a new connection the client opened, or its socket gone
    from the kernel's table, whichever came first (a blackholed connection's close frame and
    FIN are never read by the proxy; a listening client opens no new connection)."""
    port = flow_port(w, ev, flow)
    marks = [r["t_us"] for r in ev.select("accept", proc="proxy") if r["t_us"] > since_us and r["session"] != flow]
    marks += [r["t_us"] for r in ev.select("client_socket_gone") if r["t_us"] > since_us
              and (port is None or r["port"] == port)]
    marks += [r["t_us"] for r in ev.select("wire", session=flow, direction="upstream", kind="close")
              if r["t_us"] > since_us]
    marks += [r["t_us"] for r in ev.select("close", proc="proxy", session=flow) if r["t_us"] > since_us]
    return min(marks, default=None)


async def judge_dead_session(w: ClientWorld, b: Bounds, j: Judgement, flow: str, since_us: int,
                             recover: bool = True) -> int | None:
    """Connection `flow` went dead at `since_us`: the client gives it up within the bound (or
    the server's side ends it first) and, if `recover`, streams again on a new connection.
    Returns when the dead session was over (None: never, as far as the proxy saw)."""
    bound = b.client_dead_session_us
    over = await w.until("the client gives up", lambda ev: session_over(w, ev, flow, since_us), bound / 1e6 + 1)
    if over is None:
        exited(w, j)
    j.check("dead session over after", None if over is None else ms(over - since_us), "<=", ms(bound), "ms",
            "client_dead_session_us", (since_us, over or since_us + bound))
    if over is not None:
        ended_by_server(w.events(), flow, since_us, j)
        if recover:
            await judge_recovery(w, b, j, over, lost=flow, what="the dead session ended")
    return over


def ended_by_server(ev: Events, flow: str, since_us: int, j: Judgement) -> None:
    """Notes it when the server's side ended connection `flow`, not the client (a worker
    killed, or the reference server's own slow-reader close): then the client had nothing
    to notice."""
    end = next((r for r in ev.select("close", proc="proxy", session=flow) if r["t_us"] > since_us), None)
    how = (end.get("server") or {}).get("ended") if end else None
    if end is not None and how in ("eof", "rst", "error") and (end.get("client") or {}).get("ended") not in (
            "eof", "rst", "error"):
        j.note(f"the server's side ended the connection (TCP {how}) {ms(end['t_us'] - since_us)} ms after it went "
               "dead, before the client did")
