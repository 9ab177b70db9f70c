"""Whether the engine runs compiled (see ``controller.native``), and whether that build still
matches its sources.

A compiled module shadows its source even after the source changed, so the build records a
digest of the sources it compiled (``controller/native.json``); importing ``controller`` refuses
a build that no longer matches them.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# The engine's hot path: the book, the water-fill, the lots rule and the domain records they
# build. (controller.policy stays interpreted: mypyc cannot compile its generic dataclass, and
# it runs once per fill.)
MODULES = ("domain", "waterfill", "book", "lots")
MANIFEST = PACKAGE / "native.json"


def sources_digest() -> str:
    """The SHA-256 of the compiled modules' sources, in ``MODULES`` order."""
    digest = hashlib.sha256()
    for name in MODULES:
        digest.update((PACKAGE / f"{name}.py").read_bytes())
    return digest.hexdigest()


def compiled_files() -> list[Path]:
    """The compiled extensions in the package that this interpreter would import."""
    # The suffixes overlap (".cpython-311-x86_64-linux-gnu.so" also ends in ".so"): a set.
    return sorted(
        {
            path
            for suffix in importlib.machinery.EXTENSION_SUFFIXES
            for path in PACKAGE.glob(f"*{suffix}")
        }
    )


def stale_modules() -> list[str]:
    """The compiled modules whose sources changed since they were built (empty when the engine
    runs from a matching build, or from source)."""
    if not compiled_files():
        return []
    try:
        built = json.loads(MANIFEST.read_text()).get("sources_sha256")
    except (OSError, ValueError):
        built = None
    return [] if built == sources_digest() else [f"controller.{name}" for name in MODULES]


def is_compiled() -> bool:
    """Whether the engine's modules are running compiled."""
    from controller import book

    return not (book.__file__ or "").endswith(".py")
