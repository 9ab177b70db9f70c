"""A throwaway PostgreSQL server for tests and benchmarks: initdb in a temporary directory of
its own, a free port on 127.0.0.1, everything removed on ``stop``. PostgreSQL refuses to run as
root, so as root the server runs as the ``postgres`` system user (in a directory under the
system's temporary directory, which that user can reach, unlike pytest's)."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.system import free_port
from controller.journal import PostgresTarget

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install"
    " postgresql (Debian/Ubuntu) or put their directory on PATH; .ci/run installs them"
)


def server_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl, if PostgreSQL is installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


class PostgresServer:
    """A running server; ``database()`` makes a fresh, empty database on it."""

    def __init__(self, binaries: Path, durable: bool = False) -> None:
        """initdb in a new temporary directory and start; without ``durable`` the server does
        not fsync (tests kill controllers, never the database: its durability is not tested)."""
        self._binaries = binaries
        self._directory = directory = Path(tempfile.mkdtemp(prefix="fill-allocator-pg-"))
        self._data = directory / "data"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(directory, user.pw_uid, user.pw_gid)
        self.port = free_port()
        self._names = itertools.count(1)
        self._run("initdb", "-D", str(self._data), "-A", "trust", "-U", "postgres", "--no-sync")
        settings = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-k {directory}",
            "-c max_connections=200",
        ]
        if not durable:
            settings += ["-c fsync=off", "-c full_page_writes=off"]
        self._run(
            "pg_ctl", "-D", str(self._data), "-l", str(directory / "server.log"), "-w",
            "-o", " ".join(settings), "start",
        )  # fmt: skip

    def _run(self, program: str, *arguments: str) -> None:
        command = [str(self._binaries / program), *arguments]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, text=True)

    def url(self, database: str) -> str:
        """The libpq URL of ``database`` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def database(self) -> PostgresTarget:
        """A new empty database."""
        name = f"journal_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return PostgresTarget(self.url(name))

    def execute(self, target: PostgresTarget, query: str, *parameters: object) -> list[Any]:
        """Run one statement on ``target``'s database; its rows (empty when it returns none)."""
        with psycopg.connect(target.url, autocommit=True) as db:
            cursor = db.execute(query, parameters or None)
            return cursor.fetchall() if cursor.description else []

    def stop(self) -> None:
        """Stop the server at once and remove its directory."""
        try:
            self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self._directory, ignore_errors=True)
