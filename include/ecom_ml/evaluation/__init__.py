"""Model-independent evaluation of recommenders: the honest protocol, metrics, baselines and serving cost.

Import from the submodules (``protocol``, ``metrics``, ``baselines``, ``ease``, ``tuning``,
``bootstrap``, ``cost``); the names most
callers need are re-exported here lazily, so importing the package stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "EvalResult": "protocol",
    "Holdout": "protocol",
    "Recommender": "protocol",
    "Split": "protocol",
    "evaluate": "protocol",
    "evaluate_many": "protocol",
    "prepare_holdout": "protocol",
    "time_split": "protocol",
    "CoPurchaseBaseline": "baselines",
    "DecayedFrequencyEaseBaseline": "baselines",
    "EaseBaseline": "baselines",
    "PopularityBaseline": "baselines",
    "RepeatBaseline": "baselines",
    "RepeatThenEaseBaseline": "baselines",
    "BaselineSettings": "tuning",
    "all_baselines": "tuning",
    "validation_split": "tuning",
    "paired_bootstrap": "bootstrap",
    "measure_latency": "cost",
    "model_size_bytes": "cost",
    "single_requests": "cost",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"ecom_ml.evaluation.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ecom_ml.evaluation' has no attribute {name!r}")
