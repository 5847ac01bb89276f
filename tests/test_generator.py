"""The order generator against the real PostgreSQL: determinism, continuation, realism, faults, errors.

Volumes are modest (a few thousand orders a day at most) so each test takes a second or two; the
statistical assertions use bands wide enough for sampling noise at that size and narrow enough
that switching the behaviour off (no popularity skew, no staples, no weekly pattern) fails them.
"""

from __future__ import annotations

import contextlib
import io
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import numpy as np
import psycopg2
import pytest

from ecom_ml import settings as settings_mod
from ecom_ml.cli import main as cli_main
from ecom_ml.db.migrate import migrate
from ecom_ml.generator import GeneratorConfig, GeneratorError, Injections, generate, parse_injections
from ecom_ml.generator import pgcopy
from ecom_ml.generator.load import OrdersDb

START = date(2024, 1, 1)
SHOP_TABLES = {"customers": "customer_id", "products": "product_id", "orders": "order_id",
               "order_items": "order_item_id", "refund_lines": "refund_line_id"}


# -- helpers ------------------------------------------------------------------------------------------


@pytest.fixture
def another_orders_db(pg_server: settings_mod.Settings) -> Iterator[Callable[[], str]]:
    """Factory for extra fresh migrated databases in one test (``orders_db`` gives only one)."""
    from ecom_ml.db import scratch_database

    with contextlib.ExitStack() as stack:
        def make() -> str:
            url = pg_server.local_url(stack.enter_context(scratch_database(pg_server, "test_gen")))
            migrate(url)
            return url

        yield make


class _admin:
    def __init__(self, settings: settings_mod.Settings) -> None:
        self.conn = psycopg2.connect(settings.local_url("postgres"))
        self.conn.autocommit = True

    def __enter__(self):
        return self.conn.cursor()

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


def _config(days: int = 20, orders_per_day: int = 1000, seed: int = 7, start: date = START,
            inject: str = "", **kwargs: int) -> GeneratorConfig:
    return GeneratorConfig(start=start, days=days, orders_per_day=orders_per_day, seed=seed,
                           injections=parse_injections(inject), **kwargs)


def _query(url: str, sql: str, params: tuple | dict | None = None) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def _checksums(url: str) -> dict[str, tuple[int, str]]:
    """Row count and an order-independent digest of every shop table's full contents."""
    out = {}
    for table, key in SHOP_TABLES.items():
        (count, digest), = _query(url, f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t.{key}, t::text)) "
                                       f"FROM {table} t")
        out[table] = (count, digest)
    return out


# -- parsing and validation -----------------------------------------------------------------------------


def test_parse_injections_reads_rates_and_days() -> None:
    parsed = parse_injections(" null_customer=0.01, negative_quantity=0.001,duplicate_items=0.005,"
                              "price_outlier=0.001,empty_day=2024-01-15;2024-01-03,empty_day=2024-01-20")
    assert parsed == Injections(null_customer=0.01, negative_quantity=0.001, duplicate_items=0.005,
                                price_outlier=0.001,
                                empty_days=(date(2024, 1, 3), date(2024, 1, 15), date(2024, 1, 20)))
    assert parse_injections("") == Injections()
    assert parse_injections(parsed.describe()) == parsed


@pytest.mark.parametrize("text, message", [
    ("nul_customer=0.01", "--inject: unknown fault 'nul_customer' (known: duplicate_items, empty_day, "),
    ("null_customer=1.5", "--inject: null_customer=1.5 is outside [0, 1]"),
    ("null_customer=-0.1", "outside [0, 1]"),
    ("null_customer=nan", "outside [0, 1]"),
    ("price_outlier=lots", "--inject: price_outlier='lots' is not a number"),
    ("duplicate_items", "--inject: 'duplicate_items' needs a value"),
    ("null_customer=0.1,null_customer=0.2", "--inject: null_customer is given twice"),
    ("empty_day=2024-02-30", "--inject: empty_day '2024-02-30' is not a date"),
])
def test_parse_injections_rejects_with_one_line(text: str, message: str) -> None:
    with pytest.raises(GeneratorError) as err:
        parse_injections(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"days": 0}, "--days 0: must be between 1"),
    ({"orders_per_day": 0}, "--orders-per-day 0: must be between 1"),
    ({"seed": -1}, "--seed -1: must be between 0"),
    ({"products": 5}, "--products 5: must be between 32"),
    ({"customers": 0}, "--customers 0: must be between 1"),
])
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(GeneratorError, match=message):
        _config(**kwargs)


