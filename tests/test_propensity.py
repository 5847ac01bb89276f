"""The propensity kind's parts on hand-built orders, every expected value worked out by hand: features
as of a cutoff (weekly sequence, RFM, tenure, refunds), the label window, rolling cutoffs that never
reach the holdout, metrics and the reliability table, and the bad inputs (no customers, no purchase
in the label window, a customer whose every order was refunded) as one readable line or a gate that
says why."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest

from ecom_ml.gate import GateConfig, evaluate_gate
from ecom_ml.propensity.evaluation import (PropensityEvaluationError, RfmLogistic, evaluate_holdout, reliability,
                                           scores)
from ecom_ml.propensity.features import (CHANNELS, STATIC, Facts, PropensityFeatureError, PropensityParams,
                                         build_features, examples_at, holdout_examples)

TS = pa.timestamp("us", tz="UTC")
# Window 2024-01-01 .. 2024-03-30 (90 days); the 30-day holdout starts Friday 2024-03-01.
PARAMS = PropensityParams(day=date(2024, 3, 30), window_days=90, holdout_days=30, history_len=4)
H = datetime(2024, 3, 1, tzinfo=timezone.utc)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


ORDERS = [  # order_id, customer, created, status now, updated (when it reached that status)
    (1, 10, utc(2024, 2, 27, 9), "delivered", None),  # customer 10: 1 day + a bit before H
    (2, 10, utc(2024, 2, 20, 9), "delivered", None),  # the week before
    (3, 10, utc(2024, 1, 5, 9), "delivered", None),  # outside the 4-week sequence, inside the window
    (4, 10, utc(2024, 3, 5, 9), "delivered", None),  # in the label window: label 1
    (5, 20, utc(2024, 2, 28, 9), "refunded", utc(2024, 2, 29)),  # customer 20: every order refunded
    (6, 20, utc(2024, 2, 10, 9), "cancelled", utc(2024, 2, 11)),
    (7, 30, utc(2024, 2, 25, 9), "refunded", utc(2024, 3, 10)),  # refunded after H: a purchase at H
    (8, 30, utc(2024, 3, 31, 1), "delivered", None),  # after the label window (and the window): ignored
    (9, 40, utc(2024, 2, 15, 9), "delivered", None),  # customer 40 buys in the window, refunded later
    (10, 40, utc(2024, 3, 12, 9), "refunded", utc(2024, 3, 20)),
    (11, 50, utc(2024, 3, 3, 9), "delivered", None),  # customer 50: first order after H, not scored
    (12, None, utc(2024, 2, 26, 9), "delivered", None),  # no customer: cannot be attributed
]
LINES = [  # order, product, quantity, unit price
    (1, 1, 2, 5.0), (1, 2, 1, 10.0), (2, 1, 3, 5.0), (3, 3, 1, 4.0), (4, 1, 1, 5.0),
    (5, 1, 4, 5.0), (6, 2, 1, 10.0), (7, 3, 2, 4.0), (8, 1, 1, 5.0), (9, 2, 1, 10.0), (10, 2, 1, 10.0),
    (11, 1, 1, 5.0), (12, 1, 9, 5.0),
]


def tables(orders=ORDERS, lines=LINES) -> dict[str, pa.Table]:
    history = []
    for o, _, created, status, updated in orders:
        if updated is None:
            history.append((o, status, created))
        else:  # placed as an order, later cancelled or refunded
            history += [(o, "delivered", created), (o, status, updated)]
    return {
        "orders": pa.table({"order_id": pa.array([o[0] for o in orders], pa.int64()),
                            "customer_id": pa.array([o[1] for o in orders], pa.int64()),
                            "status": [o[3] for o in orders], "created_at": pa.array([o[2] for o in orders], TS),
                            "updated_at": pa.array([o[4] or o[2] for o in orders], TS)}),
        "order_history": pa.table({"order_id": pa.array([h[0] for h in history], pa.int64()),
                                   "status": [h[1] for h in history], "updated_at": pa.array([h[2] for h in history], TS)}),
        "order_items": pa.table({"order_id": pa.array([x[0] for x in lines], pa.int64()),
                                 "product_id": pa.array([x[1] for x in lines], pa.int64()),
                                 "quantity": pa.array([x[2] for x in lines], pa.int32()),
                                 "unit_price": pa.array([x[3] for x in lines], pa.float64())}),
    }


def facts(orders=ORDERS, lines=LINES, params: PropensityParams = PARAMS) -> Facts:
    built, _ = build_features(tables(orders, lines), params)
    return Facts.from_tables(built)


def row(examples, customer: int) -> int:
    return int(np.flatnonzero(examples.customer_ids == customer)[0])


def test_features_are_as_of_the_cutoff_weekly_sequence_rfm_and_refunds():
    built, counts = build_features(tables(), PARAMS)
    # Order 8 is after the window; order 12 has no customer (its line is counted, not attributed).
    assert counts["lines_without_customer"] == 1 and counts["orders"] == 10 and counts["customers"] == 5
    ex = holdout_examples(Facts.from_tables(built), PARAMS)
    assert PARAMS.holdout_start == H
    assert ex.customer_ids.tolist() == [10, 20, 30, 40]  # 50's first order is after H
    seq = dict(zip(CHANNELS, np.moveaxis(ex.sequence[row(ex, 10)], -1, 0), strict=True))
    # Weeks end at H: position 3 = Feb 23..29 (order 1), position 2 = Feb 16..22 (order 2).
    assert seq["orders"].tolist() == [0, 0, 1, 1]
    assert seq["units"].tolist() == [0, 0, 3, 3] and seq["spend"].tolist() == [0, 0, 15, 20]
    assert seq["products"].tolist() == [0, 0, 1, 2] and seq["refunds"].tolist() == [0, 0, 0, 0]
    static = dict(zip(STATIC, ex.static[row(ex, 10)], strict=True))
    assert static["log_orders"] == pytest.approx(np.log1p(3)) and static["log_orders_30d"] == pytest.approx(np.log1p(2))
    assert static["log_spend"] == pytest.approx(np.log1p(39)) and static["has_purchase"] == 1
    assert static["log_recency_days"] == pytest.approx(np.log1p(2 + 15 / 24), rel=1e-5)
    assert static["log_tenure_days"] == pytest.approx(np.log1p(55 + 15 / 24), rel=1e-5)
    # Purchase days 2, 9 and 55 days back: gaps 7 and 46, mean 26.5; overdue = recency / mean gap.
    assert static["log_mean_gap_days"] == pytest.approx(np.log1p(26.5))
    assert static["log_overdue"] == pytest.approx(np.log1p((2 + 15 / 24) / 26.5), rel=1e-5)
    # Customer 20: both orders removed before H -> two refunds, no purchase; recency falls back to tenure.
    r20 = row(ex, 20)
    assert ex.sequence[r20, :, CHANNELS.index("refunds")].tolist() == [0, 1, 0, 1]
    assert ex.sequence[r20, :, CHANNELS.index("orders")].sum() == 0 and ex.spend[r20] == 0
    assert ex.static[r20, STATIC.index("has_purchase")] == 0 and ex.static[r20, STATIC.index("refund_share")] == 1
    assert ex.static[r20, STATIC.index("log_mean_gap_days")] == 0  # no purchase day, no rhythm
    assert ex.recency_days[r20] == pytest.approx(19 + 15 / 24)
    # Customer 30's order was refunded only after H: at H it was a purchase.
    assert ex.sequence[row(ex, 30), 3, CHANNELS.index("orders")] == 1 and ex.spend[row(ex, 30)] == 8
    assert ex.new.tolist() == [False, True, True, True]


def test_label_window_and_labels_as_known_at_a_moment():
    f = facts()
    ex = holdout_examples(f, PARAMS)
    # 10 bought on Mar 5; 40's Mar 12 order is refunded now (today's state: not a purchase); 30's order
    # on Mar 31 is after the label window [Mar 1, Mar 31).
    assert dict(zip(ex.customer_ids.tolist(), ex.label.tolist(), strict=True)) == {10: 1, 20: 0, 30: 0, 40: 0}
    # As known on Mar 15 (before 40's refund) the Mar 12 order was a purchase.
    known = examples_at(f, H, 30, 4, known_at=utc(2024, 3, 15))
    assert known.label[row(known, 40)] == 1
    # The window is [cutoff, cutoff + days): 5 days reach order 4 (Mar 5 09:00), 4 days do not.
    assert examples_at(f, H, 5, 4).label.tolist() == [1, 0, 0, 0]
    assert examples_at(f, H, 4, 4).label.sum() == 0


def test_nothing_after_the_cutoff_changes_the_features_and_training_labels_never_reach_the_holdout():
    later = [*ORDERS, (13, 10, utc(2024, 3, 2), "delivered", None), (14, 20, utc(2024, 3, 1), "refunded", utc(2024, 3, 2)),
             (15, 10, utc(2024, 2, 27, 10), "cancelled", utc(2024, 3, 1, 0, 0, 1))]
    lines = [*LINES, (13, 3, 50, 4.0), (14, 1, 1, 5.0), (15, 2, 7, 10.0)]
    a, b = holdout_examples(facts(), PARAMS), holdout_examples(facts(later, lines), PARAMS)
    # Order 15 was placed before H and cancelled after it: it was a purchase at H in both worlds.
    assert a.customer_ids.tolist() == b.customer_ids.tolist()
    b_seq = b.sequence.copy()
    b_seq[row(b, 10), 3] -= [1, 7, 70, 0, 0]  # take order 15 out (its product was in order 1 already)
    assert np.array_equal(a.sequence, b_seq) and a.spend[row(a, 20)] == b.spend[row(b, 20)]
    # 90 days: the newest cutoff is Jan 31 (its label window ends exactly at the holdout start); a
    # short window keeps half its 30 days before it as history (from Jan 16).
    assert PARAMS.training_cutoffs() == [utc(2024, 1, 31), utc(2024, 1, 24), utc(2024, 1, 17)]
    # 180 days (from 2023-10-03): weekly cutoffs back to the first with 56 days of history before it.
    longer = PropensityParams(day=date(2024, 3, 30), window_days=180, holdout_days=30, history_len=4)
    cutoffs = longer.training_cutoffs()
    assert cutoffs[0] == H - timedelta(days=30) and cutoffs[-1] == utc(2023, 11, 29) and len(cutoffs) == 10
    assert all(c + timedelta(days=30) <= H for c in cutoffs)
    assert all((x - y).days == 7 for x, y in zip(cutoffs, cutoffs[1:], strict=False))


def test_metrics_and_the_reliability_table_by_hand():
    y = np.asarray([0, 0, 1, 1, 1, 0])
    p = np.asarray([0.1, 0.15, 0.8, 0.85, 0.3, 0.35])
    ece, rows = reliability(y, p)
    # Bins: [0.1, 0.15] -> mean .125 rate 0; [0.3, 0.35] -> .325 rate .5; [0.8, 0.85] -> .825 rate 1.
    assert [r[0] for r in rows] == [2, 4, 9] and [r[3] for r in rows] == [2, 2, 2]
    assert ece == pytest.approx((0.125 + abs(0.325 - 0.5) + abs(0.825 - 1)) / 3)
    result = scores(y, p)
    assert result["auc"] == pytest.approx(8 / 9)  # the one inverted pair: 0.3 (bought) below 0.35
    assert result["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.85, 0.8, 0.85, 0.3, 0.65])))
    assert result["brier"] == pytest.approx(np.mean((p - y) ** 2)) and result["ece"] == pytest.approx(ece)
    assert result["tables"]["reliability"]["rows"] == rows
    rank = scores(y, -np.arange(6), probabilities=False)
    assert "log_loss" not in rank and rank["auc"] == pytest.approx(scores(y, -np.arange(6.0) / 10 + 0.9)["auc"])


def test_a_label_window_without_any_purchase_gives_undefined_auc_and_the_gate_says_so():
    quiet = [o for o in ORDERS if o[0] not in (4, 10, 11)]  # nobody orders after H (order 8 is after the window)
    f = facts(quiet)
    model = _Constant(0.2)
    out = evaluate_holdout(f, PARAMS, {"candidate": model})
    candidate = out["candidate"]
    assert out["label_purchases"] == 0 and candidate["positives"] == 0
    assert candidate["auc"] is None and "no customer bought in the label window" in candidate["undefined"]["auc"]
    assert candidate["log_loss"] == pytest.approx(-np.log(0.8))  # still defined
    report = evaluate_gate(GateConfig.load("propensity"), candidate, None, out["baselines"])
    check = next(c for c in report.checks if c.name == "beats_best_baseline:auc")
    assert not report.passed and not check.passed
    assert "undefined: no customer bought in the label window" in check.detail
    assert "beats_best_baseline:auc" in report.summary_line() and "\n" not in report.summary_line()


def test_a_customer_whose_every_order_was_refunded_is_scored():
    f = facts()
    ex = holdout_examples(f, PARAMS)
    p = RfmLogistic(ex).predict(ex)  # fitted on the holdout itself: only the shapes matter here
    assert np.isfinite(p).all() and 0 < p[row(ex, 20)] < 1
    out = evaluate_holdout(f, PARAMS, {"candidate": _Constant(0.3)})
    assert out["customers"] == 4 and out["candidate"]["customers"] == 4


def test_bad_inputs_are_one_line():
    empty = facts([o for o in ORDERS if o[2] >= H], [x for x in LINES if x[0] in (4, 8, 10, 11)])
    with pytest.raises(PropensityEvaluationError) as info:
        evaluate_holdout(empty, PARAMS, {})
    message = str(info.value)
    assert "\n" not in message and message.startswith("propensity 2024-03-30: no customer with an order before "
                                                      "the holdout cutoff 2024-03-01")
    with pytest.raises(PropensityFeatureError) as info:
        PropensityParams(day=date(2024, 3, 30), window_days=40, holdout_days=30)
    assert "\n" not in str(info.value) and str(info.value).startswith("ecom_propensity_window_days=40:")
    from ecom_ml.propensity.model import PropensityModelError, PropensityTrainParams

    with pytest.raises(PropensityModelError, match="^the propensity model takes no parameter"):
        PropensityTrainParams.from_overrides({"pooling": "mean"})
    with pytest.raises(PropensityModelError, match=r"^--epochs 0: must be a whole number"):
        PropensityTrainParams(epochs=0)
    with pytest.raises(PropensityModelError, match=r"^--dropout 1.0: must be from 0 to below 1"):
        PropensityTrainParams(dropout=1.0)
    with pytest.raises(PropensityModelError, match=r"^--members 0: must be a whole number from 1 to 16"):
        PropensityTrainParams(members=0)


class _Constant:
    """A model that says the same probability for everyone (the evaluation's model interface)."""

    def __init__(self, p: float) -> None:
        self.p = p
        self.history_len = PARAMS.history_len

    def predict(self, examples) -> np.ndarray:
        return np.full(len(examples), self.p)


def test_the_models_view_renders_an_evaluations_tables_without_knowing_them():
    from ecom_ml.ui import models_data, models_html

    result = scores(np.asarray([0, 1, 1, 0, 1]), np.asarray([0.2, 0.7, 0.9, 0.4, 0.65]))
    tables = models_data.champion_tables({**result, "tables": {**result["tables"], "broken": {"rows": 3}}})
    assert set(tables) == {"reliability"}  # a malformed table is left out, not an error
    html = models_html._champion_tables(tables)
    assert 'data-testid="champion-table" data-table="reliability"' in html and "observed rate" in html
    assert html.count("<tr><td") == len(result["tables"]["reliability"]["rows"]) == 5  # five non-empty bins


def test_line_refunds_count_the_kept_units_and_a_refund_as_of_the_cutoff():
    """Order 1 (customer 10: product 1 x2, product 2 x1) gets one of product 1 back before H and product 2
    back after H: at H the order is a purchase of 1 + 1 units with a refund; today only product 1 x1."""
    built = tables()
    items = built["order_items"]
    built["order_items"] = items.append_column("order_item_id", pa.array(range(1, items.num_rows + 1), pa.int64()))
    built["refund_lines"] = pa.table({
        "refund_line_id": pa.array([1, 2], pa.int64()), "order_item_id": pa.array([1, 2], pa.int64()),
        "quantity": pa.array([1, 1], pa.int32()), "refunded_at": pa.array([utc(2024, 2, 28), utc(2024, 3, 2)], TS)})
    lines, _ = build_features(built, PARAMS)
    ex = holdout_examples(Facts.from_tables(lines), PARAMS)
    seq = dict(zip(CHANNELS, np.moveaxis(ex.sequence[row(ex, 10)], -1, 0), strict=True))
    assert seq["orders"].tolist() == [0, 0, 1, 1]  # order 1 still counts: most of it was kept
    assert seq["units"].tolist() == [0, 0, 3, 2] and seq["spend"].tolist() == [0, 0, 15, 15]
    assert seq["refunds"].tolist() == [0, 0, 0, 1]  # the partial refund before H
    mine = lines["lines"].filter(pa.compute.equal(lines["lines"].column("order_id"), 1)).to_pylist()
    kept_now = sorted((r["product_id"], r["units"]) for r in mine if r["removed_at"] is None)
    assert kept_now == [(1, 1.0)]
    # Without refund rows the same tables are read by the order's status, as before.
    assert holdout_examples(facts(), PARAMS).sequence[row(ex, 10), 3, CHANNELS.index("units")] == 3
