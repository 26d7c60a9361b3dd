"""A case: one numbered, documented check of a peer's behaviour (Autobahn|Testsuite style).

A case says what it does (`description`), what a conforming peer does (`expectation`),
where the rule comes from (`source`: a spec section or a bug seen in the field) and how
much a failure weighs (`severity`: a MUST failure is FAILED, a SHOULD failure NON-STRICT,
an INFO case only reports). `side` is whose behaviour it judges; `roles` and `codecs`
say what the peer must support for the case to apply: a case that does not apply is
UNIMPLEMENTED with the reason, never a pass. `skip_in` names the wire profiles (the
protocol revision the peer speaks: `legacy`, `noise`) the gate cannot run the case in,
each with its reason: such a case is SKIPPED there, which says nothing about the peer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum


class Severity(Enum):
    MUST = "MUST"
    SHOULD = "SHOULD"
    INFO = "INFO"


SIDES = ("client", "server")
WIRE_PROFILES = ("legacy", "noise")  # the protocol revisions a peer may speak (one per run)


@dataclass(frozen=True)
class Case:
    id: str  # "group.case", e.g. "2.3"
    side: str  # whose behaviour is judged: "client" or "server"
    title: str
    description: str
    expectation: str
    source: str
    severity: Severity
    roles: tuple[str, ...] = ()  # the peer must declare one of these roles (empty: any peer)
    codecs: tuple[str, ...] = ()  # ... and one of these codecs
    thorough: bool = False  # only in the thorough profile
    # (wire profile, why the gate cannot run the case there): SKIPPED there, never judged
    skip_in: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        group, dot, number = self.id.partition(".")
        if not (dot and group.isdigit() and number.isdigit()):
            raise ValueError(f"case id {self.id!r}: expected GROUP.CASE with two numbers")
        if self.side not in SIDES:
            raise ValueError(f"case {self.id}: side {self.side!r} is not one of {SIDES}")
        for profile, reason in self.skip_in:
            if profile not in WIRE_PROFILES or not reason:
                raise ValueError(f"case {self.id}: skip_in needs a wire profile of {WIRE_PROFILES} and a reason, "
                                 f"got {profile!r} {reason!r}")

    def skipped_in(self, profile: str) -> str | None:
        """Why the gate cannot run this case in wire profile `profile`, or None (it runs)."""
        return dict(self.skip_in).get(profile)

    @property
    def group(self) -> int:
        return int(self.id.split(".")[0])

    @property
    def sort_key(self) -> tuple[int, int]:
        group, number = self.id.split(".")
        return int(group), int(number)

    def not_applicable(self, roles: Iterable[str], codecs: Iterable[str]) -> str | None:
        """Why this case does not apply to a peer that declared `roles` and `codecs`, or None."""
        declared = {r.split("@")[0] for r in roles}
        if self.roles and not declared & {r.split("@")[0] for r in self.roles}:
            return f"needs the role {' or '.join(self.roles)}; the peer declared {sorted(declared) or 'none'}"
        if self.codecs and not set(codecs) & set(self.codecs):
            return f"needs the codec {' or '.join(self.codecs)}; the peer declared {sorted(codecs) or 'none'}"
        return None


class Catalogue:
    """The cases of one side, by id, and the names of their groups."""

    def __init__(self, side: str, groups: dict[int, str]) -> None:
        self.side = side
        self.groups = groups
        self._cases: dict[str, Case] = {}

    def add(self, case: Case) -> Case:
        if case.side != self.side:
            raise ValueError(f"case {case.id} judges the {case.side}, this catalogue the {self.side}")
        if case.id in self._cases:
            raise ValueError(f"case {case.id} is declared twice")
        if case.group not in self.groups:
            raise ValueError(f"case {case.id}: group {case.group} is not one of {sorted(self.groups)}")
        self._cases[case.id] = case
        return case

    def __getitem__(self, case_id: str) -> Case:
        try:
            return self._cases[case_id]
        except KeyError:
            raise KeyError(f"no {self.side} case {case_id!r}; the cases are {', '.join(self.ids())}") from None

    def __contains__(self, case_id: object) -> bool:
        return case_id in self._cases

    def __iter__(self) -> Iterator[Case]:
        return iter(sorted(self._cases.values(), key=lambda c: c.sort_key))

    def ids(self) -> list[str]:
        return [c.id for c in self]