# -- determinism, continuation, idempotency ---------------------------------------------------------------


def test_same_seed_same_tables_and_different_seed_differs(another_orders_db: Callable[[], str]) -> None:
    first, second, other = another_orders_db(), another_orders_db(), another_orders_db()
    generate(first, _config(days=6, orders_per_day=800), progress=False)
    generate(second, _config(days=6, orders_per_day=800), progress=False)
    generate(other, _config(days=6, orders_per_day=800, seed=8), progress=False)
    same = _checksums(first)
    assert same["order_items"][0] > 6 * 800
    assert _checksums(second) == same
    different = _checksums(other)
    assert all(different[table][1] != same[table][1] for table in SHOP_TABLES)


def test_continuing_day_by_day_equals_one_run(another_orders_db: Callable[[], str]) -> None:
    whole, pieces = another_orders_db(), another_orders_db()
    generate(whole, _config(days=24, orders_per_day=400), progress=False)

    generate(pieces, _config(days=10, orders_per_day=400), progress=False)
    second = generate(pieces, _config(days=13, orders_per_day=400, start=START + timedelta(days=10)), progress=False)
    third = generate(pieces, _config(days=1, orders_per_day=400, start=START + timedelta(days=23)), progress=False)

    # Refunds and deliveries of the earlier days that happen later arrived as UPDATEs.
    assert second.late_updates > 100 and third.late_updates > 0
    assert _checksums(pieces) == _checksums(whole)


def test_rerunning_a_range_replaces_it(orders_db: str, another_orders_db: Callable[[], str]) -> None:
    reference = another_orders_db()
    generate(reference, _config(days=16, orders_per_day=400), progress=False)
    expected = _checksums(reference)

    generate(orders_db, _config(days=16, orders_per_day=400), progress=False)
    middle = generate(orders_db, _config(days=5, orders_per_day=400, start=START + timedelta(days=4)), progress=False)
    assert middle.replaced_orders == middle.orders > 0
    assert _checksums(orders_db) == expected
    # Re-running the whole range, and a tail that extends it, keep the one-run result.
    generate(orders_db, _config(days=16, orders_per_day=400), progress=False)
    assert _checksums(orders_db) == expected
    generate(orders_db, _config(days=4, orders_per_day=400, start=START + timedelta(days=14)), progress=False)
    generate(reference, _config(days=2, orders_per_day=400, start=START + timedelta(days=16)), progress=False)
    assert _checksums(orders_db) == _checksums(reference)


def test_continuing_with_other_parameters_is_refused(orders_db: str) -> None:
    generate(orders_db, _config(days=3, orders_per_day=200), progress=False)
    after = START + timedelta(days=3)
    with pytest.raises(GeneratorError, match=r"was generated with seed 7 \(asked: 8\)"):
        generate(orders_db, _config(days=1, orders_per_day=200, seed=8, start=after), progress=False)
    with pytest.raises(GeneratorError, match=r"orders-per-day 200 \(asked: 300\)"):
        generate(orders_db, _config(days=1, orders_per_day=300, start=after), progress=False)
    with pytest.raises(GeneratorError, match=r"customers 1000 \(asked: 5000\)"):
        generate(orders_db, _config(days=1, orders_per_day=200, start=after, customers=5000), progress=False)
    with pytest.raises(GeneratorError, match="would leave a gap: .* start at 2024-01-04 or earlier"):
        generate(orders_db, _config(days=1, orders_per_day=200, start=after + timedelta(days=1)), progress=False)
    with pytest.raises(GeneratorError, match="was generated from 2024-01-01"):
        generate(orders_db, _config(days=1, orders_per_day=200, start=START - timedelta(days=1)), progress=False)
    # Omitted --customers/--products mean "as generated before".
    generate(orders_db, _config(days=1, orders_per_day=200, start=after), progress=False)


