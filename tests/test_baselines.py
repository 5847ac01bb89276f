"""The classical baselines a reviewer asks for (EASE, repeat-then-EASE, decayed frequency + EASE) and
their tuning on a validation split before the holdout. Pure numpy/pyarrow: no database needed.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from ecom_ml.evaluation.baselines import (
    DecayedFrequencyEaseBaseline,
    EaseBaseline,
    RepeatBaseline,
    RepeatThenEaseBaseline,
)
from ecom_ml.evaluation.ease import ease_weights
from ecom_ml.evaluation.protocol import EvaluationError, Split, evaluate, prepare_holdout, time_split
from ecom_ml.evaluation.tuning import BaselineSettings, all_baselines, tune, validation_split
from test_evaluation import AS_OF, BASELINE_TRAIN, _ask, interactions


@pytest.fixture(scope="module")
def train() -> pa.Table:
    return interactions(BASELINE_TRAIN)


def _random_shop(seed: int = 3, days: int = 42, n: int = 6000) -> pa.Table:
    """Customers with favourite products they come back for, plus popular items: a small retail shop."""
    rng = np.random.default_rng(seed)
    customers = rng.integers(1, 400, n)
    favourite = (customers * 7) % 50 + 1
    products = np.where(rng.random(n) < 0.5, favourite + rng.integers(0, 3, n), rng.zipf(1.6, n) % 80 + 1)
    day = rng.integers(0, days, n)
    rows = [(int(c), int(p), f"{date(2024, 1, 1) + timedelta(days=int(d))} 12:00")
            for c, p, d in zip(customers, products, day, strict=True)]
    return interactions(rows)


# -- EASE ---------------------------------------------------------------------------------------------


def test_ease_closed_form_is_the_ridge_regression_of_each_item_on_the_others():
    rng = np.random.default_rng(0)
    x = (rng.random((40, 6)) < 0.35).astype(np.float64)
    b = ease_weights(sp.csr_matrix(x), l2=3.0)
    assert np.allclose(np.diag(b), 0.0)
    for j in range(6):  # independent check: column j = ridge regression of item j on the other items
        others = np.delete(np.arange(6), j)
        a = x[:, others]
        expected = np.linalg.solve(a.T @ a + 3.0 * np.eye(5), a.T @ x[:, j])
        assert np.allclose(b[others, j], expected, atol=1e-10)


def test_ease_baseline_scores_purchase_rows_and_falls_back_to_popularity(train):
    ease = EaseBaseline(train, l2=1.0, as_of=AS_OF)
    # customer 3 bought {3, 4}; products 3 and 4 only co-occur with 1 (via customer 2's {1, 3})
    ids = ease.index.ids
    scores = ease.scores(np.array([3, 99]), [np.array([], dtype=np.int64), np.array([], dtype=np.int64)])
    assert scores.shape == (2, len(ids)) and np.isneginf(scores[1]).all()  # unknown customer, empty history
    top = _ask(ease, {3: [], 99: []}, 5)
    assert top[1] == [1, 2, 3, 4, 5]  # cold start: popularity
    order = np.lexsort((ids, -scores[0]))
    assert top[0] == ids[order].tolist()  # exactly EASE's order (ties by id)
    assert ease.params["l2"] == 1.0 and ease.params["modelled_items"] == 5


def test_ease_models_only_the_most_bought_items_when_capped(train):
    ease = EaseBaseline(train, l2=1.0, max_items=2, as_of=AS_OF)
    # customers per product: 1 -> 2, 2 -> 2, 3 -> 2, 4 -> 1, 5 -> 1: the two kept are 1 and 2 (ties: lower id)
    assert ease.index.decode(ease.items).tolist() == [1, 2] and ease.weights.shape == (2, 2)
    assert ease.params["modelled_items"] == 2 and ease.params["catalogue"] == 5
    scores = ease.scores(np.array([2]), [np.array([], dtype=np.int64)])
    assert np.isfinite(scores[0, ease.items]).all() and np.isneginf(np.delete(scores[0], ease.items)).all()


def test_one_product_catalogue_is_one_readable_line():
    one = interactions([(1, 7, "2024-03-01 10:00"), (2, 7, "2024-03-02 10:00")])
    with pytest.raises(EvaluationError, match="EASE needs a catalogue of at least 2 products, got 1") as info:
        EaseBaseline(one)
    assert "\n" not in str(info.value)


# -- repeat-then-EASE and the decayed-frequency blend ------------------------------------------------


def test_repeat_then_ease_puts_own_items_first_then_ease(train):
    repeat, ease = RepeatBaseline(train, as_of=AS_OF), EaseBaseline(train, l2=1.0, as_of=AS_OF)
    combined = RepeatThenEaseBaseline(repeat, ease)
    got = _ask(combined, {1: [], 77: []}, 4)
    own = _ask(repeat, {1: []}, 2)[0]  # customer 1: product 1 (3x), then 2
    assert got[0][:2] == own == [1, 2]
    ease_order = [p for p in _ask(ease, {1: []}, 5)[0] if p not in own]
    assert got[0][2:] == ease_order[:2]
    assert got[1] == [1, 2, 3, 4]  # unknown customer without history: popularity
    other = EaseBaseline(interactions(BASELINE_TRAIN[:4]), l2=1.0)
    with pytest.raises(EvaluationError, match="different training data"):
        RepeatThenEaseBaseline(repeat, other)


def test_decayed_frequency_counts_one_per_order_and_decays(train):
    # customer 8: product 1 three times in ONE order (one count), product 2 in two orders long ago,
    # product 3 in one recent order.
    rows = BASELINE_TRAIN + [(8, 1, "2024-03-30 10:00")] * 3 + [
        (8, 2, "2024-01-10 10:00"), (8, 2, "2024-01-11 10:00"), (8, 3, "2024-03-29 10:00")]
    table = interactions(rows)
    ease = EaseBaseline(table, l2=1.0, as_of=AS_OF)
    slow = DecayedFrequencyEaseBaseline(table, ease, half_life_days=10_000, weight=1.0, as_of=AS_OF)
    assert _ask(slow, {8: []}, 3) == [[2, 1, 3]]  # ~2 orders beat 1 order (three lines) and 1 order
    fast = DecayedFrequencyEaseBaseline(table, ease, half_life_days=5, weight=1.0, as_of=AS_OF)
    assert _ask(fast, {8: []}, 3) == [[1, 3, 2]]  # with a short half-life the recent orders win
    freq = fast.frequency.rows(np.array([8])).toarray()[0]
    assert freq.max() == pytest.approx(1.0)  # divided by the customer's maximum
    # product 3's order is one day older than product 1's: relative weight 0.5 ** (1 day / 5 days)
    assert freq[ease.index.codes(np.array([3]))[0]] == pytest.approx(0.5 ** (1 / 5))
    pure_ease = DecayedFrequencyEaseBaseline(table, ease, half_life_days=5, weight=0.0, as_of=AS_OF)
    assert _ask(pure_ease, {8: []}, 5) == _ask(ease, {8: []}, 5)  # weight 0: EASE's order
    assert _ask(fast, {99: []}, 3) == [[1, 3, 2]]  # new customer: popularity (last 30 days: 7, 3, 2 lines)


@pytest.mark.parametrize(("half_life", "weight", "expected"), [
    (0.0, 0.5, "half_life_days must be > 0"),
    (30.0, 1.5, "weight must be in [0, 1]"),
    (math.nan, 0.5, "half_life_days must be a number"),
])
def test_blend_settings_out_of_range(train, half_life, weight, expected):
    ease = EaseBaseline(train, l2=1.0)
    with pytest.raises(EvaluationError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        DecayedFrequencyEaseBaseline(train, ease, half_life_days=half_life, weight=weight)


# -- tuning on the validation split ------------------------------------------------------------------


@pytest.mark.parametrize(("change", "expected"), [
    ({"ease_l2_grid": (100.0, 0.0)}, "ease_l2_grid: each l2 must be a positive number, got 0.0"),
    ({"ease_l2_grid": ()}, "ease_l2_grid must be a non-empty list"),
    ({"blend_weight_grid": (0.5, 2.0)}, "weight must be in [0, 1], got 2.0"),
    ({"half_life_days_grid": (-1.0,)}, "half_life_days must be > 0"),
    ({"ease_max_items": 1}, "ease_max_items must be an integer >= 2"),
    ({"tune_metric": "mrr"}, "tune_metric must be 'recall@K' or 'ndcg@K'"),
    ({"recent_days": 0}, "recent_days must be an integer >= 1"),
])
def test_bad_baseline_settings_are_one_line(change, expected):
    with pytest.raises(EvaluationError) as info:
        BaselineSettings(**change)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_validation_split_is_the_same_length_just_before_the_holdout():
    shop = _random_shop()
    split = time_split(shop, date(2024, 2, 11), holdout_days=7)
    inner = validation_split(split)
    assert inner.end == split.cutoff and inner.cutoff == split.cutoff - timedelta(days=7)
    assert inner.train.num_rows + inner.test.num_rows == split.train.num_rows  # only what precedes the holdout
    assert max(inner.train.column("ts").to_pylist()) < inner.cutoff


def test_a_validation_split_without_customers_is_one_readable_line():
    # orders on Jan 1-3 and in the holdout only: nothing in the 7 days before the holdout
    rows = [(1, 1, "2024-01-01 10:00"), (2, 2, "2024-01-03 10:00"), (1, 2, "2024-01-25 10:00")]
    split = time_split(interactions(rows), date(2024, 1, 28), holdout_days=7)
    with pytest.raises(EvaluationError) as info:
        all_baselines(split)
    message = str(info.value)
    assert "validation split (test 2024-01-15..2024-01-21, the 7 days before the holdout) has no customers" in message
    assert "\n" not in message
    only_validation = time_split(interactions([(1, 1, "2024-01-18 10:00"), (1, 2, "2024-01-25 10:00")]),
                                 date(2024, 1, 28), holdout_days=7)
    # Three days of training data before the holdout: the validation split shrinks to one day
    # (half of what there is), which has no customers here — still one line.
    with pytest.raises(EvaluationError, match=r"validation split \(test 2024-01-21\.\.2024-01-21, the 1 days "
                                              r"before the holdout\) has no customers"):
        all_baselines(only_validation)


def test_tuning_never_looks_at_the_holdout_and_picks_the_validation_best():
    shop = _random_shop()
    split = time_split(shop, date(2024, 2, 11), holdout_days=7)
    settings = BaselineSettings(ease_l2_grid=(1.0, 30.0, 1000.0), half_life_days_grid=(3.0, 300.0),
                                blend_weight_grid=(0.2, 0.8))
    chosen = tune(split, settings)
    # Replace the holdout by something else entirely: the choice must not move.
    scrambled = Split(train=split.train, test=split.test.slice(0, 5), cutoff=split.cutoff, end=split.end)
    assert tune(scrambled, settings) == chosen
    # The chosen EASE l2 is the grid's best on the validation split, by the evaluation's own scoring.
    inner = validation_split(split)
    holdout = prepare_holdout(inner)
    scores = {l2: evaluate(EaseBaseline(inner.train, l2=l2, as_of=inner.cutoff), inner, ks=(10,),
                           holdout=holdout)["ndcg@10"] for l2 in settings.ease_l2_grid}
    assert chosen["ease"]["l2"] == max(scores, key=scores.get)
    assert chosen["ease"]["tuning"]["value"] == pytest.approx(max(scores.values()))
    blend = chosen["decayed_frequency_ease"]
    assert blend["half_life_days"] in (3.0, 300.0) and blend["weight"] in (0.2, 0.8)
    assert blend["tuning"]["validation_test"] == ["2024-01-29", "2024-02-04"]


def test_all_baselines_refit_the_chosen_settings_on_the_full_training_data():
    shop = _random_shop()
    split = time_split(shop, date(2024, 2, 11), holdout_days=7)
    settings = BaselineSettings(ease_l2_grid=(1.0, 1000.0), half_life_days_grid=(300.0,), blend_weight_grid=(0.7,))
    baselines = {b.name: b for b in all_baselines(split, settings)}
    chosen = tune(split, settings)
    ease = baselines["ease"]
    assert ease.params["l2"] == chosen["ease"]["l2"] and ease.params["tuning"] == chosen["ease"]["tuning"]
    assert len(ease.index) == len(split.catalogue)  # refitted on everything before the cutoff
    results = {r.recommender: r for r in (evaluate(b, split) for b in baselines.values())}
    assert results["decayed_frequency_ease"].params["weight"] == 0.7
    # On a shop whose customers return to their favourites, own items first beats EASE alone.
    assert results["repeat_then_ease"]["ndcg@10"] > results["ease"]["ndcg@10"]
    narrower = replace(settings, ease_max_items=10)
    assert {b.name: b for b in all_baselines(split, narrower)}["ease"].params["modelled_items"] == 10
