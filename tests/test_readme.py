"""The README's grpcurl lines, run as written against real servers (ports substituted)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, RunningController, RunningPositionService

GRPCURL = Path(sys.executable).parent / "grpcurl"


def readme_grpcurl_lines() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line for line in lines if line.startswith(".venv/bin/grpcurl ")]


def readme_error_block() -> list[str]:
    """The grpcurl error output the README shows, line by line."""
    text = (ROOT / "README.md").read_text()
    block = text.split("The last line fails and prints:\n\n```\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


@pytest.mark.skipif(not GRPCURL.exists(), reason="grpcurl is installed by the dev extra")
def test_readme_grpcurl_commands_work_as_written(
    controller: RunningController, position_service: RunningPositionService
) -> None:
    lines = readme_grpcurl_lines()
    assert len(lines) >= 8
    for line in lines:
        words = shlex.split(line)
        words[0] = str(GRPCURL)
        words = [
            w.replace("localhost:9998", f"127.0.0.1:{controller.port}").replace(
                "localhost:9999", f"127.0.0.1:{position_service.port}"
            )
            for w in words
        ]
        run = subprocess.run(words, capture_output=True, text=True, timeout=30, check=False)
        if "readme-bad-1" in line:
            assert run.returncode == 64 + 3, run.stderr
            printed = [line.strip() for line in run.stderr.splitlines() if line.strip()]
            assert printed == readme_error_block()
        else:
            assert run.returncode == 0, f"{line}\n{run.stderr}"
        if "SubmitFill" in line and "readme-fill-1" in line:
            assert '"account": "alice"' in run.stdout and '"quantity": "60"' in run.stdout
