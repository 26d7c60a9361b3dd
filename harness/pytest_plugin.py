"""pytest plugin: options, bounds, scenario directories, the leak guard, and the
INCONCLUSIVE outcome.

INCONCLUSIVE: a test whose every failing verdict overlapped a stall of one of our own
instruments (checkers.InconclusiveViolation) did not judge the implementation, so it
is run once more. If the re-run passes, the test passes (the terminal summary says it
was re-run and why); if it is inconclusive again, it is reported as INCONCLUSIVE
(outcome `skipped`, letter `I`, counted as "inconclusive"), neither failed nor passed.
A real FAIL is never re-run.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Callable, Coroutine, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from _pytest.runner import runtestprotocol
from hypothesis import HealthCheck, Phase, settings

from .checkers import InconclusiveViolation
from .gate.case import WIRE_PROFILES
from .gate.client import INITIATORS, ClientCommandError, ClientUnderTest
from .gate.client_cases import CLIENT
from .gate.gate_session import GATE, GATE_PROG, PROFILES, GateSession
from .gate.knownfailures import KnownFailures, KnownFailuresError
from .settings import DEFAULT_BOUNDS, Bounds
from .topology import live_children

SCENARIO_PROFILES = ("legacy", "noise")  # harness.probe.PROFILES, without importing the probe here

# Scenarios take seconds per example, so shrinking (re-running dozens of
# examples) is opt-in: --shrink. Derandomized so that CI runs are repeatable.
_PROFILE = dict(deadline=None, database=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("sendspin", phases=[Phase.explicit, Phase.generate], **_PROFILE)
settings.register_profile("sendspin-shrink", **_PROFILE)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sendspin", "sendspin-harness")
    group.addoption("--bound", action="append", default=[], metavar="NAME=VALUE",
                    help="override a correctness bound from harness/settings.py (repeatable)")
    group.addoption("--shrink", action="store_true",
                    help="let Hypothesis shrink a failing scenario to its smallest schedule (slow)")
    group.addoption("--examples", type=int, default=None,
                    help="Hypothesis examples per scenario (default: each scenario's own small budget)")
    group.addoption("--profile", choices=(*SCENARIO_PROFILES, "both"), default="both",
                    help="the wire revision the S-scenarios' clients speak: legacy, noise, or both (default: every "
                         "scenario that takes `profile` once per revision, ids `test_s01_...[noise]`; a variant "
                         "that has no form in a revision is SKIPPED with the reason)")
    gate = parser.getgroup("sendspin-gate", "sendspin-harness: the client gate (docs/ci-gate.md)")
    gate.addoption("--client-cmd", metavar="TEMPLATE",
                   help="start the client under test, fresh for each case: a command with placeholders "
                        "{url} {host} {port} {path} {client_id} {name} (no shell); server-initiated, they name "
                        "where the client must listen")
    gate.addoption("--client-listen-cmd", metavar="TEMPLATE",
                   help="the client's command for server-initiated cases, if not --client-cmd (e.g. the probe's "
                        "'... --listen {host}:{port} --path {path}')")
    gate.addoption("--client-adapter", metavar="CMD",
                   help="instead of --client-cmd: a Sendspin/conformance client adapter, run unchanged with the "
                        "conformance runner's flags (--summary, --ready, --registry, --initiator-role, ...)")
    gate.addoption("--client-initiator", choices=(*INITIATORS, "both"), default="client",
                   help="who opens the connection: the client dials (default), the server dials the listening "
                        "client, or both (every case twice)")
    gate.addoption("--client-profile", choices=WIRE_PROFILES, default="legacy",
                   help="the wire revision the client speaks (one per run): legacy (default) or noise; the "
                        "reference server speaks only that one. In noise the test ids read test_client[2.1-noise] "
                        "and a case the gate cannot run there is SKIPPED with its reason")
    gate.addoption("--client-roles", default="player@v1", metavar="ROLE,...",
                   help="roles the client supports (default %(default)s); a case that needs another is UNIMPLEMENTED")
    gate.addoption("--client-codecs", default="pcm", metavar="CODEC,...",
                   help="codecs the client supports (default %(default)s)")
    gate.addoption("--case", action="append", default=[], metavar="GROUP.CASE",
                   help="run only this case (repeatable), e.g. --case 2.3")
    gate.addoption("--gate-profile", choices=PROFILES, default="default",
                   help="default: the CI gate; thorough: every case, longer")
    gate.addoption("--known-failures", type=Path, metavar="FILE",
                   help="cases the client is known to fail, one 'ID reason' per line; a listed case that "
                        "passes is stale, an error")
    gate.addoption("--report-dir", type=Path, metavar="DIR", help="write results.json there")


def pytest_configure(config: pytest.Config) -> None:
    settings.load_profile("sendspin-shrink" if config.getoption("shrink") else "sendspin")
    if config.getoption("examples") is not None:
        os.environ["SENDSPIN_EXAMPLES"] = str(config.getoption("examples"))
    config.addinivalue_line("markers", "scenario: a conformance scenario (scenarios/)")
    config.addinivalue_line("markers", "skip_profile(*profiles, reason): this S-scenario has no form in these wire "
                                       "profiles (its `profile` parametrization is skipped with the reason)")
    config.stash[GATE] = _gate_session(config)


def _gate_session(config: pytest.Config) -> GateSession:
    """The gate's options, checked before anything runs (a bad one is a usage error)."""
    def words(name: str) -> tuple[str, ...]:
        return tuple(w.strip() for w in config.getoption(name).split(",") if w.strip())

    template, adapter = config.getoption("client_cmd"), config.getoption("client_adapter")
    if template is not None and adapter is not None:
        raise pytest.UsageError("give --client-cmd or --client-adapter, not both")
    choice = config.getoption("client_initiator")
    initiators = INITIATORS if choice == "both" else (choice,)
    try:
        client = None if template is None and adapter is None else ClientUnderTest(
            template or adapter, words("client_roles"), words("client_codecs"),
            listen_template=config.getoption("client_listen_cmd"), adapter=adapter is not None,
            initiators=initiators, profile=config.getoption("client_profile"))
    except ClientCommandError as exc:
        raise pytest.UsageError(str(exc)) from None
    for case_id in config.getoption("case"):
        if case_id not in CLIENT:
            raise pytest.UsageError(f"--case {case_id}: no such case; the cases are {', '.join(CLIENT.ids())}")
    known = None
    if config.getoption("known_failures") is not None:
        try:
            known = KnownFailures.load(config.getoption("known_failures"), KnownIds())
        except KnownFailuresError as exc:
            raise pytest.UsageError(str(exc)) from None
    return GateSession(client, strict=bool(config.getoption("strict", False)), profile=config.getoption("gate_profile"),
                       known=known, report_dir=config.getoption("report_dir"), prog=os.environ.get(GATE_PROG, "pytest"),
                       groups=CLIENT.groups)


