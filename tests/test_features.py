"""Recommender features on a tiny hand-made shop whose every value was worked out by hand.

Window: day 2024-03-10, 40 days (2024 is a leap year) -> [2024-01-31 00:00, 2024-03-11 00:00) UTC; half-life 5 days, so an
interaction 5 days before the window end weighs 0.5 and one 10 days before 0.25.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from ecom_ml.features.recommender import (
    DATASET,
    FeatureError,
    Histories,
    build_features,
    feature_params,
    histories_as_of,
    price_bands,
    read_features,
    write_features,
)
from ecom_ml.ingest.schema import arrow_schema
from ecom_ml.lake import FEATURES, Lake

DAY = date(2024, 3, 10)
PARAMS = {"window_days": 40, "history_len": 20, "half_life_days": 5.0}


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


# order_id, customer_id, status, created_at, [(product_id, quantity), ...]
ORDERS = [
    (1, 1, "delivered", "2024-03-01 00:00", [(10, 1), (20, 2)]),  # age 10 d -> 0.25
    (2, 1, "paid", "2024-03-06 00:00", [(30, 1), (10, 3)]),  # age 5 d -> 0.5
    (3, 1, "shipped", "2024-03-10 12:00", [(20, 1)]),
    (10, 1, "placed", "2024-03-10 12:00", [(5, 1)]),  # same time as order 3: product 5 before 20
    (4, 2, "cancelled", "2024-03-08 00:00", [(40, 1)]),  # excluded: cancelled
    (5, 2, "refunded", "2024-03-08 00:00", [(40, 1)]),  # excluded: refunded
    (6, 2, "delivered", "2024-03-09 00:00", [(50, 1)]),
    (7, None, "delivered", "2024-03-09 00:00", [(60, 1)]),  # excluded: guest order
    (8, 3, "delivered", "2024-01-30 23:59", [(60, 1)]),  # excluded: before the window
    (9, 3, "delivered", "2024-03-11 00:00", [(60, 1)]),  # excluded: window end is exclusive
    (11, 3, "delivered", "2024-02-05 00:00", [(10, 1)]),  # age 35 d: in window, not in 30-day popularity
]
PRICES = {5: "3.00", 10: "1.00", 20: "5.00", 30: "2.00", 40: "100.00", 50: "4.00", 60: "200.00"}


def shop() -> dict[str, pa.Table]:
    """The data set above in the lake schema (what ``current_orders`` returns)."""
    orders = {c.name: [] for c in arrow_schema("orders")}
    items = {c.name: [] for c in arrow_schema("order_items")}
    for order_id, customer, status, created, lines in ORDERS:
        for name, value in zip(
            ("order_id", "external_ref", "customer_id", "status", "currency", "country", "created_at", "updated_at"),
            (order_id, f"O{order_id}", customer, status, "GBP", "UK", _t(created), _t(created)),
            strict=True,
        ):
            orders[name].append(value)
        for line_no, (product, quantity) in enumerate(lines, 1):
            for name, value in zip(
                ("order_item_id", "order_id", "line_no", "product_id", "quantity", "unit_price"),
                (order_id * 10 + line_no, order_id, line_no, product, quantity, Decimal(PRICES[product])),
                strict=True,
            ):
                items[name].append(value)
    created = _t("2023-01-01 00:00")
    products = {
        "product_id": list(PRICES),
        "sku": [f"S{p}" for p in PRICES],
        "name": [f"product {p}" for p in PRICES],
        "category": ["cheap" if Decimal(v) < 3 else "dear" for v in PRICES.values()],
        "price": [Decimal(v) for v in PRICES.values()],
        "created_at": [created] * len(PRICES),
        "updated_at": [created] * len(PRICES),
    }
    return {
        "orders": pa.Table.from_pydict(orders, schema=arrow_schema("orders")),
        "order_items": pa.Table.from_pydict(items, schema=arrow_schema("order_items")),
        "products": pa.Table.from_pydict(products, schema=arrow_schema("products")),
    }


@pytest.fixture(scope="module")
def features() -> dict[str, pa.Table]:
    return build_features(shop(), DAY, **PARAMS)


def test_interactions_keep_only_purchases_in_the_window(features):
    from ecom_ml.features.recommender import current_purchases

    everything = features["interactions"]
    # Cancelled and refunded orders stay, marked with when they stopped being purchases.
    removed = {r["order_id"]: r["removed_at"] for r in everything.to_pylist() if r["removed_at"] is not None}
    assert removed == {4: _t("2024-03-08 00:00"), 5: _t("2024-03-08 00:00")}
    inter = current_purchases(everything)
    assert sorted(set(inter.column("order_id").to_pylist())) == [1, 2, 3, 6, 10, 11]
    assert inter.num_rows == 8
    assert not {40, 60} & set(inter.column("product_id").to_pylist())
    assert 60 not in everything.column("product_id").to_pylist(), "guest orders and out-of-window orders are not kept"
    # sorted by (ts, customer, product)
    keys = list(zip(*(everything.column(c).to_pylist() for c in ("ts", "customer_id", "product_id")), strict=True))
    assert keys == sorted(keys)
    assert inter.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert inter.schema.field("weight").type == pa.float32()


def test_recency_weights_halve_every_half_life(features):
    rows = features["interactions"].to_pylist()
    weight = {(r["order_id"], r["product_id"]): r["weight"] for r in rows}
    assert weight[(2, 30)] == pytest.approx(0.5)  # 5 days old
    assert weight[(1, 20)] == pytest.approx(0.25)  # 10 days old
    assert weight[(11, 10)] == pytest.approx(0.5**7)  # 35 days old
    assert weight[(3, 20)] == pytest.approx(0.5 ** (0.5 / 5))  # 12 hours old
    assert {r["quantity"] for r in rows if r["order_id"] == 2 and r["product_id"] == 10} == {3}


def test_items_price_bands_popularity_first_seen(features):
    items = {r["product_id"]: r for r in features["items"].to_pylist()}
    assert sorted(items) == [5, 10, 20, 30, 50]  # only products bought in the window
    # prices 3, 1, 5, 2, 4 -> quintile bands 2, 0, 4, 1, 3 (the unsold 100 and 200 do not count)
    assert {p: items[p]["price_band"] for p in items} == {5: 2, 10: 0, 20: 4, 30: 1, 50: 3}
    assert items[20]["price"] == 5.0 and items[10]["category"] == "cheap"
    # product 10: orders 1 and 2 in the last 30 days; order 11 (35 days old) is in the window only
    assert {p: items[p]["popularity"] for p in items} == {5: 1, 10: 2, 20: 2, 30: 1, 50: 1}
    assert items[10]["first_seen"] == _t("2024-02-05 00:00")


def test_price_bands_of_ties_and_single_price():
    assert price_bands(np.arange(1.0, 11.0)).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert price_bands(np.array([7.0, 7.0, 7.0])).tolist() == [0, 0, 0]
    assert price_bands(np.array([])).tolist() == []


def test_users_histories_most_recent_distinct_first(features):
    users = {r["customer_id"]: r for r in features["users"].to_pylist()}
    assert sorted(users) == [1, 2, 3]
    # customer 1: 03-10 12:00 {5, 20} (tie -> lower id first), 03-06 {10, 30}, 03-01 {10, 20} already seen
    assert users[1]["history"] == [5, 20, 10, 30]
    assert users[2]["history"] == [50]  # cancelled and refunded product 40 is no history
    assert users[3]["history"] == [10]
    assert {c: users[c]["n_orders"] for c in users} == {1: 4, 2: 1, 3: 1}
    assert users[1]["first_seen"] == _t("2024-03-01 00:00") and users[1]["last_seen"] == _t("2024-03-10 12:00")


def test_history_len_cuts_the_oldest():
    users = build_features(shop(), DAY, **{**PARAMS, "history_len": 3})["users"].to_pylist()
    assert users[0]["history"] == [5, 20, 10]


def test_histories_as_of_exclude_purchases_from_the_cutoff_on(features):
    inter = features["interactions"]
    before = histories_as_of(inter, _t("2024-03-06 00:00"), 20)  # order 2 is exactly at the cutoff
    assert dict(before.items()).keys() == {1, 3}
    assert before[1].tolist() == [10, 20] and before[3].tolist() == [10]
    after = histories_as_of(inter, _t("2024-03-06 00:00:01"), 20)
    assert after[1].tolist() == [10, 30, 20]  # 10 is bought again: it moves to the front, once
    with pytest.raises(KeyError):
        before[2]


def test_histories_lookup_and_padding_for_unknown_customers(features):
    hist = histories_as_of(features["interactions"], _t("2024-03-11 00:00"), 20)
    looked = hist.lookup(np.array([2, 99, 1]))
    assert [h.tolist() for h in looked] == [[50], [], [5, 20, 10, 30]]
    assert hist.padded(np.array([1, 99]), 3).tolist() == [[5, 20, 10], [-1, -1, -1]]
    empty = Histories(np.array([], np.int64), np.array([0]), np.array([], np.int64))
    assert [h.tolist() for h in empty.lookup(np.array([1]))] == [[]]


def test_serving_histories_are_the_as_of_function_at_the_window_end(features):
    serving = features["users"]
    recomputed = histories_as_of(features["interactions"], _t("2024-03-11 00:00"), 20).to_arrow()
    assert serving.column("customer_id").to_pylist() == recomputed.column("customer_id").to_pylist()
    assert serving.column("history").to_pylist() == recomputed.column("history").to_pylist()


def test_late_cancellation_removes_the_lines():
    tables = shop()
    orders = tables["orders"]
    status = orders.column("status").to_pylist()
    status[orders.column("order_id").to_pylist().index(6)] = "cancelled"
    tables["orders"] = orders.set_column(orders.schema.get_field_index("status"), "status", pa.array(status))
    users = build_features(tables, DAY, **PARAMS)["users"]
    assert 2 not in users.column("customer_id").to_pylist()


def test_clear_errors_for_bad_input():
    tables = shop()
    with pytest.raises(FeatureError, match="order_items.quantity"):
        build_features({**tables, "order_items": tables["order_items"].drop_columns(["quantity"])}, DAY)
    without_20 = tables["products"].filter(pa.compute.not_equal(tables["products"].column("product_id"), 20))
    with pytest.raises(FeatureError, match=r"missing from the products table, e\.g\. \[20\]"):
        build_features({**tables, "products": without_20}, DAY, **PARAMS)
    with pytest.raises(FeatureError, match="window_days"):
        build_features(tables, DAY, window_days=0)


def test_empty_window_gives_empty_tables():
    empty = build_features(shop(), date(2020, 1, 1), window_days=7, holdout_days=1)
    assert {name: table.num_rows for name, table in empty.items()} == {"interactions": 0, "items": 0, "users": 0}


def test_lake_round_trip_with_params_in_manifest(tmp_path, features):
    lake = Lake(tmp_path.as_uri())
    manifest = write_features(lake, DAY, features)
    assert manifest.extra["recommender"]["window_start"] == "2024-01-31T00:00:00+00:00"
    assert manifest.extra["recommender"]["half_life_days"] == 5.0
    again = write_features(lake, DAY, build_features(shop(), DAY, **PARAMS))
    assert again.version == manifest.version, "rebuilding a day must give the identical partition"
    back = read_features(tmp_path.as_uri(), DAY)
    assert lake.days(FEATURES, DATASET) == [DAY]
    for name, table in features.items():
        assert back[name].equals(table), name
    assert feature_params(back).window_days == 40
    with pytest.raises(FeatureError, match="built for 2024-03-10"):
        write_features(lake, date(2024, 3, 11), features)


def test_params_carry_the_holdout_and_reject_one_that_leaves_nothing_to_train_on(tmp_path):
    built = build_features(shop(), DAY, **PARAMS, holdout_days=31)
    params = feature_params(built)
    assert params.holdout_days == 31 and params.holdout_start == _t("2024-02-09 00:00")
    manifest = write_features(Lake(tmp_path.as_uri()), DAY, built)
    assert manifest.extra["recommender"]["holdout_days"] == 31
    assert manifest.extra["recommender"]["holdout_start"] == "2024-02-09T00:00:00+00:00"
    with pytest.raises(FeatureError, match=r"^holdout_days must be from 1 to window_days - 1 \(39\), got 40"):
        build_features(shop(), DAY, **PARAMS, holdout_days=40)


def _with_history(versions: list[tuple[int, str, str]]) -> dict[str, pa.Table]:
    """shop() plus later versions of some orders (order_id, status, updated_at), as the lake holds them."""
    tables = shop()
    orders = tables["orders"]
    history = orders.select(["order_id", "status", "updated_at"]).to_pylist()
    history += [{"order_id": o, "status": st, "updated_at": _t(at)} for o, st, at in versions]
    latest = {}
    for row in sorted(history, key=lambda r: r["updated_at"]):
        latest[row["order_id"]] = row
    rows = orders.to_pylist()
    for row in rows:
        row["status"], row["updated_at"] = latest[row["order_id"]]["status"], latest[row["order_id"]]["updated_at"]
    tables["orders"] = pa.Table.from_pylist(rows, schema=orders.schema)
    tables["order_history"] = pa.Table.from_pylist(history, schema=pa.schema(
        [orders.schema.field("order_id"), orders.schema.field("status"), orders.schema.field("updated_at")]))
    return tables


def test_training_sees_each_order_as_it_was_at_the_cutoff():
    """A cancellation recorded after the cutoff does not remove the order from what a model trained
    up to the cutoff sees; one recorded before the cutoff does (issue: no information from the future)."""
    from ecom_ml.evaluation.protocol import time_split
    from ecom_ml.features.recommender import purchases_as_of

    # Holdout of 3 days: the cutoff is 2024-03-08 00:00. Order 1 (placed 03-01) is cancelled on 03-09,
    # after the cutoff; order 2 (placed 03-06) was cancelled on 03-07, before it.
    tables = _with_history([(1, "cancelled", "2024-03-09 10:00"), (2, "cancelled", "2024-03-07 09:00")])
    built = build_features(tables, DAY, **PARAMS, holdout_days=3)
    cutoff = _t("2024-03-08 00:00")
    split = time_split(built["interactions"], DAY, holdout_days=3)
    assert split.cutoff == cutoff
    trained_on = set(split.train.column("order_id").to_pylist())
    assert 1 in trained_on, "cancelled after the cutoff: still a purchase as of the cutoff"
    assert 2 not in trained_on, "cancelled before the cutoff: not a purchase as of the cutoff"
    assert 11 in trained_on and 4 not in trained_on
    # The holdout and serving use today's state: order 1 is gone from the user's current history.
    users = {r["customer_id"]: r["history"] for r in built["users"].to_pylist()}
    assert users[1] == [5, 20]  # orders 3 and 10 only; 1 and 2 are cancelled now
    assert histories_as_of(built["interactions"], cutoff, 20)[1].tolist() == [10, 20]  # order 1, as of the cutoff
    assert set(purchases_as_of(built["interactions"], cutoff).column("order_id").to_pylist()) >= {1}


def test_an_order_reinstated_then_cancelled_again_counts_from_the_last_cancellation():
    from ecom_ml.features.recommender import removal_times

    tables = _with_history([(1, "cancelled", "2024-03-02 00:00"), (1, "paid", "2024-03-03 00:00"),
                            (1, "cancelled", "2024-03-09 00:00"), (6, "cancelled", "2024-03-09 12:00")])
    removed = {r["order_id"]: r["removed_at"] for r in removal_times(tables).to_pylist()}
    assert removed[1] == _t("2024-03-09 00:00") and removed[6] == _t("2024-03-09 12:00")
    assert 2 not in removed and removed[4] == _t("2024-03-08 00:00")


def _refunds(rows: list[tuple[int, int, int, str]]) -> pa.Table:
    """refund_lines rows (refund_line_id, order_item_id, quantity, refunded_at) in the lake schema."""
    return pa.Table.from_pylist([
        {"refund_line_id": r, "order_item_id": item, "quantity": q, "refunded_at": _t(at), "source_ref": None,
         "source_line": None} for r, item, q, at in rows], schema=arrow_schema("refund_lines"))


def test_line_refunds_count_what_was_kept_as_of_the_cutoff():
    """Order 2 (product 30 x1, product 10 x3) gets 1 of product 10 back before the cutoff (03-08) and
    the other 2 after it: training sees 2 of product 10 kept, today's state none; product 30 stays."""
    from ecom_ml.evaluation.protocol import time_split
    from ecom_ml.features.recommender import current_purchases, purchases_as_of

    tables = _with_history([(2, "refunded", "2024-03-07 09:00"), (2, "refunded", "2024-03-09 10:00")])
    tables["refund_lines"] = _refunds([(1, 22, 1, "2024-03-07 09:00"), (2, 22, 2, "2024-03-09 10:00")])
    built = build_features(tables, DAY, **PARAMS, holdout_days=3)
    order2 = lambda t: sorted((r["product_id"], r["quantity"]) for r in t.to_pylist() if r["order_id"] == 2)  # noqa: E731
    cutoff = _t("2024-03-08 00:00")
    assert order2(purchases_as_of(built["interactions"], cutoff)) == [(10, 2), (30, 1)]  # the later refund unseen
    assert order2(purchases_as_of(built["interactions"], _t("2024-03-07 00:00"))) == [(10, 3), (30, 1)]
    assert order2(current_purchases(built["interactions"])) == [(30, 1)]  # product 10 refunded in full
    assert order2(time_split(built["interactions"], DAY, holdout_days=3).train) == [(10, 2), (30, 1)]
    # A cut table is cut once: its refunds are gone, a second cut subtracts nothing.
    cut = purchases_as_of(built["interactions"], cutoff)
    assert order2(purchases_as_of(cut, cutoff)) == [(10, 2), (30, 1)]
    # Serving: the kept rest of the refunded order stays in the customer's history.
    users = {r["customer_id"]: r["history"] for r in built["users"].to_pylist()}
    assert users[1] == [5, 20, 30, 10]


