"""A violation that overlaps a stall of our own instruments' event loops (the probes'
process `harness`, the proxy) is INCONCLUSIVE, not FAIL; a stall of the implementation
under test (today: the reference server) stays a FAIL. Synthetic event logs, judged by
the real checkers."""

from __future__ import annotations

from typing import Any

import pytest

from harness.checkers import (
    InconclusiveViolation,
    InvariantViolation,
    Verdict,
    is_instrument,
    judge,
    lead_kept,
    reads_prompt,
    require,
    stalls_during,
)
from harness.events import Events
from harness.settings import DEFAULT_BOUNDS as BOUNDS
from harness.settings import INSTRUMENTS

END_US = 5_000_000


def rec(t_us: int, proc: str, event: str, session: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"t_us": t_us, "proc": proc, "session": session, "event": event, **fields}


def slow_read(*extra: dict[str, Any], latency_us: int = 500_000) -> Events:
    """probe-1 sends client/time at 1.0 s; the server reads it 500 ms later (bound 200 ms)."""
    return Events(sorted([
        rec(0, "server", "recv", "s1", type="client/hello", client_id="probe-1"),
        rec(1_000_000, "probe-1", "send", "probe-1", type="client/time", client_transmitted=1_000_000),
        rec(1_000_000 + latency_us, "server", "recv", "s1", type="client/time", client_transmitted=1_000_000),
        *extra], key=lambda r: r["t_us"]))


def lag(t_us: int, proc: str, lag_us: int) -> dict[str, Any]:
    return rec(t_us, proc, "loop_lag", lag_us=lag_us, interval_us=20_000)


def test_without_a_stall_the_slow_read_is_a_fail() -> None:
    verdict = judge(reads_prompt(slow_read(), "probe-1", BOUNDS, END_US))
    assert verdict.status == "FAIL" and "read latency over the bound" in verdict.summary
    with pytest.raises(InvariantViolation) as raised:
        require(verdict)
    assert type(raised.value) is InvariantViolation


def test_a_harness_stall_overlapping_the_slow_read_makes_it_inconclusive() -> None:
    events = slow_read(lag(1_450_000, "harness", 412_000))
    verdict = judge(reads_prompt(events, "probe-1", BOUNDS, END_US))
    assert verdict.inconclusive and verdict.status == "INCONCLUSIVE"
    assert verdict.summary.startswith("INCONCLUSIVE: harness's own event loop stalled 412 ms at 1.4 s, "
                                      "overlapping the violation (read latency over the bound;"), verdict.summary
    assert verdict.explain().startswith("[INCONCLUSIVE] I2 reads never starve (probe-1)")
    with pytest.raises(InconclusiveViolation) as raised:
        require(reads_prompt(events, "probe-1", BOUNDS, END_US))
    assert raised.value.reason == "I2 reads never starve (probe-1): harness's own event loop stalled 412 ms at 1.4 s"


def test_a_proxy_stall_counts_too_and_the_longest_of_ours_is_named() -> None:
    events = slow_read(lag(1_200_000, "harness", 60_000), lag(1_480_000, "proxy", 250_000))
    verdict = judge(reads_prompt(events, "probe-1", BOUNDS, END_US))
    assert verdict.stalled_by is not None and (verdict.stalled_by.proc, verdict.stalled_by.lag_us) == \
        ("proxy", 250_000)


def test_a_stall_of_the_server_under_test_stays_a_fail() -> None:
    events = slow_read(lag(1_450_000, "server", 412_000), lag(1_450_000, "worker-1", 412_000),
                       lag(1_450_000, "coordinator", 412_000))
    verdict = judge(reads_prompt(events, "probe-1", BOUNDS, END_US))
    assert verdict.status == "FAIL" and len(verdict.stalls) == 3
    with pytest.raises(InvariantViolation) as raised:
        require(verdict)
    assert not isinstance(raised.value, InconclusiveViolation)