class KnownIds:
    """What a known-failures line may name: a case (`8.2`), or a case for one initiator only
    (`8.2-client`, `8.2-server`), for runs with --client-initiator both."""

    def __contains__(self, key: object) -> bool:
        case_id, _, initiator = str(key).partition("-")
        return case_id in CLIENT and initiator in ("", *INITIATORS)


@pytest.fixture
def initiator(pytestconfig: pytest.Config) -> str:
    """Who opens the client gate's connection: the one --client-initiator names (with
    `both`, pytest_generate_tests parametrizes it instead)."""
    gate = pytestconfig.stash.get(GATE, None)
    return gate.client.initiators[0] if gate is not None and gate.client is not None else "client"


@pytest.fixture
def wire_profile(pytestconfig: pytest.Config) -> str:
    """The wire revision the client under test speaks (--client-profile); legacy ids stay
    `test_client[2.3]`, other profiles parametrize it instead (pytest_generate_tests)."""
    gate = pytestconfig.stash.get(GATE, None)
    return gate.client.profile if gate is not None and gate.client is not None else "legacy"


@pytest.hookimpl(trylast=True)  # after the case_id marks: ids read `2.3-server`
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """--client-initiator both: every gate case once per initiator, `test_client[2.3-server]`."""
    gate = metafunc.config.stash.get(GATE, None)
    if "initiator" in metafunc.fixturenames and gate is not None and gate.client is not None \
            and len(gate.client.initiators) > 1:
        metafunc.parametrize("initiator", gate.client.initiators)
    if "profile" in metafunc.fixturenames and not _parametrizes(metafunc, "profile"):
        metafunc.parametrize("profile", _profile_params(metafunc))  # the S-scenarios: `test_s01_...[noise]`
    if "wire_profile" in metafunc.fixturenames and gate is not None and gate.client is not None \
            and gate.client.profile != "legacy":  # the ids carry it: `test_client[2.1-noise]`
        metafunc.parametrize("wire_profile", [gate.client.profile])


