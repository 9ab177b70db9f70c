"""The compiled engine (controller.native): built from the current sources, refused when they
changed, and allocating exactly as the interpreted source does."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller import compiled
from controller.compiled import is_compiled, sources_digest, stale_modules

ROOT = Path(__file__).resolve().parent.parent
# A stream of buys and sells over a split with uneven weights, printed as its allocations.
ALLOCATE = """
from controller.book import Book
from controller.compiled import is_compiled
from controller.domain import Fill, Side, Split
from controller.validation import DEFAULT_TICKERS

book = Book(DEFAULT_TICKERS)
book.set_split(Split("s", {f"acct-{i}": 1_000_000 * (i + 1) for i in range(12)}))
for n in range(3_000):
    sell = n % 9 == 8
    fill = Fill(
        f"f-{n}", DEFAULT_TICKERS[n % 3], 1_000_000 + 7_919 * (n % 97),
        1 + n % 5 if sell else 1 + (n * 37) % 400, Side.SELL if sell else Side.BUY,
    )
    allocation = book.submit(fill)
    print(allocation.accounts, allocation.quantities)
print("compiled" if is_compiled() else "interpreted")
"""


def _manifest() -> dict[str, object]:
    data: dict[str, object] = json.loads(compiled.MANIFEST.read_text())
    return data


def test_the_engine_runs_compiled_exactly_when_the_build_says_so() -> None:
    built = compiled.MANIFEST.exists() and _manifest().get("compiled") is True
    if os.environ.get("REQUIRE_NATIVE"):
        assert built, f"the engine was not compiled: {_manifest().get('reason')}"
    assert is_compiled() == built
    if built:
        assert _manifest()["sources_sha256"] == sources_digest()


def _fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    package = tmp_path / "controller"
    package.mkdir()
    for name in compiled.MODULES:
        shutil.copy(compiled.PACKAGE / f"{name}.py", package)
    monkeypatch.setattr(compiled, "PACKAGE", package)
    monkeypatch.setattr(compiled, "MANIFEST", package / "native.json")
    return package


def test_a_build_is_stale_once_a_compiled_source_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = _fake_package(tmp_path, monkeypatch)
    assert stale_modules() == [], "no compiled files: the source runs, nothing is stale"
    (package / f"book{importlib.machinery.EXTENSION_SUFFIXES[0]}").touch()
    assert len(compiled.compiled_files()) == 1, "overlapping suffixes list a file once"
    assert stale_modules() == [f"controller.{name}" for name in compiled.MODULES], "no manifest"
    compiled.MANIFEST.write_text(json.dumps({"sources_sha256": sources_digest()}))
    assert stale_modules() == []
    with (package / "waterfill.py").open("a") as source:
        source.write("# edited after the build\n")
    assert "controller.waterfill" in stale_modules()


def _copy_without_build(tmp_path: Path) -> Path:
    """The project's packages with the compiled engine left out: the interpreted source."""
    copy = tmp_path / "source"
    copy.mkdir()
    shutil.copytree(ROOT / "generated", copy / "generated")
    shutil.copytree(
        ROOT / "controller",
        copy / "controller",
        ignore=shutil.ignore_patterns("*.so", "native.json", "__pycache__"),
    )
    return copy


def _run(cwd: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": f"{cwd}{os.pathsep}{cwd / 'generated'}"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.skipif(not is_compiled(), reason="the engine is not compiled (make native)")
def test_the_compiled_engine_allocates_exactly_as_the_source(tmp_path: Path) -> None:
    fast = _run(ROOT, ALLOCATE)
    slow = _run(_copy_without_build(tmp_path), ALLOCATE)
    assert fast.returncode == slow.returncode == 0, fast.stderr + slow.stderr
    *fast_lines, fast_kind = fast.stdout.splitlines()
    *slow_lines, slow_kind = slow.stdout.splitlines()
    assert (fast_kind, slow_kind) == ("compiled", "interpreted")
    assert len(fast_lines) == 3_000
    assert fast_lines == slow_lines


@pytest.mark.skipif(not is_compiled(), reason="the engine is not compiled (make native)")
def test_importing_controller_refuses_a_build_whose_sources_changed(tmp_path: Path) -> None:
    copy = _copy_without_build(tmp_path)
    for path in [*compiled.compiled_files(), compiled.MANIFEST]:
        shutil.copy(path, copy / "controller")
    assert _run(copy, "import controller.book").returncode == 0
    with (copy / "controller" / "book.py").open("a") as source:
        source.write("# edited after the build\n")
    refused = _run(copy, "import controller.book")
    assert refused.returncode != 0
    assert "ImportError: controller.domain, controller.waterfill, controller.book" in refused.stderr
    assert "make native" in refused.stderr
