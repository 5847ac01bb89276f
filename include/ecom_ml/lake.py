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
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from ecom_ml import storage

if TYPE_CHECKING:
    import pyarrow as pa
    from upath import UPath

MANIFEST = "_manifest.json"

#: Zones of the lake, in the order data moves through them.
RAW, VALIDATED, QUARANTINE, FEATURES = "raw", "validated", "quarantine", "features"


def partition_name(day: date) -> str:
    return f"dt={day.isoformat()}"


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
        self.root = root.rstrip("/")

    def partition(self, zone: str, dataset: str, day: date) -> UPath:
        return storage.path(f"{self.root}/{zone}/{dataset}/{partition_name(day)}")

    def dataset(self, zone: str, dataset: str) -> UPath:
        return storage.path(f"{self.root}/{zone}/{dataset}")

    # -- reading ---------------------------------------------------------------------------------

    def manifest(self, zone: str, dataset: str, day: date) -> Manifest | None:
        path = self.partition(zone, dataset, day) / MANIFEST
        if not path.exists():
            return None
        return Manifest.from_json(path.read_text())

    def read(self, zone: str, dataset: str, day: date, tables: Iterable[str] | None = None) -> dict[str, pa.Table]:
        import pyarrow.parquet as pq

        manifest = self.manifest(zone, dataset, day)
        if manifest is None:
            raise FileNotFoundError(f"no {zone}/{dataset} partition for {day} under {self.root}")
        folder = self.partition(zone, dataset, day) / manifest.version
        wanted = list(tables) if tables is not None else list(manifest.files)
        out = {}
        for name in wanted:
            with (folder / manifest.files[name]).open("rb") as handle:
                out[name] = pq.read_table(handle)
        return out

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
        manifest = self.manifest(src_zone, dataset, day)
        if manifest is None:
            raise FileNotFoundError(f"no {src_zone}/{dataset} partition for {day} under {self.root}")
        folder = self.partition(src_zone, dataset, day) / manifest.version
        blobs = {name: (folder / file).read_bytes() for name, file in manifest.files.items()}
        merged = {**manifest.extra, **(extra or {})}
        return self._commit(dst_zone, dataset, day, blobs, manifest.rows, merged)

    def remove(self, zone: str, dataset: str, day: date) -> bool:
        """Withdraw a partition (its manifest first, so it disappears at once)."""
        part = self.partition(zone, dataset, day)
        if not part.exists():
            return False
        manifest = part / MANIFEST
        if manifest.exists():
            manifest.unlink()
        part.fs.rm(part.path, recursive=True)
        return True

    def write_text(self, zone: str, dataset: str, day: date, name: str, text: str) -> UPath:
        """A document beside the partition (e.g. the quality report), replaced atomically."""
        part = self.partition(zone, dataset, day)
        part.mkdir(parents=True, exist_ok=True)
        target = part / name
        tmp = part / f".{name}.tmp-{uuid.uuid4().hex}"
        tmp.write_text(text)
        tmp.rename(target)
        return target

    def _commit(
        self,
        zone: str,
        dataset: str,
        day: date,
        blobs: Mapping[str, bytes],
        rows: Mapping[str, int],
        extra: dict[str, Any],
    ) -> Manifest:
        digest = hashlib.sha256()
        for name, blob in blobs.items():
            digest.update(name.encode())
            digest.update(hashlib.sha256(blob).digest())
        version = f"v-{digest.hexdigest()[:20]}"
        part = self.partition(zone, dataset, day)
        folder = part / version
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for name, blob in blobs.items():
            file = f"{name}.parquet"
            target = folder / file
            if not (target.exists() and target.stat().st_size == len(blob)):
                tmp = folder / f".{file}.tmp-{uuid.uuid4().hex}"
                tmp.write_bytes(blob)
                tmp.rename(target)
            files[name] = file
        manifest = Manifest(version, files, dict(rows), extra)
        tmp = part / f".{MANIFEST}.tmp-{uuid.uuid4().hex}"
        tmp.write_text(manifest.to_json())
        tmp.rename(part / MANIFEST)
        self._collect_garbage(part, keep=version)
        return manifest

    @staticmethod
    def _collect_garbage(part: UPath, keep: str) -> None:
        """Drop versions no manifest names any more and temporaries of killed writers."""
        for child in part.iterdir():
            if child.name.startswith("v-") and child.name != keep:
                child.fs.rm(child.path, recursive=True)
            elif child.name.startswith(f".{MANIFEST}.tmp-"):
                child.unlink()

