"""The exact water-fill: ``allocate_uncapped`` takes the best slots, and selection among tied
accounts (``smallest_by``) picks what a full stable sort would."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.waterfill import SAMPLE, allocate_small, allocate_uncapped, smallest_by


def stable_first(columns: list[npt.NDArray[np.int64]], count: int) -> set[int]:
    """The first ``count`` positions of a stable lexicographic sort (first column first)."""
    return set(np.lexsort(columns[::-1])[:count].tolist())


@st.composite
def tied_columns(draw: st.DrawFn) -> tuple[list[npt.NDArray[np.int64]], int]:
    """Columns with long runs of equal values and a few others scattered through them (the
    shape equal weights give), small or past the size where a sample bounds the search."""
    size = draw(st.sampled_from([1, 7, 300, 16 * SAMPLE + 1, 40_000]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    columns = []
    for _ in range(draw(st.integers(1, 3))):
        distinct = draw(st.sampled_from([1, 2, 5, size]))
        column = (
            rng.integers(-3, 3, size) * (1 << 40)
            if distinct < size
            else rng.integers(-(1 << 62), 1 << 62, size)
        )
        common = rng.random(size) < draw(st.sampled_from([0.0, 0.9, 0.999]))
        column[common] = column[0]
        columns.append(column.astype(np.int64))
    return columns, draw(st.integers(1, size))


@settings(max_examples=60, deadline=None)
@given(tied_columns())
def test_smallest_by_takes_the_first_of_a_stable_sort(
    case: tuple[list[npt.NDArray[np.int64]], int],
) -> None:
    columns, count = case
    asked: list[int] = []

    def level(
        column: npt.NDArray[np.int64],
    ) -> Callable[[npt.NDArray[np.intp]], npt.NDArray[np.int64]]:
        def values(positions: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
            asked.append(len(positions))
            return column[positions]

        return values

    chosen = smallest_by(len(columns[0]), count, [level(c) for c in columns])
    assert len(chosen) == count
    assert set(chosen.tolist()) == stable_first(columns, count)
    # A later key is only computed for the items still tied where the cut falls.
    assert asked == sorted(asked, reverse=True)


def best_slots_one_at_a_time(scores: list[int], step: int, q: int, keys: list[int]) -> list[int]:
    """The unit greedy the water-fill must equal: q times, the best next slot (largest value,
    then smallest tie key, then smallest index)."""
    shares = [0] * len(scores)
    for _ in range(q):
        best = max(range(len(scores)), key=lambda i: (scores[i] - step * shares[i], -keys[i], -i))
        shares[best] += 1
    return shares


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(-6, 6), min_size=1, max_size=12),
    st.integers(1, 9),
    st.integers(1, 80),
    st.integers(1, 40),
    st.data(),
)
def test_allocate_uncapped_takes_the_best_slots_one_at_a_time(
    coarse: list[int], step: int, q: int, spread: int, data: st.DataObject
) -> None:
    # Scores on a coarse grid tie often, with each other and with later slots; a wide spread
    # leaves accounts below the threshold, a narrow one keeps them all above it.
    scores = [value * spread for value in coarse]
    keys = data.draw(st.lists(st.integers(0, 3), min_size=len(scores), max_size=len(scores)))
    asked: list[int] = []

    def key_of(i: int) -> int:
        asked.append(i)
        return keys[i]

    shares = allocate_uncapped(scores, step, q, key_of)
    assert shares == best_slots_one_at_a_time(scores, step, q, keys)
    assert shares == allocate_small(scores, [q] * len(scores), step, q, keys.__getitem__)
    # Keys are asked only when more accounts tie at the cut than shares remain there.
    if len(set(scores)) == len(scores) and len({s % step for s in scores}) == len(scores):
        assert not asked
