"""The compliance tool over real journals: verify, explain, positions as of, export, fairness."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from allocation.v1 import allocation_pb2, controller_service_pb2
from controller.audit.explain import explain
from controller.audit.export import rows
from controller.audit.fairness import tally
from controller.audit.history import FillEvent, RestrictionsEvent, SplitEvent, SqliteHistory
from controller.audit.positions import positions_as_of
from controller.audit.simulation import simulate
from controller.audit.verify import verify
from controller.book import Book
from controller.domain import Allocation, Fill, Side, Split
from controller.journal import Counters, JournalBatch, StoredFill, StoredSplit
from controller.journal_sqlite import SqliteJournal
from controller.money import MICRO
from controller.policy import PER_TICKER
from tests.conftest import ROOT, FakePositionServer, RunningController, fill, split_request

LONG_RUN = 100_000


@pytest.fixture(scope="module")
def long_journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100,000 seeded fills: 50 pending before the first split, ten splits, sells, and a stop
    and recovery half way."""
    path = tmp_path_factory.mktemp("long") / "journal.db"
    simulate(path, LONG_RUN, seed=11, split_every=10_000, restart_at=LONG_RUN // 2)
    return path


@pytest.fixture(scope="module")
def small_journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 seeded fills with the same features, for the command-line tests."""
    path = tmp_path_factory.mktemp("small") / "journal.db"
    simulate(path, 3_000, seed=5, split_every=700, restart_at=1_500)
    return path


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m controller audit ARGS``, its output piped (plain text)."""
    return subprocess.run(
        [sys.executable, "-m", "controller", "audit", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_verify_a_long_simulation_finds_no_mismatch(long_journal: Path) -> None:
    history = SqliteHistory(long_journal)
    events = list(history.events())
    fills = [e for e in events if isinstance(e, FillEvent)]
    # The journal has what the check must cover: fills that waited for the first split,
    # sells, and splits changing.
    assert any(e.allocated_sequence != e.sequence for e in fills)
    assert any(e.fill.side is Side.SELL for e in fills)
    result = verify(history)
    assert result.mismatches == []
    assert (result.fills, result.checked) == (LONG_RUN, LONG_RUN)
    assert result.splits == 10
    assert result.checkpoint_rows > 0


def tamper(source: Path, directory: Path) -> tuple[Path, str, str, str]:
    """A copy of ``source`` with one allocation changed by one share between two accounts;
    its path, the fill id, and the original and altered quantities."""
    copy = directory / "tampered.db"
    shutil.copy(source, copy)
    with sqlite3.connect(copy) as db:
        fill_id, quantities = db.execute(
            "SELECT fill_id, quantities FROM fills WHERE quantities LIKE '%,%' AND sell = 0"
            " ORDER BY sequence LIMIT 1 OFFSET 1000"
        ).fetchone()
        shares = [int(q) for q in quantities.split(",")]
        shares[0] += 1
        shares[1] -= 1
        altered = ",".join(map(str, shares))
        db.execute("UPDATE fills SET quantities = ? WHERE fill_id = ?", (altered, fill_id))
    return copy, fill_id, quantities, altered


def test_verify_names_an_altered_allocation(small_journal: Path, tmp_path: Path) -> None:
    copy, fill_id, original, altered = tamper(small_journal, tmp_path)
    run = audit("verify", f"--db={copy}")
    assert run.returncode == 1
    first = next(line for line in run.stdout.splitlines() if fill_id in line)
    assert "the rule re-run gives" in first  # the cell folds onto further lines
    result = verify(SqliteHistory(copy))
    mismatch = result.mismatches[0]
    assert mismatch.subject == fill_id
    assert [int(part.split(":")[1]) for part in mismatch.journaled.split()[2:]] == [
        int(q) for q in altered.split(",")
    ]
    assert [int(part.split(":")[1]) for part in mismatch.expected.split()[2:]] == [
        int(q) for q in original.split(",")
    ]
    assert any("not optimal" in m.problem for m in result.mismatches if m.subject == fill_id)


def test_verify_finds_a_checkpoint_row_that_differs(small_journal: Path, tmp_path: Path) -> None:
    copy = tmp_path / "checkpoint.db"
    shutil.copy(small_journal, copy)
    with sqlite3.connect(copy) as db:
        account, ticker = db.execute(
            "SELECT account, ticker FROM positions ORDER BY account, ticker LIMIT 1"
        ).fetchone()
        db.execute(
            "UPDATE positions SET quantity = quantity + 1 WHERE account = ? AND ticker = ?",
            (account, ticker),
        )
    result = verify(SqliteHistory(copy))
    assert [m.problem for m in result.mismatches] == [
        "checkpoint differs from the sum of allocations"
    ]


def test_verify_on_the_command_line_passes_and_respects_the_period(small_journal: Path) -> None:
    run = audit("verify", f"--db={small_journal}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no mismatch" in run.stdout
    ranged = verify(SqliteHistory(small_journal), since=1_000, until=2_000)
    assert ranged.ok
    assert 0 < ranged.checked < 3_000


def test_a_missing_journal_is_a_clear_error(tmp_path: Path) -> None:
    run = audit("verify", f"--db={tmp_path / 'none.db'}")
    assert run.returncode == 2
    assert "no such journal" in run.stdout


def write_journal(path: Path, split: Split, fills: list[Allocation]) -> None:
    """A journal holding exactly ``split`` and these allocations (sequences 1, 2, ...)."""
    journal = SqliteJournal(path, synchronous="OFF")
    batch = JournalBatch(splits=[StoredSplit(1, split)], recorded_ns=1)
    batch.new_fills = [StoredFill(n, allocation) for n, allocation in enumerate(fills, start=2)]
    journal.write(batch, Counters(next_sequence=len(fills) + 2, fill_count=len(fills)))
    journal.close()


def test_explain_a_hand_worked_example(controller: RunningController, tmp_path: Path) -> None:
    """The README's example: 100 AAPL at 189.25 into 60 / 25.5 / 14.5 %. Targets after the fill
    are 11,355, 4,825.875 and 2,744.125, i.e. 60, 25.5 and 14.5 shares: 99 whole shares, and
    bob and carol tie for the last one (both 0.5 short); the per-fill key decides."""
    stub = controller.stub
    stub.SetAumSplit(split_request({"alice": "60", "bob": "25.5", "carol": "14.5"}, "s-1"))
    answer = stub.SubmitFill(
        controller_service_pb2.SubmitFillRequest(fill=fill("readme-fill-1", 100, "189.25"))
    )
    engine = {a.account: a.quantity for a in answer.allocation.allocations}
    explanation = explain(SqliteHistory(tmp_path / "journal.db"), "readme-fill-1")
    lines = {line.account: line for line in explanation.accounts}
    assert {a: line.shares for a, line in lines.items() if line.shares} == engine
    assert [lines[a].shortfall for a in ("alice", "bob", "carol")] == [
        11_355 * MICRO,
        4_825_875_000,
        2_744_125_000,
    ]
    assert lines["alice"].tie_rank is None
    winner = "bob" if engine["bob"] == 26 else "carol"
    loser = "carol" if winner == "bob" else "bob"
    assert (lines[winner].tie_rank, lines[loser].tie_rank) == (1, 2)
    assert lines[winner].deviation_after == 94_625_000  # half a share of 189.25 over
    assert lines[loser].deviation_after == -94_625_000
    run = audit("explain", "readme-fill-1", f"--db={tmp_path / 'journal.db'}", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["accounts"][0]["shortfall"] == 11_355 * MICRO


def test_positions_as_of_equal_a_report_captured_during_the_run(
    controller: RunningController,
    position_server: FakePositionServer,
    reporter_factory: object,
    tmp_path: Path,
) -> None:
    stub = controller.stub
    stub.SetAumSplit(split_request({"a": "50", "b": "30", "c": "20"}, "s-1"))
    stop = threading.Event()

    def stream() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            side = allocation_pb2.SIDE_SELL if n % 5 == 0 else allocation_pb2.SIDE_BUY
            stub.SubmitFill(
                controller_service_pb2.SubmitFillRequest(
                    fill=fill(f"live-{n}", 7 + n % 13, f"{100 + n % 9}.25", side=side)
                )
            )
            if n == 40:
                stub.SetAumSplit(split_request({"a": "20", "b": "30", "d": "50"}, "s-2"))

    worker = threading.Thread(target=stream)
    worker.start()
    position_server.start()
    try:
        reporter_factory(f"127.0.0.1:{position_server.port}", 0.2)  # type: ignore[operator]
        captured = [position_server.service.next_report() for _ in range(3)][-1]
    finally:
        stop.set()
        worker.join()
    assert captured.journal_sequence > 0
    rebuilt = positions_as_of(SqliteHistory(tmp_path / "journal.db"), captured.journal_sequence)
    for report in (captured, rebuilt):
        report.ClearField("generate_time")
        report.sequence = 0
    assert rebuilt == captured


def test_export_csv_and_parquet_hold_the_journaled_decimals(
    small_journal: Path, tmp_path: Path
) -> None:
    history = SqliteHistory(small_journal)
    journaled = [
        (e.allocated_sequence, e.fill.fill_id, account, quantity, e.fill.price)
        for e in history.events()
        if isinstance(e, FillEvent) and e.allocated_sequence
        for account, quantity in e.journaled.shares
    ]
    assert len(journaled) > 3_000
    target = tmp_path / "allocations.parquet"
    assert audit("export", "allocations", f"--db={small_journal}", "--format=parquet",
                 f"--output={target}").returncode == 0  # fmt: skip
    table = pq.read_table(target)
    assert str(table.schema.field("price").type) == "decimal128(38, 6)"
    read = [
        (r["allocated_sequence"], r["fill_id"], r["account"], r["quantity"], r["price"], r["value"])
        for r in table.to_pylist()
    ]
    assert [(s, f, a, q) for s, f, a, q, _, _ in read] == [
        (s, f, a, q) for s, f, a, q, _ in journaled
    ]
    for (*_, quantity, price, value), (*_, micro_price) in zip(read, journaled, strict=True):
        assert price == Decimal(micro_price) / MICRO
        assert value == quantity * price
    run = audit("export", "allocations", f"--db={small_journal}")
    parsed = list(csv.DictReader(io.StringIO(run.stdout)))
    assert [Decimal(r["price"]) for r in parsed] == [Decimal(p) / MICRO for *_, p in journaled]
    splits = list(rows(history, "splits"))
    first = [row for row in splits if row[0] == splits[0][0]]
    assert sum(row[4] for row in first) == 100 * MICRO


def test_fairness_detects_no_bias_in_the_engines_allocations(long_journal: Path) -> None:
    result = tally(SqliteHistory(long_journal))
    assert result.enough_data
    assert not result.biased, result.verdict()
    assert "no bias detected" in result.verdict()


def biased_allocations(split: Split, count: int) -> list[Allocation]:
    """Per-fill proportional shares whose remainders always go to the first account: the
    bias of the public implementations this project learnt from."""
    names = sorted(split.percents)
    allocations = []
    for n in range(count):
        quantity = 50 + n % 37
        fill_ = Fill(f"biased-{n}", "AAPL", (20 + n % 11) * MICRO, quantity, Side.BUY)
        base = {a: quantity * split.percents[a] // split.total for a in names}
        base[names[0]] += quantity - sum(base.values())
        accounts = tuple(a for a in names if base[a])
        allocations.append(
            Allocation(fill_, split.split_id, accounts, tuple(base[a] for a in accounts))
        )
    return allocations


def test_fairness_detects_remainders_always_given_to_one_account(tmp_path: Path) -> None:
    split = Split("s-1", {f"acct-{i}": p * MICRO for i, p in enumerate((17, 23, 29, 31))})
    path = tmp_path / "biased.db"
    write_journal(path, split, biased_allocations(split, 3_000))
    result = tally(SqliteHistory(path))
    assert result.biased
    favoured = max(result.accounts.values(), key=lambda a: a.remainders - a.expected_remainders)
    assert favoured.account == "acct-0"
    run = audit("fairness", f"--db={path}")
    assert run.returncode == 1
    assert "BIAS DETECTED" in run.stdout


def test_the_console_script_runs_the_audit_tool(small_journal: Path) -> None:
    script = Path(sys.executable).parent / "allocation-audit"
    run = subprocess.run(
        [str(script), "verify", f"--db={small_journal}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "no mismatch" in run.stdout


def test_verify_and_explain_follow_the_journals_policy(tmp_path: Path) -> None:
    path = tmp_path / "per-ticker.db"
    simulate(path, 3_000, seed=8, split_every=700, restart_at=1_500, policy=PER_TICKER)
    history = SqliteHistory(path)
    assert history.policy == PER_TICKER
    assert verify(history).mismatches == []
    fill_id = next(e.fill.fill_id for e in history.events() if isinstance(e, FillEvent))
    explanation = explain(history, fill_id)
    assert explanation.policy == PER_TICKER
    assert sum(line.shares for line in explanation.accounts) == explanation.quantity
    # A total-value engine would allocate this journal differently: the rule matters.
    total_value = Book(history.tickers())
    answers = []
    for event in history.events():
        if isinstance(event, SplitEvent):
            total_value.set_split(event.split)
        if not isinstance(event, FillEvent):
            continue
        answer = total_value.submit(event.fill)
        if event.allocated_sequence == event.sequence:  # not one that waited for a split
            answers.append(answer == event.journaled)
    assert answers and not all(answers)


def test_verify_covers_restricted_lists(tmp_path: Path) -> None:
    path = tmp_path / "restricted.db"
    simulate(path, 3_000, seed=9, split_every=600, restart_at=1_500, restrict=True)
    history = SqliteHistory(path)
    events = list(history.events())
    lists = [e for e in events if isinstance(e, RestrictionsEvent)]
    assert len(lists) >= 5
    assert verify(history).mismatches == []
    # A buy journaled to a restricted account is caught by the certificate.
    first, second = lists[0], lists[1]
    account, tickers = next(iter(first.restrictions.accounts.items()))
    victim = next(
        e
        for e in events
        if isinstance(e, FillEvent)
        and first.sequence < e.sequence < second.sequence
        and e.allocated_sequence == e.sequence
        and e.fill.side is Side.BUY
        and e.fill.ticker in tickers
    )
    receivers = list(victim.journaled.accounts)
    receivers[0] = account
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE fills SET accounts = ? WHERE fill_id = ?",
            (",".join(receivers), victim.fill.fill_id),
        )
    problems = [
        m.problem
        for m in verify(SqliteHistory(path)).mismatches
        if m.subject == victim.fill.fill_id
    ]
    assert any("restricted" in problem for problem in problems), problems


def test_verify_covers_round_lots_recorded_with_each_fill(tmp_path: Path) -> None:
    """Lots for the first half, none after the restart: each fill is re-derived in the lot the
    journal says was in force."""
    path = tmp_path / "lots.db"
    simulate(
        path, 3_000, seed=4, split_every=700, restart_at=1_500, restrict=True,
        lot_sizes={"AAPL": 100, "MSFT": 10},
    )  # fmt: skip
    history = SqliteHistory(path)
    fills = [e for e in history.events() if isinstance(e, FillEvent)]
    lots = {e.journaled.lot_size for e in fills}
    assert lots == {1, 10, 100}
    for event in fills:
        if event.journaled.lot_size > 1 and event.journaled.accounts:
            odd = [q for q in event.journaled.quantities if q % event.journaled.lot_size]
            assert len(odd) == (1 if event.fill.quantity % event.journaled.lot_size else 0)
    assert verify(history).mismatches == []