def scenario_profiles(config: pytest.Config) -> tuple[str, ...]:
    """The revisions --profile names (`both`: every one, legacy first)."""
    choice = config.getoption("profile")
    return SCENARIO_PROFILES if choice == "both" else (choice,)


def _parametrizes(metafunc: pytest.Metafunc, name: str) -> bool:
    """The test parametrizes `name` itself (e.g. a test of both client programs' profiles)."""
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if name in ([n.strip() for n in names.split(",")] if isinstance(names, str) else names):
            return True
    return False


def _profile_params(metafunc: pytest.Metafunc) -> list[Any]:
    """Each chosen profile; one a `skip_profile` mark names is skipped at setup, before
    Hypothesis runs an example, with the mark's reason(s)."""
    reasons: dict[str, list[str]] = {}
    for mark in metafunc.definition.iter_markers("skip_profile"):
        for name in mark.args:
            if name not in SCENARIO_PROFILES:
                raise pytest.UsageError(f"{metafunc.definition.nodeid}: skip_profile({name!r}): the profiles are "
                                        f"{', '.join(SCENARIO_PROFILES)}")
            reasons.setdefault(name, []).append(mark.kwargs.get("reason", "no reason given"))
    return [pytest.param(p, marks=pytest.mark.skip(reason="; ".join(reasons[p]))) if p in reasons else p
            for p in scenario_profiles(metafunc.config)]


@pytest.fixture
def profile(pytestconfig: pytest.Config) -> str:
    """The wire revision an S-scenario's probes speak. pytest_generate_tests parametrizes
    it from --profile (this default is never reached by a collected scenario)."""
    return scenario_profiles(pytestconfig)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = set(config.getoption("case"))
    if not chosen:
        return
    keep = [i for i in items
            if getattr(i, "originalname", "") != "test_client" or i.callspec.params["case_id"] in chosen]
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Writes the gate's results and report; an xdist worker hands its results to the controller."""
    gate = session.config.stash.get(GATE, None)
    if gate is None:
        return
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["gate_results"] = json.dumps([r.to_json() for r in gate.results])
    elif gate.results or gate.remote:
        gate.write()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist: a worker finished; keep its gate results for the controller's report."""
    gate = node.config.stash.get(GATE, None)
    if gate is not None:
        gate.remote += json.loads(node.workeroutput.get("gate_results", "[]"))


