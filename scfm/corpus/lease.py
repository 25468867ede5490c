"""One writer per corpus: a lease object on the output, created atomically, refreshed while held.

``<root>/_lease.json`` holds ``owner`` (a random token), ``host``, ``pid``, ``command``,
``acquired`` and ``expires`` (UTC epoch seconds). A build or refresh takes it before planning
and gives it back after garbage collection; a background thread pushes ``expires`` forward every
``ttl_s / 3`` seconds. A second writer finds a live lease and stops with :class:`LeaseHeldError`
naming the holder. A stale lease (past its expiry, or held by a process of this host that is
gone: a killed job) is broken with a logged warning.

Creation is atomic on local filesystems (``O_CREAT | O_EXCL``; breaking a stale lease renames it
away first, and only one breaker's rename succeeds). Object stores reached through pyarrow have
no create-if-absent call: there the lease is written, then read back after a short pause, and
the writer whose token is not the one read back gives way (a race window of about that pause).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from scfm.corpus.shards import atomic_write_json, exists, join, read_json

logger = logging.getLogger(__name__)

LEASE_NAME = "_lease.json"
EXIT_LOCKED = 73  # exit code of a build or refresh that found another writer's live lease


class LeaseHeldError(RuntimeError):
    """Another writer holds the corpus lease (or took it over while this one ran)."""


@dataclass
class Lease:
    """The lease of one writer on one corpus root; use as a context manager."""

    fs: pafs.FileSystem
    root: str
    ttl_s: float = 600.0
    verify_pause_s: float = 1.0
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def path(self) -> str:
        return join(self.root, LEASE_NAME)

    def _record(self) -> dict:
        now = time.time()
        return {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": " ".join(sys.argv)[:300],
            "acquired": now,
            "expires": now + self.ttl_s,
        }

    def holder(self) -> dict | None:
        """The lease as stored now (None when there is none or it cannot be parsed)."""
        try:
            return read_json(self.fs, self.path)
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        except OSError:
            return None if not exists(self.fs, self.path) else {}

    def acquire(self) -> Lease:
        """Take the lease, breaking a stale one; raise :class:`LeaseHeldError` if it is live."""
        self.fs.create_dir(self.root, recursive=True)
        for _ in range(3):
            if self._create():
                self._start_refresh()
                return self
            cur = self.holder()
            if cur is None:
                continue  # it went away between the two calls: try again
            if is_live(cur):
                raise LeaseHeldError(describe_holder(self.root, cur))
            logger.warning(
                "breaking the stale lease on %s (%s): %s",
                self.root, _who(cur), _why_stale(cur),
            )  # fmt: skip
            self._break(cur)
        raise LeaseHeldError(f"could not take the lease on {self.root}: another writer races it")

    def _create(self) -> bool:
        record = json.dumps(self._record()).encode()
        if isinstance(self.fs, pafs.LocalFileSystem):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(record)
            return True
        if exists(self.fs, self.path):
            return False
        atomic_write_json(self.fs, self.path, json.loads(record))
        time.sleep(self.verify_pause_s)  # a concurrent writer's object would replace ours
        cur = self.holder() or {}
        return cur.get("owner") == self.owner

    def _break(self, stale: dict) -> None:
        if isinstance(self.fs, pafs.LocalFileSystem):
            aside = f"{self.path}.stale-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(self.path, aside)  # only one breaker wins the rename
            except FileNotFoundError:
                return
            os.unlink(aside)
            return
        if (self.holder() or {}).get("owner") == stale.get("owner"):
            self.fs.delete_file(self.path)

    def _start_refresh(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._refresh_loop, name="corpus-lease", daemon=True)
        self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - checked again before the commit
                logger.warning("could not refresh the lease on %s: %s", self.root, exc)

    def refresh(self) -> None:
        """Push the expiry forward (only while this writer still holds the lease)."""
        self.check()
        atomic_write_json(self.fs, self.path, self._record())

    def check(self) -> None:
        """Raise :class:`LeaseHeldError` unless this writer still holds the lease."""
        cur = self.holder()
        if not cur or cur.get("owner") != self.owner:
            raise LeaseHeldError(
                f"lost the lease on {self.root}"
                + (f" to {_who(cur)}" if cur else " (it was removed)")
                + ": nothing was committed by this run; run it again when the other writer is done"
            )

    def release(self) -> None:
        """Stop refreshing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        cur = self.holder()
        if cur and cur.get("owner") == self.owner:
            self.fs.delete_file(self.path)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _pid_dead_here(rec: dict) -> bool:
    """The holder ran on this host and its process is gone."""
    if rec.get("host") != socket.gethostname() or not isinstance(rec.get("pid"), int):
        return False
    try:
        os.kill(rec["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def is_live(rec: dict) -> bool:
    """A lease is live until it expires, or until its holder's process on this host is gone."""
    return rec.get("expires", 0) > time.time() and not _pid_dead_here(rec)


def _why_stale(rec: dict) -> str:
    if _pid_dead_here(rec):
        return "its process is gone"
    return f"it expired {time.time() - rec.get('expires', 0):.0f} s ago"


def check_free(fs: pafs.FileSystem, root: str) -> None:
    """Raise :class:`LeaseHeldError` if a live lease is on ``root`` (a cheap early check)."""
    cur = Lease(fs, root).holder()
    if cur and is_live(cur):
        raise LeaseHeldError(describe_holder(root, cur))


def _who(rec: dict) -> str:
    return f"host {rec.get('host', '?')} pid {rec.get('pid', '?')} ({rec.get('command', '')!s})"


def describe_holder(root: str, rec: dict) -> str:
    """The error a second writer sees: who holds the lease and what to do."""
    left = rec.get("expires", 0) - time.time()
    return (
        f"corpus {root} is being written by another job: {_who(rec)}, lease expires in "
        f"{left:.0f} s unless refreshed. Wait for that job to finish; if it is dead, its lease "
        f"is broken automatically once it expires (or delete {join(root, LEASE_NAME)})."
    )
