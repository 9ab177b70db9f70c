"""The gRPC core runtime of every process of the system, chosen before ``grpc`` is imported.

grpcio 1.80 moved Python's sockets onto EventEngine's endpoints. Against the iomgr endpoints
that every earlier grpcio used (still in the pinned 1.85.3 and chosen by this experiment list),
they cost a health check at 500/s on this machine's 2 shared cores about 0.1 ms more at the
median and 0.3 ms more at p99, and SubmitFill 0.3 ms and 0.6 ms (the README's benchmarks).
Core reads the list once, when ``grpc`` is first imported: the package initialisers of
``controller``, ``position``, ``simulators``, ``benchmarks`` and ``tests`` import this module,
so it runs before any of their modules imports ``grpc``. An operator's own ``GRPC_EXPERIMENTS``
is left as it is; processes started from these inherit the choice.
"""

from __future__ import annotations

import os

IOMGR_ENDPOINTS = (
    "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"
)

os.environ.setdefault("GRPC_EXPERIMENTS", IOMGR_ENDPOINTS)
