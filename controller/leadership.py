"""Leader election among controllers sharing one PostgreSQL journal: a lease with an epoch.

The ``leader`` row holds an epoch, the holder's name and address, and the time its lease ends,
all by the database's clock (no two controllers need agree on the time). The leader renews the
lease every quarter of its length; a follower takes over once the lease has ended, in the same
statement that increments the epoch. The epoch is the fencing token: every journal write checks
it in its own transaction (``controller.journal_postgres``), so a deposed leader that still
runs, paused or cut off, commits nothing once another has taken over.

A lease rather than an advisory lock: a SIGSTOPped leader keeps its database session, and with
it an advisory lock, alive for as long as it is stopped; a lease ends on time whatever the
holder does.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from controller.journal import PostgresTarget
from controller.journal_postgres import connect, prepare

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Leader:
    """Who leads, as the ``leader`` row says."""

    epoch: int
    holder: str
    address: str
    current: bool
    """False when the lease has ended (the holder is gone or paused)."""


class LeaderLease:
    """One controller's side of the election, on a session of its own."""

    def __init__(
        self,
        target: PostgresTarget,
        policy: str,
        holder: str,
        address: str,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        """Prepare the journal at ``target`` (see ``journal_postgres.prepare``) and stand for
        election as ``holder``, reachable at ``address``, with leases of ``lease_seconds``."""
        self._target = target
        self._policy = policy
        self._holder = holder
        self._address = address
        self.lease_seconds = lease_seconds
        self._db: psycopg.Connection[Any] | None = None
        self.journal_id, self.policy = prepare(self._session(), target, policy)

    @property
    def poll_seconds(self) -> float:
        """How often a follower tries to take over and a leader renews: a quarter lease."""
        return self.lease_seconds / 4

    def _session(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed:
            # A takeover waits for the writer's share lock on the leader row; never longer than
            # a poll, since a paused writer's transaction ends after IDLE_IN_TRANSACTION_SECONDS.
            self._db = connect(self._target, lock_timeout=f"{int(self.poll_seconds * 1000)}ms")
        return self._db

    def _run(self, query: str, parameters: tuple[object, ...]) -> tuple[Any, ...] | None:
        try:
            return self._session().execute(query, parameters).fetchone()
        except psycopg.Error:
            if self._db is not None:
                self._db.close()
            raise

    def try_acquire(self) -> int | None:
        """Take the lead if the lease has ended: the new epoch, or None if another leads."""
        row = self._run(
            "UPDATE leader SET epoch = epoch + 1, holder = %s, address = %s,"
            " lease_until = clock_timestamp() + make_interval(secs => %s)"
            " WHERE id = 1 AND lease_until < clock_timestamp() RETURNING epoch",
            (self._holder, self._address, self.lease_seconds),
        )
        return None if row is None else int(row[0])

    def renew(self, epoch: int) -> bool:
        """Extend the lease of ``epoch``; False if another controller has taken over."""
        row = self._run(
            "UPDATE leader SET lease_until = clock_timestamp() + make_interval(secs => %s)"
            " WHERE id = 1 AND epoch = %s RETURNING epoch",
            (self.lease_seconds, epoch),
        )
        return row is not None

    def release(self, epoch: int) -> None:
        """End the lease of ``epoch`` now, so that a follower takes over at its next poll."""
        self._run(
            "UPDATE leader SET lease_until = '-infinity' WHERE id = 1 AND epoch = %s"
            " RETURNING epoch",
            (epoch,),
        )

    def leader(self) -> Leader | None:
        """Who leads (None if nobody ever has)."""
        row = self._run(
            "SELECT epoch, holder, address, lease_until > clock_timestamp() FROM leader"
            " WHERE id = 1",
            (),
        )
        if row is None or not row[0]:
            return None
        return Leader(int(row[0]), row[1], row[2], bool(row[3]))

    def close(self) -> None:
        """Close the election session."""
        if self._db is not None:
            self._db.close()


class LeaseKeeper:
    """Renews a leader's lease in the background; ``lost`` is set when the lead is gone: another
    controller took over, or no renewal succeeded for a whole lease (it may have ended)."""

    def __init__(self, lease: LeaderLease, epoch: int, lost: threading.Event) -> None:
        """Keep ``epoch``'s lease until ``stop``; set ``lost`` if it cannot."""
        self._lease = lease
        self._epoch = epoch
        self._lost = lost
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # The lease ends no earlier than lease_seconds after the last successful renewal was
        # sent, by any clock that runs at the database's rate.
        renewed = time.monotonic()
        while not self._stopping.wait(self._lease.poll_seconds):
            sent = time.monotonic()
            try:
                if not self._lease.renew(self._epoch):
                    log.warning("another controller took the lead", extra={"epoch": self._epoch})
                    self._lost.set()
                    return
                renewed = sent
            except psycopg.Error as error:
                log.warning("lease renewal failed", extra={"error": str(error).strip()})
                if time.monotonic() - renewed >= self._lease.lease_seconds:
                    log.warning("lease may have ended; stepping down", extra={"epoch": self._epoch})
                    self._lost.set()
                    return

    def stop(self) -> None:
        """Stop renewing (the lease runs out unless released)."""
        self._stopping.set()
        self._thread.join()
