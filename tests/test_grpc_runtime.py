"""Every process of the system picks gRPC core's endpoints before it imports grpc."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from controller.grpc_runtime import IOMGR_ENDPOINTS
from tests.conftest import ROOT

PROBE = (
    "import sys, os; import {package}; print('grpc' in sys.modules, os.environ['GRPC_EXPERIMENTS'])"
)


def probe(package: str, environment: dict[str, str]) -> str:
    """Whether a fresh interpreter that imported ``package`` holds grpc, and its list."""
    run = subprocess.run(
        [sys.executable, "-c", PROBE.format(package=package)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return run.stdout.strip()


@pytest.mark.parametrize("package", ["controller", "position", "simulators", "benchmarks", "tests"])
def test_each_package_sets_the_endpoints_before_grpc_is_imported(package: str) -> None:
    """Python runs a package's initialiser before any of its modules (``python -m package``
    included): once it ran, the list is set and grpc, which reads it once, is still unimported."""
    environment = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    assert probe(package, environment) == f"False {IOMGR_ENDPOINTS}"


def test_an_operators_own_experiment_list_is_kept() -> None:
    environment = {**os.environ, "GRPC_EXPERIMENTS": "event_engine_client"}
    assert probe("controller", environment) == "False event_engine_client"
