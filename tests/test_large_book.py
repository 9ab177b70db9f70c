"""A 20,000-account book end to end: reports arrive, grpcurl pages through the positions.

The same run at 100,000 accounts is part of ``make bench`` (``benchmarks/large.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import Program, start_program

GRPCURL = Path(sys.executable).parent / "grpcurl"
ACCOUNTS = 20_000
FILLS = 300


def grpcurl_pages(port: int, method: str, page_size: int) -> list[dict[str, object]]:
    """Every page of ``method`` fetched by grpcurl with its default message size limits."""
    pages: list[dict[str, object]] = []
    token = ""
    while True:
        request = json.dumps({"page_size": page_size, "page_token": token})
        run = subprocess.run(
            [str(GRPCURL), "-plaintext", "-d", request, f"127.0.0.1:{port}", method],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        page = json.loads(run.stdout)
        pages.append(page)
        token = str(page.get("next_page_token", ""))
        if not token:
            return pages


@pytest.mark.skipif(not GRPCURL.exists(), reason="grpcurl is installed by the dev extra")
def test_a_20000_account_book_reports_and_pages_end_to_end(
    tmp_path: Path, programs: list[Program]
) -> None:
    def start(*args: str) -> Program:
        program = start_program(*args)
        programs.append(program)
        return program

    position = start("position", "--port=0", f"--history={tmp_path / 'history.db'}")
    position_port = position.wait_listening()
    controller = start(
        "controller",
        "--port=0",
        f"--db={tmp_path / 'journal.db'}",
        "--report-interval=1",
        f"--position-address=127.0.0.1:{position_port}",
    )
    port = controller.wait_listening()
    address = f"--controller=127.0.0.1:{port}"
    aum = start("simulators", "aum", address, f"--accounts={ACCOUNTS}", "--interval=3600")
    fills = start(
        "simulators", "fills", address, "--rate=0", "--batch=20", f"--count={FILLS}", "--seed=4"
    )
    finished = fills.wait_for("finished", timeout=120)
    assert finished["rejected"] == 0
    assert fills.process.wait(30) == 0
    accepted = position.wait_for_entry(
        "report accepted",
        lambda e: e["accounts"] == ACCOUNTS and e["fill_count"] == FILLS,
        timeout=120,
    )
    assert accepted["journal_id"]

    pages = grpcurl_pages(port, "allocation.v1.ControllerService/GetPositions", 5_000)
    assert len(pages) >= 4
    reports = [page["report"] for page in pages]
    assert all(isinstance(r, dict) for r in reports)
    accounts = [a for r in reports for a in r["accounts"]]  # type: ignore[index]
    names = [a["account"] for a in accounts]
    assert len(names) == ACCOUNTS and names == sorted(set(names))
    assert all(int(str(page["total_size"])) == ACCOUNTS for page in pages)
    total = Decimal(str(reports[0]["total_value"]))  # type: ignore[index]
    assert sum(Decimal(a.get("value", "0")) for a in accounts) == total
    assert int(str(reports[0]["fill_count"])) == FILLS  # type: ignore[index]

    latest = grpcurl_pages(position_port, "allocation.v1.PositionService/GetLatestReport", 0)
    shown = [a["account"] for page in latest for a in page["report"]["accounts"]]  # type: ignore[index]
    assert len(latest) >= ACCOUNTS // 500 and shown == sorted(set(shown))
    assert len(shown) == ACCOUNTS
    for program in (aum, controller, position):
        assert program.stop() == 0, "".join(program.lines[-10:])
