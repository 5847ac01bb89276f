"""Publishing a champion's batch predictions into the orders database, atomically.

The shop's systems read ``ml.<table>`` (schema ``ml``, created by migration 0002). A publish never
writes into the table readers use:

1. ``COPY … FROM STDIN (FORMAT binary, FREEZE)`` loads a new table ``ml.<table>__new_<hex>``
   (created in the same transaction, so ``FREEZE`` applies and nothing needs vacuuming later), and
   its lookup index is built, all before any reader is affected;
2. one short transaction swaps it in: ``LOCK`` the live table, rename it away, rename the new one
   to the stable name, carry the old table's grants over, and log the publish in
   ``ml.publications``; the old table is dropped after the commit (dropping it inside the swap made
   the commit unlink its files under the lock: ~0.5 s for 10M rows). A reader sees the old complete set or the new complete set, never a half: a
   query that started before the swap finishes on the old table (the swap waits for it, at most
   ``lock_timeout``), one that starts after reads the new table.

The swap's ``lock_timeout`` (``ECOM_PUBLISH_LOCK_TIMEOUT_MS``, default 2000) bounds how long the swap
may queue behind a long-running reader — queued ``ACCESS EXCLUSIVE`` requests block every later
reader, so waiting forever would stall the shop; on a timeout the swap is retried a few times, then
given up with the old set left in place. Anything the database refuses (no privilege, a full disk, a
lost connection) fails before or inside the swap's transaction, so the previous predictions stay as
they were, and the error is one line naming the table, the model version and the database.

Columns are what the model kind declares (:class:`PredictionSet`); every row also carries
``model_version`` and ``day``. Only fixed-width types are supported (``bigint``, ``integer``,
``smallint``, ``real``, ``double precision``, ``date``): that is what predictions are (ids, ranks,
scores, dates), and it lets the rows go to PostgreSQL as binary COPY built by numpy, with no
per-row Python (see bench/publish.py for the rate).

Nothing here knows a model kind: what a kind publishes comes from its steps' ``predictions``
(``ecom_ml.training.steps.ModelSteps``).
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from ecom_ml.errors import EcomError

log = logging.getLogger(__name__)

SCHEMA = "ml"
PUBLICATIONS = "publications"
#: Rows per binary COPY chunk: ~40 MB of buffer for the widest prediction table.
CHUNK_ROWS = 500_000
SWAP_RETRIES = 5

#: PostgreSQL type -> (numpy big-endian dtype, byte width) of its binary COPY representation.
_BINARY = {
    "bigint": (">i8", 8),
    "integer": (">i4", 4),
    "smallint": (">i2", 2),
    "real": (">f4", 4),
    "double precision": (">f8", 8),
    "date": (">i4", 4),  # days since 2000-01-01
}
_PG_EPOCH_DAYS = 10957  # 2000-01-01 - 1970-01-01
_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_TRAILER = (-1).to_bytes(2, "big", signed=True)
_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
#: Columns the publisher adds to every row.
MODEL_VERSION, DAY = "model_version", "day"


class PublishError(EcomError):
    """Predictions could not be published; the previous set is still in place."""


@dataclass(frozen=True)
class PredictionSet:
    """What a model kind publishes: rows for ``ml.<table>``, its column types, its lookup key.

    ``rows`` is a pyarrow Table (or anything ``pyarrow.table()`` accepts, e.g. a pandas frame)
    with exactly ``columns`` (no nulls: a prediction set is complete or it is not published);
    ``key`` names the columns readers look rows up by (indexed).
    """

    table: str
    columns: Mapping[str, str]
    rows: Any
    key: tuple[str, ...] = ()
    description: str = ""

    def arrow(self) -> Any:
        import pyarrow as pa

        return self.rows if isinstance(self.rows, pa.Table) else pa.table(self.rows)


@dataclass(frozen=True)
class PublishResult:
    table: str
    model: str
    version: int
    day: str
    rows: int
    #: Loading the new table: COPY, its index and ANALYZE (phases in ``extra``).
    copy_s: float
    swap_s: float
    #: Time the live table was held under the swap's ACCESS EXCLUSIVE lock (lock taken -> commit).
    lock_s: float
    attempts: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.copy_s if self.copy_s > 0 else float("inf")

    def line(self) -> str:
        return (f"published {self.rows:,} rows of {self.model} v{self.version} ({self.day}) into "
                f"{SCHEMA}.{self.table}: load {self.copy_s:.2f} s ({self.rows_per_s:,.0f} rows/s), "
                f"swap {self.lock_s * 1000:.1f} ms under lock")

    def to_dict(self) -> dict[str, Any]:
        return {"table": f"{SCHEMA}.{self.table}", "model": self.model, "version": self.version, "day": self.day,
                "rows": self.rows, "copy_s": round(self.copy_s, 3), "swap_ms": round(self.swap_s * 1000, 1),
                "lock_ms": round(self.lock_s * 1000, 1), "attempts": self.attempts}


def _ident(name: str, what: str) -> str:
    if not isinstance(name, str) or not _IDENT.match(name):
        raise PublishError(f"{what} {name!r} is not a valid table/column name (lower-case letters, digits, _)")
    return name


def _validate(predictions: PredictionSet) -> tuple[Any, dict[str, str]]:
    table = _ident(predictions.table, "prediction table")
    if table == PUBLICATIONS:
        raise PublishError(f"{SCHEMA}.{PUBLICATIONS} is the publication log, not a prediction table")
    columns = {_ident(c, f"{table} column"): str(t).lower() for c, t in predictions.columns.items()}
    for name, kind in columns.items():
        if kind not in _BINARY:
            raise PublishError(f"{SCHEMA}.{table}.{name}: type {kind!r} is not publishable "
                               f"(supported: {', '.join(_BINARY)})")
    for reserved in (MODEL_VERSION, DAY):
        if reserved in columns:
            raise PublishError(f"{SCHEMA}.{table}: column {reserved!r} is added by the publisher; a kind must not declare it")
    for name in predictions.key:
        if name not in columns:
            raise PublishError(f"{SCHEMA}.{table}: key column {name!r} is not one of its columns {list(columns)}")
    rows = predictions.arrow()
    if list(rows.column_names) != list(columns):
        raise PublishError(f"{SCHEMA}.{table}: the predictions have columns {rows.column_names}, "
                           f"the kind declares {list(columns)}")
    for name in columns:
        nulls = rows.column(name).null_count
        if nulls:
            raise PublishError(f"{SCHEMA}.{table}.{name} has {nulls} null value(s): a prediction set must be complete")
    return rows, columns


def _as_numpy(column: Any, kind: str) -> Any:
    """One Arrow column as the numpy values of its binary COPY field."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind == "date":
        if pa.types.is_timestamp(column.type):
            column = pc.cast(column, pa.date32())
        if not pa.types.is_date(column.type):
            raise PublishError(f"a date column holds {column.type}, not dates")
        days = pc.cast(pc.cast(column, pa.date32()), pa.int32()).to_numpy(zero_copy_only=False)
        return days.astype(np.int64) - _PG_EPOCH_DAYS
    return column.to_numpy(zero_copy_only=False)


