"""Arrow tables as the pandas frames GX validates, and offending rows as JSON-safe samples.

Each table is converted once, into the dtypes GX 1.x evaluates vectorised: its pandas
``column_values.between`` metric has a numpy fast path only for int64, float64 and datetimes; any
other dtype (int32, or pandas' nullable Int64) is mapped value by value through Python, which made
``quantity > 0`` about 15x slower on a million lines (0.84 s against 0.05 s). So integers become
int64, or float64 where the column holds NULLs (exact for ids below 2**53), and decimals become
float64. The exact Arrow types (``int32``, ``decimal128(12, 2)``) are checked on the Arrow schema,
not here. Samples are taken from the Arrow table, so a report shows the stored values (``"12.50"``,
ISO timestamps) rather than their pandas conversions.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Iterable
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def to_frame(table: pa.Table) -> pd.DataFrame:
    """The frame GX sees: int64 (float64 with NULLs), decimals as float64, timestamps as datetime64[us, UTC]."""
    for i, column in enumerate(table.schema):
        if pa.types.is_decimal(column.type):
            table = table.set_column(i, column.name, pc.cast(table.column(i), pa.float64()))
        elif pa.types.is_integer(column.type) and column.type != pa.int64():
            # safe=False: a column of another type is never validated by GX (the schema rule fails
            # and the checks on it are skipped), so a lossy cast there must not crash the run.
            table = table.set_column(i, column.name, pc.cast(table.column(i), pa.int64(), safe=False))
    # Arrow's default conversion: int64 without NULLs stays int64, with NULLs becomes float64.
    return table.to_pandas()


def json_value(value: Any) -> Any:
    """One Python value from Arrow as JSON: decimals as exact strings, timestamps ISO, NaN as null."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.hex()
    return value


def sample_rows(table: pa.Table, positions: Iterable[int], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` whole rows of ``table`` at ``positions``, JSON-safe."""
    picked = [int(p) for p in positions][:limit]
    if not picked:
        return []
    rows = table.take(pa.array(picked, pa.int64())).to_pylist()
    return [{name: json_value(value) for name, value in row.items()} for row in rows]


def first_true(mask: pa.ChunkedArray | pa.Array, limit: int) -> tuple[int, list[int]]:
    """Count of true values in a boolean mask (nulls count as false) and the first ``limit`` positions."""
    filled = pc.fill_null(mask, False)
    if isinstance(filled, pa.ChunkedArray):
        filled = filled.combine_chunks()
    count = int(pc.sum(filled).as_py() or 0)
    if count == 0:
        return 0, []
    return count, pc.indices_nonzero(filled).slice(0, limit).to_pylist()
