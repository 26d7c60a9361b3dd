"""The client gate judged on clients whose behaviour we know.

The probe client (a correct client) passes every case; each small broken client in
tests/bad_clients fails exactly the case that names its bug. Each run is the gate as
an implementer runs it: `pytest scenarios/test_client_gate.py --client-cmd ...` in a
subprocess, judged by its exit status and its results.json.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.gate.case import Case, Severity
from harness.gate.client import ClientCommandError, ClientUnderTest
from harness.gate.client_cases import CLIENT
from harness.gate.knownfailures import KnownFailures, KnownFailuresError
from harness.gate.verdict import Figure, Judgement, Verdict, decide

ROOT = Path(__file__).resolve().parent.parent
PROBE = f"{sys.executable} -m harness.probe --url {{url}} --client-id {{client_id}} --name {{name}} " \
        "--roles player@v1,artwork@v1"
PROBE_ROLES = ("--client-roles", "player@v1,artwork@v1")  # every case applies to it
GATE_TIMEOUT_S = 600


def bad_client(bug: str) -> str:
    return f"{sys.executable} {ROOT / 'tests/bad_clients/bad_client.py'} --url {{url}} --client-id {{client_id}} " \
           f"--bug {bug}"


def gate(tmp_path: Path, client: str, *args: str) -> tuple[int, dict[str, Any], str]:
    """Runs the gate; returns its exit status, results.json by case id, and its output."""
    report = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "pytest", "scenarios/test_client_gate.py", "-q", "-p",
                           "no:cacheprovider", f"--basetemp={tmp_path / 'cases'}", "--client-cmd", client,
                           "--report-dir", str(report), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=GATE_TIMEOUT_S)
    results = json.loads((report / "results.json").read_text()) if (report / "results.json").exists() else {}
    return done.returncode, {c["id"]: c for c in results.get("cases", [])}, done.stdout + done.stderr


@pytest.mark.timeout(GATE_TIMEOUT_S + 30)  # the whole default profile: over pytest's 300 s on a busy machine
def test_the_probe_client_passes_every_case(tmp_path: Path) -> None:
    code, cases, out = gate(tmp_path, PROBE, *PROBE_ROLES, "-n", "3")
    assert code == 0, out
    assert sorted(cases) == sorted(c.id for c in CLIENT if not c.thorough)
    assert {c["verdict"] for c in cases.values()} == {"OK"}, {i: c["reason"] for i, c in cases.items()}


NEGATIVE = [  # (bug, the cases it must fail, a case it must pass)
    ("no-support", ("1.3",), "2.1"),
    ("early", ("1.1",), "1.3"),
    ("no-time-sync", ("2.1",), "1.3"),
    ("time-waits", ("2.3",), "1.3"),
    ("gated-reads", ("3.1",), "1.3"),
    ("no-reassembly", ("4.1",), "1.3"),
    ("orphan-crash", ("5.2",), "5.1"),  # a 4-byte binary kills it; a 9-byte header-only one does not
    ("stall-blocks", ("6.2",), "6.1"),
    ("no-reconnect", ("8.2", "8.3", "8.4", "8.5"), "1.3"),
    ("bad-json-crash", ("9.1",), "9.2"),  # malformed JSON kills it; valid JSON of an unknown type does not
]


@pytest.mark.parametrize(("bug", "fails", "passes"), NEGATIVE, ids=[b for b, _, _ in NEGATIVE])
def test_a_broken_client_fails_the_cases_of_its_bug(tmp_path: Path, bug: str, fails: tuple[str, ...],
                                                     passes: str) -> None:
    chosen = [arg for case in (*fails, passes) for arg in ("--case", case)]
    code, cases, out = gate(tmp_path, bad_client(bug), *chosen, "-n", str(min(len(fails) + 1, 3)))
    assert code == 1, out
    assert {c: cases[c]["verdict"] for c in (*fails, passes)} == {**dict.fromkeys(fails, "FAILED"), passes: "OK"}, out
    for case in fails:
        assert f"case {case} [MUST]" in out
        replay = shlex.split(cases[case]["replay"])
        assert replay[:2] == ["pytest", "scenarios/test_client_gate.py"] and replay[replay.index("--case") + 1] == case


def test_a_reconnect_storm_is_non_strict_and_fails_with_strict(tmp_path: Path) -> None:
    code, cases, out = gate(tmp_path, bad_client("storm"), "--case", "8.6", "--strict")
    assert code == 1, out
    assert cases["8.6"]["verdict"] == "FAILED"
    [attempts] = [f for f in cases["8.6"]["figures"] if f["name"].startswith("connection attempts")]
    assert attempts["value"] > attempts["bound"] * 3, attempts  # no backoff at all: many times the bound


def test_known_failures_let_a_failing_case_pass_and_a_stale_entry_fail(tmp_path: Path) -> None:
    known = tmp_path / "known.txt"
    known.write_text("# adopting the gate\n1.1  sends client/state before server/hello (our issue #1)\n"
                     "1.3  we thought the hello was wrong\n")
    code, cases, out = gate(tmp_path, bad_client("early"), "--case", "1.1", "--case", "1.3",
                            "--known-failures", str(known))
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


def test_a_client_command_must_say_where_to_connect_and_use_known_placeholders() -> None:
    assert ClientUnderTest("player --server {url} --id {client_id}").argv("ws://h:1/p", "c1", "N") == \
        ["player", "--server", "ws://h:1/p", "--id", "c1"]
    assert ClientUnderTest("player {host} {port} {path}").argv("ws://h:1/p", "c", "n") == ["player", "h", "1", "/p"]
    for template, error in [("player", "where to connect"), ("player {url} {uri}", "unknown placeholder"),
                            ("player {url", "expected"), ("{url", "expected")]:
        with pytest.raises(ClientCommandError, match=error):
            ClientUnderTest(template)
