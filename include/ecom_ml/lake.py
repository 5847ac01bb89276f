"""The Parquet lake: day partitions that appear atomically, on local disk and object storage alike.

A partition folder ``{root}/{zone}/{dataset}/dt=YYYY-MM-DD/`` holds its data files in a version
folder ``v-<content hash>/`` and a ``_manifest.json`` that names the current version. Readers go
through the manifest only, so a writer killed half-way leaves the previous version (or nothing)
visible. The manifest is replaced by writing a temporary object and renaming it, which is atomic on
a local file system and on object stores (each object appears whole). Paths come from
``ecom_ml.storage`` (fsspec through ``universal_pathlib``, no Airflow import), so ``file://`` here and
``s3://`` in production are the same code, in an Airflow task and in the trainer alike.

The version is a hash of the files' bytes: writing identical data twice gives the identical
version, folder and files.

One writer per partition: every change happens under :func:`ecom_ml.lake_lock.partition_lock`
(``flock`` on local disk, a conditional-write lease on S3), so a writer's clean-up of superseded
versions can never delete the version another writer is about to name. Temporaries are written to
``_staging/`` beside the version folders, never inside a committed folder, and the next writer of
the partition removes whatever a killed writer left there. Readers never take a lock: a reader
whose version is replaced under it reads the new manifest and tries again.

A lake root must be an absolute location that exists (``ecom-ml lake init`` creates one, as does
``ecom-ml setup`` for the default local lake); a write into a missing root is refused unless
``ECOM_LAKE_CREATE=1``, so a mistyped ``ECOM_LAKE_ROOT`` cannot start a second, empty lake.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from ecom_ml import storage
from ecom_ml.errors import EcomError
from ecom_ml.lake_lock import PartitionLock, partition_lock

if TYPE_CHECKING:
    import pyarrow as pa
    from upath import UPath

log = logging.getLogger(__name__)
T = TypeVar("T")

MANIFEST = "_manifest.json"
#: The object that marks a lake root as created on purpose (``ecom-ml lake init``).
MARKER = "_lake.json"
#: Where a partition's writer puts its temporaries: beside, never inside, the version folders.
STAGING = "_staging"
#: Set to 1 to let the first write create a lake root that does not exist yet.
CREATE_ENV = "ECOM_LAKE_CREATE"
#: A reader retries this many times when writers replace the partition under it.
READ_ATTEMPTS = 8

#: Zones of the lake, in the order data moves through them.
RAW, VALIDATED, QUARANTINE, FEATURES = "raw", "validated", "quarantine", "features"


class LakeError(EcomError):
    """The lake root is unusable (relative, missing) or a partition is inconsistent; the message names it."""


def partition_name(day: date) -> str:
    return f"dt={day.isoformat()}"


def _check_absolute(root: str) -> None:
    """Refuse a root that would resolve against each process's working directory."""
    if storage.scheme(root) != "file":
        return
    if "://" in root:
        parts = urlsplit(root)
        relative = parts.netloc not in ("", "localhost") or not parts.path.startswith("/")
    else:
        relative = not os.path.isabs(root)
    if relative:
        raise LakeError(
            f"lake root {root!r} is a relative path, which each task would resolve against its own working "
            "directory; set ECOM_LAKE_ROOT (or the ecom_lake_root Variable) to an absolute path or a "
            "file:// or s3:// URI"
        )


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Manifest:
    """What a partition currently holds."""

    version: str
    files: dict[str, str]  # table name -> file name inside the version folder
    rows: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"version": self.version, "files": self.files, "rows": self.rows, "extra": self.extra},
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        doc = json.loads(text)
        return cls(doc["version"], doc["files"], doc["rows"], doc.get("extra", {}))


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialise with fixed settings so the same rows always give the same bytes."""
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        compression_level=1,
        row_group_size=1_000_000,
        write_statistics=True,
        use_dictionary=True,
    )
    return sink.getvalue()


class Lake:
    """One lake root (a URI such as ``file:///srv/lake`` or ``s3://bucket/lake``)."""

    def __init__(self, root: str) -> None:
        _check_absolute(root)
        self.root = root.rstrip("/")
        self._root_checked = False

    def partition(self, zone: str, dataset: str, day: date) -> UPath:
        return storage.path(f"{self.root}/{zone}/{dataset}/{partition_name(day)}")

    def dataset(self, zone: str, dataset: str) -> UPath:
        return storage.path(f"{self.root}/{zone}/{dataset}")

    # -- the root ----------------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the root was created (by ``init``, or an existing directory or prefix)."""
        root = storage.path(self.root)
        return (root / MARKER).exists() or root.exists()

    def init(self) -> bool:
        """Create the lake root and its marker; True when it was new. The only way a root comes to be."""
        root = storage.path(self.root)
        marker = root / MARKER
        if marker.exists():
            return False
        new = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                          "created_by": f"{socket.gethostname()} pid {os.getpid()}"}))
        except (OSError, ValueError) as exc:
            raise LakeError(f"cannot create the lake root {self.root}: {exc}") from None
        self._root_checked = True
        return new

    def _require_root(self) -> None:
        """Refuse to write into a root nobody created, unless ECOM_LAKE_CREATE=1 asks for it."""
        if self._root_checked:
            return
        if not self.exists():
            if not _truthy(os.environ.get(CREATE_ENV)):
                raise LakeError(
                    f"lake root {self.root} does not exist; check ECOM_LAKE_ROOT (or the ecom_lake_root "
                    f"Variable) for a typo, or create it with `ecom-ml lake init {self.root}` "
                    f"(or set {CREATE_ENV}=1)"
                )
            self.init()
            log.warning("created a new, empty lake at %s (%s=1)", self.root, CREATE_ENV)
        self._root_checked = True

    # -- reading ---------------------------------------------------------------------------------

    def manifest(self, zone: str, dataset: str, day: date) -> Manifest | None:
        path = self.partition(zone, dataset, day) / MANIFEST
        try:
            # One GET: a HEAD-then-GET read fails when a writer replaces the manifest in between.
            return Manifest.from_json(path.fs.cat_file(path.path).decode())
        except FileNotFoundError:
            return None

    def _snapshot(self, zone: str, dataset: str, day: date, read: Callable[[UPath, Manifest], T]) -> tuple[Manifest, T]:
        """Run ``read(version folder, manifest)`` on one consistent version of the partition.

        A writer may replace the version (and delete the old one) while a reader is in it; the reader
        then sees a file vanish, finds a newer manifest and starts over on the new version.
        """
        part = self.partition(zone, dataset, day)
        for attempt in range(READ_ATTEMPTS):
            manifest = self.manifest(zone, dataset, day)
            if manifest is None:
                raise FileNotFoundError(f"no {zone}/{dataset} partition for {day} under {self.root}")
            try:
                return manifest, read(part / manifest.version, manifest)
            except FileNotFoundError:
                now = self.manifest(zone, dataset, day)
                if now is not None and now.version == manifest.version:
                    raise LakeError(
                        f"{zone}/{dataset} {day} under {self.root}: the manifest names {manifest.version}, "
                        "whose files are missing"
                    ) from None
                time.sleep(0.01 * (attempt + 1))
        raise LakeError(f"{zone}/{dataset} {day} under {self.root}: replaced {READ_ATTEMPTS} times while being read")

    def read(self, zone: str, dataset: str, day: date, tables: Iterable[str] | None = None) -> dict[str, pa.Table]:
        import pyarrow.parquet as pq

        def load(folder: UPath, manifest: Manifest) -> dict[str, pa.Table]:
            wanted = list(tables) if tables is not None else list(manifest.files)
            out = {}
            for name in wanted:
                with (folder / manifest.files[name]).open("rb") as handle:
                    out[name] = pq.read_table(handle)
            return out

        return self._snapshot(zone, dataset, day, load)[1]

    def days(self, zone: str, dataset: str) -> list[date]:
        """Days with a committed partition, oldest first."""
        root = self.dataset(zone, dataset)
        if not root.exists():
            return []
        found = []
        for child in root.iterdir():
            if child.name.startswith("dt=") and (child / MANIFEST).exists():
                found.append(date.fromisoformat(child.name[3:]))
        return sorted(found)

    # -- writing ---------------------------------------------------------------------------------

    def write(
        self,
        zone: str,
        dataset: str,
        day: date,
        tables: Mapping[str, pa.Table],
        extra: dict[str, Any] | None = None,
    ) -> Manifest:
        """Replace the day's partition with ``tables``, atomically."""
        blobs = {name: parquet_bytes(table) for name, table in sorted(tables.items())}
        rows = {name: tables[name].num_rows for name in blobs}
        return self._commit(zone, dataset, day, blobs, rows, extra or {})

    def copy(self, src_zone: str, dst_zone: str, dataset: str, day: date, extra: dict[str, Any] | None = None) -> Manifest:
        """Publish a partition into another zone (raw -> validated or quarantine) with the same bytes."""

        def load(folder: UPath, manifest: Manifest) -> dict[str, bytes]:
            return {name: (folder / file).read_bytes() for name, file in manifest.files.items()}

        manifest, blobs = self._snapshot(src_zone, dataset, day, load)
        merged = {**manifest.extra, **(extra or {})}
        return self._commit(dst_zone, dataset, day, blobs, manifest.rows, merged)

    def remove(self, zone: str, dataset: str, day: date) -> bool:
        """Withdraw a partition (its manifest first, so it disappears at once)."""
        part = self.partition(zone, dataset, day)
        if not part.exists():
            return False
        with self._lock(zone, dataset, day):
            manifest = part / MANIFEST
            if manifest.exists():
                manifest.unlink()
            if part.exists():
                part.fs.rm(part.path, recursive=True)
        return True

    def write_text(self, zone: str, dataset: str, day: date, name: str, text: str) -> UPath:
        """A document beside the partition (e.g. the quality report), replaced atomically."""
        self._require_root()
        part = self.partition(zone, dataset, day)
        with self._lock(zone, dataset, day):
            staging = part / STAGING / uuid.uuid4().hex
            staging.mkdir(parents=True, exist_ok=True)
            target = part / name
            tmp = staging / name
            tmp.write_text(text)
            tmp.rename(target)
            self._remove(staging)
        return target

    def _lock(self, zone: str, dataset: str, day: date) -> AbstractContextManager[PartitionLock]:
        """The partition's writer lock (see ``ecom_ml.lake_lock``); every change happens under it."""
        return partition_lock(storage.path(self.root), f"{zone}/{dataset}/{partition_name(day)}",
                              f"{zone}/{dataset} {day.isoformat()} under {self.root}")

    def _commit(
        self,
        zone: str,
        dataset: str,
        day: date,
        blobs: Mapping[str, bytes],
        rows: Mapping[str, int],
        extra: dict[str, Any],
    ) -> Manifest:
        self._require_root()
        digest = hashlib.sha256()
        for name, blob in blobs.items():
            digest.update(name.encode())
            digest.update(hashlib.sha256(blob).digest())
        version = f"v-{digest.hexdigest()[:20]}"
        part = self.partition(zone, dataset, day)
        if not self.dataset(zone, dataset).exists():
            log.warning("%s/%s: first partition in the lake at %s (a new dataset here)", zone, dataset, self.root)
        with self._lock(zone, dataset, day) as lock:
            # Whatever a killed writer left in staging is garbage now: we are the only writer.
            self._remove(part / STAGING)
            staging = part / STAGING / uuid.uuid4().hex
            staging.mkdir(parents=True, exist_ok=True)
            folder = part / version
            folder.mkdir(parents=True, exist_ok=True)
            files = {}
            for name, blob in blobs.items():
                file = f"{name}.parquet"
                target = folder / file
                if not (target.exists() and target.stat().st_size == len(blob)):
                    tmp = staging / file
                    tmp.write_bytes(blob)
                    tmp.rename(target)
                files[name] = file
            manifest = Manifest(version, files, dict(rows), extra)
            tmp = staging / MANIFEST
            tmp.write_text(manifest.to_json())
            lock.confirm()
            tmp.rename(part / MANIFEST)
            self._collect_garbage(part, manifest)
        return manifest

    @staticmethod
    def _remove(path: UPath) -> None:
        if path.exists():
            path.fs.rm(path.path, recursive=True)

    @classmethod
    def _collect_garbage(cls, part: UPath, manifest: Manifest) -> None:
        """Drop versions the manifest no longer names, staging, and strays in the kept version.

        Safe only under the partition lock: no other writer can be about to name what is deleted.
        """
        named = set(manifest.files.values())
        for child in part.iterdir():
            if child.name.startswith("v-") and child.name != manifest.version:
                cls._remove(child)
            elif child.name == STAGING or child.name.startswith(f".{MANIFEST}.tmp-"):
                cls._remove(child)
        for child in (part / manifest.version).iterdir():
            if child.name not in named:  # e.g. a ``.x.parquet.tmp-*`` from a writer before staging existed
                cls._remove(child)
