"""The client gate as pytest tests: `test_client[GROUP.CASE]`, one per catalogue case.

With `--client-initiator both` every case runs twice, `test_client[2.3-client]` and
`test_client[2.3-server]` (the plugin parametrizes `initiator`; with one initiator it is
a plain fixture and the ids stay `test_client[2.3]`). A case that cannot apply to one
initiator is UNIMPLEMENTED there, with its reason.

Collected from `scenarios/test_client_gate.py` in this repository, and by `sendspin-gate`
(cli.py) from the installed package. Without `--client-cmd` (or `--client-adapter`)
every case is skipped: there is no client to judge.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from ..checkers import InconclusiveViolation, Stall, judge, stalls_during
from ..checkers import Verdict as InvariantVerdict
from ..events import Events
from ..settings import INSTRUMENTS, Bounds
from .client import SERVER_ID, ClientWorld, Topology, case_client_id, conformance_pairing
from .client_cases import CLIENT, RUNS
from .client_cases.common import NotApplicable
from .gate_session import GATE, GateSession
from .report import plot_timeline, timeline_series
from .verdict import CaseResult, Judgement, Verdict, decide
from .wire import close_verdict, flows

# Against a client under test, all of our processes are instruments: a stall of the
# reference server is ours, not the client's.
GATE_INSTRUMENTS = INSTRUMENTS | {"server", "worker", "coordinator"}


def _session(config: pytest.Config) -> GateSession:
    gate = config.stash.get(GATE, None)
    if gate is None or gate.client is None:
        pytest.skip("no client under test: give --client-cmd or --client-adapter (see docs/ci-gate.md)")
    return gate


@pytest.mark.parametrize("case_id", CLIENT.ids())
def test_client(case_id: str, initiator: str, wire_profile: str, request: pytest.FixtureRequest, bounds: Bounds,
                tmp_path: Path, run: Any) -> None:
    gate = _session(request.config)
    assert gate.client is not None
    case, spec = CLIENT[case_id], RUNS[case_id]
    if case.thorough and gate.profile != "thorough":
        pytest.skip("in the thorough profile only (--gate-profile thorough)")
    result = CaseResult(case, Verdict.OK, "", replay=gate.replay(request.node),
                        peer={**gate.peer(), "initiator": initiator})
    profile = wire_profile
    request.node.user_properties.append(("profile", profile))  # JUnit XML: each case's wire profile
    cannot = case.skipped_in(profile)
    if cannot is not None:  # the gate's limit, not the client's: SKIPPED, never a verdict on it
        result.verdict, result.reason = Verdict.SKIPPED, f"not run in the {profile} profile: {cannot}"
        gate.record(result)
        pytest.skip(f"SKIPPED ({profile}): {cannot}")
    missing = case.not_applicable(gate.client.roles, gate.client.codecs) or spec.inapplicable.get(initiator)
    if missing is not None:
        result.verdict, result.reason = Verdict.UNIMPLEMENTED, missing
        gate.record(result)
        pytest.skip(f"UNIMPLEMENTED: {missing}")

    judgement = Judgement()
    started = time.monotonic()
    # a fresh server and proxy per case: a case may leave the server's state changed (a
    # stream ended, a format switched), and the next client must not inherit it
    keys = None
    if gate.client.adapter and profile == "noise":  # pre-paired as the conformance runner's adapters expect
        (tmp_path / "topology").mkdir(parents=True, exist_ok=True)
        keys = conformance_pairing(tmp_path / "topology" / "pairing.json", SERVER_ID, case_client_id(case_id))
    try:
        topology = Topology.start(tmp_path / "topology", spec.workers, initiator=initiator, profile=profile,
                                  noise=spec.noise_proxy, keys=keys)
    except Exception as exc:
        _record_error(gate, result, f"{type(exc).__name__}: {exc}", tmp_path, started)
        raise

    async def body() -> ClientWorld:
        async with ClientWorld(tmp_path, gate.client, case_id, topology, spec.timeout_s) as world:
            await spec.run(world, bounds, judgement)
        return world

    try:
        world = run(body(), spec.timeout_s)
    except NotApplicable as exc:  # what the client lacks showed only in its hello
        result.verdict, result.reason = Verdict.UNIMPLEMENTED, exc.reason
        gate.record(result)
        raise
    except Exception as exc:
        _record_error(gate, result, f"{type(exc).__name__}: {exc}", tmp_path, started)
        raise
    finally:
        problems = topology.stop()
    if problems:
        _record_error(gate, result, "our reference server or proxy did not run cleanly: "
                      + "; ".join(p.splitlines()[0].rstrip(": ") for p in problems), tmp_path, started)
        pytest.fail("our reference server or proxy did not run cleanly:\n" + "\n".join(problems), pytrace=False)
    ev = world.events()
    _keep(ev, tmp_path / "events.jsonl")
    result.seconds = time.monotonic() - started
    result.figures = judgement.figures
    first = flows(ev)
    result.close = close_verdict(ev, first[0], world.stop_us, bounds.client_time_gap_us) if first else None
    result.verdict = decide(case, judgement, gate.strict)
    result.reason = judgement.failures[0] if judgement.failures else ""
    result.notes = judgement.notes + world.notes
    result.peer["exit"] = {"code": world.exit_code, "by_itself": world.exited_by_itself, "stopped": world.stopped}
    if world.adapter_summary is not None:
        result.peer["adapter_summary"] = world.adapter_summary  # its own account: kept, never judged
    result.timeline = _timeline(ev, judgement, world)
    inconclusive = _inconclusive(result, judgement, ev) if result.verdict is Verdict.FAILED else None
    if inconclusive is not None:  # recorded as such; a re-run's result replaces it (pytest_plugin.py)
        result.verdict, result.reason = Verdict.INCONCLUSIVE, f"{result.reason} ({inconclusive.reason})"
    if gate.report_dir is not None:
        key = case_id if len(gate.client.initiators) == 1 else f"{case_id}-{initiator}"
        result.plot = f"cases/{key}.svg"
        plot_timeline(timeline_series(ev, world.started_us), gate.report_dir / result.plot,
                      f"{case_id} {case.title}: {result.verdict.value}")
    gate.record(result)
    if inconclusive is not None:
        raise inconclusive
    gate.conclude(result, world.output())


def _record_error(gate: GateSession, result: CaseResult, what: str, directory: Path, started: float) -> None:
    """A case the gate failed to run still shows in the results, as ERROR with the cause, how
    long it ran and the last seconds its processes logged (from the case's `directory`)."""
    cause = what.splitlines()[0][:300].rstrip(": ")  # "exited -9:" then an empty tail of its output
    result.verdict, result.reason = Verdict.ERROR, f"the gate failed to run the case: {cause}"
    result.seconds = time.monotonic() - started
    try:
        ev = Events.merge(Events.load(directory), Events.load(directory / "topology"))
    except ValueError as exc:  # a log we cannot read must not hide the error itself
        result.notes.append(f"its event logs could not be read: {exc}")
        ev = Events([])
    if ev.records:
        result.timeline = _excerpt(ev, ev.records[-1]["t_us"], 3_000_000, 0)
    gate.record(result)


def _keep(ev: Any, path: Path) -> None:
    """The case's slice of every log, beside its client.log (a failed case's directory stays)."""
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in ev.records), encoding="utf-8")


