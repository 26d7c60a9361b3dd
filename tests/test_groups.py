"""Group volume (spec: "Setting group volume", "Reading group volume/mute") and the switch cycle."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction

from hypothesis import Phase, assume, given, settings
from hypothesis import strategies as st

from reference_server.groups import Group, apply_group_volume, group_volume, switch_cycle

PHASES = (Phase.explicit, Phase.generate, Phase.shrink)
HALF = Fraction(1, 2)
EPS = Fraction(1, 10**9)  # float noise in the implementation


@dataclass(eq=False)  # identity semantics, like server sessions
class FakeMember:
    session_id: str
    is_player: bool = True
    volume: int = 50
    muted: bool = False


def _clamp(x: Fraction) -> Fraction:
    return min(Fraction(100), max(Fraction(0), x))


def water_fill(volumes: list[int], requested: int) -> list[Fraction]:
    """Exact, independent model of where the spec's cascade ends up.

    Every non-clamped player always receives the same share, so the cascade ends at
    clamp(v + s) for the one shift s that makes the average equal the request (or
    with every player at a boundary when no shift can). Solve for s exactly.
    """
    n = len(volumes)
    if requested >= 100:
        return [Fraction(100)] * n
    if requested <= 0:
        return [Fraction(0)] * n
    target = Fraction(requested * n)

    def total(s: Fraction) -> Fraction:
        return sum((_clamp(v + s) for v in volumes), Fraction(0))

    points = sorted({Fraction(-v) for v in volumes} | {Fraction(100 - v) for v in volumes})
    for a, b in itertools.pairwise(points):
        ta, tb = total(a), total(b)
        if ta <= target <= tb:
            s = a if ta == tb else a + (target - ta) * (b - a) / (tb - ta)  # total() is linear on [a, b]
            return [_clamp(v + s) for v in volumes]
    raise AssertionError("unreachable: total() spans 0..100n")


# --- hand-worked examples ------------------------------------------------------------------------
# Each computed by hand from the spec's steps 1-4; the comment shows the rounds.

EXAMPLES = [
    # [20, 80]: average 50.
    ([20, 80], 60, [30, 90]),  # delta +10, nothing clamps
    ([20, 80], 80, [60, 100]),  # +30 -> [50, 110]; lost 10 -> [60]
    ([20, 80], 90, [80, 100]),  # +40 -> [60, 120]; lost 20 -> [80]
    ([20, 80], 100, [100, 100]),  # +50 -> [70, 130]; lost 30 -> [100]
    ([20, 80], 10, [0, 20]),  # -40 -> [-20, 40]; lost -20 -> [20]
    ([20, 80], 0, [0, 0]),  # -50 -> [-30, 30]; lost -30 -> [0]
    ([20, 80], 50, [20, 80]),  # delta 0
    # [0, 50, 100]: average 50.
    ([0, 50, 100], 100, [100, 100, 100]),  # +50 -> [50, 100, 150]; lost 50 / 2 -> [75, 125]; lost 25 -> [100]
    ([0, 50, 100], 0, [0, 0, 0]),  # -50 -> [-50, 0, 50]; lost -50 / 2 -> [-25, 25]; lost -25 -> [0]
    ([0, 50, 100], 50, [0, 50, 100]),
    # three rounds upwards: average 50, +40 -> [40, 100, 130]; lost 30 / 2 -> [55, 115]; lost 15 -> [70]
    ([0, 60, 90], 90, [70, 100, 100]),
    # three rounds downwards: average 140/3, -80/3 -> [-80/3, 40/3, 220/3]; lost -80/3 / 2 -> [0, 60]
    ([0, 40, 100], 20, [0, 0, 60]),
    # several clamp in one round: average 73.75, +16.25 -> [26.25, 106.25, 111.25, 116.25]; lost 33.75 -> [60]
    ([10, 90, 95, 100], 90, [60, 100, 100, 100]),
    # fractional delta: average 100/3, +50/3 -> [50/3, 50/3, 350/3]; lost 50/3 / 2 -> [25, 25]
    ([0, 0, 100], 50, [25, 25, 100]),
    # average 115/3, -85/3 -> [-70/3, -55/3, 215/3]; lost -125/3 -> [30]
    ([5, 10, 100], 10, [0, 0, 30]),
    ([30], 70, [70]),
    ([0], 100, [100]),
    ([100, 100], 100, [100, 100]),
    ([100, 100], 0, [0, 0]),
    ([0, 0, 0, 0], 1, [1, 1, 1, 1]),
    ([10, 20, 30, 40], 35, [20, 30, 40, 50]),
]


def test_hand_worked_examples() -> None:
    wrong = []
    for volumes, requested, expected in EXAMPLES:
        result = apply_group_volume(list(volumes), requested)
        if result != expected:
            wrong.append(f"{volumes} -> {requested}: got {result}, expected {expected}")
        assert all(type(v) is int for v in result)
        assert [float(x) for x in water_fill(volumes, requested)] == expected  # the model agrees
    assert not wrong, "\n".join(wrong)


def test_input_list_is_not_modified() -> None:
    volumes = [20, 80]
    apply_group_volume(volumes, 100)
    assert volumes == [20, 80]


def test_empty_group() -> None:
    assert apply_group_volume([], 50) == []
    assert apply_group_volume([], 0) == []


def test_out_of_range_requests_saturate() -> None:
    for requested in (101, 150, -1, -50):
        expected = 100 if requested > 100 else 0
        assert apply_group_volume([0, 30, 100], requested) == [expected] * 3


# --- properties -------------------------------------------------------------------------------

VOLUMES = st.lists(st.integers(0, 100), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None, phases=PHASES)
@given(VOLUMES, st.integers(0, 100))
def test_properties(volumes: list[int], requested: int) -> None:
    result = apply_group_volume(volumes, requested)
    n = len(volumes)
    assert len(result) == n
    assert all(type(v) is int and 0 <= v <= 100 for v in result)
    # Every request in 0..100 is reachable: the average lands on it up to per-player rounding.
    assert abs(Fraction(sum(result), n) - requested) <= HALF + EPS
    assert abs(sum(result) / n - requested) <= 1
    # Relative order is preserved (ties stay ties).
    for i in range(n):
        for j in range(n):
            if volumes[i] < volumes[j]:
                assert result[i] <= result[j]
            if volumes[i] == volumes[j]:
                assert result[i] == result[j]
    # Everyone moves the way of the request.
    mean = Fraction(sum(volumes), n)
    if requested > mean:
        assert all(r >= v for r, v in zip(result, volumes, strict=True))
    elif requested < mean:
        assert all(r <= v for r, v in zip(result, volumes, strict=True))
    # Players that did not end at a boundary all got the same shift (up to rounding).
    shifts = [r - v for r, v in zip(result, volumes, strict=True) if 0 < r < 100]
    if shifts:
        assert max(shifts) - min(shifts) <= 1
    # Matches the exact model within rounding.
    model = water_fill(volumes, requested)
    for r, x in zip(result, model, strict=True):
        assert abs(r - x) <= HALF + EPS


@settings(max_examples=100, deadline=None, phases=PHASES)
@given(VOLUMES, st.integers(-100, -1) | st.integers(101, 200))
def test_unreachable_requests_saturate(volumes: list[int], requested: int) -> None:
    assert apply_group_volume(volumes, requested) == [100 if requested > 100 else 0] * len(volumes)


@settings(max_examples=150, deadline=None, phases=PHASES)
@given(VOLUMES)
def test_noop_request_leaves_volumes_unchanged(volumes: list[int]) -> None:
    excess = sum(volumes) % len(volumes)
    volumes[-1] -= excess  # make the average a whole number
    assume(volumes[-1] >= 0)
    assert apply_group_volume(volumes, sum(volumes) // len(volumes)) == volumes


@settings(max_examples=100, deadline=None, phases=PHASES)
@given(VOLUMES)
def test_extremes_reach_every_player(volumes: list[int]) -> None:
    """Spec: "when setting group volume to 100%, all players will reach 100%"."""
    assert apply_group_volume(volumes, 100) == [100] * len(volumes)
    assert apply_group_volume(volumes, 0) == [0] * len(volumes)


@settings(max_examples=100, deadline=None, phases=PHASES)
@given(st.integers(0, 100), st.integers(0, 100))
def test_single_player_gets_the_request(volume: int, requested: int) -> None:
    assert apply_group_volume([volume], requested) == [requested]


# --- reading group volume and mute ------------------------------------------------------------


def test_group_volume_examples() -> None:
    examples = [([], 0), ([40], 40), ([20, 80], 50), ([0, 100, 100], 67), ([10, 11, 11], 11), ([0, 0, 1], 0)]
    assert [group_volume(v) for v, _ in examples] == [e for _, e in examples]


@settings(max_examples=200, deadline=None, phases=PHASES)
@given(VOLUMES)
def test_group_volume_is_the_rounded_average(volumes: list[int]) -> None:
    value = group_volume(volumes)
    assert type(value) is int
    assert abs(value - Fraction(sum(volumes), len(volumes))) <= HALF
    assert min(volumes) <= value <= max(volumes)


def _group(*members: FakeMember, state: str = "stopped", gid: str = "g") -> Group:
    return Group(group_id=gid, name=gid, playback_state=state, members=list(members))


def test_group_volume_counts_only_players() -> None:
    group = _group(FakeMember("a", volume=20), FakeMember("b", volume=80),
                   FakeMember("ctl", is_player=False, volume=0))
    assert [m.session_id for m in group.players] == ["a", "b"]
    assert group.volume() == 50
    assert _group(FakeMember("ctl", is_player=False, volume=70)).volume() == 0


def test_group_muted_only_when_all_players_muted() -> None:
    cases = [([True], True), ([False], False), ([True, True, True], True), ([True, False, True], False),
             ([False, False], False)]
    for muted, expected in cases:
        group = _group(*[FakeMember(f"p{i}", muted=x) for i, x in enumerate(muted)])
        assert group.muted() is expected, muted


def test_group_muted_ignores_non_players() -> None:
    group = _group(FakeMember("p", muted=True), FakeMember("ctl", is_player=False, muted=False))
    assert group.muted() is True
    assert _group(FakeMember("ctl", is_player=False, muted=True)).muted() is False
    assert _group().muted() is False


def test_solo_group() -> None:
    member = FakeMember("m1")
    a, b = Group.solo(member), Group.solo(member)
    assert a.members == [member]
    assert a.group_id != b.group_id
    assert a.playback_state == "stopped"


# --- switch cycle ------------------------------------------------------------------------------


def test_switch_cycle_player_in_a_multi_client_group() -> None:
    me, other1, other2 = FakeMember("me"), FakeMember("o1"), FakeMember("o2")
    current = _group(me, other1, state="playing", gid="current")
    multi_playing = _group(FakeMember("o3"), FakeMember("o4"), state="playing", gid="multi")
    multi_stopped = _group(FakeMember("o5"), FakeMember("o6"), state="stopped", gid="multi-stopped")
    single = _group(other2, state="playing", gid="single")
    groups = [single, multi_stopped, current, multi_playing]
    cycle = switch_cycle(groups, me, current)
    # 1. playing multi-client groups (current included: the caller steps from it), 2. single-client groups,
    # 3. a solo group with only this client.
    assert cycle[:3] == [current, multi_playing, single]
    assert len(cycle) == 4
    solo = cycle[3]
    assert solo.members == [me]
    assert solo not in groups
    assert multi_stopped not in cycle


def test_switch_cycle_player_already_solo_ends_with_its_own_group() -> None:
    me = FakeMember("me")
    current = _group(me, gid="mine")
    multi = _group(FakeMember("a"), FakeMember("b"), state="playing", gid="multi")
    single = _group(FakeMember("c"), state="playing", gid="single")
    cycle = switch_cycle([current, single, multi], me, current)
    assert cycle == [multi, single, current]
    assert cycle[-1] is current


def test_switch_cycle_client_without_player_role_has_no_solo_group() -> None:
    me = FakeMember("ctl", is_player=False)
    current = _group(me, gid="mine")
    multi = _group(FakeMember("a"), FakeMember("b"), state="playing", gid="multi")
    single = _group(FakeMember("c"), state="playing", gid="single")
    cycle = switch_cycle([current, multi, single], me, current)
    assert cycle == [multi, single]
    assert all(me not in g.members for g in cycle)


def test_switch_cycle_non_player_in_multi_group() -> None:
    me = FakeMember("ctl", is_player=False)
    current = _group(me, FakeMember("p"), state="playing", gid="current")
    single = _group(FakeMember("c"), state="playing", gid="single")
    cycle = switch_cycle([single, current], me, current)
    assert cycle == [current, single]


def test_switch_cycle_only_this_client() -> None:
    player = FakeMember("me")
    alone = _group(player)
    assert switch_cycle([alone], player, alone) == [alone]
    controller = FakeMember("ctl", is_player=False)
    alone_ctl = _group(controller)
    assert switch_cycle([alone_ctl], controller, alone_ctl) == []


def test_switch_cycle_stopped_current_multi_group_is_not_in_the_cycle() -> None:
    me = FakeMember("me")
    current = _group(me, FakeMember("x"), state="stopped", gid="current")
    multi = _group(FakeMember("a"), FakeMember("b"), state="playing", gid="multi")
    cycle = switch_cycle([current, multi], me, current)
    assert cycle[0] is multi
    assert current not in cycle
    assert cycle[-1].members == [me]


def test_switch_cycle_single_client_groups_are_players() -> None:
    """Spec item 2: "Single-client groups (other players playing alone)": a client without
    the player role sitting alone in its group is not a place to switch to."""
    me = FakeMember("me")
    current = _group(me, gid="mine")
    controller_alone = _group(FakeMember("ctl", is_player=False), state="playing", gid="ctl-alone")
    player_alone = _group(FakeMember("p"), state="playing", gid="p-alone")
    cycle = switch_cycle([current, controller_alone, player_alone], me, current)
    assert cycle == [player_alone, current]


def test_switch_cycle_single_client_groups_are_playing() -> None:
    """Spec item 2: "(other players playing alone)"; item 1 likewise asks for groups that are
    playing. aiosendspin 6.1.1 (`_build_group_cycle`) also requires PLAYING for both."""
    me = FakeMember("me")
    current = _group(me, gid="mine")
    idle = _group(FakeMember("idle"), state="stopped", gid="idle")
    playing = _group(FakeMember("p"), state="playing", gid="playing")
    cycle = switch_cycle([current, idle, playing], me, current)
    assert cycle == [playing, current]
