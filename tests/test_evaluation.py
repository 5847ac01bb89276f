"""The evaluation protocol, metrics, baselines and cost measures against hand-computed examples."""

from __future__ import annotations

import json
import math
import time
from datetime import date, datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from ecom_ml.evaluation.baselines import CoPurchaseBaseline, PopularityBaseline, RepeatBaseline
from ecom_ml.evaluation.tuning import all_baselines
from ecom_ml.evaluation.cost import measure_latency, model_size_bytes, single_requests
from ecom_ml.evaluation.metrics import hit_matrix, ndcg_at_k, recall_at_k
from ecom_ml.evaluation.protocol import (
    EvaluationError,
    Recommender,
    evaluate,
    evaluate_many,
    head_items,
    time_split,
)
from ecom_ml.evaluation.ranking import fill, unique_left

L2, L3, L4 = math.log2(2), math.log2(3), math.log2(4)


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def interactions(rows: list[tuple[int, int, str]]) -> pa.Table:
    """(customer, product, time) rows as an interactions table; the lines of one customer at one
    time are one order (``order_id``), as in the feature build."""
    customers, products, times = zip(*rows, strict=True) if rows else ((), (), ())
    orders = {key: i + 1 for i, key in enumerate(dict.fromkeys(zip(customers, times)))}
    return pa.table(
        {
            "customer_id": pa.array(customers, pa.int64()),
            "product_id": pa.array(products, pa.int64()),
            "ts": pa.array([_t(t) for t in times], pa.timestamp("us", tz="UTC")),
            "order_id": pa.array([orders[key] for key in zip(customers, times)], pa.int64()),
        }
    )


