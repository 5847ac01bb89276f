"""Read a shop's CSV export into a frame of raw strings, each row tagged with its source line number.

Every value stays the exact text of the file (``dtype=str``, no NA guessing): stock codes such as
``85123A`` and invoices such as ``C489449`` must not become numbers, and rejected rows are written
back exactly as they were read.

Line numbers are physical lines of the file (header = line 1), which is what a user opens in an
editor. The fast path is pandas' C parser; it is trusted only when the file has exactly one physical
line per record. Anything else (quoted fields spanning lines, rows with too many fields, broken
quoting) falls back to the standard ``csv`` module, which is ~4x slower but knows where every
record starts. Rows with the wrong number of fields are kept, flagged, and rejected later, so one
stray delimiter does not cost the whole import.

A truncated file (a copy or download cut short) is refused whole, before anything is parsed into
the database: its last record is damaged in a way no row rule can see (a country cut to
``United Ki`` is a valid string), and loading the rest would load the last invoice with only some
of its lines. The signs are a file that does not end with a newline (``source.require_final_newline``,
on by default), a last record with fewer fields than the header, and a gzip stream that ends early.
"""

from __future__ import annotations

import csv
import gzip
import io
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ecom_ml.errors import EcomError
from ecom_ml.importer.mapping import Mapping


class SourceError(EcomError):
    """The source file cannot be imported as a whole; the message names the file and where."""


@dataclass(frozen=True)
class Source:
    """The file's records as raw text, in file order.

    ``frame`` has the header's columns (rows with too few fields padded with "", too many cut);
    ``lines`` the 1-based line each record starts on; ``field_counts`` how many fields it really had.
    """

    path: Path
    header: list[str]
    frame: pd.DataFrame
    lines: np.ndarray
    field_counts: np.ndarray

    def __len__(self) -> int:
        return len(self.frame)


def read_source(path: Path, mapping: Mapping) -> Source:
    """Decode, split and check the header of ``path``; raise SourceError for a file that cannot be read."""
    text = _decode(path, _read_bytes(path, mapping), mapping)
    if not text.strip():
        raise SourceError(f"{path}: the file is empty (expected a header line naming the columns)")
    fmt = mapping.source
    header = next(csv.reader(io.StringIO(text, newline=""), delimiter=fmt.delimiter, quotechar=fmt.quotechar))
    _check_header(path, header, mapping)
    _refuse_unterminated(path, text, mapping)
    source = _parse_fast(path, text, header, mapping)
    if source is None:
        source = _parse_exact(path, text, header, mapping)
    if len(source) == 0:
        raise SourceError(f"{path}: the file has a header but no data rows")
    _refuse_short_last_row(source)
    return source


_TRUNCATED = "the file looks truncated (a cut copy or download); nothing was imported: copy or export it again whole"


def _refuse_unterminated(path: Path, text: str, mapping: Mapping) -> None:
    """A file that stops mid-line has lost the end of its last row (and maybe more rows)."""
    if text.endswith("\n") or not mapping.source.require_final_newline:
        return
    line = text.count("\n") + 1
    tail = text[text.rfind("\n") + 1 :]
    shown = tail if len(tail) <= 60 else "..." + tail[-57:]
    raise SourceError(
        f"{path}: line {line}: the file ends without a newline, in the middle of {shown!r}; {_TRUNCATED} "
        f"(or set source.require_final_newline: false in {mapping.path.name} if this shop's exports never end "
        "with one)"
    )


def _refuse_short_last_row(source: Source) -> None:
    """A last record with fewer fields than the header is the end of a cut file, not one bad row."""
    width, last = len(source.header), int(source.field_counts[-1])
    if last < width:
        raise SourceError(f"{source.path}: line {int(source.lines[-1])}: the last row has {last} of {width} fields; "
                          f"{_TRUNCATED}")


def _read_bytes(path: Path, mapping: Mapping) -> bytes:
    compression = mapping.source.compression
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise SourceError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    # "auto": by the name, or by gzip's magic bytes when an export was gzipped but not renamed.
    gzipped = compression == "gzip" or (
        compression == "auto" and (path.name.lower().endswith(".gz") or raw[:2] == b"\x1f\x8b")
    )
    if not gzipped:
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise SourceError(f"{path}: the gzip stream ends early; {_TRUNCATED}") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise SourceError(
            f"{path}: not a valid gzip file ({exc}); "
            f"set source.compression: none in {mapping.path.name} if it is plain text"
        ) from None


