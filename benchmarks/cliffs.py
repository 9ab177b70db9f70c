"""Large books without cliffs: the fills whose cost used to jump with the book's size.

100,000 accounts of equal weight, where every fill meets a tie among nearly all of them, and a
fill so large that every one of the 100,000 accounts receives shares: the engine alone beside
the per-fill largest-remainder baseline in the same run, and the second case as a client sees
it, ``SubmitFill`` through a real controller (allocate, journal, answer 1.7 MB).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from allocation.v1 import allocation_pb2, controller_service_pb2, controller_service_pb2_grpc
from benchmarks.baseline import largest_remainder
from benchmarks.system import TICKERS, start_controller
from controller.book import Book
from controller.domain import Fill, Split
from controller.transport import open_channel

ACCOUNTS = 100_000
# Micro-percent each: 0.001 % of 100 %.
EQUAL_PERCENT = 1_000
EVERYONE = 250_000


@dataclass(frozen=True)
class CliffRow:
    """One case: the engine's median and the baseline's on the same fills."""

    case: str
    engine_ms: float
    baseline_ms: float
    fills: int


@dataclass(frozen=True)
class RoundTrip:
    """``SubmitFill`` of a fill every account receives, through a real controller."""

    first_s: float
    median_s: float
    max_s: float
    calls: int


def engine_rows(fills: int) -> list[CliffRow]:
    """Median engine time per fill in each case, the baseline timed on the same fills."""
    names = [f"acct-{i:06d}" for i in range(ACCOUNTS)]
    book = Book(TICKERS)
    book.set_split(Split("equal", dict.fromkeys(names, EQUAL_PERCENT)))
    weights = np.full(ACCOUNTS, EQUAL_PERCENT, dtype=np.int64)
    cases = [
        ("100,000 equal-weight accounts, Q=100", 100, fills),
        (f"every account receives (Q={EVERYONE:,})", EVERYONE, max(3, fills // 10)),
    ]
    rows = []
    for case, quantity, count in cases:
        engine, baseline = [], []
        for n in range(count):
            fill = Fill(f"{quantity}-{n}", TICKERS[n % len(TICKERS)], 100_000_000 + n, quantity)
            started = time.perf_counter()
            allocation = book.submit(fill)
            middle = time.perf_counter()
            largest_remainder(weights, quantity)
            engine.append(middle - started)
            baseline.append(time.perf_counter() - middle)
            if quantity == EVERYONE and len(allocation.accounts) != ACCOUNTS:
                raise RuntimeError(f"{len(allocation.accounts)} accounts received, not all")
        rows.append(
            CliffRow(
                case, statistics.median(engine) * 1e3, statistics.median(baseline) * 1e3, count
            )
        )
    return rows


def round_trip(calls: int) -> RoundTrip:
    """Time ``SubmitFill`` of fills that every account receives, on a fresh controller."""
    with tempfile.TemporaryDirectory(prefix="fill-allocator-bench-") as tmp:
        controller = start_controller(Path(tmp) / "cliffs.db", ACCOUNTS)
        try:
            with open_channel(controller.address) as channel:
                stub = controller_service_pb2_grpc.ControllerServiceStub(channel)
                times = []
                for n in range(calls):
                    request = controller_service_pb2.SubmitFillRequest(
                        fill=allocation_pb2.Fill(
                            fill_id=f"everyone-{n}",
                            ticker=TICKERS[n % len(TICKERS)],
                            price="50",
                            quantity=EVERYONE + n,
                            side=allocation_pb2.SIDE_BUY,
                        )
                    )
                    started = time.perf_counter()
                    answer = stub.SubmitFill(request, timeout=120)
                    times.append(time.perf_counter() - started)
                    if len(answer.allocation.allocations) != ACCOUNTS:
                        raise RuntimeError("not every account received shares")
        finally:
            controller.stop()
    return RoundTrip(times[0], statistics.median(times[1:]), max(times[1:]), calls)


def run(console: Console, quick: bool) -> dict[str, object]:
    """Print the table; returns its rows."""
    rows = engine_rows(10 if quick else 50)
    trip = round_trip(3 if quick else 8)
    table = Table(title="Large books without cliffs (medians; baseline on the same fills)")
    for column in ("case", "engine", "baseline", "engine / baseline", "target"):
        table.add_column(column, justify="right")
    targets = ["< 3 ms per fill", "< 0.3 s"]
    for row, target in zip(rows, targets, strict=True):
        table.add_row(
            row.case,
            f"{row.engine_ms:,.2f} ms",
            f"{row.baseline_ms:,.2f} ms",
            f"{row.engine_ms / row.baseline_ms:.1f}x",
            target,
        )
    table.add_row(
        "the same fill, SubmitFill through a controller",
        f"{trip.median_s:.3f} s (first {trip.first_s:.3f} s, max {trip.max_s:.3f} s)",
        "",
        f"{trip.median_s * 1e3 / rows[1].engine_ms:.1f}x the engine",
        "< 0.3 s",
    )
    console.print(table)
    return {"engine": [asdict(r) for r in rows], "round_trip": asdict(trip)}
