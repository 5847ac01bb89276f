"""Propensity metrics and baselines: discrimination, calibration, slices, on the holdout cutoff.

Metrics of one set of probabilities ``p`` against the labels ``y`` (1 = bought in the label
window), over the holdout's customers; scikit-learn computes the standard ones:

* ``auc`` (``roc_auc_score``) and ``pr_auc`` (``average_precision_score``): discrimination;
  undefined when every label is the same (no purchase at all in the label window, or everyone
  bought) — then the value is None and ``undefined`` says why, so the gate reports it instead of
  passing on a missing number.
* ``log_loss`` (``log_loss``, probabilities clipped to [1e-7, 1 - 1e-7]) and ``brier``
  (``brier_score_loss``): proper scores, lower is better.
* ``ece``: expected calibration error over 10 equal-width bins, ``sum_b n_b/n |mean p_b - rate_b|``;
  the reliability table (``tables.reliability``) lists each bin's count, mean predicted and rate.
* ``base_rate`` and ``mean_prediction``: a gap between them is miscalibration in the large.

Baselines (what the CRM would do without a model):

* ``recency_rank``: customers ranked by days since their last purchase (most recent first); a rank,
  not a probability, so it has AUC and PR-AUC but no log-loss, Brier or ECE.
* ``rfm_logistic``: scikit-learn's logistic regression on log recency, log frequency (all time, 90
  and 30 days), log monetary value and log tenure, fitted at the newest training cutoff (its label
  window ends at the holdout start), standardised features.
* ``base_rate``: every customer gets the purchase rate of that cutoff.

Slices: ``new`` (first order within 30 days of the cutoff) vs ``established``; ``high_spend`` vs
``low_spend`` (spend before the cutoff above / at most the holdout's median).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ecom_ml.errors import EcomError

BINS = 10
EPS = 1e-7
#: The static features the RFM logistic regression reads (issue 16 / design.md's reference).
RFM_FEATURES = ("log_recency_days", "log_orders", "log_orders_90d", "log_orders_30d", "log_spend", "log_tenure_days")


class PropensityEvaluationError(EcomError):
    """The holdout cannot be scored at all (no customer); the message names the day and cutoff."""


def reliability(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> tuple[float, list[list[Any]]]:
    """(ECE, rows): rows ``[bin, low, high, customers, mean_predicted, observed_rate]`` of non-empty bins."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(y) == 0:
        return float("nan"), []
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    mean_p = np.bincount(which, weights=p, minlength=bins)
    positives = np.bincount(which, weights=y, minlength=bins)
    rows, ece = [], 0.0
    for b in range(bins):
        if count[b] == 0:
            continue
        mp, rate = mean_p[b] / count[b], positives[b] / count[b]
        ece += count[b] / len(y) * abs(mp - rate)
        rows.append([b + 1, round(b / bins, 2), round((b + 1) / bins, 2), int(count[b]), round(float(mp), 4),
                     round(float(rate), 4)])
    return float(ece), rows


def scores(y: np.ndarray, p: np.ndarray, *, probabilities: bool = True) -> dict[str, Any]:
    """The module's metrics of scores ``p`` (probabilities unless ``probabilities`` is False: a rank)."""
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    out: dict[str, Any] = {"customers": int(len(y)), "positives": int(y.sum()),
                           "base_rate": float(y.mean()) if len(y) else None}
    undefined: dict[str, str] = {}
    if len(y) == 0:
        why = "no customer in this set"
        out.update(auc=None, pr_auc=None)
        undefined.update(auc=why, pr_auc=why)
    elif y.min() == y.max():
        why = ("no customer bought in the label window" if y.max() == 0 else "every customer bought in the label window")
        out.update(auc=None, pr_auc=None)
        undefined.update(auc=f"{why}: a ranking cannot be judged", pr_auc=f"{why}: a ranking cannot be judged")
    else:
        out["auc"] = float(roc_auc_score(y, p))
        out["pr_auc"] = float(average_precision_score(y, p))
    if probabilities:
        if len(y):
            clipped = np.clip(p, EPS, 1 - EPS)
            out["log_loss"] = float(log_loss(y, clipped, labels=[0, 1]))
            out["brier"] = float(brier_score_loss(y, p, pos_label=1))
            out["mean_prediction"] = float(p.mean())
            ece, rows = reliability(y, p)
            out["ece"] = ece
            out["tables"] = {"reliability": {
                "title": f"Reliability ({BINS} bins of the predicted probability)",
                "columns": ["bin", "from", "to", "customers", "mean predicted", "observed rate"], "rows": rows}}
        else:
            for key in ("log_loss", "brier", "ece"):
                out[key] = None
                undefined[key] = "no customer in this set"
    if undefined:
        out["undefined"] = undefined
    return out


