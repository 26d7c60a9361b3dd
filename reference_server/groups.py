"""Groups, group volume (the spec's algorithm) and the switch cycle."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal, Protocol

PlaybackState = Literal["playing", "stopped"]


class Member(Protocol):
    """What groups need of a client (a server session, or a test's stand-in)."""

    @property
    def session_id(self) -> str: ...

    @property
    def is_player(self) -> bool: ...

    volume: int
    muted: bool


def apply_group_volume(volumes: list[int], requested: int) -> list[int]:
    """Spec, "Setting group volume": shift every player by the same delta, hand
    what clamped players could not take to the others, repeat until all delta
    is applied or every player sits at a boundary."""
    if not volumes:
        return []
    delta = requested - sum(volumes) / len(volumes)
    proposed = [v + delta for v in volumes]
    free = list(range(len(volumes)))
    while free:
        lost = 0.0
        still_free = []
        for i in free:
            clamped = min(100.0, max(0.0, proposed[i]))
            if clamped == proposed[i]:
                still_free.append(i)
            lost += proposed[i] - clamped
            proposed[i] = clamped
        if abs(lost) < 1e-9 or not still_free:
            break
        free = still_free
        for i in free:
            proposed[i] += lost / len(free)
    return [round(v) for v in proposed]


def group_volume(volumes: list[int]) -> int:
    """The rounded (half up) average of the player volumes."""
    return int(sum(volumes) / len(volumes) + 0.5) if volumes else 0


_group_ids = itertools.count(1)


@dataclass(eq=False)
class Group:
    group_id: str
    name: str
    playback_state: PlaybackState = "stopped"
    members: list[Member] = field(default_factory=list)

    @classmethod
    def solo(cls, member: Member) -> Group:
        n = next(_group_ids)
        return cls(group_id=f"solo-{n}", name=f"Solo {member.session_id}", members=[member])

    @property
    def players(self) -> list[Member]:
        return [m for m in self.members if m.is_player]

    def volume(self) -> int:
        return group_volume([p.volume for p in self.players])

    def muted(self) -> bool:
        players = self.players
        return bool(players) and all(p.muted for p in players)


def switch_cycle(groups: list[Group], member: Member, current: Group) -> list[Group]:
    """Spec, "Switch command cycle": playing multi-client groups, then
    single-client groups, then (players only) a solo group of this client."""
    others = [g for g in groups if g is not current or len(g.members) > 1]
    multi = [g for g in others if len(g.members) > 1 and g.playback_state == "playing"]
    single = [g for g in others if len(g.members) == 1 and member not in g.members
              and g.members[0].is_player and g.playback_state == "playing"]
    cycle = multi + single
    if member.is_player:
        cycle.append(current if current.members == [member] else Group.solo(member))
    return cycle