def starved(t_us: int, proc: str, lag_us: int, runqueue_us: int) -> dict[str, Any]:
    return {**lag(t_us, proc, lag_us), "runqueue_us": runqueue_us}


def test_a_server_under_test_starved_by_the_machine_is_inconclusive() -> None:
    """The worker's loop was 412 ms late, 400 ms of it runnable and waiting for a CPU: the
    300 ms excess is the busy machine's doing."""
    verdict = judge(reads_prompt(slow_read(starved(1_450_000, "worker-1", 412_000, 400_000)), "probe-1",
                                 BOUNDS, END_US))
    assert verdict.inconclusive, verdict.explain()
    assert "worker-1's own event loop stalled 412 ms at 1.4 s (waiting 400 ms for a CPU since its previous " \
        "tick)" in verdict.summary, verdict.summary


def test_a_server_under_test_blocked_by_its_own_work_stays_a_fail() -> None:
    """The same stall, but its loop ran (a blocking send, a sleep) nearly all the time: only the
    CPU wait is excused, 50 ms, too little for a 300 ms excess."""
    verdict = judge(reads_prompt(slow_read(starved(1_450_000, "worker-1", 412_000, 50_000)), "probe-1",
                                 BOUNDS, END_US))
    assert verdict.status == "FAIL" and len(verdict.stalls) == 1, verdict.explain()


def test_a_busy_machine_makes_a_read_late_never_lost() -> None:
    """A starved server reads late; one that never read a message did not wait for a CPU."""
    verdict = judge(reads_prompt(unread(starved(1_450_000, "worker-1", 412_000, 400_000)), "probe-1",
                                 BOUNDS, END_US))
    assert verdict.status == "FAIL" and len(verdict.stalls) == 1, verdict.explain()


def test_a_gate_where_the_server_is_an_instrument_says_so() -> None:
    events = slow_read(lag(1_450_000, "worker-1", 412_000))
    verdict = reads_prompt(events, "probe-1", BOUNDS, END_US)
    assert judge(verdict, INSTRUMENTS | {"server", "worker", "coordinator"}).inconclusive
    with pytest.raises(InconclusiveViolation, match="worker-1's own event loop stalled 412 ms"):
        require(verdict, instruments=INSTRUMENTS | {"worker"})


@pytest.mark.parametrize("stall", [
    lag(3_000_000, "harness", 412_000),  # long after the read: [2.568 s, 3.0 s]
    lag(990_000, "harness", 100_000),  # over before the client/time was sent: [0.87 s, 0.99 s]
])
def test_a_stall_that_does_not_overlap_the_violation_leaves_it_a_fail(stall: dict[str, Any]) -> None:
    verdict = judge(reads_prompt(slow_read(stall), "probe-1", BOUNDS, END_US))
    assert verdict.status == "FAIL" and verdict.stalls == []


def test_a_stall_overlapping_only_by_its_tick_interval_counts() -> None:
    # A read 240 ms late (40 ms over the bound), ending at 1.24 s. The tick due at 1.245 s ran
    # at 1.28 s; the loop may have blocked right after the tick before it (1.225 s).
    def verdict(stall_t_us: int) -> Verdict:
        events = slow_read(lag(stall_t_us, "harness", 35_000), latency_us=240_000)
        return judge(reads_prompt(events, "probe-1", BOUNDS, END_US))

    assert verdict(1_280_000).inconclusive
    assert verdict(1_300_000).status == "FAIL"  # may have begun at 1.245 s: after the read


def test_a_stall_too_short_to_account_for_the_excess_leaves_it_a_fail() -> None:
    # A read 3 s late is 2.8 s over the bound; our loop stalled 412 ms (+20 ms) of it at most.
    events = slow_read(lag(3_000_000, "harness", 412_000), latency_us=3_000_000)
    verdict = judge(reads_prompt(events, "probe-1", BOUNDS, END_US))
    assert verdict.status == "FAIL" and [s.proc for s in verdict.stalls] == ["harness"]
    # Several stalls of ours add up.
    events = slow_read(lag(1_400_000, "harness", 200_000), lag(1_450_000, "proxy", 100_000))
    assert judge(reads_prompt(events, "probe-1", BOUNDS, END_US)).inconclusive