def binary_copy_chunks(rows: Any, columns: Mapping[str, str], version: int, day: date,
                       chunk_rows: int = CHUNK_ROWS) -> Iterator[bytes]:
    """The rows plus ``model_version`` and ``day`` as PostgreSQL binary COPY, chunk by chunk.

    Every field is fixed-width, so a chunk is one numpy structured array: ``int16`` field count, then
    per field ``int32`` length and the big-endian value.
    """
    import numpy as np

    kinds = [*columns.values(), "integer", "date"]
    dtype = np.dtype([("n", ">i2")] + [f for i, kind in enumerate(kinds) for f in
                                       ((f"l{i}", ">i4"), (f"v{i}", _BINARY[kind][0]))])
    yield _HEADER
    day_value = (day - date(2000, 1, 1)).days
    for start in range(0, rows.num_rows, chunk_rows):
        part = rows.slice(start, chunk_rows)
        out = np.empty(part.num_rows, dtype=dtype)
        out["n"] = len(kinds)
        for i, (name, kind) in enumerate(columns.items()):
            out[f"l{i}"] = _BINARY[kind][1]
            values = _as_numpy(part.column(name).combine_chunks() if hasattr(part.column(name), "combine_chunks")
                               else part.column(name), kind)
            if kind in ("bigint", "integer", "smallint") and not np.issubdtype(np.asarray(values).dtype, np.integer):
                raise PublishError(f"{name} ({kind}) holds {np.asarray(values).dtype} values, not integers")
            out[f"v{i}"] = values
        n = len(columns)
        out[f"l{n}"], out[f"v{n}"] = 4, version
        out[f"l{n + 1}"], out[f"v{n + 1}"] = 4, day_value
        yield out.tobytes()
    yield _TRAILER


