"""One writer per lake partition: a lock that works on local disk and on object storage.

Two Airflow runs of the same day (``max_active_runs`` > 1, a manual run with the ``day`` param, a
backfill beside the schedule) would otherwise write the same partition side by side, and each
writer's clean-up would delete the other's version folder. Every change to a partition therefore
happens under :func:`partition_lock`:

* ``file://`` lakes use ``fcntl.flock`` on a lock file. The kernel drops the lock when its holder
  dies, so a writer killed with SIGKILL never blocks the re-run.
* ``s3://`` lakes use a lease object written with S3 conditional writes (``If-None-Match: *`` to
  take a free lock, ``If-Match: <etag>`` to renew, hand over or release one). The holder renews
  its lease from a background thread; a lease its holder stopped renewing (a killed writer)
  expires after ``ECOM_LAKE_LOCK_TTL_S`` seconds and the next writer takes it over. Before it
  commits, a writer confirms it still holds the lease (:meth:`PartitionLock.confirm`), so a writer
  that stalled past its lease never publishes over its successor.

Lock files live under ``{root}/_locks/``, outside the partitions, so removing a partition never
removes a lock another process holds. On local disk they stay (a few bytes per partition): deleting
one would let a writer waiting on the old file and a newcomer on a new one both hold "the" lock. On
S3 the lease object is deleted on release, conditionally on its ETag. Locks do not nest: the lake
takes one per call and never calls itself while holding it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from ecom_ml import storage
from ecom_ml.errors import EcomError

if TYPE_CHECKING:
    from upath import UPath

log = logging.getLogger(__name__)

LOCKS_DIR = "_locks"
TIMEOUT_ENV = "ECOM_LAKE_LOCK_TIMEOUT_S"
TTL_ENV = "ECOM_LAKE_LOCK_TTL_S"
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_TTL_S = 60.0


class LakeLockError(EcomError):
    """The partition could not be locked (held by another writer too long, or the lease was lost)."""


class PartitionLock(Protocol):
    def confirm(self) -> None:
        """Raise :class:`LakeLockError` unless this process still holds the lock."""


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise LakeLockError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise LakeLockError(f"{name}={raw!r} must be a positive number of seconds")
    return value


def _owner() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}


def _describe(owner: dict[str, object]) -> str:
    since = owner.get("acquired_at")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(since))) if since else "?"
    return f"{owner.get('host', '?')} pid {owner.get('pid', '?')} since {when}"


@contextlib.contextmanager
def partition_lock(root: UPath, name: str, what: str) -> Iterator[PartitionLock]:
    """Hold the lock ``{root}/_locks/{name}.lock`` for the block; ``what`` names the partition in errors.

    Waits up to ``ECOM_LAKE_LOCK_TIMEOUT_S`` seconds (default 600) for another writer to finish.
    """
    timeout = _seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    target = root / LOCKS_DIR / f"{name}.lock"
    kind = storage.scheme(str(root))
    if kind == "file":
        lock: _FileLock | _S3Lease = _FileLock(target, what, timeout)
    elif kind in ("s3", "s3a"):
        lock = _S3Lease(target, what, timeout, _seconds(TTL_ENV, DEFAULT_TTL_S))
    else:
        raise LakeLockError(f"{what}: no partition lock for {kind}:// lakes (supported: file://, s3://)")
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def _backoff(attempt: int) -> float:
    return min(0.02 * (2 ** min(attempt, 6)), 1.0)


class _FileLock:
    """``flock`` on a local file: released by the kernel when the holder exits, however it exits."""

    def __init__(self, target: UPath, what: str, timeout: float) -> None:
        self.path = target.path
        self.what = what
        self.timeout = timeout
        self.fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder(fd)
                    os.close(fd)
                    raise LakeLockError(
                        f"{self.what} is being written by {holder}; waited {self.timeout:g} s for it "
                        f"({TIMEOUT_ENV}, lock {self.path})"
                    ) from None
                time.sleep(_backoff(attempt))
                attempt += 1
        owner = {**_owner(), "acquired_at": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        self.fd = fd

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            return _describe(json.loads(os.pread(fd, 4096, 0) or b"{}"))
        except (OSError, ValueError):
            return "another writer"

    def confirm(self) -> None:
        if self.fd is None:
            raise LakeLockError(f"{self.what}: the partition lock is not held")

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def _condition_failed(exc: BaseException) -> bool:
    """Whether an S3 call failed on its ``If-Match``/``If-None-Match`` precondition (412, or 409 on a race)."""
    if isinstance(exc, FileExistsError):
        return True
    cause = exc.__cause__ or exc
    response = getattr(cause, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class _S3Lease:
    """A lease object renewed by a heartbeat thread; taken over by compare-and-swap once expired."""

    def __init__(self, target: UPath, what: str, timeout: float, ttl: float) -> None:
        self.fs = target.fs
        self.bucket, self.key, _ = self.fs.split_path(target.path)
        self.uri = str(target)
        self.what = what
        self.timeout = timeout
        self.ttl = ttl
        self.owner = _owner()
        self.acquired_at = time.time()
        self.etag: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._beat: threading.Thread | None = None

    def _body(self, expires_at: float) -> bytes:
        return json.dumps({**self.owner, "acquired_at": self.acquired_at, "expires_at": expires_at}).encode()

    def _put(self, body: bytes, **condition: str) -> str:
        out = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=body, **condition)
        return out["ETag"]

    async def _get(self) -> tuple[bytes, str]:
        out = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
        async with out["Body"] as stream:
            return await stream.read(), out["ETag"]

    def _read(self) -> tuple[dict[str, object], str] | None:
        """The lease's holder and the ETag of exactly that body (one GET), or None when there is none."""
        from fsspec.asyn import sync

        try:
            data, etag = sync(self.fs.loop, self._get)
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(data or b"{}")
        except ValueError:
            doc = {}
        return doc, etag

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        attempt = 0
        holder: dict[str, object] = {}
        while True:
            self.acquired_at = time.time()
            body = self._body(self.acquired_at + self.ttl)
            try:
                self.etag = self._put(body, IfNoneMatch="*")
                break
            except OSError as exc:
                if not _condition_failed(exc):
                    raise
            current = self._read()
            if current is not None:
                holder, etag = current
                if float(holder.get("expires_at", 0) or 0) < time.time():
                    try:
                        self.etag = self._put(body, IfMatch=etag)
                        log.warning("%s: took over the expired lock of %s", self.what, _describe(holder))
                        break
                    except OSError as exc:
                        if not _condition_failed(exc):
                            raise
                        continue  # someone else took it over first: look again
            if time.monotonic() >= deadline:
                raise LakeLockError(
                    f"{self.what} is being written by {_describe(holder)}; waited {self.timeout:g} s for it "
                    f"({TIMEOUT_ENV}, lock {self.uri})"
                )
            time.sleep(_backoff(attempt))
            attempt += 1
        self._beat = threading.Thread(target=self._heartbeat, name=f"lake-lock {self.key}", daemon=True)
        self._beat.start()

    def _renew(self) -> None:
        with self._guard:
            if self.lost:
                raise LakeLockError(self.lost)
            try:
                self.etag = self._put(self._body(time.time() + self.ttl), IfMatch=self.etag or "")
            except OSError as exc:
                if _condition_failed(exc) or isinstance(exc, FileNotFoundError):
                    self.lost = f"{self.what}: lost the partition lock {self.uri} to another writer (lease expired)"
                    raise LakeLockError(self.lost) from None
                raise

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self._renew()
            except LakeLockError:
                return
            except Exception as exc:  # a transient storage error: the next beat tries again
                log.warning("%s: renewing the lock %s failed (%s)", self.what, self.uri, exc)

    def confirm(self) -> None:
        """Renew now, so the commit that follows happens with a whole fresh lease in hand."""
        self._renew()

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        with self._guard:
            if self.lost or self.etag is None:
                return
            try:
                self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
            except OSError as exc:
                if not (_condition_failed(exc) or isinstance(exc, FileNotFoundError)):
                    log.warning("%s: releasing the lock %s failed (%s); it expires in %g s", self.what,
                                self.uri, exc, self.ttl)
            self.etag = None
