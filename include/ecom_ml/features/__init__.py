"""Feature building for the shop's models, one module per model (``recommender`` first).

Feature code is shared by training, evaluation and serving on purpose: a feature computed two ways
(once in a notebook-like training script, once in the serving path) drifts apart silently, so each
model's features live in exactly one function that every consumer calls.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from ecom_ml.errors import EcomError
from ecom_ml.lake import FEATURES, Lake


def stored_settings(lake: Lake, dataset: str, day: date, error: type[EcomError] = EcomError) -> dict[str, Any]:
    """The settings the ``dataset`` features of ``day`` were built with (their manifest's
    ``extra[dataset]``): what the trainer, the evaluator and the leak check read one split from.
    A day without them is one line, raised as ``error``."""
    manifest = lake.manifest(FEATURES, dataset, day)
    if manifest is None or dataset not in manifest.extra:
        raise error(f"no {dataset} features for {day} under {lake.root}: run the features task first")
    return manifest.extra[dataset]
