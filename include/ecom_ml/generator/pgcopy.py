"""PostgreSQL's binary COPY format, encoded from numpy columns in bulk.

Binary rather than CSV because it needs no number-to-text formatting on our side (the numpy arrays
already hold the bytes, as big-endian values) and less parsing on the server's; see the README's
bench figures. Rows whose fields are all fixed-width are laid out as one numpy structured array;
rows with variable-width text or NULLs are scattered into a byte buffer at computed offsets. Either
way the cost is a few numpy passes per column, not Python per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Microseconds from the Unix epoch to PostgreSQL's (2000-01-01), which binary timestamps count from.
PG_EPOCH_US = 946_684_800_000_000
HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = b"\xff\xff"

#: numeric in binary: ndigits, weight, sign, dscale, then base-10000 digits. Four digits of weight 2
#: hold any numeric(12, 2); the server strips the leading and trailing zero digits on receipt.
_NUMERIC = np.dtype([("ndigits", ">i2"), ("weight", ">i2"), ("sign", ">u2"), ("dscale", ">u2"),
                     ("digits", ">i2", (4,))])
_NUMERIC_NEG = 0x4000
MAX_NUMERIC_12_2_CENTS = 10**12 - 1


@dataclass(frozen=True)
class Field:
    """One column: fixed-size big-endian values, and per-row byte lengths when they vary (-1 = NULL)."""

    data: np.ndarray
    lengths: np.ndarray | None = None


def _with_nulls(data: np.ndarray, null: np.ndarray | None) -> Field:
    if null is None or not null.any():
        return Field(data)
    return Field(data, np.where(null, -1, data.dtype.itemsize).astype(np.int64))


def int8(values: np.ndarray, null: np.ndarray | None = None) -> Field:
    return _with_nulls(np.asarray(values).astype(">i8"), null)


def int4(values: np.ndarray) -> Field:
    values = np.asarray(values)
    if len(values) and (values.min() < -(2**31) or values.max() >= 2**31):
        raise ValueError("value out of range for a 4-byte integer")
    return Field(values.astype(">i4"))


def timestamptz(unix_us: np.ndarray) -> Field:
    """From microseconds since the Unix epoch (UTC)."""
    return Field((np.asarray(unix_us, dtype=np.int64) - PG_EPOCH_US).astype(">i8"))


def numeric_cents(cents: np.ndarray) -> Field:
    """A numeric with two decimals, from whole cents."""
    cents = np.asarray(cents, dtype=np.int64)
    magnitude = np.abs(cents)
    if len(cents) and magnitude.max() > MAX_NUMERIC_12_2_CENTS:
        raise ValueError("value out of range for numeric(12, 2)")
    whole = magnitude // 100
    out = np.empty(len(cents), dtype=_NUMERIC)
    out["ndigits"], out["weight"], out["dscale"] = 4, 2, 2
    out["sign"] = np.where(cents < 0, _NUMERIC_NEG, 0)
    out["digits"] = np.stack([whole // 10**8, whole // 10**4 % 10**4, whole % 10**4, magnitude % 100 * 100], axis=1)
    return Field(out)


def text(values: Sequence[str] | np.ndarray) -> Field:
    """UTF-8 text (also right for char(n) when the values have exactly n characters)."""
    data = values if isinstance(values, np.ndarray) and values.dtype.kind == "S" else \
        np.array([v.encode("utf-8") for v in values], dtype=bytes)
    if len(data) == 0:
        return Field(data.astype("S1"))
    lengths = np.strings.str_len(data).astype(np.int64)
    return Field(data) if (lengths == data.dtype.itemsize).all() else Field(data, lengths)


def text_codes(codes: np.ndarray, labels: Sequence[str]) -> Field:
    """Text from small integer codes into ``labels`` (statuses, countries): no per-row encoding."""
    table = np.array([label.encode("utf-8") for label in labels], dtype=bytes)
    lengths = np.strings.str_len(table).astype(np.int64)
    data = table[codes]
    return Field(data) if (lengths == table.dtype.itemsize).all() else Field(data, lengths[codes])


def encode(fields: Sequence[Field]) -> bytes:
    """The complete COPY ... (FORMAT binary) payload for rows made of ``fields``."""
    n = len(fields[0].data)
    if any(len(f.data) != n for f in fields):
        raise ValueError("columns differ in length")
    if n == 0:
        return HEADER + TRAILER
    if all(f.lengths is None for f in fields):
        return _encode_fixed(fields, n)
    return _encode_scattered(fields, n)


def _encode_fixed(fields: Sequence[Field], n: int) -> bytes:
    layout: list[tuple[str, object]] = [("count", ">i2")]
    for i, f in enumerate(fields):
        layout += [(f"len{i}", ">i4"), (f"val{i}", f.data.dtype)]
    rows = np.empty(n, dtype=np.dtype(layout))  # type: ignore[call-overload]
    rows["count"] = len(fields)
    for i, f in enumerate(fields):
        rows[f"len{i}"] = f.data.dtype.itemsize
        rows[f"val{i}"] = f.data
    return HEADER + rows.tobytes() + TRAILER


def _encode_scattered(fields: Sequence[Field], n: int) -> bytes:
    lengths = [f.lengths if f.lengths is not None else np.full(n, f.data.dtype.itemsize, dtype=np.int64)
               for f in fields]
    row_bytes = 2 + sum(4 + np.maximum(length, 0) for length in lengths)
    starts = len(HEADER) + np.concatenate([[0], np.cumsum(row_bytes)[:-1]]).astype(np.int64)
    buf = np.empty(len(HEADER) + int(row_bytes.sum()) + len(TRAILER), dtype=np.uint8)
    buf[: len(HEADER)] = np.frombuffer(HEADER, dtype=np.uint8)
    buf[-len(TRAILER):] = np.frombuffer(TRAILER, dtype=np.uint8)
    _put(buf, starts, np.full(n, len(fields), dtype=">i2"))
    pos = starts + 2
    for f, length in zip(fields, lengths):
        _put(buf, pos, length.astype(">i4"))
        pos = pos + 4
        payload = np.ascontiguousarray(f.data).view(np.uint8).reshape(n, f.data.dtype.itemsize)
        offsets = pos[:, None] + np.arange(payload.shape[1])
        if f.lengths is None:
            buf[offsets] = payload
        else:
            present = np.arange(payload.shape[1])[None, :] < length[:, None]
            buf[offsets[present]] = payload[present]
        pos = pos + np.maximum(length, 0)
    return buf.tobytes()


def _put(buf: np.ndarray, at: np.ndarray, values: np.ndarray) -> None:
    """Write each row's fixed-size big-endian value at its offset."""
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(len(values), values.dtype.itemsize)
    buf[at[:, None] + np.arange(raw.shape[1])] = raw
