"""controller package: the allocation controller (engine, journal, services).

A compiled engine (``controller.native``) that no longer matches its sources is refused here,
before any of it is imported: it would run the old code. ``controller.grpc_runtime`` is
imported first, before anything imports ``grpc``.
"""

import controller.grpc_runtime  # noqa: F401
from controller.compiled import stale_modules

if _stale := stale_modules():
    raise ImportError(
        f"{', '.join(_stale)} were compiled from other sources: run `make native` to rebuild"
        " them, or `rm controller/*.so` to run from source"
    )