def test_a_loop_that_falls_behind_counts_its_backlog_once() -> None:
    # A read 3 s late (2.8 s over the bound) while our loop ran 300 ms behind throughout: every
    # tick reports that backlog (60 ticks, 19 s in all), yet no message was held up by more.
    behind = [lag(t, "harness", 300_000) for t in range(1_000_000, 4_000_000, 50_000)]
    verdict = judge(reads_prompt(slow_read(*behind, latency_us=3_000_000), "probe-1", BOUNDS, END_US))
    assert verdict.status == "FAIL" and len(verdict.stalls) == 60, verdict.summary
    # the same backlog can account for a read 300 ms late
    assert judge(reads_prompt(slow_read(*behind, latency_us=500_000), "probe-1", BOUNDS, END_US)).inconclusive


def test_one_real_fail_among_inconclusive_ones_is_a_fail_never_re_run() -> None:
    inconclusive = reads_prompt(slow_read(lag(1_450_000, "harness", 412_000)), "probe-1", BOUNDS, END_US)
    real = Verdict("I6 bounded resources", "probe-2", False, "held 9 MiB")
    with pytest.raises(InvariantViolation) as raised:
        require(inconclusive, real, Verdict("I1 session alive", "probe-3", True, "fine"))
    assert not isinstance(raised.value, InconclusiveViolation)
    assert [v.status for v in raised.value.verdicts] == ["INCONCLUSIVE", "FAIL"]


def test_a_late_audio_chunk_after_a_harness_stall_is_inconclusive() -> None:
    chunks = [rec(t, "probe-1", "audio", "probe-1", ts_us=t + lead, lead_us=lead, frames=960, gap=0, dup=0,
                  reorder=0, corrupt=0) for t, lead in [(1_000_000, 500_000), (1_020_000, 500_000),
                                                         (1_600_000, 40_000)]]
    stalled = Events(sorted([*chunks, lag(1_590_000, "harness", 550_000)], key=lambda r: r["t_us"]))
    assert judge(lead_kept(stalled, "probe-1", BOUNDS, 0, END_US)).inconclusive
    assert judge(lead_kept(Events(chunks), "probe-1", BOUNDS, 0, END_US)).status == "FAIL"


def test_instruments_cover_their_numbered_siblings_only() -> None:
    assert is_instrument("harness") and is_instrument("proxy") and is_instrument("proxy-3")
    assert not any(is_instrument(p) for p in ("server", "worker-0", "coordinator", "probe-1", "proxyish"))
    assert is_instrument("worker-0", {"worker"}) and not is_instrument("worker-x", {"worker"})


# the server saw probe-1's session come from the proxy's port 43998
ACCEPT = rec(0, "server", "accept", "s1", remote="('127.0.0.1', 43998)", port=43998)


def send_stall(t_us: int, lag_us: int, port: int = 43998) -> dict[str, Any]:
    return rec(t_us, "proxy", "tcp_stall", "flow-1", peer="server", port=port, lag_us=lag_us, interval_us=20_000)


def test_a_send_stall_of_the_proxy_s_socket_carrying_the_session_makes_it_inconclusive() -> None:
    """The proxy held the server's socket's reads and its ACKs fell beyond the window: what
    the proxy sent on that socket waited 600 ms (protocol/tcpstall.py)."""
    verdict = judge(reads_prompt(slow_read(ACCEPT, send_stall(1_620_000, 600_000)), "probe-1", BOUNDS, END_US))
    assert verdict.inconclusive, verdict.explain()
    assert "proxy's own socket to the server had nothing it sent acknowledged for 600 ms until 1.6 s" in \
        verdict.summary, verdict.summary


