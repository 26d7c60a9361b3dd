"""The client gate judged on clients whose behaviour we know.

The probe client (a correct client) passes every case, whoever opens the connection;
each small broken client in tests/bad_clients fails exactly the case that names its bug;
aiosendspin's client runs unchanged as a conformance adapter. Each run is the gate as
an implementer runs it: `pytest scenarios/test_client_gate.py --client-cmd ...` in a
subprocess, judged by its exit status and its results.json; the module's runs start in a
fixture and overlap, a few at a time (tests/gate_runs.py).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gate_runs import ROOT, WAIT_TIMEOUT_S, GateRun, GateRuns, cases_args

from harness.gate.case import Case, Severity
from harness.gate.client import SERVER_ID, SERVER_NAME, AdapterFiles, ClientCommandError, ClientUnderTest
from harness.gate.client_cases import CLIENT
from harness.gate.client_suite import _record_error
from harness.gate.gate_session import GateSession
from harness.gate.knownfailures import KnownFailures, KnownFailuresError
from harness.gate.report import MATRIX_COLUMNS
from harness.gate.verdict import CaseResult, Figure, Judgement, Verdict, decide

PROBE = f"{sys.executable} -m harness.probe --url {{url}} --client-id {{client_id}} --name {{name}} " \
        "--roles player@v1,artwork@v1"
PROBE_ROLES = ("--client-roles", "player@v1,artwork@v1")  # every case applies to it
PROBE_LISTENS = f"{sys.executable} -m harness.probe --listen {{host}}:{{port}} --path {{path}} " \
                "--client-id {client_id} --name {name} --roles player@v1,artwork@v1"
AIOSENDSPIN_ADAPTER = f"{sys.executable} {ROOT / 'clients/aiosendspin_client.py'}"


def bad_client(bug: str, initiator: str = "client") -> str:
    where = "--url {url}" if initiator == "client" else "--listen {host}:{port} --path {path}"
    return f"{sys.executable} {ROOT / 'tests/bad_clients/bad_client.py'} {where} --client-id {{client_id}} " \
           f"--bug {bug}"


def has_aiosendspin() -> bool:
    try:
        import aiosendspin  # noqa: F401
    except ImportError:
        return False
    return True


# Server-initiated, a representative subset (the whole catalogue twice takes twice the
# default profile's ~3 min): a fault on server/hello (1.1) and on server/time (2.3) in
# the reversed proxy, reading at the audio rate on accepted sockets (3.1), fragments the
# dialling server sends as frames of its own, so masked (4.1), the server's re-dial after a
# loss (8.2), and the 8.x cases that do not apply (UNIMPLEMENTED).
SERVER_SUBSET = ("1.1", "2.3", "3.1", "4.1", "8.1", "8.2", "8.3", "8.6")

NEGATIVE = [  # (bug, the cases it must fail, a case it must pass, who dials)
    ("no-support", ("1.3",), "2.1", "client"),
    ("early", ("1.1",), "1.3", "client"),
    ("no-time-sync", ("2.1",), "1.3", "client"),
    ("time-waits", ("2.3",), "1.3", "client"),
    ("gated-reads", ("3.1",), "1.3", "client"),
    ("no-reassembly", ("4.1",), "1.3", "client"),
    ("orphan-crash", ("5.2",), "5.1", "client"),  # a 4-byte binary kills it; a 9-byte header-only one does not
    ("stall-blocks", ("6.2",), "6.1", "client"),
    ("no-reconnect", ("8.2", "8.3", "8.4", "8.5"), "1.3", "client"),
    ("bad-json-crash", ("9.1",), "9.2", "client"),  # malformed JSON kills it; valid JSON of an unknown type does not
    ("early", ("1.1",), "1.3", "server"),  # the same bug, judged through the reversed proxy
    ("listen-once", ("8.2",), "1.3", "server"),
    ("stall-blocks", ("8.4",), "1.3", "server"),  # its give-up seen in the kernel's socket table, not the proxy's
]
KNOWN_FAILURES = "# adopting the gate\n1.1  sends client/state before server/hello (our issue #1)\n" \
                 "1.3  we thought the hello was wrong\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateRuns]:
    """Every gate run of this module, the longest first, a few at a time."""
    runs = GateRuns()

    def add(name: str, client: str | None, *args: str) -> None:
        runs.add(name, GateRun(tmp_path_factory.mktemp(name), client, *args))

    add("probe", PROBE, *PROBE_ROLES, "-n", "3")
    add("whoever-dials", PROBE, "--client-listen-cmd", PROBE_LISTENS, "--client-initiator", "both", "-n", "3",
        "-vv", *cases_args(*SERVER_SUBSET))  # -vv after the run's -q: the test ids are printed
    if has_aiosendspin():
        add("adapter", None, "--client-adapter", AIOSENDSPIN_ADAPTER, "--client-initiator", "both",
            *cases_args("1.2", "3.1"), "-n", "2")
    for bug, fails, passes, initiator in NEGATIVE:
        add(f"{bug}-{initiator}", bad_client(bug, initiator), *cases_args(*fails, passes),
            "--client-initiator", initiator, "-n", str(min(len(fails) + 1, 3)))
    add("storm", bad_client("storm"), "--case", "8.6", "--strict")
    known = tmp_path_factory.mktemp("known-failures-file") / "known.txt"
    known.write_text(KNOWN_FAILURES)
    add("known-failures", bad_client("early"), *cases_args("1.1", "1.3"), "--known-failures", str(known))
    try:
        yield runs
    finally:
        runs.stop()


@pytest.mark.timeout(WAIT_TIMEOUT_S)
def test_the_probe_client_passes_every_case(runs: GateRuns) -> None:
    code, cases, out = runs.result("probe")
    assert code == 0, out
    assert sorted(cases) == sorted(c.id for c in CLIENT if not c.thorough)
    # the Noise group runs only with --client-profile noise (tests/test_client_gate_noise.py)
    assert {i: c["verdict"] for i, c in cases.items() if c["verdict"] != "OK"} == \
        {c.id: "SKIPPED" for c in CLIENT if c.skipped_in("legacy")}, {i: c["reason"] for i, c in cases.items()}


@pytest.mark.timeout(WAIT_TIMEOUT_S)
def test_the_probe_client_passes_whoever_dials(runs: GateRuns) -> None:
    code, _, out = runs.result("whoever-dials")
    assert code == 0, out
    report = runs.runs["whoever-dials"].report
    results = json.loads((report / "results.json").read_text())
    assert results["peer"]["initiator"] == "both" and results["peer"]["listen_command"] == PROBE_LISTENS
    verdicts = {(c["id"], c["peer"]["initiator"]): c["verdict"] for c in results["cases"]}
    assert verdicts == {**{(c, i): "OK" for c in SERVER_SUBSET for i in ("client", "server")},
                        ("8.1", "server"): "UNIMPLEMENTED", ("8.3", "server"): "UNIMPLEMENTED",
                        ("8.6", "server"): "UNIMPLEMENTED"}, verdicts
    assert re.search(r"PASSED \S*test_client\[2\.3-server\]", out), out  # xdist: "[gwN] [ x%] PASSED id"
    assert re.search(r"SKIPPED \S*test_client\[8\.1-server\]", out), out
    server = {c["id"]: c for c in results["cases"] if c["peer"]["initiator"] == "server"}
    assert server["8.6"]["reason"].startswith("server-initiated: retrying is the server's job")
    assert "--client-initiator server" in server["8.2"]["replay"] and PROBE_LISTENS in server["8.2"]["replay"]
    assert (report / "cases" / "8.2-server.html").exists()


@pytest.mark.timeout(WAIT_TIMEOUT_S)
@pytest.mark.parametrize(("bug", "fails", "passes", "initiator"), NEGATIVE,
                         ids=[f"{b}-{i}" for b, _, _, i in NEGATIVE])
def test_a_broken_client_fails_the_cases_of_its_bug(runs: GateRuns, bug: str, fails: tuple[str, ...],
                                                     passes: str, initiator: str) -> None:
    code, cases, out = runs.result(f"{bug}-{initiator}")
    assert code == 1, out
    assert {c: cases[c]["verdict"] for c in (*fails, passes)} == {**dict.fromkeys(fails, "FAILED"), passes: "OK"}, out
    for case in fails:
        assert f"case {case} [MUST]" in out
        replay = shlex.split(cases[case]["replay"])
        assert replay[:2] == ["pytest", "scenarios/test_client_gate.py"] and replay[replay.index("--case") + 1] == case


@pytest.mark.timeout(WAIT_TIMEOUT_S)
def test_aiosendspin_runs_unchanged_as_a_conformance_adapter(runs: GateRuns) -> None:
    """--client-adapter: the conformance runner's flags, registry and ready files; the run
    ended from the server side; the adapter's summary kept as a note, never judged."""
    if not has_aiosendspin():
        pytest.skip("aiosendspin is not installed (pip install -e '.[dev]')")
    code, _, out = runs.result("adapter")
    results = json.loads((runs.runs["adapter"].report / "results.json").read_text())
    assert code == 0, out
    assert results["peer"]["adapter"] is True and results["peer"]["initiator"] == "both"
    for case in results["cases"]:
        assert case["verdict"] == "OK", case
        summary = case["peer"]["adapter_summary"]
        assert summary["status"] == "ok" and summary["initiator_role"] == case["peer"]["initiator"], summary
        assert summary["audio"]["audio_chunk_count"] > 0 and case["peer"]["exit"]["code"] == 0
        assert any(n.startswith("adapter summary (its own account, not judged): status 'ok'") for n in case["notes"])
        assert "adapter: exited after the server ended the session" in case["notes"], case["notes"]
        assert not [n for n in case["notes"] if "no ready file" in n or "it announced" in n], case["notes"]
        assert "--client-adapter" in case["replay"]