def _hits(recommended: list[list[int]], relevant: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    rows = np.concatenate([[i] * len(r) for i, r in enumerate(relevant)]).astype(np.int64)
    items = np.concatenate(relevant).astype(np.int64)
    return hit_matrix(np.array(recommended), rows, items), np.array([len(r) for r in relevant])


# -- metrics ----------------------------------------------------------------------------------------


def test_recall_and_ndcg_with_fewer_relevant_than_k():
    hits, n_rel = _hits([[1, 2, 3, 4]], [[3]])
    assert recall_at_k(hits, n_rel, 4)[0] == 1.0  # 1 hit / min(4, 1)
    assert ndcg_at_k(hits, n_rel, 4)[0] == pytest.approx((1 / L4) / (1 / L2))
    assert recall_at_k(hits, n_rel, 2)[0] == 0.0


def test_recall_and_ndcg_with_more_relevant_than_k():
    hits, n_rel = _hits([[1, 9, 2, 7]], [[1, 2, 3, 4, 5]])
    assert recall_at_k(hits, n_rel, 2)[0] == 0.5  # 1 hit / min(2, 5)
    assert ndcg_at_k(hits, n_rel, 2)[0] == pytest.approx(1 / (1 + 1 / L3))
    assert recall_at_k(hits, n_rel, 4)[0] == 0.5  # 2 hits / min(4, 5)
    assert ndcg_at_k(hits, n_rel, 4)[0] == pytest.approx((1 + 1 / L4) / (1 + 1 / L3 + 1 / L4 + 1 / math.log2(5)))


def test_repeated_recommendations_and_padding_never_score_twice():
    hits, n_rel = _hits([[2, 2, 2], [-1, -1, 5]], [[2, 5], [5]])
    assert hits.tolist() == [[True, False, False], [False, False, True]]
    assert recall_at_k(hits, n_rel, 3).tolist() == [0.5, 1.0]


def test_a_row_with_nothing_relevant_is_nan_not_zero():
    hits = np.zeros((1, 3), dtype=bool)
    assert math.isnan(recall_at_k(hits, np.array([0]), 3)[0])
    with pytest.raises(ValueError, match="k=5"):
        recall_at_k(hits, np.array([1]), 5)


# -- split and protocol ---------------------------------------------------------------------------

# cutoff 2024-03-08 00:00 (holdout 2024-03-08..2024-03-10), end 2024-03-11 00:00
TRAIN_ROWS = [
    (1, 10, "2024-03-01 10:00"),
    (1, 11, "2024-03-02 10:00"),
    (2, 10, "2024-03-03 10:00"),
    (2, 13, "2024-03-04 10:00"),
    (2, 12, "2024-03-07 23:59"),
]
TEST_ROWS = [
    (1, 10, "2024-03-08 00:00"),  # a repeat purchase, exactly at the cutoff: test, and relevant
    (1, 13, "2024-03-09 10:00"),
    (1, 13, "2024-03-10 10:00"),  # bought twice: one relevant product
    (3, 11, "2024-03-09 10:00"),  # customer 3 is new
    (3, 99, "2024-03-10 23:59"),  # a product never seen in training stays relevant
]
LATE_ROWS = [(2, 10, "2024-03-11 00:00")]  # after the holdout: neither train nor test


@pytest.fixture
def split():
    return time_split(interactions(TRAIN_ROWS + TEST_ROWS + LATE_ROWS), date(2024, 3, 10), holdout_days=3)


def test_time_split_has_no_leakage(split):
    assert split.cutoff == _t("2024-03-08 00:00") and split.end == _t("2024-03-11 00:00")
    train_ts = split.train.column("ts").to_pylist()
    test_ts = split.test.column("ts").to_pylist()
    assert max(train_ts) < split.cutoff <= min(test_ts) and max(test_ts) < split.end
    assert split.train.num_rows == len(TRAIN_ROWS) and split.test.num_rows == len(TEST_ROWS)
    assert split.catalogue.tolist() == [10, 11, 12, 13]
    with pytest.raises(EvaluationError):
        time_split(split.train, date(2024, 3, 10), holdout_days=0)


class Fixed:
    """Recommends a fixed list per customer and records what it was asked."""

    name = "fixed"

    def __init__(self, lists: dict[int, list[int]], default: list[int]) -> None:
        self.lists, self.default, self.seen = lists, default, {}

    def recommend(self, customer_ids, histories, k):
        for c, h in zip(customer_ids.tolist(), histories, strict=True):
            self.seen[c] = h.tolist()
        return np.array([(self.lists.get(c, self.default) + [-1] * k)[:k] for c in customer_ids.tolist()])


def test_evaluate_scores_every_test_customer_by_hand(split):
    # customer 1: relevant {10, 13}; customer 3 (new): relevant {11, 99}
    rec = Fixed({1: [13, 12]}, default=[11, 10])
    assert isinstance(rec, Recommender)
    result = evaluate(rec, split, ks=(1, 2))
    assert rec.seen == {1: [11, 10], 3: []}  # as-of-cutoff history; the new customer gets an empty one
    assert result.n_customers == 2
    # customer 1: @1 hit 13 -> 1/1; @2 -> 1/2. customer 3: @1 hit 11 -> 1/1; @2 -> 1/2
    assert result["recall@1"] == 1.0 and result["recall@2"] == 0.5
    assert result["ndcg@2"] == pytest.approx(1 / (1 + 1 / L3))
    assert result.slices["new"]["n_customers"] == 1 and result.slices["returning"]["n_customers"] == 1


def test_repeat_and_explore_recall_by_hand(split):
    # customer 1 bought {10, 11} before: relevant 10 is a repeat, 13 is new to them (explore);
    # customer 3 is new: both 11 and 99 are explore items.
    result = evaluate(Fixed({1: [13, 12]}, default=[11, 10]), split, ks=(2,))
    rep, expl = result.slices["repeat_items"], result.slices["explore_items"]
    assert (rep["n_customers"], rep["n_relevant"], expl["n_customers"], expl["n_relevant"]) == (1, 1, 2, 3)
    assert result["recall_repeat@2"] == 0.0  # customer 1's repeat item 10 is not in [13, 12]
    assert result["recall_explore@2"] == pytest.approx((1.0 + 0.5) / 2)  # 13 found; 11 of {11, 99}
    assert result.per_customer["recall@2"].tolist() == [0.5, 0.5]
    again = evaluate(Fixed({1: [10, 13]}, default=[12, 12]), split, ks=(2,))
    assert again["recall_repeat@2"] == 1.0 and again["recall_explore@2"] == pytest.approx((1.0 + 0.0) / 2)


def test_new_customers_count_with_their_fallback_not_dropped(split):
    result = evaluate(Fixed({1: [10, 13]}, default=[12, 12]), split, ks=(2,))
    assert result["recall@2"] == pytest.approx((1.0 + 0.0) / 2)  # the new customer's miss is averaged in
    assert result.slices["returning"]["recall@2"] == 1.0 and result.slices["new"]["recall@2"] == 0.0


def test_products_outside_the_training_catalogue_are_misses(split):
    result = evaluate(Fixed({}, default=[99, 11]), split, ks=(1, 2))
    assert result.out_of_catalogue == 2  # product 99 was first sold in the holdout
    assert result["recall@1"] == 0.0 and result["recall@2"] == pytest.approx((0 + 0.5) / 2)


def test_wrong_answer_shape_is_a_clear_error(split):
    class Short(Fixed):
        def recommend(self, customer_ids, histories, k):
            return super().recommend(customer_ids, histories, k)[:, :1]

    with pytest.raises(EvaluationError, match=r"expected integer product ids of shape \(2, 2\)"):
        evaluate(Short({}, [10]), split, ks=(2,))


def test_empty_holdout_is_a_clear_error():
    empty = time_split(interactions(TRAIN_ROWS), date(2024, 3, 10), holdout_days=3)
    with pytest.raises(EvaluationError, match="no test interactions"):
        evaluate(Fixed({}, [10]), empty)


def test_head_items_hold_half_the_training_interactions():
    train = interactions([(1, 5, "2024-01-01 00:00")] * 4 + [(1, 6, "2024-01-01 00:00")] * 2 + [(1, 7, "2024-01-01 00:00")] * 2)
    assert head_items(train).tolist() == [5]  # 4 of 8
    assert head_items(train, share=0.6).tolist() == [5, 6]  # ties: the lower id joins first


def test_slices_add_up_on_a_random_shop():
    rng = np.random.default_rng(7)
    n = 3000
    days = rng.integers(1, 29, n)
    customers = np.where(days > 21, rng.integers(1, 300, n), rng.integers(1, 200, n))  # 200..299 are new
    products = rng.zipf(1.5, n) % 60 + 1
    rows = [(int(c), int(p), f"2024-02-{d:02d} 12:00") for c, p, d in zip(customers, products, days, strict=True)]
    split = time_split(interactions(rows), date(2024, 2, 28), holdout_days=7)
    results = evaluate_many(all_baselines(split), split, ks=(5, 10))
    assert len(results) == 6
    for result in results:
        doc = json.loads(json.dumps(result.to_dict()))
        assert doc["recommender"] == result.recommender and set(doc["slices"]) == {
            "new", "returning", "head_items", "tail_items", "repeat_items", "explore_items"}
        new, ret = result.slices["new"], result.slices["returning"]
        assert new["n_customers"] > 0 and ret["n_customers"] > 0
        assert new["n_customers"] + ret["n_customers"] == result.n_customers
        for metric in ("recall@5", "ndcg@10"):
            weighted = (new["n_customers"] * new[metric] + ret["n_customers"] * ret[metric]) / result.n_customers
            assert weighted == pytest.approx(result[metric])
        head, tail = result.slices["head_items"], result.slices["tail_items"]
        pairs = len(set(zip(split.test.column("customer_id").to_pylist(), split.test.column("product_id").to_pylist(), strict=True)))
        assert head["n_relevant"] + tail["n_relevant"] == pairs
        assert max(head["n_customers"], tail["n_customers"]) <= result.n_customers <= head["n_customers"] + tail["n_customers"]
        assert 0.0 <= result["recall@5"] <= result["recall@10"] <= 1.0
        # repeat / explore (Li et al.): every relevant pair is one or the other; a new customer has no repeats
        rep, expl = result.slices["repeat_items"], result.slices["explore_items"]
        assert rep["n_relevant"] + expl["n_relevant"] == pairs
        assert rep["n_customers"] <= ret["n_customers"] and expl["n_customers"] >= new["n_customers"]
        assert doc["recall_repeat@10"] == pytest.approx(rep["recall@10"])
        assert doc["recall_explore@5"] == pytest.approx(expl["recall@5"])
        # per-customer values: aligned with the customers, and their mean is the headline figure
        per_unit = doc["per_unit"]
        assert per_unit["unit"] == "customer" and len(per_unit["digest"]) == 16
        for metric in ("recall@5", "ndcg@10"):
            assert len(per_unit["values"][metric]) == result.n_customers
            assert np.mean(per_unit["values"][metric]) == pytest.approx(result[metric], abs=1e-6)


# -- baselines --------------------------------------------------------------------------------------

# as_of 2024-03-31 00:00: the last 30 days start 2024-03-01 00:00
BASELINE_TRAIN = [
    (1, 1, "2024-03-10 00:00"),
    (1, 1, "2024-03-11 00:00"),
    (1, 1, "2024-03-12 00:00"),
    (1, 2, "2024-03-20 00:00"),
    (2, 1, "2024-03-05 00:00"),
    (2, 3, "2024-03-06 00:00"),
    (3, 3, "2024-03-07 00:00"),
    (3, 4, "2024-03-08 00:00"),
    (4, 2, "2024-03-09 00:00"),
    (5, 5, "2024-01-01 00:00"),  # old: all-time counts only
    (5, 5, "2024-01-02 00:00"),
    (5, 5, "2024-01-03 00:00"),
    (5, 5, "2024-01-04 00:00"),
    (5, 5, "2024-01-05 00:00"),
]
AS_OF = _t("2024-03-31 00:00")


@pytest.fixture(scope="module")
def baseline_train() -> pa.Table:
    return interactions(BASELINE_TRAIN)


def _ask(recommender, histories: dict[int, list[int]], k: int) -> list[list[int]]:
    ids = np.array(list(histories), dtype=np.int64)
    return recommender.recommend(ids, [np.array(h, dtype=np.int64) for h in histories.values()], k).tolist()


def test_popularity_counts_the_recent_days_then_all_time(baseline_train):
    # last 30 days: 1 x4, 2 x2, 3 x2, 4 x1; product 5 only before (5 all-time); ties 2/3 by all-time, then id
    pop = PopularityBaseline(baseline_train, recent_days=30, as_of=AS_OF)
    assert _ask(pop, {7: [], 1: [4]}, 5) == [[1, 2, 3, 4, 5]] * 2
    # over 100 days product 5 leads
    assert _ask(PopularityBaseline(baseline_train, recent_days=100, as_of=AS_OF), {7: []}, 2) == [[5, 1]]


def test_copurchase_cosine_summed_over_history(baseline_train):
    # customer sets: 1 {1, 2}, 2 {1, 3}, 3 {3, 4}, 4 {2}, 5 {5}; |1|=2 |2|=2 |3|=2 |4|=1
    # cos(1,2) = cos(1,3) = 1/2, cos(3,4) = 1/sqrt(2); popularity order 1, 2, 3, 4, 5
    knn = CoPurchaseBaseline(baseline_train, k_neighbours=20, as_of=AS_OF)
    assert _ask(knn, {9: [4]}, 3) == [[3, 1, 2]]  # 3 scored, then popularity without 3
    assert _ask(knn, {9: [1]}, 3) == [[2, 3, 1]]  # tie 2/3 -> lower id; no self-similarity
    assert _ask(knn, {9: [1, 4]}, 2) == [[3, 2]]  # 3: 1/2 + 0.707 beats 2: 1/2
    assert _ask(knn, {9: []}, 2) == [[1, 2]]  # cold start: popularity
    one = CoPurchaseBaseline(baseline_train, k_neighbours=1, as_of=AS_OF)
    assert _ask(one, {9: [1]}, 2) == [[2, 1]]  # product 1 keeps only neighbour 2


def test_repeat_own_items_by_frequency_then_recency(baseline_train):
    rep = RepeatBaseline(baseline_train, as_of=AS_OF)
    assert _ask(rep, {1: [2, 1]}, 4) == [[1, 2, 3, 4]]  # 1 bought 3x before 2 (1x, later); then popularity
    assert _ask(rep, {2: [3, 1]}, 2) == [[3, 1]]  # equal counts: the more recent first
    assert _ask(rep, {9: [4, 2]}, 3) == [[4, 2, 1]]  # unknown customer: their history, then popularity
    assert _ask(rep, {4: [77]}, 2) == [[2, 1]]  # product 77 is not in the catalogue
    recency = RepeatBaseline(baseline_train, half_life_days=1.0, as_of=AS_OF)
    assert _ask(recency, {1: []}, 2) == [[2, 1]]  # with a short half-life recent beats frequent


def test_baselines_are_recommenders_with_distinct_names(baseline_train):
    split = time_split(baseline_train, date(2024, 3, 20), holdout_days=5)
    baselines = all_baselines(split)
    assert all(isinstance(b, Recommender) for b in baselines)
    assert [b.name for b in baselines] == ["popularity_30d", "copurchase_knn20", "repeat", "ease",
                                           "repeat_then_ease", "decayed_frequency_ease"]


def test_ranking_helpers():
    assert unique_left(np.array([[3, -1, 3, 2], [-1, -1, -1, -1]])).tolist() == [[3, 2, -1, -1], [-1] * 4]
    assert fill(np.array([[4, -1], [-1, -1]]), np.array([1, 4, 2]), 3).tolist() == [[4, 1, 2], [1, 4, 2]]
    assert fill(np.array([[2]]), np.array([1, 2]), 3).tolist() == [[2, 1, -1]]  # both ran out


# -- cost -------------------------------------------------------------------------------------------


def test_latency_is_measured_after_warmup():
    calls = []

    def request() -> None:
        calls.append(1)
        time.sleep(0.002 if len(calls) > 5 else 0.05)  # slow first calls are warm-up, not latency

    lat = measure_latency(request, n=20, warmup=5)
    assert len(calls) == 25
    assert 2.0 <= lat["p50_ms"] <= lat["p99_ms"] < 40.0


def test_single_requests_cycle_through_customers(baseline_train):
    rep = RepeatBaseline(baseline_train, as_of=AS_OF)
    call = single_requests(rep, np.array([1, 9]), [np.array([1]), np.array([4])], k=2)
    assert [call().tolist() for _ in range(3)] == [[[1, 2]], [[4, 1]], [[1, 2]]]
    lat = measure_latency(call, n=10, warmup=1)
    assert 0 < lat["p50_ms"] <= lat["p99_ms"]


def test_model_size_of_file_dir_and_uri(tmp_path):
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved.pb").write_bytes(b"x" * 100)
    (model / "variables" / "v.data").write_bytes(b"y" * 28)
    assert model_size_bytes(model) == 128
    assert model_size_bytes(model.as_uri()) == 128
    assert model_size_bytes(str(model / "saved.pb")) == 100
    with pytest.raises(FileNotFoundError):
        model_size_bytes(tmp_path / "nothing")
