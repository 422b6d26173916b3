"""Width patterns: which physical channels a width uses (leftmost, CafeNet, BCNet)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from widthsearch import WidthSearchError, patterns
from widthsearch.patterns import Bilateral, Leftmost, LocallyFree, as_selection, get_pattern


@st.composite
def group_and_width(draw) -> tuple[int, int, int]:
    """(n, c, step): a group of n channels, a width c and the group's width step."""
    step = draw(st.integers(1, 4))
    n = draw(st.integers(1, 40))
    c = draw(st.integers(1, n))
    return n, c, step


ALL = [Leftmost(), LocallyFree(r=1), LocallyFree(r=2), LocallyFree(r=0), Bilateral()]


@settings(max_examples=200, deadline=None)
@given(nc=group_and_width(), pattern=st.sampled_from(ALL))
def test_every_assignment_has_c_distinct_channels(nc, pattern) -> None:
    n, c, step = nc
    options = pattern.choices(n, c, step)
    assert options[0] == tuple(range(c))  # choice 0 is always leftmost
    assert len(options) == pattern.num_choices(n, c, step) >= 1
    assert len(set(options)) == len(options)  # no assignment listed twice
    for channels in options:
        assert len(channels) == len(set(channels)) == c
        assert all(0 <= ch < n for ch in channels)
        assert list(channels) == sorted(channels)


@settings(max_examples=200, deadline=None)
@given(nc=group_and_width(), r=st.integers(1, 3))
def test_locally_free_zone_rule(nc, r: int) -> None:
    n, c, step = nc
    unit = step if c % step == 0 else 1
    for channels in LocallyFree(r).choices(n, c, step):
        base = set(range(max(0, c - r * unit)))
        assert base <= set(channels)  # the base channels are always on
        extra = set(channels) - base
        assert all(c - r * unit <= ch < c + r * unit for ch in extra)
        # whole width steps move together
        starts = {ch - (ch - min(extra)) % unit for ch in extra} if extra else set()
        assert all(all(s + k in extra for k in range(unit)) for s in starts)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_locally_free_count_in_the_interior(r: int) -> None:
    n, c = 40, 20
    options = LocallyFree(r).choices(n, c, 1)
    assert len(options) == math.comb(2 * r, r)
    # every way to pick r of the 2r zone channels appears
    zone = range(c - r, c + r)
    picked = {tuple(ch for ch in o if ch in zone) for o in options}
    assert len(picked) == math.comb(2 * r, r)


def test_locally_free_steps_move_whole_blocks() -> None:
    options = LocallyFree(1).choices(16, 8, 4)  # zone [4, 12) in blocks of 4
    assert options == [tuple(range(8)), (0, 1, 2, 3, 8, 9, 10, 11)]
    # near the top the zone is clipped to the group
    assert LocallyFree(1).choices(8, 6, 2) == [tuple(range(6)), (0, 1, 2, 3, 6, 7)]
    # at full width there is one assignment
    assert LocallyFree(2).choices(8, 8, 1) == [tuple(range(8))]


@settings(max_examples=100, deadline=None)
@given(nc=group_and_width())
def test_locally_free_r0_is_leftmost(nc) -> None:
    n, c, step = nc
    assert LocallyFree(0).choices(n, c, step) == Leftmost().choices(n, c, step)


@settings(max_examples=100, deadline=None)
@given(nc=group_and_width())
def test_bilateral_is_left_and_right(nc) -> None:
    n, c, step = nc
    options = Bilateral().choices(n, c, step)
    if c < n:
        assert options == [tuple(range(c)), tuple(range(n - c, n))]
        assert Bilateral().indices(n, c, step, 1) == slice(n - c, n)
    else:
        assert options == [tuple(range(n))]
    assert Bilateral().indices(n, c, step, 0) == slice(0, c)


def test_indices_are_slices_when_contiguous() -> None:
    assert Leftmost().indices(10, 4, 1, 0) == slice(0, 4)
    sel = LocallyFree(1).indices(10, 4, 1, 1)
    assert isinstance(sel, torch.Tensor)
    assert sel.tolist() == [0, 1, 2, 4]
    assert as_selection((3, 4, 5)) == slice(3, 6)
    assert as_selection([]) == slice(0, 0)
    assert as_selection((0, 2)).tolist() == [0, 2]
    assert patterns.selection_size(slice(2, 7)) == 5
    assert patterns.selection_tensor(slice(2, 5)).tolist() == [2, 3, 4]


def test_choice_out_of_range_is_a_clear_error() -> None:
    with pytest.raises(WidthSearchError, match="leftmost pattern has one assignment"):
        Leftmost().indices(10, 4, 1, 1)
    with pytest.raises(WidthSearchError, match="choices 0 and 1, got 2"):
        Bilateral().indices(10, 4, 1, 2)
    with pytest.raises(WidthSearchError, match=r"choice 2 is out of range.*2 assignments"):
        LocallyFree(1).indices(10, 4, 1, 2)
    with pytest.raises(WidthSearchError, match="r must be >= 0"):
        LocallyFree(-1)


def test_get_pattern() -> None:
    assert isinstance(get_pattern("leftmost"), Leftmost)
    assert isinstance(get_pattern("bcnet"), Bilateral)
    cafenet = get_pattern("cafenet")
    assert isinstance(cafenet, LocallyFree) and cafenet.r == 1
    custom = LocallyFree(r=2)
    assert get_pattern(custom) is custom
    with pytest.raises(WidthSearchError, match=r"unknown pattern 'slimmable'.*cafenet"):
        get_pattern("slimmable")
