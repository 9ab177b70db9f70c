"""``python -m controller audit COMMAND``: the compliance tool over a controller's journal.

Read-only and safe beside a running controller. Tables are rich on a terminal and plain text
when piped. Exit status: 0 done (verify: no mismatch; fairness: no bias detected), 1 verify
found mismatches or fairness detected bias, 2 the journal or the options cannot be used.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from controller.audit.explain import Explanation, explain
from controller.audit.export import TABLES, rows, write_csv, write_parquet
from controller.audit.fairness import DEFAULT_ALPHA, Fairness, tally
from controller.audit.history import HistoryError, JournalHistory, open_history
from controller.audit.positions import positions_as_of
from controller.audit.verify import Verification, verify
from controller.journal import journal_path
from controller.money import format_micro
from controller.policy import TOTAL_VALUE
from position.render import RenderOptions, render_report

EXIT_OK = 0
EXIT_FOUND = 1
EXIT_UNUSABLE = 2
PLAIN_WIDTH = 120
SHOWN_MISMATCHES = 20


def _point(text: str) -> str | int:
    """argparse type of --since/--until/--as-of: a journal sequence or an ISO 8601 time."""
    if text.isdigit():
        return int(text)
    try:
        stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a journal sequence (digits) nor an ISO 8601 time"
            " (2026-11-25T10:00:00Z)"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.isoformat()


def _sequence(history: JournalHistory, point: str | int | None, *, start: bool) -> int | None:
    """A --since/--until point as a sequence: times map to the last event journaled at or
    before them (for --since, the event after that)."""
    if point is None or isinstance(point, int):
        return point
    stamp = datetime.datetime.fromisoformat(point)
    nanoseconds = int(stamp.timestamp()) * 1_000_000_000 + stamp.microsecond * 1_000
    found = history.sequence_at(nanoseconds)
    return found + 1 if start else found


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The audit tool's options."""
    parser = argparse.ArgumentParser(
        prog="python -m controller audit",
        description=(
            "Compliance tooling over a controller's journal, read-only and safe beside a running"
            " controller. Exit status: 0 done (no mismatch, no bias), 1 mismatches or bias"
            " found, 2 the journal or options cannot be used."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=summary, description=description, formatter_class=defaults
        )
        sub.add_argument(
            "--db",
            type=journal_path,
            default=Path("var/controller.db"),
            help="journal: a file path or sqlite:///absolute/path (opened read-only)",
        )
        return sub

    def period(sub: argparse.ArgumentParser) -> None:
        for name, meaning in (("--since", "first"), ("--until", "last")):
            sub.add_argument(
                name,
                type=_point,
                default=None,
                help=f"{meaning} event: a journal sequence, or an ISO 8601 time (UTC unless"
                " given) of when events were journaled",
            )

    check = command(
        "verify",
        "re-derive and certify every allocation",
        "Replay the journal from nothing into a fresh engine: every allocation must equal the"
        " rule's answer, pass an optimality certificate independent of the engine (no single"
        " share moved between accounts lowers the objective), sum to its fill, leave no account"
        " short; checkpointed positions and counters must match the allocations.",
    )
    period(check)
    check.add_argument(
        "--show", type=int, default=SHOWN_MISMATCHES, help="mismatches listed (all are counted)"
    )
    why = command(
        "explain",
        "why one fill was allocated as it was",
        "Every account's weight, target, value and shortfall before the fill, its shares and"
        " its value and deviation after, and the tie-break order where equal slots competed.",
    )
    why.add_argument("fill_id", help="the fill's id")
    why.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    asof = command(
        "positions",
        "positions as they stood after one event",
        "Every account's positions and values after the event at --as-of, as the position"
        " service prints a report; equal to the report the controller sent with that"
        " journal_sequence.",
    )
    asof.add_argument("--as-of", type=_point, required=True, help="a journal sequence or a time")
    asof.add_argument("--max-rows", type=int, default=50, help="accounts shown")
    out = command(
        "export",
        "fills, allocations, splits or positions as CSV or Parquet",
        "Exact decimal columns (CSV: plain decimal strings; Parquet: DECIMAL(38,6), percent"
        " DECIMAL(9,6)); positions as of --until.",
    )
    out.add_argument("table", choices=sorted(TABLES), help="what to export")
    out.add_argument("--format", choices=["csv", "parquet"], default="csv", help="file format")
    out.add_argument("--output", default="-", help="file to write, - for standard output")
    period(out)
    fair = command(
        "fairness",
        "remainder shares and deviations per account, with a bias test",
        "Per account: shares and value bought, shares sold, rounding remainders received"
        " against the number its fractional shares predict, mean and worst deviation from"
        " target; a chi-square test says whether remainders favour some accounts.",
    )
    period(fair)
    fair.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help="significance level of the test"
    )
    return parser.parse_args(argv)


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(width=PLAIN_WIDTH, no_color=True, highlight=False)
    return console


