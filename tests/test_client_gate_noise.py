"""The client gate in the noise profile (`--client-profile noise`), judged on clients we know.

The probe speaking noise passes the Noise group (10.x) and the existing cases that apply
in noise; a case the gate cannot run there is SKIPPED with its reason, never a verdict on
the client; a small noise client with one bug (tests/bad_clients/noise_client.py) fails
exactly the case of its bug. Each run is the gate as an implementer runs it, in a
subprocess, judged by its exit status, results.json and JUnit XML; the module's runs start
in a fixture and overlap, a few at a time (tests/gate_runs.py).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator

import pytest
from gate_runs import ROOT, WAIT_TIMEOUT_S, GateRun, GateRuns, cases_args

from harness.gate.case import Case, Severity
from harness.gate.client import ClientCommandError, ClientUnderTest
from harness.gate.client_cases import CLIENT
from harness.gate.client_cases.common import LEGACY_FRAMES, NOISE_ONLY, RUNS, TERMINATED
from reference_server.actions import ARMED, _arm
from reference_server.control import ControlError, check_action

PROBE_NOISE = f"{sys.executable} -m harness.probe --url {{url}} --name {{name}} --profile noise --roles player@v1"
PROBE_NOISE_LISTENS = f"{sys.executable} -m harness.probe --listen {{host}}:{{port}} --path {{path}} --name {{name}} " \
                      "--profile noise --roles player@v1"
NOISE = ("--client-profile", "noise")


def noise_client(bug: str) -> str:
    return f"{sys.executable} {ROOT / 'tests/bad_clients/noise_client.py'} --url {{url}} --bug {bug}"


# Kept small (each case starts its own server, proxy and client: CPU-seconds each): the 1 MiB
# fragmented message, the tampered and the cleartext message, a re-handshake, a message fault through the
# terminating proxy (9.1: an injected message) and a case that cannot run in noise (4.1:
# WebSocket frames; SKIPPED at once). The rest of group 10 and the existing cases that run in
# noise were run by hand (README, docs/ci-gate.md).
PROBE_SUBSET = ("10.3", "10.4", "10.5", "10.11", "9.1", "4.1")


NEGATIVE = [  # (bug, the case it must fail, a case it must pass or None, the figure that fails)
    ("ignore-aead", "10.4", None, "connection given up after noise/tamper"),  # reads on after a failed authentication
    # takes cleartext after the switch; closes on a tampered message
    ("accept-cleartext", "10.5", "10.4", "connection given up after noise/cleartext"),
    # through the terminating proxy: a 4-byte audio chunk stops its reading; a 13-byte one does not
    ("stall-on-bad-audio", "5.2", "5.1", "longest the client left its socket undrained after the fault"),
    # never answers the server's re-handshake; reassembles a large message
    ("ignore-rehandshake", "10.11", "10.3", "message 2 after the re-handshake's message 1"),
]
LEGACY_PROBE = f"{sys.executable} -m harness.probe --url {{url}} --client-id {{client_id}} --name {{name}}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateRuns]:
    """Every gate run of this module, the longest first, a few at a time."""
    runs = GateRuns()
    probe = tmp_path_factory.mktemp("probe")
    runs.add("probe", GateRun(probe, PROBE_NOISE, *NOISE, *cases_args(*PROBE_SUBSET), "-n", "2", "-rs",
                              f"--junitxml={probe / 'junit.xml'}"))
    for bug, fails, passes, _ in NEGATIVE:
        runs.add(bug, GateRun(tmp_path_factory.mktemp(bug), noise_client(bug), *NOISE,
                              *cases_args(fails, *filter(None, [passes]))))
    runs.add("server-dials", GateRun(tmp_path_factory.mktemp("server-dials"), PROBE_NOISE, *NOISE,
                                     "--client-listen-cmd", PROBE_NOISE_LISTENS, "--client-initiator", "server",
                                     "--case", "9.1"))
    runs.add("legacy", GateRun(tmp_path_factory.mktemp("legacy"), LEGACY_PROBE, "--case", "10.4"))
    try:
        yield runs
    finally:
        runs.stop()


@pytest.mark.timeout(WAIT_TIMEOUT_S)
def test_the_probe_in_noise_passes_the_noise_cases_and_skips_what_cannot_run(runs: GateRuns) -> None:
    code, cases, out = runs.result("probe")
    junit = runs.runs["probe"].directory / "junit.xml"
    assert code == 0, out
    assert {c: cases[c]["verdict"] for c in PROBE_SUBSET} == {**dict.fromkeys(PROBE_SUBSET, "OK"), "4.1": "SKIPPED"}, \
        {c: cases[c]["reason"] for c in PROBE_SUBSET}
    assert cases["4.1"]["reason"] == f"not run in the noise profile: {LEGACY_FRAMES}"
    assert {c["profile"] for c in cases.values()} == {"noise"}
    assert "--client-profile noise" in cases["10.4"]["replay"] and cases["10.4"]["replay"].startswith("pytest ")
    xml = junit.read_text()
    assert 'name="test_client[10.4-noise]"' in xml and '<property name="profile" value="noise"' in xml
    # what each case measured, against its named bound
    close = next(f for f in cases["10.4"]["figures"] if f["name"].startswith("connection given up"))
    assert close["bound_name"] == "client_noise_close_us" and close["holds"]
    assert next(f["value"] for f in cases["10.3"]["figures"] if f["name"] == "fragments") == 17  # 1 MiB + 1


@pytest.mark.timeout(WAIT_TIMEOUT_S)
@pytest.mark.parametrize(("bug", "fails", "passes", "figure"), NEGATIVE, ids=[n[0] for n in NEGATIVE])
def test_a_broken_noise_client_fails_the_case_of_its_bug(runs: GateRuns, bug: str, fails: str,
                                                         passes: str | None, figure: str) -> None:
    code, cases, out = runs.result(bug)
    assert code == 1, out
    expected = {fails: "FAILED", **({passes: "OK"} if passes else {})}
    assert {c: v["verdict"] for c, v in cases.items()} == expected, out
    assert f"case {fails} [MUST]" in out
    replay = shlex.split(cases[fails]["replay"])
    assert replay[replay.index("--case") + 1] == fails and replay[replay.index("--client-profile") + 1] == "noise"
    broken = [f["name"] for f in cases[fails]["figures"] if f.get("holds") is False]
    assert figure in broken, cases[fails]["figures"]  # what its bug breaks


@pytest.mark.timeout(WAIT_TIMEOUT_S)
def test_the_terminating_proxy_serves_a_case_whoever_dials(runs: GateRuns) -> None:
    """9.1 through the proxy terminating Noise, the reference server dialling the probe
    (once lost: the client's client/init, read by mitmproxy with the 101, bypassed it)."""
    code, cases, out = runs.result("server-dials")
    assert code == 0 and cases["9.1"]["verdict"] == "OK", out


@pytest.mark.timeout(WAIT_TIMEOUT_S)
def test_a_legacy_run_skips_the_noise_group(runs: GateRuns) -> None:
    code, cases, out = runs.result("legacy")
    assert code == 0, out
    assert cases["10.4"]["verdict"] == "SKIPPED" and cases["10.4"]["profile"] == "legacy"
    assert cases["10.4"]["reason"] == f"not run in the legacy profile: {NOISE_ONLY}"


# --- the pieces, without processes -----------------------------------------------------------------

def test_every_case_says_whether_it_runs_in_noise_and_the_noise_group_only_there() -> None:
    runs = {c.id for c in CLIENT if c.skipped_in("noise") is None}
    assert {"2.1", "3.4", "8.1", "8.2", "8.6", "1.1", "5.1", "9.1"} <= runs and not {"1.3", "4.1", "4.4"} & runs
    terminated = {case_id for case_id, spec in RUNS.items() if spec.noise_proxy == TERMINATED}
    assert {"1.1", "5.1", "6.2", "9.1"} <= terminated and not {"2.1", "8.1", "10.4"} & terminated  # 10.x: opaque
    noise_group = [c for c in CLIENT if c.group == 10]
    assert len(noise_group) >= 10 and all(c.skipped_in("legacy") == NOISE_ONLY for c in noise_group)
    assert all(c.source.startswith(("messaging.md", "connection.md")) for c in noise_group)
    with pytest.raises(ValueError, match="skip_in needs a wire profile"):
        Case("1.9", "client", "t", "d", "e", "s", Severity.MUST, skip_in=(("noise", ""),))


def test_a_noise_client_command_cannot_take_a_client_id() -> None:
    with pytest.raises(ClientCommandError, match=r"\{client_id\} in the noise profile: .* X25519 public key"):
        ClientUnderTest("player {url} --id {client_id}", profile="noise")
    assert ClientUnderTest("player {url} --name {name}", profile="noise").argv("ws://h:1/p", "c", "N") == \
        ["player", "ws://h:1/p", "--name", "N"]
    with pytest.raises(ClientCommandError, match="--client-profile 'tls'"):
        ClientUnderTest("player {url}", profile="tls")


def test_the_noise_actions_check_their_parameters() -> None:
    with pytest.raises(ControlError, match="step is required"):
        check_action("noise/handshake-stall", {})
    with pytest.raises(ControlError, match="step must be one of server/init"):
        _arm("noise/handshake-stall", check_action("noise/handshake-stall", {"step": "client/hello"}))
    with pytest.raises(ControlError, match="reason must be one of unsupported_version"):
        _arm("noise/init-error", check_action("noise/init-error", {"reason": "nope"}))
    armed = _arm("noise/init-error", check_action("noise/init-error", {"reason": "unsupported_suite"}))
    assert (armed.step, armed.error, armed.count) == ("server/init", "unsupported_suite", 1) and not ARMED
    assert check_action("noise/large", {})["bytes"] > 1024 * 1024
