"""Restricted lists end to end through the real controller service."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rich.console import Console

from allocation.v1 import allocation_pb2, controller_service_pb2
from controller.audit.history import SqliteHistory
from controller.audit.verify import verify
from controller.book import Book
from controller.journal_sqlite import SqliteJournal
from controller.sequencer import Sequencer
from controller.validation import DEFAULT_TICKERS
from position.render import RenderOptions, render_report
from tests.conftest import RunningController, current_positions, fill, split_request


def restrictions(
    accounts: dict[str, list[str]], restrictions_id: str = ""
) -> controller_service_pb2.SetRestrictionsRequest:
    return controller_service_pb2.SetRestrictionsRequest(
        restrictions=allocation_pb2.Restrictions(
            restrictions_id=restrictions_id,
            accounts={a: allocation_pb2.RestrictedTickers(tickers=t) for a, t in accounts.items()},
        )
    )


def submit(
    controller: RunningController, fill_id: str, ticker: str, quantity: int = 100
) -> dict[str, int]:
    answer = controller.stub.SubmitFill(
        controller_service_pb2.SubmitFillRequest(fill=fill(fill_id, quantity, "10", ticker))
    )
    return {a.account: a.quantity for a in answer.allocation.allocations}


def test_a_restricted_account_gets_none_of_the_ticker_and_catches_up_elsewhere(
    controller: RunningController, tmp_path: Path
) -> None:
    stub = controller.stub
    stub.SetAumSplit(split_request({"a": "50", "b": "30", "c": "20"}, "s-1"))
    accepted = stub.SetRestrictions(restrictions({"b": ["AAPL"]}, "esg-1"))
    assert accepted.accepted.restrictions_id == "esg-1"
    aapl = submit(controller, "f-1", "AAPL")
    assert "b" not in aapl
    assert sum(aapl.values()) == 100
    # Under total-value, b is now behind its 30 %: the next MSFT fill goes to b first.
    msft = submit(controller, "f-2", "MSFT")
    assert msft["b"] > 30
    # The report names b's restriction, and the position service marks it.
    report = current_positions(stub)
    restricted = {a.account: list(a.restricted_tickers) for a in report.accounts}
    assert restricted == {"a": [], "b": ["AAPL"], "c": []}
    console = Console(width=120, no_color=True, record=True)
    console.print(render_report(report, RenderOptions(plain=True)))
    assert "b !AAPL" in console.export_text()
    # The same list again is a duplicate; the id with another list is refused.
    again = stub.SetRestrictions(restrictions({"b": ["AAPL"]}, "esg-1"))
    assert again.HasField("duplicate")
    assert again.duplicate.sequence == accepted.accepted.sequence
    with pytest.raises(grpc.RpcError) as conflict:
        stub.SetRestrictions(restrictions({"b": ["MSFT"]}, "esg-1"))
    assert conflict.value.code() is grpc.StatusCode.ALREADY_EXISTS


def test_a_buy_every_weighted_account_is_barred_from_is_refused_and_changes_nothing(
    controller: RunningController,
) -> None:
    stub = controller.stub
    stub.SetAumSplit(split_request({"a": "60", "b": "40"}, "s-1"))
    submit(controller, "f-1", "TSLA")
    stub.SetRestrictions(restrictions({"a": ["TSLA"], "b": ["TSLA", "AAPL"]}, "no-tsla"))
    before = current_positions(stub)
    with pytest.raises(grpc.RpcError) as refused:
        submit(controller, "f-2", "TSLA")
    error = refused.value
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "every account with a weight in split 's-1' is restricted from buying TSLA" in (
        error.details() or ""
    )
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert info.reason == "REJECTION_REASON_RESTRICTED"
    assert info.metadata["field"] == "fill.ticker"
    assert current_positions(stub) == before
    # Sells are unaffected: a restricted holding can be sold.
    sold = controller.stub.SubmitFill(
        controller_service_pb2.SubmitFillRequest(
            fill=fill("f-3", 10, "10", "TSLA", side=allocation_pb2.SIDE_SELL)
        )
    )
    assert sum(a.quantity for a in sold.allocation.allocations) == 10


def test_unknown_tickers_are_refused_naming_the_field(controller: RunningController) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        controller.stub.SetRestrictions(restrictions({"a": ["NOPE"]}))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "restrictions.accounts[a].tickers names 'NOPE'" in (refused.value.details() or "")


def test_a_change_applies_from_the_next_event_and_replay_reproduces_everything(
    controller: RunningController, tmp_path: Path
) -> None:
    stub = controller.stub
    stub.SetAumSplit(split_request({"a": "50", "b": "50"}, "s-1"))
    stub.SetRestrictions(restrictions({"b": ["AAPL"]}, "r-1"))

    def batch(prefix: str) -> controller_service_pb2.StreamFillsRequest:
        return controller_service_pb2.StreamFillsRequest(
            fills=[fill(f"{prefix}-{n}", 40 + n, "10", "AAPL") for n in range(3)]
        )

    first = next(iter(stub.StreamFills(iter([batch("early")]))))
    assert all(
        "b" not in {a.account for a in r.allocation.allocations} for r in first.batch.results
    )
    stub.SetRestrictions(restrictions({}, "r-2"))  # lifted
    later = next(iter(stub.StreamFills(iter([batch("later")]))))
    assert "b" in {a.account for a in later.batch.results[0].allocation.allocations}
    # Replaying the journal from nothing gives every allocation byte for byte, and a restart
    # recovers the same book.
    result = verify(SqliteHistory(tmp_path / "journal.db"))
    assert result.mismatches == []
    assert result.checked == 6
    expected = controller.sequencer.snapshot()[0]
    controller.sequencer.stop()
    reopened = SqliteJournal(tmp_path / "journal.db", synchronous="NORMAL", lock=False)
    recovered = Sequencer(Book(DEFAULT_TICKERS), reopened)
    recovered.start()
    assert recovered.snapshot()[0] == expected
    recovered.stop()
    reopened.close()