@pytest.mark.timeout(WAIT_TIMEOUT_S)
def test_a_reconnect_storm_is_non_strict_and_fails_with_strict(runs: GateRuns) -> None:
    code, cases, out = runs.result("storm")
    assert code == 1, out
    assert cases["8.6"]["verdict"] == "FAILED"
    [attempts] = [f for f in cases["8.6"]["figures"] if f["name"].startswith("connection attempts")]
    assert attempts["value"] > attempts["bound"] * 3, attempts  # no backoff at all: many times the bound


@pytest.mark.timeout(WAIT_TIMEOUT_S)
def test_known_failures_let_a_failing_case_pass_and_a_stale_entry_fail(runs: GateRuns) -> None:
    code, cases, out = runs.result("known-failures")
    assert code == 1, out
    assert cases["1.1"]["verdict"] == "FAILED" and cases["1.1"]["known_failure"].startswith("sends client/state")
    assert "1 xfailed" in out
    assert "stale known failure: case 1.3 is listed" in out and "remove the entry" in out


# --- the pieces, without processes -----------------------------------------------------------------

def test_a_case_id_is_group_dot_number_and_a_case_judges_one_side() -> None:
    with pytest.raises(ValueError, match=r"GROUP\.CASE"):
        Case("1", "client", "t", "d", "e", "s", Severity.MUST)
    with pytest.raises(ValueError, match="side"):
        Case("1.1", "proxy", "t", "d", "e", "s", Severity.MUST)


