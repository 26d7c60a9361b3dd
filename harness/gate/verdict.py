"""From what was measured to a verdict that explains itself.

A case's judge records `Figure`s (a measured value against its named bound) and plain
failures in a `Judgement`; `decide` turns that into a `Verdict` by the case's severity.
The close verdict is separate: how the connection under test ended (who closed, the
code, and whether the close was clean, abnormal or silent), whatever the case judged.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from .case import Case, Severity


class Verdict(Enum):
    OK = "OK"
    NON_STRICT = "NON-STRICT"  # a SHOULD was not met
    FAILED = "FAILED"  # a MUST was not met
    UNIMPLEMENTED = "UNIMPLEMENTED"  # the peer does not support what the case needs (with the reason)
    INFORMATIONAL = "INFORMATIONAL"  # figures reported, nothing judged
    INCONCLUSIVE = "INCONCLUSIVE"  # our own instrument stalled while the peer seemed to fail
    SKIPPED = "SKIPPED"  # the gate cannot run the case in this wire profile (with the reason): nothing judged
    ERROR = "ERROR"  # the gate itself failed running the case (the reason names how): nothing judged

    @property
    def passes(self) -> bool:
        return self in (Verdict.OK, Verdict.INFORMATIONAL)


OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge, "==": operator.eq,
                                                  "<": operator.lt, ">": operator.gt}
SIGNS = {"<=": "≤", ">=": "≥", "==": "=", "<": "<", ">": ">"}


@dataclass(frozen=True)
class Figure:
    """A measured value against a bound: `value op bound`, e.g. 1210 ms ≤ 3000 ms."""

    name: str
    value: float | None  # None: the thing measured never happened
    op: str
    bound: float | None  # None: reported only
    unit: str = ""
    bound_name: str = ""  # the name of the bound in harness/settings.py
    window_us: tuple[int, int] | None = None  # when what it measures happened (a stall there may explain it)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"figure {self.name!r}: op {self.op!r} is not one of {sorted(OPS)}")

    @property
    def holds(self) -> bool:
        if self.bound is None:
            return True
        return self.value is not None and OPS[self.op](self.value, self.bound)

    @property
    def excess_us(self) -> int | None:
        """How far past its bound a failing duration went (None: not a duration, or no value)."""
        if self.unit != "ms" or self.value is None or self.bound is None:
            return None
        return round(abs(self.value - self.bound) * 1000)

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        value = "never" if self.value is None else f"{_num(self.value)}{unit}"
        if self.bound is None:
            return f"{self.name}: {value}"
        named = f" ({self.bound_name})" if self.bound_name else ""
        return f"{self.name}: {value} {SIGNS[self.op]} {_num(self.bound)}{unit}{named}"


def _num(x: float) -> str:
    return str(round(x)) if float(x).is_integer() or abs(x) >= 100 else f"{x:.3g}"


@dataclass
class Judgement:
    """What a case's judge found: figures, and the reasons it failed (empty: it held)."""

    figures: list[Figure] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, name: str, value: float | None, op: str, bound: float | None, unit: str = "",
              bound_name: str = "", window_us: tuple[int, int] | None = None) -> bool:
        figure = Figure(name, value, op, bound, unit, bound_name, window_us)
        self.figures.append(figure)
        if not figure.holds:
            self.failures.append(str(figure))
        return figure.holds

    def report(self, name: str, value: float | None, unit: str = "") -> None:
        self.figures.append(Figure(name, value, "==", None, unit))

    def require(self, condition: bool, reason: str) -> bool:
        if not condition:
            self.failures.append(reason)
        return condition

    def note(self, text: str) -> None:
        self.notes.append(text)


def decide(case: Case, judgement: Judgement, strict: bool = False) -> Verdict:
    if case.severity is Severity.INFO:
        return Verdict.INFORMATIONAL
    if not judgement.failures:
        return Verdict.OK
    if case.severity is Severity.SHOULD and not strict:
        return Verdict.NON_STRICT
    return Verdict.FAILED


@dataclass(frozen=True)
class CloseVerdict:
    """How the connection under test ended, as seen from outside."""

    closed_by: str  # "client", "server", "proxy" (a fault), or "" (still open at the end of the case)
    code: int | None  # the first close code sent (None: no close frame)
    kind: str  # "clean": close frames both ways; "abnormal": the TCP connection ended without them;
    #            "silent": the connection was still open, its peer quiet; "open": still open and talking
    reason: str = ""

    def __str__(self) -> str:
        if self.kind in ("open", "silent"):
            return self.kind
        code = "no close frame" if self.code is None else f"{self.code}"
        return f"{self.kind}: closed by {self.closed_by or '?'} ({code}{', ' + self.reason if self.reason else ''})"


@dataclass
class CaseResult:
    """One case's outcome, as results.json and the reports show it."""

    case: Case
    verdict: Verdict
    reason: str  # one line: the first failure, or why the case did not apply
    figures: list[Figure] = field(default_factory=list)
    close: CloseVerdict | None = None
    timeline: str = ""  # an excerpt of the event logs around the first failure
    replay: str = ""  # the command that replays exactly this case
    peer: dict[str, Any] = field(default_factory=dict)  # what the peer declared: roles, codecs, initiator
    seconds: float = 0.0
    known_failure: str = ""  # the reason from --known-failures, if listed
    notes: list[str] = field(default_factory=list)  # what the judge saw besides the figures
    plot: str = ""  # its timeline plot, relative to the report directory

    def to_json(self) -> dict[str, Any]:
        c = self.case
        return {
            "id": c.id, "side": c.side, "group": c.group, "title": c.title, "severity": c.severity.value,
            "source": c.source, "expectation": c.expectation, "verdict": self.verdict.value, "reason": self.reason,
            "close": None if self.close is None else {**asdict(self.close), "summary": str(self.close)},
            "figures": [{**asdict(f), "holds": f.holds, "text": str(f)} for f in self.figures],
            "timeline": self.timeline, "replay": self.replay, "peer": self.peer, "seconds": round(self.seconds, 3),
            "known_failure": self.known_failure, "notes": self.notes, "plot": self.plot,
            "profile": self.peer.get("profile", "legacy"),
        }