def test_an_older_lake_without_refund_lines_falls_back_to_the_order_status():
    """Without line-level refunds a refunded order drops every line from the moment it was refunded."""
    from ecom_ml.features.recommender import current_purchases, purchases_as_of

    tables = _with_history([(2, "refunded", "2024-03-07 09:00")])
    built = build_features(tables, DAY, **PARAMS, holdout_days=3)
    orders = lambda t: {r["order_id"] for r in t.to_pylist()}  # noqa: E731
    assert 2 not in orders(current_purchases(built["interactions"]))
    assert 2 not in orders(purchases_as_of(built["interactions"], _t("2024-03-08 00:00")))
    assert 2 in orders(purchases_as_of(built["interactions"], _t("2024-03-07 00:00")))
    # And an order of a newer lake without refund rows is read the same way (rows from before the migration).
    tables["refund_lines"] = _refunds([(1, 11, 1, "2024-03-02 00:00")])  # a refund on another order only
    built = build_features(tables, DAY, **PARAMS, holdout_days=3)
    assert 2 not in orders(current_purchases(built["interactions"]))
    assert sorted((r["product_id"], r["quantity"]) for r in current_purchases(built["interactions"]).to_pylist()
                  if r["order_id"] == 1) == [(20, 2)]  # order 1's product 10 (x1) refunded in full