def _timeline(ev: Any, judgement: Judgement, world: ClientWorld) -> str:
    """The logs around where the first failing figure's trouble began (else the last seconds)."""
    failing = next((f for f in judgement.figures if not f.holds and f.window_us), None)
    if failing is not None and failing.window_us is not None:
        at, before, after = failing.window_us[0], 1_000_000, 3_000_000
    else:
        at, before, after = world.stop_us or ev.start_us(), 3_000_000, 0
    return _excerpt(ev, at, before, after)


def _excerpt(ev: Events, at: int, before_us: int, after_us: int) -> str:
    return ev.excerpt(at, before_us=before_us, after_us=after_us, skip=frozenset({"audio", "session_stats"}),
                      hide=lambda r: r["event"] == "wire" and r["kind"] == "binary")  # audio: in the plot


def _inconclusive(result: CaseResult, judgement: Judgement, ev: Any) -> InconclusiveViolation | None:
    """For a FAILED whose every failure is a duration that a stall of our own processes,
    inside the time it measured, could account for: the violation that re-runs it once."""
    failing = [f for f in judgement.figures if not f.holds]
    if len(failing) != len(judgement.failures) or any(f.excess_us is None or f.window_us is None for f in failing):
        return None  # a failure that is not a duration (a message out of order, a count) no stall explains
    verdicts = []
    for f in failing:
        assert f.window_us is not None
        stalls: list[Stall] = stalls_during(ev, f.window_us, ports=None)  # one client: every socket is its
        verdicts.append(judge(InvariantVerdict(f"case {result.case.id}", "client", False, str(f), stalls=stalls,
                                               excess_us=f.excess_us), GATE_INSTRUMENTS))
    return InconclusiveViolation(verdicts) if all(v.inconclusive for v in verdicts) else None
