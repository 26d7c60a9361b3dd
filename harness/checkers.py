"""Invariant checkers (docs/architecture.md §5). Each reads the event logs and returns a
Verdict that explains itself with figures and, when it fails, a timeline
excerpt around the first violation. A check with nothing to judge fails:
silence is never a pass.

A violation the harness itself may have caused is not a finding: a FAIL whose
measurement overlaps a stall of one of our instruments (`loop_lag`: its event loop;
`tcp_stall`: its sending on a socket whose reads it held, protocol/tcpstall.py) of
the probes' process `harness` or of the proxy (settings.INSTRUMENTS), long
enough to account for a late measurement's excess over its bound, is judged
INCONCLUSIVE by `judge`, and `require` raises `InconclusiveViolation` when every
failure is, which the pytest plugin re-runs once. A stall of the implementation
under test stays a FAIL, but for the part of it its loop waited for a CPU
(`loop_lag`'s `runqueue_us`): a busy machine's doing, not the implementation's."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Any

from .events import Events, Record
from .protocol.looplag import stall_window
from .settings import INSTRUMENTS, Bounds


@dataclass(frozen=True)
class Stall:
    """A process's event loop (its `loop_lag`), or its sending on a socket (`tcp_stall`),
    stalled during a violation."""

    proc: str
    lag_us: int
    at_s: float  # when the stall was seen to end (an ongoing one: when it began), seconds into the run
    blocked_us: int = 0  # the longest it can have been blocked: lag plus one tick interval
    peer: str | None = None  # tcp_stall: the peer of the socket whose sending stalled
    ongoing: bool = False  # tcp_stall: not seen to end when the log was read (lag_us: up to the violation's end)
    waited_us: int = 0  # loop_lag: how long of it the loop's thread waited for a CPU (the machine's load)

    def describe(self) -> str:
        if self.peer is None:
            waited = f" (waiting {self.waited_us / 1000:.0f} ms for a CPU since its previous tick)" \
                if self.waited_us >= 1000 else ""
            return f"{self.proc}'s own event loop stalled {self.lag_us / 1000:.0f} ms at {self.at_s:.1f} s{waited}"
        until = f"from {self.at_s:.1f} s, still when the log was read," if self.ongoing else f"until {self.at_s:.1f} s"
        return (f"{self.proc}'s own socket to the {self.peer} had nothing it sent acknowledged for "
                f"{self.lag_us / 1000:.0f} ms {until} while it held that socket's reads "
                f"(the peer's ACKs beyond its full receive window)")


@dataclass
class Verdict:
    invariant: str
    subject: str
    ok: bool
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)
    excerpt: str = ""
    stalls: list[Stall] = field(default_factory=list)  # any process's loop stalls overlapping the violation
    excess_us: int | None = None  # how far past its bound the violation went (None: not a duration)
    stalled_by: Stall | None = None  # set by `judge`: the instrument's stall that makes a FAIL inconclusive

    def __bool__(self) -> bool:
        return self.ok

    @property
    def inconclusive(self) -> bool:
        return not self.ok and self.stalled_by is not None

    @property
    def status(self) -> str:
        return "PASS" if self.ok else "INCONCLUSIVE" if self.inconclusive else "FAIL"

    def explain(self) -> str:
        head = f"[{self.status}] {self.invariant} ({self.subject}): {self.summary}"
        return f"{head}\n{self.excerpt}" if self.excerpt else head


class InvariantViolation(AssertionError):
    def __init__(self, verdicts: list[Verdict]) -> None:
        self.verdicts = verdicts
        super().__init__("\n\n".join(v.explain() for v in verdicts))


class InconclusiveViolation(InvariantViolation):
    """Every failing verdict overlapped a stall of one of our own instruments: the harness
    may have caused what it measured. The pytest plugin re-runs such a test once."""

    @property
    def reason(self) -> str:
        return "; ".join(f"{v.invariant} ({v.subject}): {v.stalled_by.describe()}"
                         for v in self.verdicts if v.stalled_by is not None)


def is_instrument(proc: str, instruments: Collection[str] = INSTRUMENTS) -> bool:
    """`proc` is one of `instruments`, or a numbered sibling of one ("proxy-2", "worker-0")."""
    family, _, number = proc.rpartition("-")
    return proc in instruments or (number.isdigit() and family in instruments)


def judge(verdict: Verdict, instruments: Collection[str] = INSTRUMENTS) -> Verdict:
    """A FAIL whose violation overlaps a loop stall of one of `instruments` becomes
    INCONCLUSIVE; a stall of the implementation under test leaves it a FAIL, except for
    the time its loop waited for a CPU (the machine's load, not its work), and only
    against a duration's excess: a busy machine makes a read late, not lost. A stall
    adds at most its own length to a latency or a delay, so stalls that cannot account
    for the excess over the bound (a read seconds late, our loop 50 ms) leave it a FAIL too."""
    ours = []
    for s in verdict.stalls:
        # a tcp_stall is only ever written by our own instruments: the proxy and the probes (named as such)
        if s.peer is not None or is_instrument(s.proc, instruments):
            ours.append(s)
        elif verdict.excess_us is not None and s.waited_us > 0:  # the implementation's: its CPU wait only
            ours.append(replace(s, blocked_us=min(s.blocked_us, s.waited_us)))
    if verdict.ok or verdict.stalled_by is not None or not ours:
        return verdict
    if verdict.excess_us is not None and longest_delay_us(ours) < verdict.excess_us:
        return verdict
    worst = max(ours, key=lambda s: s.blocked_us)
    return replace(verdict, stalled_by=worst,
                   summary=f"INCONCLUSIVE: {worst.describe()}, overlapping the violation ({verdict.summary})")


def longest_delay_us(stalls: Collection[Stall]) -> int:
    """The most these stalls can add to one measured duration: each process its longest
    stall, and processes in a row add up. Not the sum of one process's stalls: a loop
    that falls behind reports its whole backlog in every late tick (on a loaded machine,
    stalls summing to more than the window itself), and lets a real fault hide behind it."""
    longest: dict[str, int] = {}
    for stall in stalls:
        longest[stall.proc] = max(longest.get(stall.proc, 0), stall.blocked_us)
    return sum(longest.values())


def require(*verdicts: Verdict, instruments: Collection[str] = INSTRUMENTS) -> None:
    """Raise InvariantViolation for any FAIL; InconclusiveViolation when every failure is
    inconclusive (a real FAIL among them makes the whole a FAIL, never re-run)."""
    failed = [judge(v, instruments) for v in verdicts if not v.ok]
    if failed and all(v.inconclusive for v in failed):
        raise InconclusiveViolation(failed)
    if failed:
        raise InvariantViolation(failed)


def _percentile(values: list[int], q: float) -> int:
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _server_session(events: Events, probe: str) -> tuple[str, str] | None:
    return events.server_session(probe)


def stalls_during(events: Events, window: tuple[int, int], ports: Collection[int] | None = ()) -> list[Stall]:
    """Every process's `loop_lag` whose stall window overlaps `window` (µs, inclusive), and
    each `tcp_stall` of a socket on one of `ports`: a socket's stall delays only what it carries
    (None: every socket's, where all of them carry the one peer under test)."""
    lo, hi = window
    t0 = events.start_us()
    ended = [Stall(r["proc"], r["lag_us"], (r["t_us"] - t0) / 1e6, r["lag_us"] + r["interval_us"], r.get("peer"),
                   waited_us=r.get("runqueue_us", 0))
             for r in events.select(("loop_lag", "tcp_stall"))
             if stall_window(r["t_us"], r["lag_us"], r["interval_us"])[0] <= hi and r["t_us"] >= lo
             and (r["event"] == "loop_lag" or ports is None or r["port"] in ports)]
    return ended + [Stall(r["proc"], hi - r["since_us"], (r["since_us"] - t0) / 1e6, hi - r["since_us"],
                          r["peer"], ongoing=True)
                    for r in _ongoing_send_stalls(events)
                    if r["since_us"] <= hi and (ports is None or r["port"] in ports)]


def _ongoing_send_stalls(events: Events) -> list[Record]:
    """Each socket's `tcp_stall_begin` whose `tcp_stall` was not yet written: still stalled."""
    begun: dict[tuple[str, int], Record] = {}
    for r in events.select(("tcp_stall_begin", "tcp_stall")):
        if r["event"] == "tcp_stall_begin":
            begun[r["proc"], r["port"]] = r
        else:
            begun.pop((r["proc"], r["port"]), None)
    return list(begun.values())


def _ports(events: Events, probe: str) -> set[int]:
    """The port the server under test saw `probe`'s session come from (through the proxy:
    the proxy's socket to it)."""
    found = _server_session(events, probe)
    if found is None:
        return set()
    proc, session = found
    return {r["port"] for r in events.select("accept", proc=proc, session=session) if r.get("port") is not None}


def _fail(invariant: str, probe: str, summary: str, events: Events, at: Record | int | None,
          sessions: set[str] | None = None, window: tuple[int, int] | None = None, excess_us: int | None = None,
          **figures: Any) -> Verdict:
    """A FAIL with its excerpt. `window`: when the violating measurement was taken, given
    only where a stall of our own could have caused it (a late read, a late chunk, a
    silence), so that `judge` can tell; `excess_us`: how far a duration went past its bound."""
    t = at["t_us"] if isinstance(at, dict) else at
    excerpt = events.excerpt(t, sessions=sessions) if t is not None else ""
    stalls = stalls_during(events, window, _ports(events, probe)) if window is not None else []
    return Verdict(invariant, probe, False, summary, figures, excerpt, stalls, excess_us)


def _since_previous(records: list[Record], record: Record) -> tuple[int, int]:
    """From the record before `record` in `records` (the last sign that all was well) to it."""
    before = [r["t_us"] for r in records if r["t_us"] < record["t_us"]]
    return (before[-1] if before else record["t_us"]), record["t_us"]


# --- I1 session alive ------------------------------------------------------------------


def session_alive(events: Events, probe: str, bounds: Bounds, end_us: int) -> Verdict:
    """Open until `end_us`, and every client/time answered by server/time."""
    inv = "I1 session alive"
    closes = [r for r in events.select("close", proc=probe) if r["t_us"] < end_us]
    if closes:
        c = closes[0]  # a stall of ours in the silence before it could have timed the session out
        return _fail(inv, probe, f"closed before the end: code {c.get('code')} {c.get('reason')!r}", events, c,
                     window=_since_previous(events.select(proc=probe), c))
    sent = [r for r in events.select("send", proc=probe, type="client/time")
            if r["t_us"] < end_us - bounds.time_reply_grace_us]
    if not sent:
        return Verdict(inv, probe, False, "no client/time was sent before the end: nothing to judge")
    answered = {r["client_transmitted"] for r in events.select("recv", proc=probe, type="server/time")}
    missing = [r for r in sent if r["client_transmitted"] not in answered]
    if missing:
        return _fail(inv, probe, f"{len(missing)} of {len(sent)} client/time never got a server/time", events,
                     missing[0], window=(missing[0]["t_us"], end_us), missing=len(missing), sent=len(sent))
    return Verdict(inv, probe, True, f"open to the end, {len(sent)} client/time all answered", {"time_sent": len(sent)})


# --- I2 reads never starve -------------------------------------------------------------


def read_latencies(events: Events, probe: str, start_us: int = 0, end_us: int | None = None) -> list[int]:
    return [r["t_us"] - r["client_transmitted"] for r in _reads(events, probe, start_us, end_us)]


def _reads(events: Events, probe: str, start_us: int = 0, end_us: int | None = None) -> list[Record]:
    """The server's `recv` of each client/time the probe sent in the window."""
    found = _server_session(events, probe)
    if found is None:
        return []
    proc, session = found
    return [r for r in _time_reads(events, proc, session)
            if start_us <= r["client_transmitted"] and (end_us is None or r["client_transmitted"] < end_us)]


def _time_reads(events: Events, proc: str, session: str) -> list[Record]:
    """The server's reads of this session's client/time; a refused one (e.g. S04's wrong
    field type) has no client_transmitted and is left out."""
    return [r for r in events.select("recv", proc=proc, session=session, type="client/time")
            if "client_transmitted" in r]


def reads_prompt(events: Events, probe: str, bounds: Bounds, end_us: int, start_us: int = 0) -> Verdict:
    """Every client/time the probe sent was read by the server within the bound."""
    inv = "I2 reads never starve"
    found = _server_session(events, probe)
    if found is None:
        return Verdict(inv, probe, False, "the server logged no client/hello from this probe")
    proc, session = found
    sent = [r for r in events.select("send", proc=probe, type="client/time")
            if start_us <= r["client_transmitted"] < end_us - bounds.time_reply_grace_us]
    if not sent:
        return Verdict(inv, probe, False, "no client/time was sent in the window: nothing to judge")
    received = {r["client_transmitted"]: r for r in _time_reads(events, proc, session)}
    latencies: list[int] = []
    worst: Record | None = None
    unread: list[Record] = []
    for r in sent:
        got = received.get(r["client_transmitted"])
        if got is None:
            unread.append(r)
            continue
        latency = got["t_us"] - r["client_transmitted"]
        latencies.append(latency)
        if worst is None or latency > worst["t_us"] - worst["client_transmitted"]:
            worst = got
    figures = {"n": len(sent), "p50_us": _percentile(latencies, 0.5), "p99_us": _percentile(latencies, 0.99),
               "max_us": max(latencies, default=0), "unread": len(unread)}
    text = f"n={len(sent)} p50={figures['p50_us'] / 1000:.1f} ms p99={figures['p99_us'] / 1000:.1f} ms " \
           f"max={figures['max_us'] / 1000:.1f} ms (bound {bounds.read_latency_us / 1000:.0f} ms)"
    sessions = {probe, session}
    if unread:
        return _fail(inv, probe, f"{len(unread)} client/time never read by the server; {text}", events, unread[0],
                     sessions, window=(unread[0]["client_transmitted"], end_us), **figures)
    if worst is not None and figures["max_us"] > bounds.read_latency_us:
        return _fail(inv, probe, f"read latency over the bound; {text}", events, worst, sessions,
                     window=(worst["client_transmitted"], worst["t_us"]),
                     excess_us=figures["max_us"] - bounds.read_latency_us, **figures)
    return Verdict(inv, probe, True, text, figures)


# --- I3 nothing lost ---------------------------------------------------------------------


def audio_intact(events: Events, probe: str, bounds: Bounds, expected_s: float, rate: int = 48_000) -> Verdict:
    """Watermark audio: no gap, duplicate, reordering or corruption, and enough of it."""
    inv = "I3 nothing lost (audio)"
    chunks = events.select("audio", proc=probe)
    samples = sum(r["frames"] for r in chunks)
    totals = {k: sum(r[k] for r in chunks) for k in ("gap", "dup", "reorder", "corrupt")}
    figures = {"chunks": len(chunks), "samples": samples, **totals}
    text = f"{len(chunks)} chunks, {samples / rate:.2f} s of audio, gaps={totals['gap']} dups={totals['dup']} " \
           f"reordered={totals['reorder']} corrupt={totals['corrupt']}"
    bad = next((r for r in chunks if r["gap"] or r["dup"] or r["reorder"] or r["corrupt"]), None)
    if bad is not None:  # e.g. skipped as stale because a stall of ours left it unread too long
        return _fail(inv, probe, text, events, bad, {probe}, window=_since_previous(chunks, bad), **figures)
    if samples < bounds.min_audio_fraction * expected_s * rate:
        return Verdict(inv, probe, False, f"too little audio: {text}, expected about {expected_s:.1f} s", figures)
    return Verdict(inv, probe, True, text, figures)


def artwork_intact(events: Events, probe: str, channel: int = 0) -> Verdict:
    """The image the server queued arrived byte-identical (sha256)."""
    inv = "I3 nothing lost (artwork)"
    found = _server_session(events, probe)
    queued = events.select("artwork_queued", proc=found[0], session=found[1], channel=channel) if found else []
    got = events.select("artwork", proc=probe, channel=channel)
    if not queued:
        return Verdict(inv, probe, False, f"the server queued no artwork on channel {channel}")
    if not got:
        return _fail(inv, probe, f"artwork of {queued[-1]['bytes']} bytes never arrived", events, queued[-1])
    sent, recv = queued[-1], got[-1]
    figures = {"bytes": recv["bytes"], "fragments": recv["fragments"], "fragment_max": recv["fragment_max"]}
    if (sent["sha256"], sent["bytes"]) != (recv["sha256"], recv["bytes"]):
        return _fail(inv, probe, f"artwork differs: sent {sent['bytes']} B {sent['sha256'][:12]}…, received "
                     f"{recv['bytes']} B {recv['sha256'][:12]}…", events, recv, **figures)
    return Verdict(inv, probe, True, f"{recv['bytes']} bytes identical, in {recv['fragments']} fragment(s) "
                   f"of at most {recv['fragment_max']} bytes", figures)


# --- I4 isolation ---------------------------------------------------------------------------


def lead_kept(events: Events, probe: str, bounds: Bounds, start_us: int, end_us: int) -> Verdict:
    """An unaffected player's audio kept arriving ahead of time (no lead-time drop)."""
    inv = "I4 isolation (audio lead)"
    chunks = [r for r in events.select("audio", proc=probe) if start_us <= r["t_us"] < end_us]
    if not chunks:
        return Verdict(inv, probe, False, "no audio arrived in the window: nothing to judge")
    low = min(chunks, key=lambda r: r["lead_us"])
    figures = {"min_lead_us": low["lead_us"], "chunks": len(chunks)}
    text = f"min lead {low['lead_us'] / 1000:.1f} ms over {len(chunks)} chunks " \
           f"(bound {bounds.min_lead_us / 1000:.0f} ms)"
    if low["lead_us"] < bounds.min_lead_us:
        return _fail(inv, probe, text, events, low, {probe}, window=_since_previous(chunks, low),
                     excess_us=bounds.min_lead_us - low["lead_us"], **figures)
    return Verdict(inv, probe, True, text, figures)


def latency_isolated(events: Events, probe: str, bounds: Bounds, baseline: tuple[int, int],
                     fault: tuple[int, int]) -> Verdict:
    """This session's read latency during another session's fault stayed within
    `isolation_latency_us` of its own baseline (p99 against p99)."""
    inv = "I4 isolation (read latency)"
    before = read_latencies(events, probe, *baseline)
    reads = sorted(_reads(events, probe, *fault), key=lambda r: r["t_us"] - r["client_transmitted"])
    during = [r["t_us"] - r["client_transmitted"] for r in reads]
    if len(before) < 3 or len(during) < 3:
        return Verdict(inv, probe, False, f"too few client/time to compare ({len(before)} before, {len(during)} "
                       "during the fault)")
    p99_before, p99_during = _percentile(before, 0.99), _percentile(during, 0.99)
    decisive = reads[min(len(reads) - 1, int(0.99 * len(reads)))]  # the read whose latency is the p99
    figures = {"p99_before_us": p99_before, "p99_during_us": p99_during}
    text = f"read p99 {p99_before / 1000:.2f} ms before, {p99_during / 1000:.2f} ms during the fault " \
           f"(tolerance +{bounds.isolation_latency_us / 1000:.0f} ms)"
    if p99_during - p99_before > bounds.isolation_latency_us:
        return _fail(inv, probe, text, events, fault[0], window=(decisive["client_transmitted"], decisive["t_us"]),
                     excess_us=p99_during - p99_before - bounds.isolation_latency_us, **figures)
    return Verdict(inv, probe, True, text, figures)


# --- I6 bounded resources -------------------------------------------------------------------


def held_bounded(events: Events, probe: str, bound_bytes: int) -> Verdict:
    """What the server held for this session (write buffer + queues) stayed under the bound."""
    inv = "I6 bounded resources"
    found = _server_session(events, probe)
    stats = events.select("session_stats", proc=found[0], session=found[1]) if found else []
    if not stats:
        return Verdict(inv, probe, False, "the server logged no session_stats for this session: nothing to judge")
    top = max(stats, key=lambda r: r["held"])
    figures = {"max_held": top["held"], "samples": len(stats)}
    text = f"server held at most {top['held']} bytes for it over {len(stats)} samples (bound {bound_bytes})"
    if top["held"] > bound_bytes:
        return _fail(inv, probe, text, events, top, **figures)
    return Verdict(inv, probe, True, text, figures)


# --- I7 clear failures ------------------------------------------------------------------------


def rejected(events: Events, probe: str, rule_contains: str, after_us: int = 0) -> Verdict:
    """The server logged a rejection with a reason and told the harness-aware client."""
    inv = "I7 clear failures"
    found = _server_session(events, probe)
    rejects = [r for r in events.select("reject", proc=found[0], session=found[1]) if r["t_us"] >= after_us] \
        if found else []
    match = next((r for r in rejects if rule_contains in r.get("rule", "")), None)
    if match is None:
        seen = "; ".join(r.get("rule", "") for r in rejects) or "none"
        return Verdict(inv, probe, False, f"no rejection mentioning {rule_contains!r} (rejections seen: {seen})")
    return Verdict(inv, probe, True, f"rejected: {match['rule']} (action {match.get('action')})")


def closed_by_policy(events: Events, probe: str, code: int, after_us: int, within_us: int) -> Verdict:
    """The server closed this session with `code` within `within_us` of `after_us`."""
    inv = "I7 clear failures (policy close)"
    found = _server_session(events, probe)
    closes = [r for r in events.select("close_begin", proc=found[0], session=found[1]) if r["t_us"] >= after_us] \
        if found else []
    if not closes:
        return Verdict(inv, probe, False, f"the server never closed the session (expected code {code})")
    c = closes[0]
    delay = c["t_us"] - after_us
    text = f"closed with {c['code']} {c['reason']!r} after {delay / 1e6:.2f} s (bound {within_us / 1e6:.1f} s)"
    if c["code"] != code or delay > within_us:
        return _fail(inv, probe, text, events, c)
    return Verdict(inv, probe, True, text, {"delay_us": delay})


def closed_silently(events: Events, probe: str, after_us: int) -> Verdict:
    """A silent failure (noise, connection.md Failure Handling): after the server's first
    closing rejection from `after_us` on, it wrote this session no message (`send_end`: a
    message written whole; a writer that found the connection closing logs only its
    `send_begin`, and audio is not logged per write) and closed it without a reason."""
    inv = "I7 clear failures (silent close)"
    found = _server_session(events, probe)
    if found is None:
        return Verdict(inv, probe, False, "the server logged no client/hello from this probe")
    proc, session = found
    fatal = next((r for r in events.select("reject", proc=proc, session=session)
                  if r["t_us"] >= after_us and r.get("action") == "close"), None)
    if fatal is None:
        return Verdict(inv, probe, False, "the server logged no rejection that closed the session")
    sent = [r for r in events.select("send_end", proc=proc, session=session) if r["t_us"] >= fatal["t_us"]]
    closes = [r for r in events.select("close_begin", proc=proc, session=session) if r["t_us"] >= fatal["t_us"]]
    if sent:
        return _fail(inv, probe, f"{len(sent)} message(s) sent after the failure, first {sent[0]['type']}", events,
                     sent[0], {session}, sent=len(sent))
    if not closes or closes[0].get("reason"):
        what = f"a close with the reason {closes[0]['reason']!r}" if closes else "no close"
        return _fail(inv, probe, f"{what} after the failure", events, fatal, {session})
    return Verdict(inv, probe, True, f"nothing sent after {fatal['rule']!r}; closed with {closes[0]['code']}, "
                   "no reason")


def healthy_player(events: Events, probe: str, bounds: Bounds, start_us: int, end_us: int,
                   audio_s: float) -> list[Verdict]:
    """I1-I4 for a player no fault was aimed at."""
    return [session_alive(events, probe, bounds, end_us), reads_prompt(events, probe, bounds, end_us, start_us),
            audio_intact(events, probe, bounds, audio_s), lead_kept(events, probe, bounds, start_us, end_us)]


def healthy_players(events: Events, probes: list[Any], bounds: Bounds, start_us: int, end_us: int,
                    fault_us: int | None = None, warmup_s: float = 1.0) -> list[Verdict]:
    """`healthy_player` for every probe, expecting audio for the whole window less
    `warmup_s`; with `fault_us`, also I4 latency isolation from that moment on."""
    audio_s = (end_us - start_us) / 1e6 - warmup_s
    verdicts = [v for p in probes for v in healthy_player(events, p.name, bounds, start_us, end_us, audio_s)]
    if fault_us is not None:
        verdicts += [latency_isolated(events, p.name, bounds, (start_us, fault_us), (fault_us, end_us))
                     for p in probes]
    return verdicts


# --- I5 recovery -------------------------------------------------------------------------------


def crash_detected(events: Events, worker: int, killed_us: int, within_us: int) -> Verdict:
    """The coordinator took `worker` out of the pool within `within_us` of its death."""
    inv = "I5 recovery (detection)"
    exits = [r for r in events.select("worker_exit", proc="coordinator", worker=worker) if r["t_us"] >= killed_us]
    if not exits:
        return _fail(inv, f"worker-{worker}", "the coordinator never noticed the worker's death", events, killed_us)
    delay = exits[0]["t_us"] - killed_us
    text = f"noticed after {delay / 1000:.1f} ms via {exits[0]['how']} (bound {within_us / 1000:.0f} ms)"
    if delay > within_us:  # `killed_us` is stamped before the kill: a stall of ours in between lengthens it
        return _fail(inv, f"worker-{worker}", text, events, exits[0], window=(killed_us, exits[0]["t_us"]),
                     excess_us=delay - within_us)
    return Verdict(inv, f"worker-{worker}", True, text, {"delay_us": delay})


def streams_again(events: Events, probe: str, lost_us: int, within_us: int) -> Verdict:
    """After losing its worker at `lost_us`, the probe received audio again within the bound."""
    inv = "I5 recovery (streaming again)"
    back = [r for r in events.select("reconnected", proc=probe) if r["t_us"] > lost_us]
    if not back:
        return _fail(inv, probe, "never reconnected", events, lost_us, {probe})
    # Audio still in the socket from the dead worker does not count.
    audio = [r for r in events.select("audio", proc=probe) if r["t_us"] > back[0]["t_us"]]
    if not audio:
        return _fail(inv, probe, "never streamed again", events, lost_us, {probe})
    delay = audio[0]["t_us"] - lost_us
    text = f"streaming again after {delay / 1000:.0f} ms (bound {within_us / 1000:.0f} ms)"
    if delay > within_us:
        return _fail(inv, probe, text, events, audio[0], {probe}, window=(lost_us, audio[0]["t_us"]),
                     excess_us=delay - within_us)
    return Verdict(inv, probe, True, text, {"delay_us": delay})


# --- the fault itself ----------------------------------------------------------------------------


def proxy_fault_applied(events: Events, fault_type: str, after_us: int = 0) -> Verdict:
    """The proxy logged that it applied a fault of this type: a scenario whose fault
    never happened has judged nothing."""
    applied = [r for r in events.select("fault", type=fault_type) if r["t_us"] >= after_us]
    if not applied:
        # the proxy says why, when it knows: e.g. a message fault on a permessage-deflate connection
        refused = [r for r in events.select("fault_not_applied", type=fault_type) if r["t_us"] >= after_us]
        why = "; ".join(sorted({str(r.get("why")) for r in refused}))
        more = f"; it could not act on {len(refused)} connection(s): {why}" if refused else ""
        return Verdict("fault injected", fault_type, False, "the proxy logged no application of this fault" + more)
    first = applied[0]
    fields = {k: v for k, v in first.items() if k not in ("t_us", "proc", "event", "params", "selector", "seq")}
    return Verdict("fault injected", fault_type, True, f"{len(applied)} application(s), first: {fields}",
                   {"applications": len(applied)})