def _decode(path: Path, raw: bytes, mapping: Mapping) -> str:
    """Decode strictly; a bad byte is reported by line and column rather than replaced silently."""
    encoding = mapping.source.encoding
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = raw[exc.start : exc.end].hex(" ")
        raise SourceError(
            f"{path}: line {line}, column {column}: byte(s) {bad} are not valid {encoding} "
            f"(source.encoding in {mapping.path.name}; re-export as {encoding} or set the file's encoding there)"
        ) from None
    return text.removeprefix("\ufeff")  # a byte-order mark is not part of the first column's name


def _check_header(path: Path, header: list[str], mapping: Mapping) -> None:
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise SourceError(f"{path}: line 1: column {name!r} appears more than once in the header")
        seen.add(name)
    missing = [f"{column!r} (for {field})" for field, column in mapping.columns.mapped().items() if column not in seen]
    if missing:
        raise SourceError(
            f"{path}: line 1: missing column(s) {', '.join(missing)} named in {mapping.path.name}; "
            f"the header has: {', '.join(repr(h) for h in header)}"
        )


def _parse_fast(path: Path, text: str, header: list[str], mapping: Mapping) -> Source | None:
    """pandas' C parser, or None when the file needs the exact (line-tracking) parser."""
    fmt = mapping.source
    try:
        # A long first row would silently become an index (or, with index_col=False, be cut with
        # only a warning): both mean "ragged file", which the exact parser reports row by row.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.StringIO(text),
                sep=fmt.delimiter,
                quotechar=fmt.quotechar,
                header=0,
                names=header,
                index_col=False,
                dtype=str,
                na_filter=False,
                skip_blank_lines=False,
                engine="c",
            )
    except (pd.errors.ParserError, pd.errors.ParserWarning, csv.Error, ValueError):
        return None
    physical_lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    if physical_lines != len(frame) + 1:
        return None  # some record spans several lines: only the exact parser can number them
    lines = np.arange(2, len(frame) + 2, dtype=np.int64)
    counts = np.full(len(frame), len(header), dtype=np.int64)
    # pandas pads short rows with "" silently, and turns blank lines into all-"" rows. Both end in an
    # empty last field, so only those rows need their raw line re-split to learn the true field count.
    suspects = np.flatnonzero((frame.iloc[:, -1] == "").to_numpy())
    if len(suspects):
        raw_lines = text.split("\n")
        for position in suspects:
            raw = raw_lines[lines[position] - 1].rstrip("\r")
            counts[position] = (
                len(next(csv.reader([raw], delimiter=fmt.delimiter, quotechar=fmt.quotechar))) if raw else 0
            )
    keep = counts > 0  # blank lines are not records
    if not keep.all():
        frame = frame[keep].reset_index(drop=True)
        lines, counts = lines[keep], counts[keep]
    return Source(path, header, frame, lines, counts)


def _parse_exact(path: Path, text: str, header: list[str], mapping: Mapping) -> Source:
    """The ``csv`` module, which reports the line each record ends on, so starts are exact."""
    fmt = mapping.source
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=fmt.delimiter, quotechar=fmt.quotechar, strict=True)
    width = len(header)
    rows: list[list[str]] = []
    lines: list[int] = []
    counts: list[int] = []
    try:
        next(reader)
        previous_end = reader.line_num
        for row in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not row:
                continue  # blank line
            lines.append(start)
            counts.append(len(row))
            rows.append(row if len(row) == width else (row + [""] * width)[:width])
    except csv.Error as exc:
        raise SourceError(f"{path}: line {reader.line_num}: malformed CSV: {exc}") from None
    frame = pd.DataFrame(rows, columns=header, dtype=str) if rows else pd.DataFrame(columns=header, dtype=str)
    return Source(path, header, frame, np.asarray(lines, dtype=np.int64), np.asarray(counts, dtype=np.int64))
