"""`--known-failures FILE`: cases an implementation is known to fail, each with a reason.

It lets a project adopt the gate before it fixes everything. One entry per line:

    # comments and blank lines are ignored
    2.3   we stop client/time while a stream/clear is handled (issue #12)
    8.4   no blackhole detection yet

A listed case that fails is reported as a known failure and does not fail the run. A
listed case that now passes is *stale*, and that is an error: the file must shrink as
the implementation improves (Connect's conformance runner does the same).
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path

from .verdict import Verdict


class KnownFailuresError(ValueError):
    """The file is malformed or names a case that does not exist."""


@dataclass(frozen=True)
class KnownFailures:
    reasons: dict[str, str]  # case id -> why it fails for now
    source: str = ""

    @classmethod
    def parse(cls, text: str, cases: Container[str], source: str = "<text>") -> KnownFailures:
        reasons: dict[str, str] = {}
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):  # a reason may hold a '#': only whole lines are comments
                continue
            case_id, _, reason = line.partition(" ")
            reason = reason.strip()
            where = f"{source}:{n}"
            if case_id not in cases:
                raise KnownFailuresError(f"{where}: {case_id!r} is not a case of this gate")
            if not reason:
                raise KnownFailuresError(f"{where}: case {case_id} has no reason; write why it fails for now")
            if case_id in reasons:
                raise KnownFailuresError(f"{where}: case {case_id} is listed twice")
            reasons[case_id] = reason
        return cls(reasons, source)

    @classmethod
    def load(cls, path: Path, cases: Container[str]) -> KnownFailures:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise KnownFailuresError(f"--known-failures {path}: {exc.strerror}") from None
        return cls.parse(text, cases, str(path))

    def stale(self, case_id: str, verdict: Verdict) -> str | None:
        """The error for a listed case that did not fail, or None."""
        if case_id in self.reasons and verdict.passes:
            return (f"case {case_id} is listed in {self.source or '--known-failures'} ({self.reasons[case_id]}) "
                    f"but is {verdict.value} now: remove the entry")
        return None
