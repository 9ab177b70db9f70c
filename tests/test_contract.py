"""The v1 contract only grows: `buf breaking` against the released image guards it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

BUF = Path(sys.executable).parent / "buf"
PROTOS = ROOT / "protos"

pytestmark = pytest.mark.skipif(not BUF.exists(), reason="buf is installed by the dev extra")


def breaking(protos: Path) -> subprocess.CompletedProcess[str]:
    """`buf breaking` of the protos in ``protos`` against the released image."""
    return subprocess.run(
        [str(BUF), "breaking", "--against", str(PROTOS / "released" / "allocation-v1.json")],
        cwd=protos,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def edited_copy(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of the protos with one edit in allocation.proto."""
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy)
    proto = copy / "allocation" / "v1" / "allocation.proto"
    text = proto.read_text()
    assert old in text
    proto.write_text(text.replace(old, new, 1))
    return copy


def test_the_current_contract_is_compatible_with_the_released_one() -> None:
    run = breaking(PROTOS)
    assert run.returncode == 0, run.stdout + run.stderr


def test_removing_a_field_is_reported_as_breaking(tmp_path: Path) -> None:
    copy = edited_copy(tmp_path, "  string journal_id = 10;\n", "")
    run = breaking(copy)
    assert run.returncode != 0
    assert "journal_id" in run.stdout


def test_adding_a_field_is_allowed(tmp_path: Path) -> None:
    copy = edited_copy(
        tmp_path,
        "  string journal_id = 10;\n",
        "  string journal_id = 10;\n  // A later addition.\n  string note = 99;\n",
    )
    run = breaking(copy)
    assert run.returncode == 0, run.stdout + run.stderr