def _plain(console: Console) -> bool:
    """Output that is not a terminal gets ASCII tables."""
    return not console.is_terminal


def _table(title: str, plain: bool, **options: Any) -> Table:
    return Table(title=title, box=box.ASCII if plain else box.HEAVY_HEAD, **options)


@contextmanager
def _progress(console: Console, total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal; nothing when piped."""
    if not console.is_terminal:
        yield lambda _done: None
        return
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda done: bar.update(task, completed=done)


def run_verify(args: argparse.Namespace, history: JournalHistory, console: Console) -> int:
    """Print the verification summary and mismatches."""
    since = _sequence(history, args.since, start=True) or 0
    until = _sequence(history, args.until, start=False)
    with _progress(console, history.event_count(until), "verifying") as progress:
        result = verify(history, since, until, progress)
    console.print(_summary(result, _plain(console)))
    if result.mismatches:
        console.print(_mismatch_table(result, args.show, _plain(console)))
        return EXIT_FOUND
    console.print("verified: every allocation is the rule's answer and optimal; no mismatch")
    return EXIT_OK


def _summary(result: Verification, plain: bool) -> Table:
    table = _table("journal verification", plain)
    for column in (
        "events",
        "fills",
        "splits",
        "allocations checked",
        "checkpoint rows",
        "mismatches",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        *(
            f"{n:,}"
            for n in (
                result.events,
                result.fills,
                result.splits,
                result.checked,
                result.checkpoint_rows,
                len(result.mismatches),
            )
        )
    )
    return table


def _mismatch_table(result: Verification, shown: int, plain: bool) -> Table:
    total = len(result.mismatches)
    table = _table(f"mismatches (first {min(shown, total)} of {total:,})", plain)
    for column in ("sequence", "subject", "problem", "journaled", "expected"):
        table.add_column(column, overflow="fold")
    for mismatch in result.mismatches[:shown]:
        table.add_row(
            str(mismatch.sequence),
            mismatch.subject,
            mismatch.problem,
            mismatch.journaled,
            mismatch.expected,
        )
    return table


def run_explain(args: argparse.Namespace, history: JournalHistory, console: Console) -> int:
    """Print one fill's explanation (tables, or JSON with --json)."""
    explanation = explain(history, args.fill_id)
    if args.json:
        print(json.dumps(explanation.as_dict(), indent=2))
        return EXIT_OK
    console.print(_fill_table(explanation, _plain(console)))
    if explanation.accounts:
        console.print(_accounts_table(explanation, _plain(console)))
    return EXIT_OK


def _fill_table(explanation: Explanation, plain: bool) -> Table:
    table = _table(f"fill {explanation.fill_id}", plain, show_header=False)
    table.add_column("field")
    table.add_column("value")
    allocated = explanation.allocated_sequence
    for field, value in (
        ("ticker / side", f"{explanation.ticker} {explanation.side}"),
        ("quantity @ price", f"{explanation.quantity:,} @ {format_micro(explanation.price)}"),
        ("journal sequence", str(explanation.sequence)),
        (
            "allocated at",
            "pending (no split yet)" if allocated is None else f"sequence {allocated}",
        ),
        ("split in force", explanation.split_id or "none"),
        ("policy", explanation.policy),
        ("round lot", f"{explanation.lot_size}" if explanation.lot_size > 1 else "none"),
        (f"restricted from {explanation.ticker}", ", ".join(explanation.restricted) or "none"),
        ("book total before", format_micro(explanation.total_before)),
    ):
        table.add_row(field, value)
    return table


def _accounts_table(explanation: Explanation, plain: bool) -> Table:
    table = _table("accounts (amounts exact; targets rounded to 6 decimals)", plain)
    # Under per-ticker the measure is the holding of the fill's ticker, in shares.
    measure = "value" if explanation.policy == TOTAL_VALUE else f"{explanation.ticker} held"
    headers = (
        "account", "weight %", "target before", f"{measure} before", "shortfall" if
        explanation.side == "buy" else "excess", "shares", f"{measure} after",
        "deviation after", "tie order",
    )  # fmt: skip
    for header in headers:
        # Exact amounts are long: fold them onto a second line rather than cut them.
        table.add_column(
            header, justify="left" if header == "account" else "right", overflow="fold"
        )
    for line in explanation.accounts:
        table.add_row(
            line.account,
            format_micro(line.percent),
            format_micro(line.target_before),
            format_micro(line.value_before),
            format_micro(line.shortfall),
            f"{line.shares:,}",
            format_micro(line.value_after),
            format_micro(line.deviation_after),
            "" if line.tie_rank is None else str(line.tie_rank),
        )
    return table


def run_positions(args: argparse.Namespace, history: JournalHistory, console: Console) -> int:
    """Print the positions as of --as-of, as the position service prints a report."""
    sequence = _sequence(history, args.as_of, start=False)
    assert sequence is not None
    report = positions_as_of(history, sequence)
    console.print(f"positions as of journal sequence {sequence}")
    options = RenderOptions(args.max_rows, plain=_plain(console))
    console.print(render_report(report, options))
    return EXIT_OK


def run_export(args: argparse.Namespace, history: JournalHistory, console: Console) -> int:
    """Write one table to --output."""
    since = _sequence(history, args.since, start=True) or 0
    until = _sequence(history, args.until, start=False)
    data = rows(history, args.table, since, until)
    to_stdout = args.output == "-"
    if args.format == "csv":
        if to_stdout:
            count = write_csv(args.table, data, sys.stdout)
        else:
            with open(args.output, "w", newline="") as out:
                count = write_csv(args.table, data, out)
    elif to_stdout:
        count = write_parquet(args.table, data, sys.stdout.buffer)
    else:
        with open(args.output, "wb") as binary:
            count = write_parquet(args.table, data, binary)
    if not to_stdout:
        console.print(f"{count:,} {args.table} rows written to {args.output}")
    return EXIT_OK


def run_fairness(args: argparse.Namespace, history: JournalHistory, console: Console) -> int:
    """Print per-account fairness figures and the verdict."""
    since = _sequence(history, args.since, start=True) or 0
    until = _sequence(history, args.until, start=False)
    result = tally(history, since, until, args.alpha)
    console.print(_fairness_table(result, _plain(console)))
    console.print(result.verdict())
    return EXIT_FOUND if result.biased else EXIT_OK


def _fairness_table(result: Fairness, plain: bool) -> Table:
    table = _table(f"fairness over {result.fills:,} fills ({result.buys:,} buys)", plain)
    for header in (
        "account", "bought", "value bought", "sold", "remainders", "expected",
        "mean deviation bp", "worst deviation bp",
    ):  # fmt: skip
        table.add_column(header, justify="left" if header == "account" else "right")
    for name in sorted(result.accounts):
        figures = result.accounts[name]
        table.add_row(
            name,
            f"{figures.bought:,}",
            format_micro(figures.bought_value),
            f"{figures.sold:,}",
            f"{figures.remainders:,}",
            f"{figures.expected_remainders:,.1f}",
            f"{figures.mean_deviation_bp:+.3f}",
            f"{figures.worst_deviation_bp:+.3f}",
        )
    return table


COMMANDS: dict[str, Callable[[argparse.Namespace, JournalHistory, Console], int]] = {
    "verify": run_verify,
    "explain": run_explain,
    "positions": run_positions,
    "export": run_export,
    "fairness": run_fairness,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m controller audit`` and ``allocation-audit``."""
    args = parse_args(argv)
    console = _console()
    try:
        history = open_history(args.db)
    except HistoryError as error:
        console.print(f"cannot read the journal: {error}")
        return EXIT_UNUSABLE
    try:
        return COMMANDS[args.command](args, history, console)
    except HistoryError as error:
        console.print(f"error: {error}")
        return EXIT_UNUSABLE
    except BrokenPipeError:
        # The reader stopped reading (`| head`): not an error; keep Python from reporting the
        # unflushed rest at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        history.close()
