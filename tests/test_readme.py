"""The README's grpcurl lines, run as written against real servers (ports substituted)."""

from __future__ import annotations

import contextlib
import io
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from controller.book import Book
from controller.domain import Split
from controller.journal_sqlite import SqliteJournal
from controller.money import MICRO
from controller.sequencer import Sequencer
from controller.validation import DEFAULT_TICKERS, parse_fill, parse_split
from position.history import ReportHistory
from tests.conftest import ROOT, Pki, fill, serve_controller, serve_position, split_request

GRPCURL = Path(sys.executable).parent / "grpcurl"


def readme_grpcurl_lines() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line for line in lines if line.startswith(".venv/bin/grpcurl ")]


# Lines that must fail: their marker -> (gRPC status code, the README's words before the
# output it shows).
EXPECTED_ERRORS = {
    "readme-bad-1": (3, "The last line fails and prints:"),
    "readme-denied-1": (7, "is refused; grpcurl exits 71 (64 + 7) and prints:"),
}


def readme_error_block(introduction: str) -> list[str]:
    """The grpcurl error output the README shows after ``introduction``, line by line."""
    text = (ROOT / "README.md").read_text()
    block = text.split(f"{introduction}\n\n```\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


@pytest.mark.skipif(not GRPCURL.exists(), reason="grpcurl is installed by the dev extra")
def test_readme_grpcurl_commands_work_as_written(pki: Pki, tmp_path: Path) -> None:
    """Against a controller and a position service with mutual TLS and the development
    policy, as `make run` serves them (certificates from the test's CA in place of var/certs)."""
    lines = readme_grpcurl_lines()
    assert len(lines) >= 8
    with (
        serve_controller(tmp_path, pki.tls("controller"), pki.policy) as (_, port, _sequencer),
        serve_position(
            tmp_path, pki.tls("position"), pki.policy, ReportHistory(tmp_path / "history.db")
        ) as (position_port, _, _),
    ):
        for line in lines:
            run_line(line, port, position_port, pki)


def run_line(line: str, port: int, position_port: int, pki: Pki) -> None:
    """Run one README grpcurl line with the ports and certificate directory substituted."""
    words = shlex.split(line)
    words[0] = str(GRPCURL)
    words = [
        w.replace("localhost:9998", f"127.0.0.1:{port}")
        .replace("localhost:9999", f"127.0.0.1:{position_port}")
        .replace("var/certs/", f"{pki.directory}/")
        for w in words
    ]
    run = subprocess.run(words, capture_output=True, text=True, timeout=30, check=False)
    failing = next((marker for marker in EXPECTED_ERRORS if marker in line), None)
    if failing is not None:
        code, introduction = EXPECTED_ERRORS[failing]
        assert run.returncode == 64 + code, run.stderr
        printed = [text.strip() for text in run.stderr.splitlines() if text.strip()]
        assert printed == readme_error_block(introduction)
    else:
        assert run.returncode == 0, f"{line}\n{run.stderr}"
    if "SubmitFill" in line and "readme-fill-1" in line:
        assert '"account": "alice"' in run.stdout and '"quantity": "60"' in run.stdout


def test_readme_python_client_runs_as_written(pki: Pki, tmp_path: Path) -> None:
    """The README's client snippet, against a mutual-TLS controller with the policy."""
    text = (ROOT / "README.md").read_text()
    snippet = next(
        block.split("```", 1)[0]
        for block in text.split("```python\n")[1:]
        if "ssl_channel_credentials" in block
    )
    with serve_controller(tmp_path, pki.tls("controller"), pki.policy) as (_, port, sequencer):
        sequencer.set_split(Split("readme", {"alice": 60 * MICRO, "bob": 40 * MICRO}))
        code = snippet.replace('Path("var/certs")', f"Path({str(pki.directory)!r})").replace(
            "localhost:9998", f"127.0.0.1:{port}"
        )
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), {})
        lines = printed.getvalue().splitlines()
        assert len(lines) == 100
        assert lines[0].startswith("venue-1/order-7-0 {'alice': 150, 'bob': 100}")
        assert sequencer.lookup("venue-1/order-7-99") is not None


def test_readme_explain_example_is_what_the_audit_tool_prints(tmp_path: Path) -> None:
    """The README's split and fill journaled by a real sequencer, then explained."""
    journal = SqliteJournal(tmp_path / "journal.db", synchronous="OFF")
    sequencer = Sequencer(Book(DEFAULT_TICKERS), journal)
    sequencer.start()
    percents = {"alice": "60", "bob": "25.5", "carol": "14.5"}
    sequencer.set_split(parse_split(split_request(percents, "readme-1").split))
    walkthrough = fill("venue-1/readme-fill-1", 100, "189.25")
    sequencer.submit_fills([parse_fill(walkthrough, DEFAULT_TICKERS)])
    sequencer.stop()
    journal.close()
    run = subprocess.run(
        [sys.executable, "-m", "controller", "audit", "explain", walkthrough.fill_id,
         f"--db={tmp_path / 'journal.db'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    printed = [line.strip() for line in run.stdout.splitlines() if line.strip()]
    text = (ROOT / "README.md").read_text()
    shown = text.split("share and the per-fill key gives it to carol):\n\n```\n", 1)[1]
    assert printed == [line.strip() for line in shown.split("```", 1)[0].splitlines()]
