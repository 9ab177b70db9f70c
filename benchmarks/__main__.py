"""`python -m benchmarks [engine|cliffs|system|large|audit|replication|dashboard|all]`: print
tables, write them as JSON."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks import audit, cliffs, dashboard, engine, large, replication, system
from controller.compiled import is_compiled
from controller.policy import POLICIES

RESULTS = Path(__file__).parent / "results"


def run_engine(console: Console, quick: bool) -> dict[str, object]:
    """Engine time per fill (against the baseline) and quality (against the baseline)."""
    timing = Table(title="Allocation time per fill (median of 3 rounds; baseline in the same run)")
    for column in ("accounts", "Q", "engine ms", "baseline ms", "engine / baseline", "target"):
        timing.add_column(column, justify="right")
    targets = {(10_000, 1_000_000): "<= 2 ms", (100_000, 1_000_000): "<= 50 ms"}
    timing_rows = []
    for accounts in (10, 1_000, 10_000, 100_000):
        for quantity in (100, 1_000_000):
            fills = 20 if quick else max(30, min(2_000, 2_000_000 // accounts))
            row = engine.time_per_fill(accounts, quantity, fills)
            timing_rows.append(row)
            timing.add_row(
                f"{accounts:,}",
                f"{quantity:,}",
                f"{row.engine_ms:.3f}",
                f"{row.baseline_ms:.3f}",
                f"{row.engine_ms / row.baseline_ms:.1f}x",
                targets.get((accounts, quantity), ""),
            )
    console.print(timing)
    table = Table(
        title=(
            "Quality: mean over the stream of the worst deviation (bps); total = max_i"
            " |V_i - w_i T| / T, per ticker = max_t,i |q_it - w_i Q_t| / Q_t; baseline:"
            " per-fill largest remainder on the same stream"
        )
    )
    for column in (
        "scenario",
        "policy",
        "total bps",
        "per-ticker bps",
        "baseline total bps",
        "baseline per-ticker bps",
        "baseline / engine (total, per ticker)",
    ):
        table.add_column(column, justify="right")
    quality_rows = [
        engine.quality(scenario, policy, fills=500 if quick else 3000)
        for scenario in engine.SCENARIOS
        for policy in POLICIES
    ]
    for q in quality_rows:
        table.add_row(
            q.scenario,
            q.policy,
            f"{q.engine_total_bps:.3f}",
            f"{q.engine_ticker_bps:.3f}",
            f"{q.baseline_total_bps:.3f}",
            f"{q.baseline_ticker_bps:.3f}",
            f"{q.baseline_total_bps / q.engine_total_bps:.1f}x,"
            f" {q.baseline_ticker_bps / q.engine_ticker_bps:.1f}x",
        )
    console.print(table)
    return {
        "timing": [asdict(r) for r in timing_rows],
        "quality": [asdict(q) for q in quality_rows],
    }


def run_large(console: Console, quick: bool) -> dict[str, object]:
    """A 100,000-account book (20,000 with --quick): pauses beside a no-report baseline."""
    result = large.run(20_000 if quick else 100_000, 6.0 if quick else 20.0)
    table = Table(
        title=(
            f"Large book: {result.accounts:,} accounts, SubmitFill one after another for"
            f" {result.seconds:.0f} s, reports every {large.REPORT_SECONDS:.0f} s (baseline:"
            " a controller that never reports, same run)"
        )
    )
    for column in ("measure", "with reports", "without reports", "ratio", "target"):
        table.add_column(column, justify="right")

    def row(name: str, with_reports: float, without: float, target: str = "") -> None:
        ratio = f"{with_reports / without:.2f}" if without else ""
        table.add_row(name, f"{with_reports:.1f} ms", f"{without:.1f} ms", ratio, target)

    row(
        f"longest pause, median of {large.WINDOWS} windows",
        result.window_max_ms_with_reports,
        result.window_max_ms_without_reports,
        "< 50 ms",
    )
    row(
        "longest pause, whole run",
        result.max_pause_ms_with_reports,
        result.max_pause_ms_without_reports,
    )
    row("p99 acknowledgement", result.p99_ms_with_reports, result.p99_ms_without_reports)
    table.add_row("p50 acknowledgement", f"{result.p50_ms_with_reports:.1f} ms", "", "", "")
    table.add_row(
        "reports arrived (position service)",
        f"{result.reports_arrived} of {result.report_accounts:,} accounts",
        "",
        "",
        "",
    )
    table.add_row(
        "grpcurl pages through GetPositions (default limits)",
        f"{result.grpcurl_pages} pages, {result.grpcurl_accounts:,} accounts,"
        f" {result.grpcurl_seconds:.1f} s",
        "",
        "",
        "",
    )
    table.add_row(
        "memory: controller / position service RSS",
        f"{result.controller_rss_mb:.0f} / {result.position_rss_mb:.0f} MiB",
        "",
        "",
        "",
    )
    console.print(table)
    return asdict(result)


def run_audit(console: Console, quick: bool) -> dict[str, object]:
    """audit verify on a 1,000,000-fill journal (100,000 with --quick), beside its baselines."""
    result = audit.run(100_000 if quick else 1_000_000)
    table = Table(
        title=(
            f"audit verify: {result.fills:,}-fill seeded journal, 10 accounts (written in"
            f" {result.write_seconds:.0f} s); baselines on the same journal, same run"
        )
    )
    for column in ("measure", "fills/s", "verify / this", "target"):
        table.add_column(column, justify="right")
    table.add_row(
        f"verify (replay, compare, certify, reconcile): {result.verify_seconds:.0f} s,"
        f" {result.mismatches} mismatches",
        f"{result.verify_per_s:,.0f}",
        "1.00",
        "1,000,000 fills < 120 s",
    )
    table.add_row(
        "engine replay alone",
        f"{result.engine_per_s:,.0f}",
        f"{result.verify_per_s / result.engine_per_s:.2f}",
        "",
    )
    table.add_row(
        "reading the events alone",
        f"{result.read_per_s:,.0f}",
        f"{result.verify_per_s / result.read_per_s:.2f}",
        "",
    )
    console.print(table)
    return asdict(result)


def main() -> None:
    """Run the selected benchmarks, print tables, write benchmarks/results/<name>.json."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "which",
        nargs="?",
        default="all",
        choices=["engine", "cliffs", "system", "large", "audit", "replication", "dashboard", "all"],
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 150))
    RESULTS.mkdir(exist_ok=True)
    # Every figure depends on it: the compiled engine takes about a quarter less time per fill.
    console.print(
        "engine: "
        + ("compiled (mypyc, `make native`)" if is_compiled() else "pure Python (not compiled)")
    )
    if args.which in ("engine", "all"):
        result = run_engine(console, args.quick)
        (RESULTS / "engine.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.which in ("cliffs", "all"):
        result = cliffs.run(console, args.quick)
        (RESULTS / "cliffs.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.which in ("system", "all"):
        result = system.run(console, args.quick)
        (RESULTS / "system.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.which in ("large", "all"):
        result = run_large(console, args.quick)
        (RESULTS / "large.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.which in ("audit", "all"):
        result = run_audit(console, args.quick)
        (RESULTS / "audit.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.which in ("replication", "all"):
        result = replication.run(console, args.quick)
        (RESULTS / "replication.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.which in ("dashboard", "all"):
        result = dashboard.run(console, args.quick)
        (RESULTS / "dashboard.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
