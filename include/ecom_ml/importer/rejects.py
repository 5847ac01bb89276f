"""The reject file: every row that was not loaded, with its line, its reason and its original fields.

It is the user's to-do list for fixing their export, so it keeps the source's own column names and
raw text (a rejected row can be corrected and re-imported as is). It is written under a temporary
name and renamed only after the database commit, so a failed import never leaves a reject file that
describes a load that did not happen.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ecom_ml import settings as settings_mod
from ecom_ml.errors import EcomError
from ecom_ml.importer.read import Source

_SOURCE_SUFFIXES = (".gz", ".csv", ".txt", ".tsv")


class RejectFileError(EcomError):
    """The reject file cannot be written where asked."""


def default_rejects_path(source: Path) -> Path:
    """``<ECOM home>/imports/<source name without .csv/.gz>.rejects.csv`` (the source's folder may be read-only)."""
    name = source.name
    for suffix in _SOURCE_SUFFIXES:
        name = name.removesuffix(suffix)
    return settings_mod.load().home / "imports" / f"{name}.rejects.csv"


def write_rejects(path: Path, source: Source, reason: np.ndarray, detail: np.ndarray) -> Path:
    """Write the rejected rows to a temporary file beside ``path``; return it for ``publish``/``discard``."""
    rejected = ~pd.isna(reason)
    frame = source.frame[rejected].copy()
    for position, (name, values) in enumerate(
        (("line", source.lines[rejected]), ("reason", reason[rejected]), ("detail", detail[rejected]))
    ):
        if name in frame.columns:
            name = f"_{name}"  # the export has a column of that name; keep both
        frame.insert(position, name, values)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(temporary, index=False)
    except OSError as exc:
        discard(temporary)
        raise RejectFileError(f"{path}: cannot write the reject file: {exc.strerror or exc}") from None
    return temporary


def publish(temporary: Path, path: Path) -> None:
    os.replace(temporary, path)


def discard(temporary: Path) -> None:
    temporary.unlink(missing_ok=True)