class _ChunkReader(io.RawIOBase):
    """A file-like view of a chunk iterator, for ``copy_expert`` (which calls ``read(size)``)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def _lock_timeout_ms() -> int:
    raw = os.environ.get("ECOM_PUBLISH_LOCK_TIMEOUT_MS", "2000").strip()
    if not raw.isdigit() or int(raw) < 1:
        raise PublishError(f"ECOM_PUBLISH_LOCK_TIMEOUT_MS={raw!r} is not a positive number of milliseconds")
    return int(raw)


def _maintenance_work_mem() -> str:
    """Memory for building the lookup index (``ECOM_PUBLISH_MAINTENANCE_WORK_MEM``, default 512MB):
    PostgreSQL's 64MB default made the index of 10M rows take twice as long (an external sort)."""
    raw = os.environ.get("ECOM_PUBLISH_MAINTENANCE_WORK_MEM", "512MB").strip()
    if not re.match(r"^\d+(kB|MB|GB)$", raw):
        raise PublishError(f"ECOM_PUBLISH_MAINTENANCE_WORK_MEM={raw!r} is not a size like 512MB")
    return raw


def _q(name: str) -> str:
    return f'{SCHEMA}."{name}"'


def publish(url: str, model: str, version: int, day: date, predictions: PredictionSet, *, actor: str,
            reason: str | None = None) -> PublishResult:
    """Load ``predictions`` into a new table and swap it in as ``ml.<table>`` (see the module doc).

    Raises :class:`PublishError` (one line) when anything fails; the previous set is then unchanged.
    """
    import psycopg2
    from psycopg2 import errors as pg_errors

    from ecom_ml.db import redact_url

    rows, columns = _validate(predictions)
    table = predictions.table
    where = f"{model} v{version} into {SCHEMA}.{table} at {redact_url(url)}"
    staging = f"{table}__new_{uuid.uuid4().hex[:10]}"
    try:
        conn = psycopg2.connect(url, connect_timeout=10, application_name="ecom-ml publish")
    except psycopg2.Error as exc:
        raise PublishError(f"publishing {where}: cannot connect: {_first_line(exc)}; "
                           f"the previous predictions are unchanged") from None
    try:
        with conn, conn.cursor() as cur:
            # One publisher per table at a time (held for the session); leftovers of a killed
            # publish (its staging tables) are dropped under the same lock.
            cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"ecom-ml publish {SCHEMA}.{table}",))
            cur.execute("SELECT to_regnamespace(%s) IS NOT NULL", (SCHEMA,))
            if not cur.fetchone()[0]:
                raise PublishError(f"publishing {where}: there is no schema {SCHEMA!r}: run `ecom-ml db migrate` "
                                   f"(migration 0002 creates it)")
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s AND (tablename LIKE %s "
                        "OR tablename LIKE %s)", (SCHEMA, f"{table}\\_\\_new\\_%", f"{table}\\_\\_old\\_%"))
            for (stale,) in cur.fetchall():
                cur.execute(f"DROP TABLE IF EXISTS {_q(stale)}")
        started = time.perf_counter()
        with conn, conn.cursor() as cur:
            definition = ", ".join([*(f'"{c}" {t} NOT NULL' for c, t in columns.items()),
                                    f"{MODEL_VERSION} integer NOT NULL", f"{DAY} date NOT NULL"])
            cur.execute(f"CREATE TABLE {_q(staging)} ({definition})")
            cur.copy_expert(f"COPY {_q(staging)} FROM STDIN WITH (FORMAT binary, FREEZE)",
                            _ChunkReader(binary_copy_chunks(rows, columns, version, day)), size=1 << 20)
            phases = {"copy_s": time.perf_counter() - started}
            if predictions.key:
                cur.execute(f"SET LOCAL maintenance_work_mem = '{_maintenance_work_mem()}'")
                cur.execute(f'CREATE INDEX "{staging}_key" ON {_q(staging)} '
                            f"({', '.join(f'{chr(34)}{c}{chr(34)}' for c in predictions.key)})")
            phases["index_s"] = time.perf_counter() - started - phases["copy_s"]
            cur.execute(f"ANALYZE {_q(staging)}")
        copy_s = time.perf_counter() - started
        phases["analyze_s"] = copy_s - phases["copy_s"] - phases["index_s"]
        result = _swap(conn, table, staging, predictions, model, version, day, rows.num_rows, actor, reason,
                       where, pg_errors)
        return PublishResult(table, model, version, day.isoformat(), rows.num_rows, copy_s, *result,
                             extra={k: round(v, 3) for k, v in phases.items()})
    except psycopg2.Error as exc:
        raise PublishError(f"publishing {where} failed: {_first_line(exc)}; "
                           f"the previous predictions are unchanged") from None
    finally:
        _drop_quietly(conn, staging)
        conn.close()


