"""What every kind's trainer shares at its two ends: finding the day's features from ``--features``
and ``--day``, and writing the model folder to ``<out>/model/``.

One copy for every kind (the recommender, demand and propensity trainers all ran the same lines),
so that the CLI's arguments mean one thing for each kind and every model folder is written the same
way: built in a local temporary folder, ``model.json`` last, then published as a whole (a remote
``--out`` never sees half a folder).
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from ecom_ml.errors import EcomError
from ecom_ml.models import as_uri, dir_size, join, publish_dir

META_FILE = "model.json"

_PARTITION = re.compile(r"^(?P<root>.*?)/features/(?P<dataset>[^/]+)/dt=(?P<day>\d{4}-\d{2}-\d{2})/?$")


def resolve_features(features: str, day: date | None, dataset: str,
                     error: type[EcomError] = EcomError) -> tuple[str, date]:
    """``(lake root URI, day)`` from ``--features`` (a lake root, or the kind's features partition)
    and ``--day``; a contradiction or a missing day is one line, raised as ``error``."""
    uri = as_uri(features)
    match = _PARTITION.match(uri)
    if match:
        part_day = date.fromisoformat(match["day"])
        if day is not None and day != part_day:
            raise error(f"--features {features} is the partition of {part_day}, but --day says {day}")
        if match["dataset"] != dataset:
            raise error(f"--features {features} is a {match['dataset']!r} partition, not {dataset!r}")
        return match["root"], part_day
    if day is None:
        raise error(f"--features {features} is a lake root: say which day's features with --day YYYY-MM-DD")
    return uri, day


def trainer_log(kind: str) -> Callable[[str], None]:
    """The trainer's progress lines, on stderr (stdout is the entrypoint's JSON result)."""

    def log(message: str) -> None:
        print(f"[train {kind}] {message}", file=sys.stderr, flush=True)

    return log


@dataclass(frozen=True)
class WrittenModel:
    uri: str
    artifacts: dict[str, str]  # name -> URI of each file, ``metadata`` = model.json
    size_bytes: int


def write_model_dir(out: str, write_files: Callable[[Path], Mapping[str, str]], meta: Mapping[str, Any],
                    prefix: str = "ecom-train-") -> WrittenModel:
    """Write ``<out>/model/``: ``write_files(folder)`` saves the kind's files and returns
    ``{name: file name}``; ``meta`` (plus ``files``) becomes ``model.json``."""
    model_uri = join(as_uri(out), "model")
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        files = dict(write_files(folder))
        (folder / META_FILE).write_text(json.dumps({**meta, "files": files}, indent=2, sort_keys=True) + "\n")
        size = dir_size(folder)
        publish_dir(folder, model_uri)
    artifacts = {name: join(model_uri, file) for name, file in {**files, "metadata": META_FILE}.items()}
    return WrittenModel(model_uri, artifacts, int(size))
