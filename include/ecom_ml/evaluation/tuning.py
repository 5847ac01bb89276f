"""Every baseline of one evaluation run, the tuned ones with hyper-parameters chosen *before* the holdout.

A baseline tuned on the holdout it is then compared on is flattered by exactly the noise the gate is
meant to see through, and a baseline left at someone else's defaults is a straw man. So each tuned
baseline (EASE, repeat-then-EASE, the decayed-frequency + EASE blend) picks its settings on a
**validation split**: the ``holdout_days`` days just before the holdout's cutoff as test, everything
before them as training -- built by the same ``time_split`` and scored by the same metric code as
the holdout, so the only difference is the dates. The chosen values are then refitted on the full
training data (everything before the holdout cutoff) and scored on the holdout beside the candidate.

What is tuned, on the validation metric ``tune_metric`` (the gate's primary metric, NDCG@10):

* ``ease``: ``l2`` over ``ease_l2_grid``;
* ``repeat_then_ease``: its EASE ``l2`` over the same grid (chosen for the combined list, not reused);
* ``decayed_frequency_ease``: ``l2`` x ``half_life_days_grid`` x ``blend_weight_grid``.

Popularity (30 days), co-purchase (k=20) and repeat purchase keep design.md's fixed definitions:
they are the reference points every figure in the project is quoted against. Ties in the validation
metric go to the earlier grid entry, so a run is reproducible.

``BaselineSettings`` carries the grids and limits with embedded defaults; every value is checked up
front and a bad one is one readable line naming the setting.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from ecom_ml.evaluation.baselines import (
    CoPurchaseBaseline,
    DecayedFrequencyEaseBaseline,
    EaseBaseline,
    PopularityBaseline,
    RepeatBaseline,
    RepeatThenEaseBaseline,
    check_blend,
)
from ecom_ml.evaluation.ease import DEFAULT_MAX_ITEMS, check_l2, check_max_items
from ecom_ml.evaluation.metrics import hit_matrix, mean_metrics
from ecom_ml.evaluation.protocol import EvaluationError, Holdout, Recommender, Split, prepare_holdout, recommend_all, time_split

_METRIC = re.compile(r"^(recall|ndcg)@([1-9][0-9]*)$")


@dataclass(frozen=True)
class BaselineSettings:
    """Grids and limits of the baselines (defaults embedded; see the module doc)."""

    ease_l2_grid: tuple[float, ...] = (50.0, 100.0, 200.0, 500.0, 1000.0)
    half_life_days_grid: tuple[float, ...] = (30.0, 90.0, 180.0, 365.0, 730.0)
    blend_weight_grid: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    #: EASE models only this many most-bought products (the dense inverse is O(m^3), 8 m^2 bytes).
    ease_max_items: int = DEFAULT_MAX_ITEMS
    tune_metric: str = "ndcg@10"
    recent_days: int = 30
    k_neighbours: int = 20
    history_len: int = 20

    def __post_init__(self) -> None:
        for name in ("ease_l2_grid", "half_life_days_grid", "blend_weight_grid"):
            grid = getattr(self, name)
            if isinstance(grid, (str, bytes)) or not hasattr(grid, "__len__") or len(grid) == 0:
                raise EvaluationError(f"baseline setting {name} must be a non-empty list of numbers, got {grid!r}")
            object.__setattr__(self, name, tuple(grid))
        for l2 in self.ease_l2_grid:
            check_l2(l2, "baseline setting ease_l2_grid: each l2")
        for half_life in self.half_life_days_grid:
            check_blend(half_life, 0.5)
        for weight in self.blend_weight_grid:
            check_blend(1.0, weight)
        check_max_items(self.ease_max_items, "baseline setting ease_max_items")
        metric_k(self.tune_metric)
        for name in ("recent_days", "k_neighbours", "history_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EvaluationError(f"baseline setting {name} must be an integer >= 1, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in out.items()}


def metric_k(metric: str) -> int:
    """K of a ``recall@K`` / ``ndcg@K`` metric name, or one line saying it is not one."""
    match = _METRIC.match(metric) if isinstance(metric, str) else None
    if match is None:
        raise EvaluationError(f"baseline setting tune_metric must be 'recall@K' or 'ndcg@K', got {metric!r}")
    return int(match.group(2))


def validation_split(split: Split) -> Split:
    """The ``holdout_days`` days before ``split``'s cutoff as test, everything before them as training."""
    length = split.end - split.cutoff
    if length <= timedelta(0) or length % timedelta(days=1):
        raise EvaluationError(f"holdout [{split.cutoff.isoformat()}, {split.end.isoformat()}) is not a whole number of days")
    days = length // timedelta(days=1)
    # As long as the holdout where the training window allows it, else half of the days the window
    # holds before the holdout: a 31-day holdout on a 42-day window still gets a validation split.
    if split.train.num_rows:
        first = split.train.column("ts").cast(pa.timestamp("us", tz="UTC")).to_numpy().min()
        span = (np.datetime64(split.cutoff.replace(tzinfo=None), "us") - first) // np.timedelta64(1, "D")
        days = max(1, min(days, int(span) // 2))
    inner = time_split(split.train, (split.cutoff - timedelta(days=1)).date(), holdout_days=days)
    where = (f"validation split (test {inner.cutoff.date()}..{(inner.end - timedelta(days=1)).date()}, "
             f"the {days} days before the holdout)")
    if inner.test.num_rows == 0:
        raise EvaluationError(
            f"{where} has no customers: the baselines' hyper-parameters cannot be chosen; "
            f"the training window must hold at least 2 x {days} days of orders"
        )
    if inner.train.num_rows == 0:
        raise EvaluationError(
            f"{where} has no training orders before {inner.cutoff.date()}: the baselines' hyper-parameters "
            f"cannot be chosen; the training window must hold more than 2 x {days} days of orders"
        )
    return inner


def _score(recommended: np.ndarray, holdout: Holdout, metric: str) -> float:
    """The validation metric of a ranking, by the project's one metric definition."""
    hits = hit_matrix(recommended, holdout.relevant_rows, holdout.relevant_items)
    return mean_metrics(hits, holdout.n_relevant, (metric_k(metric),))[metric]


def _ranking(recommender: Recommender, holdout: Holdout, k: int) -> np.ndarray:
    return recommend_all(recommender, holdout.customer_ids, holdout.histories, k)


@dataclass
class _Best:
    value: float = -np.inf
    params: dict[str, float] = field(default_factory=dict)

    def offer(self, value: float, **params: float) -> None:
        if value > self.value:  # strict: ties keep the earlier grid entry
            self.value, self.params = value, params


def tune(split: Split, settings: BaselineSettings) -> dict[str, dict[str, Any]]:
    """Chosen hyper-parameters per tuned baseline, with the validation figure they reached."""
    inner = validation_split(split)
    holdout = prepare_holdout(inner, settings.history_len)
    metric, k = settings.tune_metric, metric_k(settings.tune_metric)
    as_of = inner.cutoff
    repeat = RepeatBaseline(inner.train, recent_days=settings.recent_days, as_of=as_of)
    best = {"ease": _Best(), "repeat_then_ease": _Best(), "decayed_frequency_ease": _Best()}
    for l2 in settings.ease_l2_grid:  # one inverse per l2, shared by the three baselines
        ease = EaseBaseline(inner.train, l2=l2, max_items=settings.ease_max_items,
                            recent_days=settings.recent_days, as_of=as_of)
        best["ease"].offer(_score(_ranking(ease, holdout, k), holdout, metric), l2=l2)
        combined = RepeatThenEaseBaseline(repeat, ease)
        best["repeat_then_ease"].offer(_score(_ranking(combined, holdout, k), holdout, metric), l2=l2)
        for half_life in settings.half_life_days_grid:
            blend = DecayedFrequencyEaseBaseline(inner.train, ease, half_life_days=half_life, as_of=as_of)
            rankings = blend.rank(holdout.customer_ids, holdout.histories, k, settings.blend_weight_grid)
            for weight, ranking in zip(settings.blend_weight_grid, rankings):
                best["decayed_frequency_ease"].offer(_score(ranking, holdout, metric), l2=l2,
                                                     half_life_days=half_life, weight=weight)
        del ease, combined
    chosen_on = {
        "metric": metric,
        "validation_test": [inner.cutoff.date().isoformat(), (inner.end - timedelta(days=1)).date().isoformat()],
        "validation_train_before": inner.cutoff.date().isoformat(),
        "validation_customers": int(len(holdout.customer_ids)),
    }
    grids = {"l2": list(settings.ease_l2_grid), "half_life_days": list(settings.half_life_days_grid),
             "weight": list(settings.blend_weight_grid)}
    out = {}
    for name, found in best.items():
        searched = ["l2"] if name != "decayed_frequency_ease" else ["l2", "half_life_days", "weight"]
        out[name] = {**found.params, "tuning": {**chosen_on, "value": found.value,
                                                "grid": {g: grids[g] for g in searched}}}
    return out


def all_baselines(split: Split, settings: BaselineSettings | None = None) -> list[Recommender]:
    """Every baseline of the evaluation, built from ``split.train`` with ``split.cutoff`` as "now".

    Popularity, co-purchase and repeat at design.md's settings; EASE, repeat-then-EASE and the
    decayed-frequency blend with hyper-parameters chosen on the validation split (see module doc).
    Raises ``EvaluationError`` (one line) for a validation split without customers, a catalogue EASE
    cannot model, or settings out of range.
    """
    settings = settings or BaselineSettings()
    chosen = tune(split, settings)
    train, as_of = split.train, split.cutoff
    repeat = RepeatBaseline(train, recent_days=settings.recent_days, as_of=as_of)
    eases: dict[float, EaseBaseline] = {}

    def ease(l2: float) -> EaseBaseline:  # refit once per distinct chosen l2
        if l2 not in eases:
            eases[l2] = EaseBaseline(train, l2=l2, max_items=settings.ease_max_items,
                                     recent_days=settings.recent_days, as_of=as_of)
        return eases[l2]

    plain = ease(chosen["ease"]["l2"])
    combined = RepeatThenEaseBaseline(repeat, ease(chosen["repeat_then_ease"]["l2"]))
    pick = chosen["decayed_frequency_ease"]
    blend = DecayedFrequencyEaseBaseline(train, ease(pick["l2"]), half_life_days=pick["half_life_days"],
                                         weight=pick["weight"], as_of=as_of)
    for model in (plain, combined, blend):
        model.params = {**model.params, "tuning": chosen[model.name]["tuning"]}
    return [
        PopularityBaseline(train, recent_days=settings.recent_days, as_of=as_of),
        CoPurchaseBaseline(train, k_neighbours=settings.k_neighbours, recent_days=settings.recent_days, as_of=as_of),
        repeat,
        plain,
        combined,
        blend,
    ]
