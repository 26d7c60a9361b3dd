"""One pytest run of a gate: its options, the results so far, and how each verdict ends
its test (FAILED fails it, UNIMPLEMENTED skips it, a known failure xfails it, a stale
known failure fails it)."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .client import ClientUnderTest
from .knownfailures import KnownFailures
from .report import write_report
from .results import results_document, write_results
from .verdict import CaseResult, Verdict

PROFILES = ("default", "thorough")
GATE_PROG = "SENDSPIN_GATE_PROG"  # set by sendspin-gate: replay commands then start with it


@dataclass
class GateSession:
    client: ClientUnderTest | None
    strict: bool = False
    profile: str = "default"
    known: KnownFailures | None = None
    report_dir: Path | None = None
    prog: str = "pytest"  # how this run was started, for replay commands
    groups: dict[int, str] = field(default_factory=dict)  # the catalogue's groups, for the report
    results: list[CaseResult] = field(default_factory=list)
    remote: list[dict[str, Any]] = field(default_factory=list)  # results.json rows from xdist workers

    def peer(self) -> dict[str, Any]:
        assert self.client is not None
        c = self.client
        peer = {"side": "client", "command": c.template, "roles": list(c.roles), "codecs": list(c.codecs),
                "initiator": c.initiators[0] if len(c.initiators) == 1 else "both", "adapter": c.adapter,
                "profile": c.profile}
        if c.listen_template is not None:
            peer["listen_command"] = c.listen_template
        return peer

    def replay(self, item: pytest.Item) -> str:
        """The command that runs exactly this case again, the same way (and with the same initiator)."""
        assert self.client is not None
        c = self.client
        params = item.callspec.params if hasattr(item, "callspec") else {}
        case_id = params.get("case_id", "")
        initiator = params.get("initiator", c.initiators[0])
        prog = shlex.split(self.prog)
        if prog == ["pytest"]:  # from a checkout: name the file (sendspin-gate knows its own)
            prog.append(item.nodeid.split("::")[0])
        words = [*prog, "--case", case_id, "--client-adapter" if c.adapter else "--client-cmd", c.template]
        if c.listen_template is not None and initiator == "server":
            words += ["--client-listen-cmd", c.listen_template]
        if initiator != "client":
            words += ["--client-initiator", initiator]
        if c.profile != "legacy":
            words += ["--client-profile", c.profile]
        words += ["--client-roles", ",".join(c.roles), "--client-codecs", ",".join(c.codecs)]
        if self.strict:
            words.append("--strict")
        return shlex.join(words)

    def record(self, result: CaseResult) -> None:
        """Keeps a case's result; a re-run's replaces the first attempt's (INCONCLUSIVE)."""
        if self.known is not None:
            result.known_failure = self.known.reasons.get(self._known_key(result), "")
        key = (result.case.id, result.peer.get("initiator"))
        self.results = [r for r in self.results if (r.case.id, r.peer.get("initiator")) != key]
        self.results.append(result)

    def _known_key(self, result: CaseResult) -> str:
        """A known failure listed for this initiator only (`8.2-client`), else for the case."""
        assert self.known is not None
        key = f"{result.case.id}-{result.peer.get('initiator', 'client')}"
        return key if key in self.known.reasons else result.case.id

    def conclude(self, result: CaseResult, output: str) -> None:
        """End the test as its verdict says."""
        stale = self.known.stale(self._known_key(result), result.verdict) if self.known else None
        if stale:
            pytest.fail(f"stale known failure: {stale}", pytrace=False)
        if result.verdict is Verdict.FAILED:
            if result.known_failure:
                pytest.xfail(f"known failure ({result.known_failure}): {result.reason}")
            pytest.fail(explain(result, output), pytrace=False)

    def write(self) -> Path | None:
        if self.report_dir is None or self.client is None:
            return None
        document = results_document([r.to_json() for r in self.results] + self.remote, self.peer(), {
            "strict": self.strict, "profile": self.profile, "python": sys.version.split()[0]})
        write_results(self.report_dir / "results.json", document)
        return write_report(self.report_dir, document, self.groups)


def explain(result: CaseResult, output: str = "") -> str:
    c = result.case
    lines = [f"case {c.id} [{c.severity.value}] {c.title}: {result.verdict.value}",
             f"  expected: {c.expectation}", f"  source:   {c.source}", f"  reason:   {result.reason}"]
    lines += [f"  {'ok  ' if f.holds else 'FAIL'} {f}" for f in result.figures]
    lines += [f"  note:     {n}" for n in result.notes]
    if result.close is not None:
        lines.append(f"  close:    {result.close}")
    if result.timeline:
        lines += ["  timeline (ms since the logs began):", *("    " + ln for ln in result.timeline.splitlines())]
    if output.strip():
        lines += ["  client output (last lines):", *("    " + ln for ln in output.strip().splitlines()[-15:])]
    lines.append(f"  replay:   {result.replay}")
    return "\n".join(lines)


GATE = pytest.StashKey[GateSession]()