def test_a_send_stall_of_another_connection_leaves_a_fail() -> None:
    """A socket's stall delays only what that socket carries: the slow reader's stall must not
    excuse another session's late read (I4, isolation, is exactly that check)."""
    verdict = judge(reads_prompt(slow_read(ACCEPT, send_stall(1_620_000, 600_000, port=41000)), "probe-1",
                                 BOUNDS, END_US))
    assert verdict.status == "FAIL" and verdict.stalls == []


def test_a_send_stall_too_short_for_the_excess_leaves_a_fail() -> None:
    verdict = judge(reads_prompt(slow_read(ACCEPT, send_stall(1_450_000, 150_000), latency_us=900_000), "probe-1",
                                 BOUNDS, END_US))
    assert verdict.status == "FAIL" and len(verdict.stalls) == 1


def test_a_send_stall_of_the_probe_s_own_socket_makes_it_inconclusive() -> None:
    """A probe that reads slowly holds its socket's reads: the same stall on its own socket
    (the server accepted it from the probe's port)."""
    own = rec(1_620_000, "probe-1", "tcp_stall", "probe-1", peer="server", port=43998, lag_us=600_000,
              interval_us=20_000)
    verdict = judge(reads_prompt(slow_read(ACCEPT, own), "probe-1", BOUNDS, END_US))
    assert verdict.inconclusive and verdict.stalled_by is not None and verdict.stalled_by.proc == "probe-1"


def send_stall_begun(t_us: int, since_us: int, port: int = 43998) -> dict[str, Any]:
    return rec(t_us, "proxy", "tcp_stall_begin", "flow-1", peer="server", port=port, since_us=since_us)


def unread(*extra: dict[str, Any]) -> Events:
    """probe-1's client/time at 1.0 s never reaches the server (read until END_US)."""
    return Events(sorted([
        rec(0, "server", "recv", "s1", type="client/hello", client_id="probe-1"), ACCEPT,
        rec(1_000_000, "probe-1", "send", "probe-1", type="client/time", client_transmitted=1_000_000),
        *extra], key=lambda r: r["t_us"]))


def test_a_send_stall_still_going_on_when_the_log_is_read_makes_it_inconclusive() -> None:
    """A slow reader at 0 B/s never releases its hold: the stall has begun and not ended
    when the check runs; what the socket should have carried since is not the server's fault."""
    verdict = judge(reads_prompt(unread(send_stall_begun(1_020_000, 900_000)), "probe-1", BOUNDS, END_US))
    assert verdict.inconclusive, verdict.explain()
    assert verdict.stalled_by is not None and verdict.stalled_by.ongoing
    assert "for 4100 ms from 0.9 s, still when the log was read, while it held" in verdict.summary, verdict.summary


def test_an_ongoing_send_stall_of_another_connection_or_one_that_ended_before_leaves_a_fail() -> None:
    other = send_stall_begun(1_020_000, 900_000, port=41000)
    assert judge(reads_prompt(unread(other), "probe-1", BOUNDS, END_US)).status == "FAIL"
    ended = [send_stall_begun(520_000, 400_000), send_stall(700_000, 300_000)]
    verdict = judge(reads_prompt(unread(*ended), "probe-1", BOUNDS, END_US))
    assert verdict.status == "FAIL" and verdict.stalls == []


def test_the_gate_counts_every_socket_s_send_stall_and_the_scenarios_only_the_session_s() -> None:
    """The client gate has one peer under test: whatever socket of the proxy stalled carried
    its traffic (`ports=None`). A scenario has several sessions: only the session's own port."""
    events = slow_read(ACCEPT, send_stall(1_620_000, 600_000, port=41000))
    assert [s.proc for s in stalls_during(events, (1_000_000, 1_500_000), ports=None)] == ["proxy"]
    assert stalls_during(events, (1_000_000, 1_500_000), ports={43998}) == []
    assert stalls_during(events, (1_000_000, 1_500_000)) == []
