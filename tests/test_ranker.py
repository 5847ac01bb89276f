"""The learned ranker (ecom_ml.models.ranker): it learns what the baselines cannot, and never sees the holdout.

Real Keras on the CPU; a small generated shop whose customers re-buy each of their products on a
schedule of its own, so *when* an item is due -- not how often it was bought -- decides the next week.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ecom_ml.evaluation.baselines import RepeatBaseline
from ecom_ml.evaluation.protocol import evaluate, prepare_holdout, time_split
from ecom_ml.models.ranker import LearnedRanker, RankerError, RankerParams

START = datetime(2024, 1, 1, tzinfo=timezone.utc)
LAST = date(2024, 5, 29)  # 150 days


def _scheduled_shop(seed: int = 0, customers: int = 150, per_customer: int = 16) -> pa.Table:
    """Each customer re-buys each of their products every ``period`` days (7..70), from a random phase."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[int, int, datetime, int]] = []
    order = 0
    for c in range(1, customers + 1):
        products = rng.choice(np.arange(1, 121), per_customer, replace=False)
        periods = rng.integers(7, 71, per_customer)
        phases = rng.integers(0, 70, per_customer)
        for p, period, phase in zip(products, periods, phases, strict=True):
            for day in range(int(phase), 150, int(period)):
                order += 1
                rows.append((c, int(p), START + timedelta(days=day, hours=10), order))
    c, p, t, o = zip(*rows, strict=True)
    return pa.table({
        "customer_id": pa.array(c, pa.int64()), "product_id": pa.array(p, pa.int64()),
        "ts": pa.array(t, pa.timestamp("us", tz="UTC")), "quantity": pa.array([1] * len(c), pa.int32()),
        "order_id": pa.array(o, pa.int64()),
    })


PARAMS = RankerParams(label_days=7, n_windows=6, epochs=8, n_ease=20, ease_l2=50.0, hidden=32)


@pytest.fixture(scope="module")
def trained():
    split = time_split(_scheduled_shop(), LAST, holdout_days=7)
    return split, LearnedRanker(split.train, split.cutoff, PARAMS)


def test_the_ranker_learns_when_an_item_is_due(trained):
    split, ranker = trained
    holdout = prepare_holdout(split)
    learned = evaluate(ranker, split, holdout=holdout)
    repeat = evaluate(RepeatBaseline(split.train, as_of=split.cutoff), split, holdout=holdout)
    # Counts favour the short-period items; only "days since last vs the item's interval" finds the due ones.
    assert learned["ndcg@10"] > repeat["ndcg@10"] + 0.1, (learned["ndcg@10"], repeat["ndcg@10"])
    assert learned.params["train_examples"] == ranker.train_examples > 0
    assert learned.out_of_catalogue == 0


def test_new_customers_get_popularity_and_every_row_has_k_items(trained):
    split, ranker = trained
    known = int(ranker._ids[0])
    got = ranker.recommend(np.array([known, 10_000]), [np.zeros(0, dtype=np.int64)] * 2, 10)
    assert got.shape == (2, 10) and (got != -1).all()
    assert got[1].tolist() == ranker.index.decode(ranker.popular[:10]).tolist()
    assert len(set(got[0].tolist())) == 10


def test_training_data_past_the_cutoff_is_refused():
    shop = _scheduled_shop(customers=20)
    split = time_split(shop, LAST, holdout_days=7)
    with pytest.raises(RankerError, match="reach past the cutoff"):
        LearnedRanker(shop, split.cutoff, PARAMS)


def test_bad_settings_and_no_labelled_window_are_one_line():
    with pytest.raises(RankerError, match="ranker setting n_ease must be an integer >= 1, got 0"):
        RankerParams(n_ease=0)
    with pytest.raises(RankerError, match="learning_rate must be in"):
        RankerParams(learning_rate=2.0)
    shop = _scheduled_shop(customers=5)
    # One day of data: even windows shrunk to half the history (1 day) have nothing before them.
    early = datetime(2024, 1, 2, tzinfo=timezone.utc)
    before = shop.filter(pc.less(shop.column("ts"), pa.scalar(early, pa.timestamp("us", tz="UTC"))))
    with pytest.raises(RankerError, match="no labelled window of 1 days before 2024-01-02") as info:
        LearnedRanker(before, early, PARAMS)
    assert "\n" not in str(info.value)
