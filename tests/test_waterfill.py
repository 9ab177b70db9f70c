"""Selection among tied accounts: ``smallest_by`` picks what a full stable sort would."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.waterfill import SAMPLE, smallest_by


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
