"""``python -m controller.native``: compile the engine's modules with mypyc, in place.

The compiled modules are the same source, built next to it (``controller/*.so``); they allocate
identically and take about a quarter less time per fill at 10 accounts (see the README's
benchmarks). ``make`` builds them before ``run``, ``test`` and ``bench``; without a C compiler
(or when mypyc fails) the build says so and the engine runs as pure Python. What is compiled,
and the check that a build matches its sources, are in ``controller.compiled``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from controller.compiled import MANIFEST, MODULES, PACKAGE, compiled_files, sources_digest

# One shared library for the group, inside the package: controller/native__mypyc.*.so.
GROUP = "controller.native"


def remove_build() -> None:
    """Delete the compiled modules and their manifest: the engine runs from source."""
    for path in compiled_files():
        path.unlink()
    MANIFEST.unlink(missing_ok=True)


def _not_compiled(note: str) -> str:
    """Record why the engine runs from source (so make does not retry until a source changes)."""
    MANIFEST.write_text(json.dumps({"compiled": False, "reason": note}) + "\n")
    return note


def build() -> str:
    """Compile ``MODULES`` in place and record their digest; returns what happened."""
    remove_build()
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        return _not_compiled(f"no C compiler ({compiler}) found: the engine runs as pure Python")
    root = PACKAGE.parent
    paths = [str((PACKAGE / f"{name}.py").relative_to(root)) for name in MODULES]
    with tempfile.TemporaryDirectory(prefix="controller-native-") as build_dir:
        # A child process: setuptools keeps global state and exits on failure.
        setup = (
            "from setuptools import setup\n"
            "from mypyc.build import mypycify\n"
            f"setup(name='controller-native', ext_modules=mypycify({paths!r},"
            f" group_name={GROUP!r}, target_dir={build_dir!r}),"
            f" script_args=['--quiet', 'build_ext', '--inplace', '--build-temp', {build_dir!r}])"
        )
        result = subprocess.run(
            [sys.executable, "-c", setup],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "MYPYPATH": str(root / "generated")},
        )
    if result.returncode != 0:
        remove_build()
        note = _not_compiled("mypyc could not compile the engine; it runs as pure Python")
        return f"{note}:\n{result.stdout}{result.stderr}"
    MANIFEST.write_text(
        json.dumps({"compiled": True, "sources_sha256": sources_digest()}, indent=2) + "\n"
    )
    return f"compiled {', '.join(f'controller.{name}' for name in MODULES)} with mypyc"


def main(argv: list[str] | None = None) -> int:
    """Build (default) or remove the compiled engine."""
    parser = argparse.ArgumentParser(prog="python -m controller.native", description=__doc__)
    parser.add_argument(
        "--remove", action="store_true", help="delete the compiled modules (run from source)"
    )
    args = parser.parse_args(argv)
    if args.remove:
        remove_build()
        print("removed the compiled engine: it runs as pure Python")
        return 0
    print(build())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