@pytest.fixture(scope="session")
def bounds(pytestconfig: pytest.Config) -> Bounds:
    try:
        return DEFAULT_BOUNDS.with_overrides(pytestconfig.getoption("bound"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture
def fresh_dir(tmp_path: Path) -> Callable[[], Path]:
    """A new empty directory per call: one per Hypothesis example."""
    counter = itertools.count(1)
    return lambda: tmp_path / f"run-{next(counter)}"


@pytest.fixture
def run(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """Run a coroutine to completion with a hard timeout. A scenario whose `examples` gave
    the noise profile a smaller budget runs only that many of its examples in noise: the
    rest are not run (Hypothesis cannot vary max_examples per parametrization, and the
    scenarios must stay within CI's time), so `run` closes their coroutine unstarted."""
    callspec = getattr(request.node, "callspec", None)
    profile = callspec.params.get("profile") if callspec is not None else None
    budget = getattr(request.function, BUDGETS, {}).get(profile)
    calls = itertools.count()

    def runner(coro: Coroutine[Any, Any, Any], timeout: float = 120.0) -> Any:
        if budget is not None and next(calls) >= budget:
            coro.close()
            return None
        return asyncio.run(asyncio.wait_for(coro, timeout))
    return runner


BUDGETS = "_sendspin_profile_budgets"  # on a scenario function: {profile: examples run in it}


def examples(default: int, noise: int | None = None) -> Callable[[Any], Any]:
    """Hypothesis settings for a scenario: its own small budget unless --examples says
    otherwise; `noise`: how many examples, explicit @example ones first, the noise profile
    runs of the same sequence (see `run`). --examples N gives both profiles N."""
    override = os.environ.get("SENDSPIN_EXAMPLES")
    count = int(override) if override else default
    if noise is not None and noise < 1:
        raise ValueError(f"examples({default}, noise={noise}): noise must be at least 1 (or skip_profile the test)")

    def apply(test: Any) -> Any:
        test = settings(max_examples=count)(test)
        setattr(test, BUDGETS, {} if override or noise is None else {"noise": noise})
        return test
    return apply


@pytest.fixture
def processes_owned_elsewhere() -> Callable[[], set[int]]:
    """The pids of children a longer-lived fixture owns and reaps itself (they may start during
    a test): override it where there are such; `no_leftover_processes` leaves them alone."""
    return set


@pytest.fixture(autouse=True)
def no_leftover_processes(processes_owned_elsewhere: Callable[[], set[int]]) -> Iterator[None]:
    """Every process a test spawns must be reaped by the time it ends."""
    before = set(live_children())
    yield
    left = [pid for pid in live_children() if pid not in before | processes_owned_elsewhere()]
    if left:
        pytest.fail(f"test left child processes behind: {left}")


# --- INCONCLUSIVE: the harness may have caused what it measured ------------------------------

def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Mark a failure that is inconclusive through and through: every exception raised is
    an InconclusiveViolation, also inside Hypothesis's groups (a FlakyFailure when the
    replay of a failing example passed is one)."""
    report = yield
    if call.when == "call" and report.failed and call.excinfo is not None:
        leaves = _leaves(call.excinfo.value)
        if all(isinstance(e, InconclusiveViolation) for e in leaves):
            report.inconclusive = "; ".join(dict.fromkeys(e.reason for e in leaves))  # type: ignore[attr-defined]
    return report


def _inconclusive(reports: list[pytest.TestReport]) -> str | None:
    """Why this run was inconclusive, or None (a passing run, or any real failure)."""
    failed = [r for r in reports if r.failed]
    reasons = [getattr(r, "inconclusive", None) for r in failed]
    return reasons[0] if len(failed) == 1 and reasons[0] else None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    first = _inconclusive(reports)
    if first is not None:  # the whole item again (Hypothesis is derandomized: the same examples)
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        again = _inconclusive(reports)
        outcome = f"was INCONCLUSIVE again: {again}" if again else \
            "passed" if all(r.passed for r in reports) else "failed"
        # on the report, not in this process's state: under xdist the controller prints the summary
        reports[-1].rerun = [first, outcome]  # type: ignore[attr-defined]
        for report in reports:
            if again and report.failed:
                report.outcome = "skipped"  # neither failed nor passed; pytest_report_teststatus names it
                report.longrepr = (str(item.path), (item.location[1] or 0) + 1, again)
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
    if report.skipped and getattr(report, "inconclusive", None):
        return "inconclusive", "I", ("INCONCLUSIVE", {"yellow": True})
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reruns = [(r.nodeid, *r.rerun) for reports in terminalreporter.stats.values() for r in reports
              if getattr(r, "rerun", None)]
    if not reruns:
        return
    terminalreporter.section("inconclusive: our own instrument stalled during a violation", yellow=True)
    for nodeid, why, outcome in reruns:
        terminalreporter.line(f"{nodeid}: inconclusive ({why}), re-run once; the re-run {outcome}")