def test_a_re_run_replaces_the_inconclusive_first_attempt_in_the_results() -> None:
    gate = GateSession(ClientUnderTest("player {url}"))
    case = CLIENT["2.3"]
    for initiator, verdict in (("client", Verdict.INCONCLUSIVE), ("server", Verdict.OK), ("client", Verdict.FAILED)):
        gate.record(CaseResult(case, verdict, "", peer={"initiator": initiator}))
    assert [(r.peer["initiator"], r.verdict) for r in gate.results] == [("server", Verdict.OK),
                                                                         ("client", Verdict.FAILED)]


def test_an_error_is_recorded_with_its_cause_duration_and_the_last_logs(tmp_path: Path) -> None:
    """What a person needs to debug a case the gate failed to run: the cause without the empty
    tail of a killed process's output, how long it ran, and what its processes logged last."""
    (tmp_path / "topology").mkdir()
    lines = [{"t_us": 1_000_000 + i * 500_000, "proc": "server", "session": "s1", "event": "send",
              "type": "server/time"} for i in range(8)]
    (tmp_path / "topology" / "server.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    gate = GateSession(ClientUnderTest("player {url}"))
    _record_error(gate, CaseResult(CLIENT["1.2"], Verdict.OK, ""), "StartupError: server exited -9:\n",
                  tmp_path, time.monotonic() - 2.0)
    (result,) = gate.results
    assert result.verdict is Verdict.ERROR and result.seconds >= 2.0
    assert result.reason == "the gate failed to run the case: StartupError: server exited -9", result.reason
    shown = result.timeline.splitlines()
    assert len(shown) == 7 and shown[-1].startswith(">>"), result.timeline  # the last 3 s, up to the last record


def test_the_matrix_wraps_a_large_group_onto_rows_of_its_own(tmp_path: Path) -> None:
    """Every case of the catalogue, run both ways: no matrix row is wider than MATRIX_COLUMNS,
    and a group's rows stay under its one heading (group 10 has 22 cells)."""
    gate = GateSession(ClientUnderTest("player {url}", listen_template="player --listen {port}",
                                       initiators=("client", "server")), report_dir=tmp_path, groups=CLIENT.groups)
    for case in CLIENT:
        for initiator in ("client", "server"):
            gate.record(CaseResult(case, Verdict.OK, "", peer={"initiator": initiator}))
    page = gate.write().read_text()  # type: ignore[union-attr]
    matrix = page.split('<table class="matrix">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", matrix)
    assert max(row.count("<td") for row in rows) == MATRIX_COLUMNS
    noise = next(i for i, row in enumerate(rows) if "10 Noise" in row)
    cells = sum(row.count('<a href="cases/10.') for row in rows[noise:])
    assert f'rowspan="{-(-cells // MATRIX_COLUMNS)}"' in rows[noise] and cells == 2 * len(
        [c for c in CLIENT if c.group == 10])


def test_a_case_that_needs_a_role_the_client_lacks_does_not_apply() -> None:
    case = Case("3.9", "client", "t", "d", "e", "s", Severity.MUST, roles=("artwork@v1",))
    assert case.not_applicable(["player@v1"], ["pcm"]) == "needs the role artwork@v1; the peer declared ['player']"
    assert case.not_applicable(["player@v1", "artwork@v1"], ["pcm"]) is None


def test_severity_decides_the_verdict_and_strict_turns_non_strict_into_failed() -> None:
    failing = Judgement()
    failing.check("x", 2, "<=", 1)
    should = Case("9.9", "client", "t", "d", "e", "s", Severity.SHOULD)
    must = Case("9.8", "client", "t", "d", "e", "s", Severity.MUST)
    assert decide(should, failing) is Verdict.NON_STRICT
    assert decide(should, failing, strict=True) is Verdict.FAILED
    assert decide(must, failing) is Verdict.FAILED
    assert decide(must, Judgement()) is Verdict.OK
    assert decide(Case("9.7", "client", "t", "d", "e", "s", Severity.INFO), failing) is Verdict.INFORMATIONAL


def test_a_figure_says_what_was_measured_against_which_bound() -> None:
    assert str(Figure("gap", 5210.4, "<=", 5000, "ms", "client_time_gap_us")) == \
        "gap: 5210 ms ≤ 5000 ms (client_time_gap_us)"
    assert str(Figure("first", None, "<=", 2000, "ms")) == "first: never ≤ 2000 ms"
    assert not Figure("first", None, "<=", 2000, "ms").holds
    assert Figure("gap", 5210.4, "<=", 5000, "ms").excess_us == 210_400


def test_a_known_failures_file_names_real_cases_each_with_a_reason() -> None:
    known = KnownFailures.parse("# c\n\n2.3 stops syncing # after a drop\n", CLIENT)
    assert known.reasons == {"2.3": "stops syncing # after a drop"}
    assert known.stale("2.3", Verdict.OK) is not None and known.stale("2.3", Verdict.FAILED) is None
    for text, error in [("7.77 why", "not a case"), ("2.3", "no reason"), ("2.3 a\n2.3 b", "listed twice")]:
        with pytest.raises(KnownFailuresError, match=error):
            KnownFailures.parse(text, CLIENT)


def test_a_server_initiated_client_is_told_where_to_listen() -> None:
    client = ClientUnderTest("player --server {url}", listen_template="player --listen {port} --path {path}",
                             initiators=("client", "server"))
    assert client.argv("ws://127.0.0.1:4000/sendspin", "c", "n", "server") == ["player", "--listen", "4000",
                                                                                 "--path", "/sendspin"]
    assert client.argv("ws://h:1/p", "c", "n") == ["player", "--server", "ws://h:1/p"]
    with pytest.raises(ClientCommandError, match="--client-listen-cmd must say where to listen"):
        ClientUnderTest("player {url}", listen_template="player --listen", initiators=("server",))
    with pytest.raises(ClientCommandError, match="--client-initiator"):
        ClientUnderTest("player {url}", initiators=("peer",))


def test_an_adapter_gets_the_conformance_runners_flags_and_no_placeholders(tmp_path: Path) -> None:
    adapter = ClientUnderTest("my-adapter --verbose", adapter=True, initiators=("client", "server"))
    files = AdapterFiles(tmp_path)
    words = adapter.adapter_argv(files, "gate-1-2", "Gate 1.2", "server", 40123, 90)
    flags = dict(zip(words[2::2], words[3::2], strict=True))
    assert words[:2] == ["my-adapter", "--verbose"]
    assert flags == {"--summary": str(files.summary), "--ready": str(files.ready), "--registry": str(files.registry),
                     "--scenario-id": "server-initiated-pcm", "--initiator-role": "server",
                     "--preferred-codec": "pcm", "--timeout-seconds": "90", "--client-name": "Gate 1.2",
                     "--client-id": "gate-1-2", "--server-name": SERVER_NAME, "--server-id": SERVER_ID,
                     "--port": "40123", "--path": "/sendspin"}
    client_words = adapter.adapter_argv(files, "c", "n", "client", 0, 90)
    assert "--port" not in client_words and client_words[client_words.index("--initiator-role") + 1] == "client"
    with pytest.raises(ClientCommandError, match="no placeholders"):
        ClientUnderTest("my-adapter {url}", adapter=True)


def test_a_client_command_must_say_where_to_connect_and_use_known_placeholders() -> None:
    assert ClientUnderTest("player --server {url} --id {client_id}").argv("ws://h:1/p", "c1", "N") == \
        ["player", "--server", "ws://h:1/p", "--id", "c1"]
    assert ClientUnderTest("player {host} {port} {path}").argv("ws://h:1/p", "c", "n") == ["player", "h", "1", "/p"]
    for template, error in [("player", "where to connect"), ("player {url} {uri}", "unknown placeholder"),
                            ("player {url", "expected"), ("{url", "expected")]:
        with pytest.raises(ClientCommandError, match=error):
            ClientUnderTest(template)


def test_a_known_failure_may_name_one_initiator() -> None:
    from harness.pytest_plugin import KnownIds

    known = KnownFailures.parse("8.2-server only when it listens\n8.6 no backoff\n", KnownIds())
    assert known.reasons == {"8.2-server": "only when it listens", "8.6": "no backoff"}
    with pytest.raises(KnownFailuresError, match="not a case"):
        KnownFailures.parse("8.2-peer why\n", KnownIds())