def per_customer(y: np.ndarray, p: np.ndarray) -> dict[str, list[float]]:
    """Per-customer log-loss and squared error (their means are ``log_loss`` and ``brier``): what the
    gate's paired bootstrap resamples."""
    y = np.asarray(y, dtype=np.float64)
    clipped = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    loss = -(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
    return {"log_loss": [round(float(v), 6) for v in loss],
            "brier": [round(float(v), 6) for v in (np.asarray(p, dtype=np.float64) - y) ** 2]}


def slice_masks(examples: Any) -> dict[str, np.ndarray]:
    """Row masks: new vs established customers, high vs low spend (above / at most the median)."""
    median = float(np.median(examples.spend)) if len(examples) else 0.0
    high = examples.spend > median
    return {"new": examples.new.astype(bool), "established": ~examples.new.astype(bool),
            "high_spend": high, "low_spend": ~high}


def score_with_slices(examples: Any, p: np.ndarray, *, probabilities: bool = True) -> dict[str, Any]:
    """Overall metrics, ``slices`` (the headline metrics of each) and the per-customer values."""
    from ecom_ml.evaluation.protocol import units_digest

    result = scores(examples.label, p, probabilities=probabilities)
    result["slices"] = {}
    for name, mask in slice_masks(examples).items():
        part = scores(examples.label[mask], p[mask], probabilities=probabilities)
        result["slices"][name] = {key: part[key] for key in ("customers", "base_rate", "auc", "log_loss", "ece")
                                  if key in part}
        if part.get("undefined"):
            result["slices"][name]["undefined"] = part["undefined"]
    if probabilities and len(examples):
        result["per_unit"] = {"unit": "customer", "digest": units_digest(examples.customer_ids),
                              "values": per_customer(examples.label, p)}
    return result


class RfmLogistic:
    """The RFM logistic-regression baseline (scikit-learn), fitted on one cutoff's examples."""

    def __init__(self, examples: Any) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.columns = [list(_static_names()).index(name) for name in RFM_FEATURES]
        self.fitted = examples.label.min() != examples.label.max()
        self.rate = float(examples.label.mean()) if len(examples) else 0.5
        if self.fitted:
            self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
            self.model.fit(examples.static[:, self.columns], examples.label)

    def predict(self, examples: Any) -> np.ndarray:
        if not self.fitted:  # one class only at the fitting cutoff: the rate is all it learned
            return np.full(len(examples), self.rate)
        return self.model.predict_proba(examples.static[:, self.columns])[:, 1]


def _static_names() -> tuple[str, ...]:
    from ecom_ml.propensity.features import STATIC

    return STATIC


def baselines(fit_examples: Any, holdout: Any) -> dict[str, dict[str, Any]]:
    """Every baseline's results on ``holdout``; ``fit_examples``: the newest training cutoff's."""
    rate = float(fit_examples.label.mean()) if len(fit_examples) else 0.5
    return {
        "recency_rank": score_with_slices(holdout, -holdout.recency_days, probabilities=False),
        "rfm_logistic": score_with_slices(holdout, RfmLogistic(fit_examples).predict(holdout)),
        "base_rate": score_with_slices(holdout, np.full(len(holdout), rate)),
    }


def evaluate_holdout(facts: Any, params: Any, models: Mapping[str, Any]) -> dict[str, Any]:
    """Baselines and every model (``role -> PropensityModel``) on the holdout cutoff of ``params``.

    A holdout without customers cannot be scored and is one line; one without any purchase is
    scored (log-loss and calibration are defined) with AUC undefined, which the gate reports.
    """
    from ecom_ml.propensity.features import examples_at, holdout_examples

    cutoff = params.holdout_start
    holdout = holdout_examples(facts, params)
    if len(holdout) == 0:
        raise PropensityEvaluationError(
            f"propensity {params.day}: no customer with an order before the holdout cutoff {cutoff.date()} in the "
            f"{params.window_days}-day window: nothing to score")
    latest = params.training_cutoffs()[0]
    fit_examples = examples_at(facts, latest, params.holdout_days, params.history_len, cutoff)
    out: dict[str, Any] = {
        "customers": int(len(holdout)), "label_days": params.holdout_days, "cutoff": cutoff.isoformat(),
        "base_rate": float(holdout.label.mean()), "label_purchases": holdout.label_purchases,
        "baseline_fit_cutoff": latest.isoformat(),
        "baselines": baselines(fit_examples, holdout),
    }
    for role, model in models.items():
        examples = holdout if model.history_len == params.history_len else holdout_examples(facts, params, model.history_len)
        out[role] = score_with_slices(examples, model.predict(examples))
    return out