def _swap(conn: Any, table: str, staging: str, predictions: PredictionSet, model: str, version: int, day: date,
          n_rows: int, actor: str, reason: str | None, where: str, pg_errors: Any) -> tuple[float, float, int]:
    """The one transaction readers notice; returns (swap seconds, seconds under lock, attempts)."""
    timeout = _lock_timeout_ms()
    old = f"{table}__old_{uuid.uuid4().hex[:10]}"
    for attempt in range(1, SWAP_RETRIES + 1):
        began = time.perf_counter()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(f"SET LOCAL lock_timeout = {timeout}")
                cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f'{SCHEMA}."{table}"',))
                exists = cur.fetchone()[0]
                if exists:
                    cur.execute(f"LOCK TABLE {_q(table)} IN ACCESS EXCLUSIVE MODE")
                locked = time.perf_counter()
                if exists:
                    # The readers' privileges live on the table: carry them over to the new one.
                    cur.execute(
                        "SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN 'PUBLIC' "
                        "ELSE quote_ident(r.rolname) END FROM pg_class c, aclexplode(c.relacl) a "
                        "LEFT JOIN pg_roles r ON r.oid = a.grantee WHERE c.oid = %s::regclass "
                        "AND a.grantee <> c.relowner", (f'{SCHEMA}."{table}"',))
                    for privilege, grantee in cur.fetchall():
                        cur.execute(f"GRANT {privilege} ON {_q(staging)} TO {grantee}")
                    cur.execute(f"ALTER TABLE {_q(table)} RENAME TO \"{old}\"")
                cur.execute(f"ALTER TABLE {_q(staging)} RENAME TO \"{table}\"")
                if exists:  # its name, not its files: dropping 10M rows' files at commit took ~0.5 s
                    cur.execute(f'ALTER INDEX IF EXISTS {SCHEMA}."{table}_key" RENAME TO "{old}_key"')
                if predictions.key:
                    cur.execute(f'ALTER INDEX {SCHEMA}."{staging}_key" RENAME TO "{table}_key"')
                cur.execute(f"COMMENT ON TABLE {_q(table)} IS %s",
                            (f"{predictions.description or 'predictions'}: {model} v{version}, day {day}",))
                cur.execute(
                    f"INSERT INTO {SCHEMA}.{PUBLICATIONS} (table_name, model, model_version, day, row_count, "
                    f"published_by, reason) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (table, model, version, day, n_rows, actor[:200], (reason or "")[:1000] or None))
            done = time.perf_counter()
            log.info("%s: swapped in (attempt %d, %.1f ms under lock)", where, attempt, (done - locked) * 1000)
            if exists:
                _drop_quietly(conn, old)  # readers are on the new table now; a leftover goes next time
            return done - began, done - locked, attempt
        except pg_errors.LockNotAvailable:
            log.warning("%s: a reader held %s.%s past the %d ms lock timeout (attempt %d of %d); retrying",
                        where, SCHEMA, table, timeout, attempt, SWAP_RETRIES)
            time.sleep(min(2.0, 0.1 * 2 ** attempt))
    raise PublishError(f"publishing {where}: readers held the table past the {timeout} ms lock timeout "
                       f"{SWAP_RETRIES} times; the previous predictions are unchanged")


def _drop_quietly(conn: Any, staging: str) -> None:
    """Drop the staging table if the publish did not swap it in (best effort: the next publish of
    the table drops any leftover too)."""
    try:
        conn.rollback()
        with conn, conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {_q(staging)}")
    except Exception:  # noqa: BLE001 - the connection may be gone; the next publish cleans up
        log.debug("could not drop staging table %s.%s", SCHEMA, staging)


def _first_line(exc: BaseException) -> str:
    from ecom_ml.secrets import redact_text

    text = str(getattr(exc, "pgerror", None) or exc).strip()
    return redact_text((text.splitlines() or [type(exc).__name__])[0].removeprefix("ERROR:").strip())


def current(url: str, table: str) -> dict[str, Any] | None:
    """The last publication into ``ml.<table>`` (model, version, day, rows, when, who), or None."""
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=10)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"SELECT model, model_version, day, row_count, published_at, published_by "
                        f"FROM {SCHEMA}.{PUBLICATIONS} WHERE table_name = %s "
                        f"ORDER BY publication_id DESC LIMIT 1", (_ident(table, "prediction table"),))
            row = cur.fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    return dict(zip(("model", "version", "day", "rows", "published_at", "published_by"), row))
