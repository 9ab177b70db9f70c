"""``audit export``: the journal's fills, allocations, splits or positions as CSV or Parquet.

Amounts are exact: CSV holds them as plain decimal strings, Parquet as DECIMAL(38, 6)
(percentages DECIMAL(9, 6)), never floats; times are UTC (ISO 8601 in CSV, timestamp[ns] in
Parquet). Each table is one schema, written once and used by both formats.
"""

from __future__ import annotations

import csv
import datetime
import enum
from collections.abc import Iterator
from decimal import Decimal
from typing import IO, Any

from controller.audit.history import FillEvent, JournalHistory, SplitEvent
from controller.audit.ledger import Ledger, replay
from controller.money import DECIMAL_PLACES, format_micro


class Kind(enum.Enum):
    """How a column is typed in each format."""

    INTEGER = "integer"
    TEXT = "text"
    MONEY = "money"
    PERCENT = "percent"
    TIME = "time"


TABLES: dict[str, tuple[tuple[str, Kind], ...]] = {
    "fills": (
        ("sequence", Kind.INTEGER),
        ("recorded_time", Kind.TIME),
        ("fill_id", Kind.TEXT),
        ("ticker", Kind.TEXT),
        ("side", Kind.TEXT),
        ("price", Kind.MONEY),
        ("quantity", Kind.INTEGER),
        ("value", Kind.MONEY),
        ("execute_time", Kind.TIME),
        ("split_id", Kind.TEXT),
        ("allocated_sequence", Kind.INTEGER),
    ),
    "allocations": (
        ("allocated_sequence", Kind.INTEGER),
        ("fill_id", Kind.TEXT),
        ("ticker", Kind.TEXT),
        ("side", Kind.TEXT),
        ("price", Kind.MONEY),
        ("account", Kind.TEXT),
        ("quantity", Kind.INTEGER),
        ("value", Kind.MONEY),
    ),
    "splits": (
        ("sequence", Kind.INTEGER),
        ("recorded_time", Kind.TIME),
        ("split_id", Kind.TEXT),
        ("account", Kind.TEXT),
        ("percent", Kind.PERCENT),
    ),
    "positions": (
        ("as_of_sequence", Kind.INTEGER),
        ("account", Kind.TEXT),
        ("ticker", Kind.TEXT),
        ("quantity", Kind.INTEGER),
        ("value", Kind.MONEY),
    ),
}

Row = tuple[Any, ...]
"""Values in a table's column order: ints, strings, micro-units (MONEY, PERCENT), ns (TIME)."""


def rows(
    history: JournalHistory, table: str, since: int = 0, until: int | None = None
) -> Iterator[Row]:
    """The rows of ``table`` for events in ``[since, until]`` (positions: as of ``until``)."""
    if table == "positions":
        ledger = Ledger()
        for _ in replay(history, ledger, until):
            pass
        for row in ledger.positions():
            yield (ledger.sequence, row.account, row.ticker, row.quantity, row.value)
        return
    for event in history.events(until):
        if event.sequence < since and not (
            table == "allocations"
            and isinstance(event, FillEvent)
            and (event.allocated_sequence or 0) >= since
        ):
            continue
        if isinstance(event, SplitEvent):
            if table == "splits":
                for account, percent in sorted(event.split.percents.items()):
                    yield (
                        event.sequence,
                        event.recorded_ns,
                        event.split.split_id,
                        account,
                        percent,
                    )
            continue
        if not isinstance(event, FillEvent):
            continue
        fill = event.fill
        if table == "fills":
            yield (
                event.sequence,
                event.recorded_ns,
                fill.fill_id,
                fill.ticker,
                fill.side.value,
                fill.price,
                fill.quantity,
                fill.value,
                fill.execute_time_ns,
                event.journaled.split_id or None,
                event.allocated_sequence,
            )
        elif table == "allocations" and event.allocated_sequence is not None:
            if until is not None and event.allocated_sequence > until:
                continue
            for account, quantity in event.journaled.shares:
                yield (
                    event.allocated_sequence,
                    fill.fill_id,
                    fill.ticker,
                    fill.side.value,
                    fill.price,
                    account,
                    quantity,
                    quantity * fill.price,
                )


def _text(kind: Kind, value: Any) -> str:
    if value is None:
        return ""
    if kind in (Kind.MONEY, Kind.PERCENT):
        return format_micro(value)
    if kind is Kind.TIME:
        return _time(value).isoformat().replace("+00:00", "Z")
    return str(value)


def _time(ns: int) -> datetime.datetime:
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return stamp.replace(microsecond=rest // 1_000)


def write_csv(table: str, data: Iterator[Row], out: IO[str]) -> int:
    """Write a header and the rows as CSV; returns the number of rows."""
    columns = TABLES[table]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(name for name, _ in columns)
    count = 0
    for row in data:
        writer.writerow(_text(kind, value) for (_, kind), value in zip(columns, row, strict=True))
        count += 1
    return count


def write_parquet(table: str, data: Iterator[Row], out: IO[bytes]) -> int:
    """Write the rows as one Parquet table with exact decimal columns; returns the count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = TABLES[table]
    types = {
        Kind.INTEGER: pa.int64(),
        Kind.TEXT: pa.string(),
        Kind.MONEY: pa.decimal128(38, DECIMAL_PLACES),
        Kind.PERCENT: pa.decimal128(9, DECIMAL_PLACES),
        Kind.TIME: pa.timestamp("ns", tz="UTC"),
    }
    schema = pa.schema([(name, types[kind]) for name, kind in columns])
    values: list[list[Any]] = [[] for _ in columns]
    for row in data:
        for column, (_, kind), value in zip(values, columns, row, strict=True):
            exact = value is not None and kind in (Kind.MONEY, Kind.PERCENT)
            column.append(Decimal(value).scaleb(-DECIMAL_PLACES) if exact else value)
    arrays = [pa.array(column, type=schema.field(i).type) for i, column in enumerate(values)]
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), out)
    return len(values[0])