def test_a_failed_run_leaves_the_database_as_it_was(orders_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    generate(orders_db, _config(days=4, orders_per_day=300), progress=False)
    before = _checksums(orders_db), _query(orders_db, "SELECT * FROM ecom_generator.state")
    loaded = []

    def crash_on_third_day(self: OrdersDb, payload: bytes) -> None:
        loaded.append(payload)
        if len(loaded) == 3:
            raise RuntimeError("simulated crash")
        original(self, payload)

    original = OrdersDb.copy_lines
    monkeypatch.setattr(OrdersDb, "copy_lines", crash_on_third_day)
    # Replaces days 2-4 (deleting them first) and adds three more: all or nothing.
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate(orders_db, _config(days=6, orders_per_day=300, start=START + timedelta(days=1)), progress=False)
    assert (_checksums(orders_db), _query(orders_db, "SELECT * FROM ecom_generator.state")) == before


def test_without_the_privilege_to_skip_triggers_the_result_is_the_same(
        orders_db: str, another_orders_db: Callable[[], str], pg_server: settings_mod.Settings) -> None:
    reference = another_orders_db()
    fast = generate(reference, _config(days=3, orders_per_day=300), progress=False)
    role = f"gen_test_{uuid.uuid4().hex[:8]}"
    with _admin(pg_server) as cur:
        cur.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD %s', (role,))  # the server requires passwords
    try:
        conn = psycopg2.connect(orders_db)
        with conn, conn.cursor() as cur:
            cur.execute(f'GRANT CREATE ON DATABASE "{orders_db.rsplit("/", 1)[1]}" TO "{role}"')
            cur.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"')
            cur.execute(f'GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
        conn.close()
        from urllib.parse import urlsplit

        as_role = urlsplit(orders_db)._replace(netloc=f"{role}:{role}@{urlsplit(orders_db).netloc.rsplit('@', 1)[1]}")
        slow = generate(as_role.geturl(), _config(days=3, orders_per_day=300), progress=False)
        assert fast.row_triggers_skipped and not slow.row_triggers_skipped
        assert _checksums(orders_db) == _checksums(reference)
    finally:
        conn = psycopg2.connect(orders_db)
        with conn, conn.cursor() as cur:
            cur.execute(f'DROP OWNED BY "{role}"')
        conn.close()
        with _admin(pg_server) as cur:
            cur.execute(f'DROP ROLE "{role}"')


# -- realism ---------------------------------------------------------------------------------------------


@pytest.fixture
def shop(orders_db: str):
    """20 days x 1,000 orders of a clean shop, and the run's summary."""
    return orders_db, generate(orders_db, _config(), progress=False)


def test_popularity_is_heavy_tailed(shop) -> None:
    url, _ = shop
    (share, products), = _query(url, """
        WITH sold AS (SELECT product_id, count(*) AS n FROM order_items GROUP BY product_id),
             ranked AS (SELECT n, row_number() OVER (ORDER BY n DESC) AS rank FROM sold)
        SELECT sum(n) FILTER (WHERE rank <= (SELECT count(*) / 10 FROM products))::float / sum(n),
               (SELECT count(*) FROM products) FROM ranked""")
    assert 2_000 <= products <= 2_200
    assert 0.40 <= share <= 0.80  # uniform popularity would give ~0.15


def test_returning_customers_rebuy_at_a_realistic_rate(shop) -> None:
    url, _ = shop
    (rebuy, lines), = _query(url, """
        WITH l AS (
            SELECT o.customer_id, i.product_id,
                   rank() OVER (PARTITION BY o.customer_id ORDER BY o.created_at, o.order_id) AS nth_order,
                   row_number() OVER (PARTITION BY o.customer_id, i.product_id ORDER BY o.created_at, o.order_id)
                       AS nth_time
            FROM orders o JOIN order_items i USING (order_id))
        SELECT avg((nth_time > 1)::int)::float, count(*) FROM l WHERE nth_order > 1""")
    assert lines > 10_000
    assert 0.22 <= rebuy <= 0.40


def test_weekly_pattern_and_promotion_spikes(shop) -> None:
    url, summary = shop
    promo_days = {d for d, _ in summary.promotions}
    assert 1 <= len(promo_days) <= 3 and all(START <= d < START + timedelta(days=20) for d in promo_days)
    per_day = dict(_query(url, "SELECT (created_at AT TIME ZONE 'UTC')::date, count(*) FROM orders GROUP BY 1"))
    assert set(per_day) == {START + timedelta(days=i) for i in range(20)}
    ordinary = {d: n for d, n in per_day.items() if d not in promo_days}
    saturday = np.mean([n for d, n in ordinary.items() if d.weekday() == 5])
    mon_to_thu = np.mean([n for d, n in ordinary.items() if d.weekday() < 4])
    assert saturday < 0.85 * mon_to_thu
    for day in promo_days:
        same_weekday = np.mean([n for d, n in ordinary.items() if d.weekday() == day.weekday()])
        assert per_day[day] > 1.35 * same_weekday
    # Promotion prices are discounted against the list price.
    promo = sorted(promo_days)[0]
    (discounted,), = _query(url, """
        SELECT count(*) FROM order_items i JOIN orders o USING (order_id) JOIN products p USING (product_id)
        WHERE (o.created_at AT TIME ZONE 'UTC')::date = %s AND i.unit_price < p.price""", (promo,))
    assert discounted > 50


def test_lifecycle_has_late_cancellations_and_refunds(shop) -> None:
    url, summary = shop
    rows = dict((status, (n, lo, hi)) for status, n, lo, hi in _query(url, """
        SELECT status, count(*), min(extract(epoch FROM updated_at - created_at) / 86400),
               max(extract(epoch FROM updated_at - created_at) / 86400)
        FROM orders GROUP BY status"""))
    total = sum(n for n, _, _ in rows.values())
    assert total == summary.orders
    cancelled, refunded, delivered = rows["cancelled"], rows["refunded"], rows["delivered"]
    assert 0.015 * total <= cancelled[0] <= 0.045 * total
    assert 0 < cancelled[1] and cancelled[2] <= 2
    assert 0.01 * total <= refunded[0] <= 0.05 * total
    assert 3 <= refunded[1] and refunded[2] <= 14
    assert delivered[0] > 0.5 * total and delivered[1] > 1
    # Orders near the end of the range have not got far yet; none is later than the range end.
    assert rows["placed"][0] + rows["paid"][0] > 0
    (latest,), = _query(url, "SELECT max(updated_at) FROM orders")
    assert latest < datetime(2024, 1, 21, tzinfo=timezone.utc)


def test_customers_and_products_arrive_over_time(shop) -> None:
    url, _ = shop
    (new_customers, ordering_same_day), = _query(url, """
        SELECT count(*), count(*) FILTER (WHERE EXISTS (
                   SELECT 1 FROM orders o WHERE o.customer_id = c.customer_id
                   AND o.created_at >= c.created_at AND o.created_at < c.created_at + interval '1 day'))
        FROM customers c WHERE c.created_at >= '2024-01-01'""")
    assert 0.03 * 20_000 <= new_customers <= 0.1 * 20_000
    assert ordering_same_day == new_customers
    (new_products, sold_new, sold_too_early), = _query(url, """
        SELECT (SELECT count(*) FROM products WHERE created_at >= '2024-01-01'),
               count(DISTINCT p.product_id),
               count(*) FILTER (WHERE (o.created_at AT TIME ZONE 'UTC')::date
                                      <= (p.created_at AT TIME ZONE 'UTC')::date)
        FROM order_items i JOIN orders o USING (order_id) JOIN products p USING (product_id)
        WHERE p.created_at >= '2024-01-01'""")
    assert new_products > 20 and sold_new > 0.5 * new_products
    assert sold_too_early == 0


def test_rows_are_well_formed(shop) -> None:
    url, summary = shop
    (bad_qty, bad_price, bad_lines, max_basket, null_customers, dup_lines), = _query(url, """
        SELECT (SELECT count(*) FROM order_items WHERE quantity <= 0),
               (SELECT count(*) FROM order_items i JOIN products p USING (product_id)
                 WHERE i.unit_price <= 0 OR i.unit_price > p.price),
               (SELECT count(*) FROM (SELECT order_id FROM order_items GROUP BY order_id
                                      HAVING min(line_no) <> 1 OR max(line_no) <> count(*)) x),
               (SELECT max(n) FROM (SELECT count(*) AS n FROM order_items GROUP BY order_id) x),
               (SELECT count(*) FROM orders WHERE customer_id IS NULL),
               (SELECT count(*) FROM (SELECT 1 FROM order_items GROUP BY order_id, line_no HAVING count(*) > 1) x)""")
    assert (bad_qty, bad_price, bad_lines, null_customers, dup_lines) == (0, 0, 0, 0, 0)
    assert max_basket == 8
    assert summary.faults.as_dict() == dict.fromkeys(summary.faults.as_dict(), 0)
    (ref, status), = _query(url, "SELECT external_ref, status FROM orders ORDER BY order_id LIMIT 1")
    assert ref == "G10000001"
    # The identity sequences were moved past the explicit ids: the shop's own inserts still work.
    new_id, = _query(url, "INSERT INTO orders (status, created_at, updated_at) VALUES ('placed', now(), now()) "
                          "RETURNING order_id")[0]
    assert new_id > 20 * 10**7


# -- faults ----------------------------------------------------------------------------------------------


def test_injected_faults_appear_in_about_the_requested_amount(orders_db: str) -> None:
    empty = START + timedelta(days=4)
    summary = generate(orders_db, _config(days=10, inject=f"null_customer=0.02,negative_quantity=0.01,"
                                                          f"duplicate_items=0.01,price_outlier=0.005,"
                                                          f"empty_day={empty}"), progress=False)
    faults = summary.faults
    (null_customers, non_positive, duplicates, outliers, empty_orders), = _query(orders_db, """
        SELECT (SELECT count(*) FROM orders WHERE customer_id IS NULL),
               (SELECT count(*) FROM order_items WHERE quantity <= 0),
               (SELECT coalesce(sum(n - 1), 0) FROM (
                    SELECT count(*) AS n FROM order_items
                    GROUP BY order_id, line_no, product_id, quantity, unit_price HAVING count(*) > 1) x),
               (SELECT count(*) FROM order_items i JOIN products p USING (product_id)
                 WHERE i.unit_price > 30 * p.price),
               (SELECT count(*) FROM orders WHERE (created_at AT TIME ZONE 'UTC')::date = %s)""", (empty,))
    # What the summary reports is what the database holds...
    assert (null_customers, duplicates, empty_orders) == (faults.null_customer, faults.duplicate_items, 0)
    assert faults.empty_day == 1
    # ...negative quantities and outliers may themselves be duplicated...
    assert faults.negative_quantity <= non_positive <= faults.negative_quantity * 1.2 + 2
    assert faults.price_outlier <= outliers <= faults.price_outlier * 1.2 + 2
    # ...and about the requested share (binomial, well inside 4 sigma at these sizes).
    assert abs(faults.null_customer - 0.02 * summary.orders) < 4 * np.sqrt(0.02 * summary.orders) + 1
    for rate, count in ((0.01, faults.negative_quantity), (0.01, faults.duplicate_items / (1 + 0.01)),
                        (0.005, faults.price_outlier)):
        expected = rate * (summary.lines - faults.duplicate_items)
        assert abs(count - expected) < 4 * np.sqrt(expected) + 1


def test_faults_leave_the_clean_data_untouched(orders_db: str, another_orders_db: Callable[[], str]) -> None:
    clean = another_orders_db()
    generate(clean, _config(days=3, orders_per_day=500), progress=False)
    generate(orders_db, _config(days=3, orders_per_day=500, inject="negative_quantity=0.05,duplicate_items=0.05"),
             progress=False)
    lines_sql = "SELECT order_item_id, order_id, line_no, product_id, quantity, unit_price FROM order_items"
    clean_lines = {row[0]: row[1:] for row in _query(clean, lines_sql)}
    faulty_lines = {row[0]: row[1:] for row in _query(orders_db, lines_sql)}
    assert _checksums(orders_db)["orders"] == _checksums(clean)["orders"]
    assert set(clean_lines) < set(faulty_lines)
    flipped = 0
    for item_id, (order_id, line_no, product_id, quantity, price) in clean_lines.items():
        got = faulty_lines[item_id]
        assert got[:3] == (order_id, line_no, product_id) and got[4] == price
        if got[3] != quantity:
            assert got[3] in (0, -quantity)
            flipped += 1
    assert 0.02 * len(clean_lines) < flipped < 0.08 * len(clean_lines)
    # Every extra row repeats an existing line exactly, apart from its surrogate key.
    originals = {row for item_id, row in faulty_lines.items() if item_id in clean_lines}
    extras = [row for item_id, row in faulty_lines.items() if item_id not in clean_lines]
    assert 0.02 * len(clean_lines) < len(extras) < 0.08 * len(clean_lines)
    assert all(row in originals for row in extras)


# -- errors ----------------------------------------------------------------------------------------------


def test_unreachable_database_names_the_url_without_password() -> None:
    with pytest.raises(GeneratorError) as err:
        generate("postgresql://shop:s3cret@127.0.0.1:1/orders", _config(days=1), progress=False)
    message = str(err.value)
    assert message.startswith("cannot connect to the orders database postgresql://shop:***@127.0.0.1:1/orders")
    assert "s3cret" not in message and "\n" not in message


def test_missing_schema_says_to_migrate(empty_db: str) -> None:
    with pytest.raises(GeneratorError, match=r"orders schema is missing in .*: run `ecom-ml db migrate`"):
        generate(empty_db, _config(days=1), progress=False)


def test_a_shop_database_with_other_data_is_refused(orders_db: str) -> None:
    conn = psycopg2.connect(orders_db)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO products (sku, category, price, created_at, updated_at) "
                    "VALUES ('REAL-1', 'Mugs', 3.5, now(), now())")
    conn.close()
    with pytest.raises(GeneratorError, match="already holds shop data not written by the generator"):
        generate(orders_db, _config(days=1), progress=False)
    assert _query(orders_db, "SELECT count(*) FROM orders") == [(0,)]


def test_cli_generates_and_reports_errors_in_one_line(orders_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["generate", "--start", "2024-03-01", "--days", "2", "--orders-per-day", "300",
                     "--inject", "null_customer=0.05", "--db-url", orders_db]) == 0
    out, err = capsys.readouterr()
    assert "generated 2024-03-01..2024-03-02 (2 days, seed 7)" in out and "null_customer" in out
    assert "lines/s" in err  # the progress bar
    assert cli_main(["generate", "--start", "2024-03-01", "--inject", "nul_customer=0.1", "--db-url", orders_db]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("ecom-ml: error: --inject: unknown fault 'nul_customer' (known: ")
    assert err.count("\n") == 1


# -- binary COPY encoding --------------------------------------------------------------------------------


def test_binary_copy_round_trips_edge_values(orders_db: str) -> None:
    cents = np.array([0, 1, 99, 100, 12345, -250, 10**12 - 1, 5_000_000_00])
    texts = ["", "a", "Scandi Fox Mug", "naïve £5 ☕", "x" * 300, "tab\there", "new\nline", "end"]
    ids = np.arange(len(cents)) + 2**40
    nulls = np.array([False, True] * 4)
    stamps = np.array([0, 946_684_800_000_000, 1_704_067_200_123_456, -1, 1, 2, 3, 4], dtype=np.int64)
    payload = pgcopy.encode([pgcopy.int8(ids, null=nulls), pgcopy.int4(np.arange(len(cents)) - 3),
                             pgcopy.numeric_cents(cents), pgcopy.text(texts), pgcopy.timestamptz(stamps)])
    conn = psycopg2.connect(orders_db)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute("CREATE TEMP TABLE t (id bigint, n integer, price numeric(12, 2), label text, at timestamptz)")
            cur.copy_expert("COPY t FROM STDIN (FORMAT binary)", io.BytesIO(payload))
            cur.execute("SELECT id, n, price, label, at FROM t ORDER BY n")
            rows = cur.fetchall()
    finally:
        conn.close()
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert rows == [
        (None if null else int(i), n, Decimal(int(c)) / 100, text, epoch + timedelta(microseconds=int(us)))
        for i, null, n, c, text, us in zip(ids, nulls, range(-3, 5), cents, texts, stamps)
    ]


# -- imported orders beside generated ones (issue 12, item 11) ------------------------------------------


def _import_sample(url: str, retail_csv: Path, tmp_path: Path, rows: int = 60) -> list[str]:
    """Import the shared file's first rows (2009-12-01) with the real importer; return the invoices."""
    import gzip

    from ecom_ml.importer import import_file

    with gzip.open(retail_csv, "rt", encoding="utf-8") as handle:
        lines = [next(handle) for _ in range(rows + 1)]
    source = tmp_path / "sample.csv"
    source.write_text("".join(lines), encoding="utf-8")
    import_file(url, source, rejects=tmp_path / "sample.rejects.csv", progress=False)
    return [ref for (ref,) in _query(url, "SELECT external_ref FROM orders WHERE external_ref NOT LIKE 'G%%' "
                                          "ORDER BY 1")]


def test_rerunning_a_range_keeps_imported_orders_in_its_id_block(
    orders_db: str, retail_csv: Path, tmp_path: Path
) -> None:
    """Imported orders take ids right after the last generated one, inside the last day's block."""
    generate(orders_db, _config(days=3, orders_per_day=200), progress=False)
    imported = _import_sample(orders_db, retail_csv, tmp_path)
    assert imported, "the sample holds orders"
    (block_of_last_day,), = _query(orders_db, "SELECT max(order_id) / 10000000 FROM orders WHERE external_ref LIKE 'G%%'")
    ids = _query(orders_db, "SELECT order_id / 10000000 FROM orders WHERE external_ref = ANY(%s)", (imported,))
    assert {b for (b,) in ids} == {block_of_last_day}, "the imported ids fall in the generator's last block"
    before = _query(orders_db, "SELECT o.order_id, count(i.*) FROM orders o JOIN order_items i USING (order_id) "
                               "WHERE o.external_ref = ANY(%s) GROUP BY 1 ORDER BY 1", (imported,))
    generate(orders_db, _config(days=3, orders_per_day=200), progress=False)
    after = _query(orders_db, "SELECT o.order_id, count(i.*) FROM orders o JOIN order_items i USING (order_id) "
                              "WHERE o.external_ref = ANY(%s) GROUP BY 1 ORDER BY 1", (imported,))
    assert after == before, "the generator deletes only what it generated"


def _shop_order(url: str, day: date, ref: str) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO orders (external_ref, status, created_at, updated_at) "
                        "VALUES (%s, 'paid', %s, %s)", (ref, f"{day} 12:00+00", f"{day} 12:00+00"))
    finally:
        conn.close()


def test_generating_into_days_with_imported_orders_is_refused_unless_asked(orders_db: str) -> None:
    generate(orders_db, _config(days=3, orders_per_day=200), progress=False)
    _shop_order(orders_db, START + timedelta(days=1), "INV-1")
    before = _checksums(orders_db)
    with pytest.raises(GeneratorError, match=r"holds 1 order\(s\) the generator did not write between 2024-01-01 "
                                             r"and 2024-01-04 \(e.g. 'INV-1'\).*--alongside-imported"):
        generate(orders_db, _config(days=3, orders_per_day=200), progress=False)
    assert _checksums(orders_db) == before, "a refused run writes nothing"
    generate(orders_db, _config(days=3, orders_per_day=200, alongside_imported=True), progress=False)
    assert _query(orders_db, "SELECT count(*) FROM orders WHERE external_ref = 'INV-1'") == [(1,)]
    # Days outside the imported one are not refused.
    generate(orders_db, _config(days=1, orders_per_day=200, start=START + timedelta(days=3)), progress=False)


def test_a_database_generated_before_the_record_is_backfilled_from_the_generators_mark(
    orders_db: str, retail_csv: Path, tmp_path: Path
) -> None:
    generate(orders_db, _config(days=2, orders_per_day=200), progress=False)
    _query_exec = psycopg2.connect(orders_db)
    with _query_exec, _query_exec.cursor() as cur:
        cur.execute("DROP TABLE ecom_generator.generated_orders")  # as an older generator left it
    _query_exec.close()
    imported = _import_sample(orders_db, retail_csv, tmp_path)
    generate(orders_db, _config(days=2, orders_per_day=200), progress=False)
    assert len(_query(orders_db, "SELECT 1 FROM orders WHERE external_ref = ANY(%s)", (imported,))) == len(imported)
    (generated,), = _query(orders_db, "SELECT count(*) FROM ecom_generator.generated_orders")
    (marked,), = _query(orders_db, "SELECT count(*) FROM orders WHERE external_ref = 'G' || order_id::text")
    assert generated == marked > 0


def test_cli_generate_alongside_imported_flag(orders_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    from ecom_ml.cli import main

    args = ["generate", "--start", "2024-01-01", "--days", "2", "--orders-per-day", "100", "--db-url", orders_db,
            "--quiet"]
    assert main(args) == 0
    _shop_order(orders_db, START, "INV-2")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ecom-ml: error: ") and "INV-2" in err and "\n" not in err
    assert main([*args, "--alongside-imported"]) == 0


# -- customer lifecycle (opt-in) ---------------------------------------------------------------------------


def _lapsed_share(url: str, first: date, last: date) -> float:
    """Share of the customers who ordered in the first 30 days that never ordered in the last 30."""
    (share,), = _query(url, """
        WITH early AS (SELECT DISTINCT customer_id FROM orders WHERE created_at < %(a)s),
             late AS (SELECT DISTINCT customer_id FROM orders WHERE created_at >= %(b)s)
        SELECT avg((l.customer_id IS NULL)::int)::float FROM early e LEFT JOIN late l USING (customer_id)""",
                       {"a": first + timedelta(days=30), "b": last - timedelta(days=30)})
    return share


def test_customer_lifecycle_makes_customers_lapse_and_is_kept_with_the_database(
        another_orders_db: Callable[[], str]) -> None:
    from ecom_ml.generator.lifecycle import CustomerLifecycle

    plain, living, again = another_orders_db(), another_orders_db(), another_orders_db()
    days, end = 120, START + timedelta(days=120)
    generate(plain, _config(days=days, orders_per_day=150), progress=False)
    generate(living, _config(days=days, orders_per_day=150, lifecycle=CustomerLifecycle()), progress=False)
    generate(again, _config(days=60, orders_per_day=150, lifecycle=CustomerLifecycle()), progress=False)
    # Continuing needs the same lifecycle; with it, two runs equal one.
    with pytest.raises(GeneratorError, match=r"customer lifecycle on .* \(asked: off\)"):
        generate(again, _config(days=60, orders_per_day=150, start=START + timedelta(days=60)), progress=False)
    generate(again, _config(days=60, orders_per_day=150, start=START + timedelta(days=60),
                            lifecycle=CustomerLifecycle()), progress=False)
    assert _checksums(again) == _checksums(living)
    # Same volume, but customers stop: far more of the early customers are gone by the end (measured
    # at seed 7: 0.20 without, 0.37 with the defaults).
    without, with_life = _lapsed_share(plain, START, end), _lapsed_share(living, START, end)
    assert without < 0.25 and with_life > without + 0.1, (without, with_life)
    # Everything but who orders when is the same shop: catalogue and customer base are untouched.
    assert _checksums(plain)["products"] == _checksums(living)["products"]


@pytest.mark.parametrize("kwargs, message", [
    ({"mean_lifetime_days": 0}, "customer lifecycle mean_lifetime_days=0: must be a number from 1 to 36500"),
    ({"seasonal_share": 1.5}, "customer lifecycle seasonal_share=1.5: must be a number from 0 to 1"),
    ({"period_days": (40, 20)}, "customer lifecycle period_days=(40, 20): must be two whole numbers"),
])
def test_customer_lifecycle_rejects_bad_values(kwargs: dict, message: str) -> None:
    from ecom_ml.generator.lifecycle import CustomerLifecycle

    with pytest.raises(GeneratorError, match=re.escape(message)):
        CustomerLifecycle(**kwargs)


def test_refunded_orders_have_partial_and_full_line_refunds(orders_db: str, another_orders_db: Callable[[], str]) -> None:
    """Some lines of a refunded order come back, with a quantity, 3-14 days after it was placed; re-derived
    identically, also when the days arrive run by run (late refunds)."""
    generate(orders_db, _config(days=20, orders_per_day=300), progress=False)
    rows = _query(orders_db, """
        SELECT o.order_id, o.status, i.quantity, f.quantity, f.refunded_at - o.created_at, f.refunded_at = o.updated_at,
               f.source_ref IS NULL
        FROM refund_lines f JOIN order_items i USING (order_item_id) JOIN orders o USING (order_id)""")
    assert rows
    assert {r[1] for r in rows} == {"refunded"} and all(r[5] and r[6] for r in rows)
    assert all(1 <= r[3] <= r[2] for r in rows)
    assert all(timedelta(days=3) <= r[4] < timedelta(days=14) for r in rows)
    partial = [r for r in rows if r[3] < r[2]]
    assert partial and len(partial) < len(rows)  # partial refunds as well as full ones
    refunded_orders = {r[0] for r in rows}
    (n_refunded, with_kept_lines), = _query(orders_db, """
        SELECT count(*), count(*) FILTER (WHERE EXISTS (
            SELECT 1 FROM order_items i WHERE i.order_id = o.order_id
              AND i.quantity > COALESCE((SELECT sum(f.quantity) FROM refund_lines f
                                         WHERE f.order_item_id = i.order_item_id), 0)))
        FROM orders o WHERE status = 'refunded'""")
    assert n_refunded == len(refunded_orders)  # every refunded order returned something
    assert 0 < with_kept_lines < n_refunded  # most keep something, some return everything
    (recorded,), = _query(orders_db, "SELECT count(*) FROM ecom_generator.generated_refunds")
    assert recorded == len(rows)

    # The same days in two runs: the refunds falling after the first run's end arrive late.
    other = another_orders_db()
    generate(other, _config(days=12, orders_per_day=300), progress=False)
    second = generate(other, _config(days=8, orders_per_day=300, start=START + timedelta(days=12)), progress=False)
    assert second.late_refunds > 0
    assert _checksums(other) == _checksums(orders_db)
