"""Tests of `ecom-ml import` on the real Online Retail II file and on small files built from it.

Data: Chen, D. (2019). Online Retail II [Dataset]. UCI Machine Learning Repository,
doi:10.24432/C5CG6D, CC BY 4.0. The small files below are samples of it (first rows), plus a few
hand-written rows for the cancellation rules.

Counts are checked against an independent pandas computation over the raw file, not against the
importer's own numbers.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import pandas as pd
import psycopg2
import pytest

from ecom_ml import settings as settings_mod
from ecom_ml.db.migrate import migrate
from ecom_ml.errors import EcomError
from ecom_ml.importer import DatabaseError, ImportResult, MappingError, SourceError, import_file, load_mapping
from ecom_ml.importer import load as load_mod

TABLES = ("customers", "products", "orders", "order_items")
HEADER = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country"


def _query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params or None)
            return cur.fetchall()
    finally:
        conn.close()


def _counts(url: str) -> dict[str, int]:
    return {table: _query(url, f"SELECT count(*) FROM {table}")[0][0] for table in TABLES}


def _import(url: str, source: Path, tmp_path: Path, **kwargs) -> ImportResult:
    kwargs.setdefault("rejects", tmp_path / "rejects.csv")
    return import_file(url, source, progress=False, **kwargs)


# --------------------------------------------------------------------------------------------------
# The whole shared file, imported once into a database of this module's own.


@pytest.fixture(scope="module")
def full_db(pg_server: settings_mod.Settings, scratch_dbs) -> str:
    url = pg_server.local_url(scratch_dbs("importer")["importer"])
    migrate(url)
    return url


@pytest.fixture(scope="module")
def full_import(
    full_db: str, retail_csv: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ImportResult, pd.DataFrame]:
    rejects = tmp_path_factory.mktemp("full") / "retail.rejects.csv"
    result = import_file(full_db, retail_csv, rejects=rejects, progress=False)
    return result, pd.read_csv(rejects, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def raw(retail_csv: Path) -> pd.DataFrame:
    """The file as text, indexed by its line number (header = line 1)."""
    frame = pd.read_csv(retail_csv, dtype=str, keep_default_na=False)
    frame.index = pd.RangeIndex(2, len(frame) + 2, name="line")
    return frame


def _expected_reasons(raw: pd.DataFrame) -> pd.Series:
    """Every row's reason by the documented priority, recomputed directly (all but linking)."""
    rules = load_mapping().rules
    code = raw["StockCode"].str.strip().str.upper()
    quantity, cents = pd.to_numeric(raw["Quantity"]), (pd.to_numeric(raw["Price"]) * 100).round()
    cancel = raw["Invoice"].str.startswith("C")
    reason = pd.Series(None, index=raw.index, dtype=object)

    def first(mask: pd.Series, name: str) -> None:
        reason[mask & reason.isna()] = name

    first(raw["Invoice"].str.startswith("A"), "adjustment_invoice")
    first(code.isin(rules.non_product_codes) | code.str.fullmatch(r"GIFT(_\d+)*"), "non_product_code")
    first(raw["Customer ID"] == "", "missing_customer")
    first(~cancel & (cents < 0), "negative_price")
    first(~cancel & (cents == 0), "zero_price")
    first(~cancel & (quantity <= 0), "nonpositive_quantity")
    first(cancel & (quantity >= 0), "nonnegative_cancellation_quantity")
    still_open = reason.isna()
    first(raw[still_open].duplicated().reindex(raw.index, fill_value=False), "duplicate_row")
    return reason


def test_full_file_accounting_and_reasons(full_import: tuple[ImportResult, pd.DataFrame], raw: pd.DataFrame) -> None:
    result, rejects = full_import
    assert result.rows_read == len(raw) == 525_461
    assert result.rows_read == result.order_lines + result.cancellation_lines + result.rejected
    assert sum(result.rejects_by_reason.values()) == result.rejected == len(rejects)
    assert result.seconds < 60

    # The reject file carries each row's true line and its original fields, untouched.
    lines = rejects["line"].astype(int)
    assert lines.is_unique
    pd.testing.assert_frame_equal(
        rejects[list(raw.columns)].reset_index(drop=True), raw.loc[lines].reset_index(drop=True), check_names=False
    )

    # Every reason but linking, row by row, equals the independent computation.
    expected = _expected_reasons(raw)
    got = pd.Series(rejects["reason"].to_numpy(), index=lines)
    linked_or_not = got == "unlinked_cancellation"
    assert got[~linked_or_not].to_dict() == expected.dropna().to_dict()
    assert (raw.loc[got[linked_or_not].index, "Invoice"].str.startswith("C")).all()
    assert expected.isna()[got[linked_or_not].index].all()
    counts = expected.value_counts().to_dict() | {"unlinked_cancellation": int(linked_or_not.sum())}
    assert result.rejects_by_reason == {r: counts[r] for r in result.rejects_by_reason}
    # README facts: 3 adjustment rows; 6,865 duplicated rows in all (some rejected for an earlier reason).
    assert counts["adjustment_invoice"] == 3
    assert int(raw.duplicated().sum()) == 6_865 >= counts["duplicate_row"]

    # Remaining cancellation rows are the linked ones.
    accepted = raw.drop(index=lines)
    assert int(accepted["Invoice"].str.startswith("C").sum()) == result.cancellation_lines > 0


def test_full_file_tables(full_import: tuple[ImportResult, pd.DataFrame], full_db: str, raw: pd.DataFrame) -> None:
    result, rejects = full_import
    accepted = raw.drop(index=rejects["line"].astype(int))
    lines = accepted[~accepted["Invoice"].str.startswith("C")]
    counts = _counts(full_db)
    assert counts == {
        "customers": lines["Customer ID"].nunique(),
        "products": lines["StockCode"].str.strip().str.upper().nunique(),
        "orders": lines["Invoice"].nunique(),
        "order_items": len(lines),
    }
    assert result.load.orders_new == result.orders == counts["orders"]
    assert _query(full_db, "SELECT sum(quantity) FROM order_items")[0][0] == pd.to_numeric(lines["Quantity"]).sum()
    assert _query(full_db, "SELECT count(*) FROM customers WHERE external_ref LIKE '%.%'")[0][0] == 0
    assert _query(full_db, "SELECT count(*) FROM products WHERE sku <> upper(btrim(sku))")[0][0] == 0
    assert _query(full_db, "SELECT count(*) FROM order_items WHERE unit_price <= 0 OR quantity <= 0")[0][0] == 0

    # Line numbers follow the file within an order; the first invoice is the README's first row.
    first = _query(
        full_db,
        """SELECT p.sku FROM order_items i JOIN orders o USING (order_id) JOIN products p USING (product_id)
           WHERE o.external_ref = '489434' ORDER BY i.line_no""",
    )
    assert [sku for (sku,) in first] == lines.loc[lines["Invoice"] == "489434", "StockCode"].str.upper().tolist()

    # Europe/London: winter is UTC+0, summer UTC+1.
    summer = lines[lines["InvoiceDate"].str.startswith("2010-07-01")].iloc[0]
    for invoice, local in (("489434", "2009-12-01 07:45:00"), (summer["Invoice"], summer["InvoiceDate"])):
        (utc,) = _query(
            full_db,
            "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM orders"
            " WHERE external_ref = %s",
            (invoice,),
        )[0]
        assert utc == str(pd.Timestamp(local).tz_localize("Europe/London").tz_convert("UTC").tz_localize(None))

    # Categories come from the keyword table, and it covers most products.
    categories = dict(_query(full_db, "SELECT category, count(*) FROM products GROUP BY category"))
    mapping = load_mapping()
    assert set(categories) <= {r.category for r in mapping.categories.rules} | {mapping.categories.fallback}
    assert categories.get("other", 0) < 0.3 * counts["products"]


def test_full_file_cancellations(
    full_import: tuple[ImportResult, pd.DataFrame], full_db: str, raw: pd.DataFrame
) -> None:
    result, rejects = full_import
    statuses = dict(_query(full_db, "SELECT status, count(*) FROM orders GROUP BY status"))
    assert statuses["cancelled"] > 0 and statuses["refunded"] > 0
    assert set(statuses) == {"delivered", "cancelled", "refunded"}
    assert result.load.orders_new_by_status == statuses
    assert _query(full_db, "SELECT bool_and(updated_at > created_at) FROM orders WHERE status <> 'delivered'")[0][0]
    assert _query(full_db, "SELECT bool_and(updated_at = created_at) FROM orders WHERE status = 'delivered'")[0][0]

    # Each changed order's updated_at is the time of an accepted cancellation line of its customer.
    accepted = raw.drop(index=rejects["line"].astype(int))
    cancels = accepted[accepted["Invoice"].str.startswith("C")]
    cancel_times = set(zip(cancels["Customer ID"], cancels["InvoiceDate"], strict=True))
    changed = _query(
        full_db,
        """SELECT c.external_ref, to_char(o.updated_at AT TIME ZONE 'Europe/London', 'YYYY-MM-DD HH24:MI:SS')
           FROM orders o JOIN customers c USING (customer_id) WHERE o.status <> 'delivered'""",
    )
    assert len(changed) == statuses["cancelled"] + statuses["refunded"]
    assert all(pair in cancel_times for pair in changed)
    # Cancelled quantities never exceed what the customer ordered of a SKU before.
    assert len(changed) <= len(cancels)


def test_second_run_imports_nothing(
    full_import: tuple[ImportResult, pd.DataFrame], full_db: str, retail_csv: Path, tmp_path: Path
) -> None:
    first, _ = full_import
    before = _counts(full_db)
    again = _import(full_db, retail_csv, tmp_path)
    assert _counts(full_db) == before
    load = again.load
    assert (load.orders_new, load.items_new, load.customers_new, load.products_new) == (0, 0, 0, 0)
    assert (load.orders_present, load.customers_present, load.products_present) == (
        first.orders,
        first.customers,
        first.products,
    )
    assert again.rejects_by_reason == first.rejects_by_reason
    summary = again.describe()
    assert "orders:      0 new" in summary and f"{first.orders:,} already present" in summary
    # Re-runs do not burn identity values on conflicts.
    assert _query(full_db, "SELECT max(order_id) FROM orders")[0][0] == before["orders"]


# --------------------------------------------------------------------------------------------------
# Small files built from the first rows of the shared file.


def _sample_lines(retail_csv: Path, rows: int = 200) -> list[str]:
    with gzip.open(retail_csv, "rt", encoding="utf-8") as handle:
        return [next(handle).rstrip("\n") for _ in range(rows + 1)]


@pytest.fixture
def sample(retail_csv: Path, tmp_path: Path) -> Path:
    path = tmp_path / "sample.csv"
    path.write_text("\n".join(_sample_lines(retail_csv)) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def loaded_db(orders_db: str, sample: Path, tmp_path: Path) -> str:
    """A database already holding the sample, so "unchanged" is checked against non-empty tables."""
    _import(orders_db, sample, tmp_path, rejects=tmp_path / "first.rejects.csv")
    assert _counts(orders_db)["order_items"] > 0
    return orders_db


def _with_field(line: str, column: int, value: str) -> str:
    """``line`` with one field replaced, quoting kept valid."""
    fields = next(csv.reader([line]))
    fields[column] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def _write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _assert_refused(url: str, source: Path, tmp_path: Path, error: type[EcomError], *fragments: str) -> str:
    before = _counts(url)
    rejects = tmp_path / "refused.rejects.csv"
    with pytest.raises(error) as caught:
        _import(url, source, tmp_path, rejects=rejects)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert _counts(url) == before
    assert not rejects.exists()
    return message


def test_wrong_header(loaded_db: str, retail_csv: Path, tmp_path: Path) -> None:
    lines = _sample_lines(retail_csv)
    lines[0] = lines[0].replace("Customer ID", "CustomerID")
    source = _write(tmp_path, "header.csv", lines)
    _assert_refused(loaded_db, source, tmp_path, SourceError, "header.csv", "line 1", "'Customer ID'", "customer_ref")


def test_dates_in_another_format(loaded_db: str, retail_csv: Path, tmp_path: Path) -> None:
    lines = _sample_lines(retail_csv)
    day_first = [lines[0]] + [
        _with_field(line, 4, pd.Timestamp(next(csv.reader([line]))[4]).strftime("%d/%m/%Y %H:%M")) for line in lines[1:]
    ]
    source = _write(tmp_path, "dates.csv", day_first)
    _assert_refused(
        loaded_db,
        source,
        tmp_path,
        SourceError,
        "dates.csv",
        "'InvoiceDate'",
        "line 2",
        "'01/12/2009 07:45'",
        "%Y-%m-%d %H:%M:%S",
    )


def test_a_few_bad_values_are_rejected_not_refused(orders_db: str, retail_csv: Path, tmp_path: Path) -> None:
    lines = _sample_lines(retail_csv)
    lines[3] = _with_field(lines[3], 4, "2009-13-01 07:45:00")  # line 4
    lines[10] = _with_field(lines[10], 3, "1x2")  # line 11
    rejects = tmp_path / "few.rejects.csv"
    result = _import(orders_db, _write(tmp_path, "few.csv", lines), tmp_path, rejects=rejects)
    table = pd.read_csv(rejects, dtype=str, keep_default_na=False).set_index("line")
    assert table.loc["4", "reason"] == "bad_timestamp" and "2009-13-01" in table.loc["4", "detail"]
    assert table.loc["11", "reason"] == "bad_number"
    assert result.rows_read == 200 == result.order_lines + result.cancellation_lines + result.rejected


def test_non_utf8_bytes(loaded_db: str, retail_csv: Path, tmp_path: Path) -> None:
    data = bytearray(("\n".join(_sample_lines(retail_csv)) + "\n").encode())
    line_starts = [0] + [i + 1 for i, b in enumerate(data) if b == 0x0A]
    data[line_starts[5] + 20] = 0xE9  # line 6, column 21: latin-1 "é"
    source = tmp_path / "latin.csv"
    source.write_bytes(bytes(data))
    _assert_refused(loaded_db, source, tmp_path, SourceError, "latin.csv", "line 6, column 21", "utf-8")


@pytest.mark.parametrize("content", ["", HEADER + "\n"], ids=["empty", "header-only"])
def test_empty_file(loaded_db: str, tmp_path: Path, content: str) -> None:
    source = tmp_path / "empty.csv"
    source.write_text(content)
    _assert_refused(loaded_db, source, tmp_path, SourceError, "empty.csv")


def test_missing_file(loaded_db: str, tmp_path: Path) -> None:
    _assert_refused(loaded_db, tmp_path / "nope.csv.gz", tmp_path, SourceError, "nope.csv.gz", "not found")


def test_unreachable_database(sample: Path, tmp_path: Path) -> None:
    with pytest.raises(DatabaseError) as caught:
        _import("postgresql://postgres@127.0.0.1:1/orders", sample, tmp_path)
    assert "cannot connect" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "rejects.csv").exists()


def test_database_without_schema(empty_db: str, sample: Path, tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="ecom-ml db migrate"):
        _import(empty_db, sample, tmp_path)
    assert _query(empty_db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")[0][0] == 0


def test_crash_in_last_load_step_leaves_db_unchanged(
    loaded_db: str, retail_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection into our own last step, after customers, products and orders were inserted."""
    real = load_mod._insert_items

    def insert_then_crash(cur) -> int:
        real(cur)
        raise RuntimeError("injected crash after inserting order lines")

    monkeypatch.setattr(load_mod, "_insert_items", insert_then_crash)
    source = _write(tmp_path, "more.csv", _sample_lines(retail_csv, rows=1000))
    before = _counts(loaded_db)
    rejects = tmp_path / "crash.rejects.csv"
    with pytest.raises(RuntimeError, match="injected"):
        _import(loaded_db, source, tmp_path, rejects=rejects)
    assert _counts(loaded_db) == before
    assert not rejects.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_gzip_and_crlf_read_like_plain(orders_db: str, retail_csv: Path, tmp_path: Path) -> None:
    lines = _sample_lines(retail_csv)
    plain = _import(orders_db, _write(tmp_path, "plain.csv", lines), tmp_path, rejects=tmp_path / "a.csv")
    crlf = tmp_path / "crlf.csv.gz"
    crlf.write_bytes(gzip.compress(("\r\n".join(lines) + "\r\n").encode()))
    again = _import(orders_db, crlf, tmp_path, rejects=tmp_path / "b.csv")
    assert (again.rows_read, again.order_lines, again.rejects_by_reason) == (
        plain.rows_read,
        plain.order_lines,
        plain.rejects_by_reason,
    )
    assert again.load.orders_new == 0 and again.load.orders_present == plain.orders
    assert (tmp_path / "a.csv").read_text().splitlines() == (tmp_path / "b.csv").read_text().splitlines()


def test_line_numbers_survive_multiline_fields_and_ragged_rows(
    orders_db: str, retail_csv: Path, tmp_path: Path
) -> None:
    lines = _sample_lines(retail_csv, rows=20)
    extra = [
        '489999,99999,"TWO-LINE\nDESCRIPTION",1,2009-12-01 07:45:00,1.00,13085,United Kingdom',  # lines 22-23
        "489434,99998,TOO,MANY,1,2009-12-01 07:45:00,1.00,13085,United Kingdom",  # line 24
        "489434,99997,SHORT,1,2009-12-01 07:45:00,1.00,13085",  # line 25
        "",  # line 26: blank, not a record
        lines[5],  # line 27: exact repeat of line 6
        "489434,99996,BAD DATE,1,2009-12-01 7.45,1.00,13085,United Kingdom",  # line 28
    ]
    rejects = tmp_path / "ragged.rejects.csv"
    result = _import(orders_db, _write(tmp_path, "ragged.csv", lines + extra), tmp_path, rejects=rejects)
    table = pd.read_csv(rejects, dtype=str, keep_default_na=False)
    # Lines 24, 25 and 28 belong to invoice 489434, which is therefore loaded not at all.
    first_invoice = [j + 1 for j, line in enumerate(lines) if line.startswith("489434,")]
    assert dict(zip(table["line"].astype(int), table["reason"], strict=True)) == {
        **{line: "incomplete_invoice" for line in first_invoice},
        24: "wrong_field_count",
        25: "wrong_field_count",
        27: "duplicate_row",
        28: "bad_timestamp",
    }
    assert table.loc[table["line"] == "27", "detail"].item() == "repeats line 6"
    assert result.rows_read == 25 and result.order_lines == 21 - len(first_invoice)
    (name,) = _query(orders_db, "SELECT name FROM products WHERE sku = '99999'")[0]
    assert name == "TWO-LINE\nDESCRIPTION"


@pytest.mark.parametrize("where", [1, 7], ids=["first-row", "later-row"])
def test_too_many_fields_on_one_line_files(orders_db: str, retail_csv: Path, tmp_path: Path, where: int) -> None:
    """No multi-line record here, so the fast parser sees the file first and must not drop the field."""
    lines = _sample_lines(retail_csv, rows=40)
    lines[where] += ",EXTRA"
    rejects = tmp_path / "long.rejects.csv"
    result = _import(orders_db, _write(tmp_path, "long.csv", lines), tmp_path, rejects=rejects)
    table = pd.read_csv(rejects, dtype=str, keep_default_na=False)
    assert table.loc[table["reason"] == "wrong_field_count", "line"].tolist() == [str(where + 1)]
    assert result.rows_read == 40


def test_cancellation_linking_rules(orders_db: str, tmp_path: Path) -> None:
    """Latest earlier order of the same customer and SKU holding enough quantity; whole or part."""
    rows = [
        HEADER,
        "1001,A1,ALPHA,10,2010-01-04 10:00:00,1.00,7,United Kingdom",
        "1002,A1,ALPHA,5,2010-01-05 10:00:00,1.00,7,United Kingdom",
        "1003,A1,ALPHA,2,2010-01-06 10:00:00,1.00,7,United Kingdom",
        "1003,B2,BETA,1,2010-01-06 10:00:00,2.00,7,United Kingdom",
        "C2001,A1,ALPHA,-5,2010-01-07 09:00:00,1.00,7,United Kingdom",  # 1003 holds 2 only: -> 1002
        "C2002,A1,ALPHA,-1,2010-01-07 09:30:00,1.00,7,United Kingdom",  # latest with enough: 1003
        "C2003,A1,ALPHA,-10,2010-01-08 09:00:00,1.00,7,United Kingdom",  # -> 1001, fully
        "C2004,A1,ALPHA,-9,2010-01-08 10:00:00,1.00,7,United Kingdom",  # nothing holds 9 any more
        "C2005,A1,ALPHA,-1,2010-01-04 09:00:00,1.00,7,United Kingdom",  # before any order
        "C2006,A1,ALPHA,-1,2010-01-08 11:00:00,1.00,8,United Kingdom",  # another customer
    ]
    rejects = tmp_path / "links.rejects.csv"
    result = _import(orders_db, _write(tmp_path, "links.csv", rows), tmp_path, rejects=rejects)
    orders = {
        ref: (status, str(updated))
        for ref, status, updated in _query(
            orders_db, "SELECT external_ref, status, updated_at AT TIME ZONE 'Europe/London' FROM orders"
        )
    }
    assert orders == {
        "1001": ("cancelled", "2010-01-08 09:00:00"),
        "1002": ("cancelled", "2010-01-07 09:00:00"),
        "1003": ("refunded", "2010-01-07 09:30:00"),
    }
    assert result.cancellation_lines == 3
    table = pd.read_csv(rejects, dtype=str, keep_default_na=False)
    assert table["line"].astype(int).tolist() == [9, 10, 11]
    assert set(table["reason"]) == {"unlinked_cancellation"}
    assert "most left: 1" in table.loc[0, "detail"]
    assert "no earlier order" in table.loc[1, "detail"] and "no earlier order" in table.loc[2, "detail"]
    assert _query(orders_db, "SELECT sum(quantity) FROM order_items")[0][0] == 18  # lines keep what was ordered


def _refunds(url: str) -> list[tuple]:
    return _query(
        url,
        """SELECT o.external_ref, i.line_no, r.quantity, r.source_ref, r.source_line,
                  (r.refunded_at AT TIME ZONE 'Europe/London')::text
           FROM refund_lines r JOIN order_items i USING (order_item_id) JOIN orders o USING (order_id)
           ORDER BY r.refunded_at, r.source_ref, r.source_line, i.line_no""",
    )


def test_cancellation_lines_become_line_level_refunds(orders_db: str, tmp_path: Path) -> None:
    """A C line refunds the order line(s) it takes back, with its quantity and time; a second import adds nothing."""
    rows = [
        HEADER,
        "1001,A1,ALPHA,4,2010-01-04 10:00:00,1.00,7,United Kingdom",
        "1001,B2,BETA,3,2010-01-04 10:00:00,2.00,7,United Kingdom",
        "1001,A1,ALPHA,2,2010-01-04 10:00:00,1.00,7,United Kingdom",  # a duplicate SKU line
        "1001,D4,GAMMA,1,2010-01-04 10:00:00,3.00,7,United Kingdom",
        "C2001,B2,BETA,-1,2010-01-06 09:00:00,2.00,7,United Kingdom",  # part of line 2
        "C2002,D4,GAMMA,-1,2010-01-08 09:00:00,3.00,7,United Kingdom",  # line 4 in full
        "C2002,A1,ALPHA,-5,2010-01-08 09:00:00,1.00,7,United Kingdom",  # line 1 (4) then line 3 (1 of 2)
        "1002,A1,ALPHA,1,2010-01-05 10:00:00,1.00,8,United Kingdom",  # another customer, untouched
    ]
    source = _write(tmp_path, "refunds.csv", rows)
    result = _import(orders_db, source, tmp_path)
    assert result.cancellation_lines == 3 and result.load.refunds_new == 4
    expected = [
        ("1001", 2, 1, "C2001", 1, "2010-01-06 09:00:00"),
        ("1001", 4, 1, "C2002", 1, "2010-01-08 09:00:00"),
        ("1001", 1, 4, "C2002", 2, "2010-01-08 09:00:00"),
        ("1001", 3, 1, "C2002", 2, "2010-01-08 09:00:00"),
    ]
    assert _refunds(orders_db) == expected
    # The order's status keeps its meaning: partly taken back, as of its latest cancellation.
    assert _query(orders_db, "SELECT external_ref, status, (updated_at AT TIME ZONE 'Europe/London')::text "
                             "FROM orders ORDER BY external_ref") == [
        ("1001", "refunded", "2010-01-08 09:00:00"), ("1002", "delivered", "2010-01-05 10:00:00")]
    assert _query(orders_db, "SELECT sum(quantity) FROM order_items")[0][0] == 11  # lines keep what was ordered

    again = _import(orders_db, source, tmp_path)
    assert again.load.refunds_new == 0 and again.load.refunds_present == 4
    assert "refund lines: 0 new; 4 already present" in again.describe()
    assert _refunds(orders_db) == expected


def test_reimport_adds_refunds_to_orders_imported_without_them(orders_db: str, tmp_path: Path) -> None:
    """A database imported before line-level refunds (orders with a status, no refund rows) gains them."""
    rows = [
        HEADER,
        "1001,A1,ALPHA,4,2010-01-04 10:00:00,1.00,7,United Kingdom",
        "1001,B2,BETA,3,2010-01-04 10:00:00,2.00,7,United Kingdom",
        "C2001,B2,BETA,-3,2010-01-06 09:00:00,2.00,7,United Kingdom",
    ]
    source = _write(tmp_path, "old.csv", rows)
    _import(orders_db, source, tmp_path)
    conn = psycopg2.connect(orders_db)
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM refund_lines")  # what an older importer left
    conn.close()
    result = _import(orders_db, source, tmp_path)
    assert result.load.orders_new == 0 and result.load.refunds_new == 1
    assert _refunds(orders_db) == [("1001", 2, 3, "C2001", 1, "2010-01-06 09:00:00")]


# --------------------------------------------------------------------------------------------------
# The mapping file and the CLI.


def _mapping_with(tmp_path: Path, old: str, new: str) -> Path:
    from ecom_ml.importer.mapping import default_mapping_path

    text = default_mapping_path().read_text()
    assert old in text
    path = tmp_path / "shop.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        ("  max_bad_share: 0.05", "  max_bad_shre: 0.05", ("rules.max_bad_shre", "unknown key")),
        ("  sku: StockCode\n", "", ("columns.sku", "missing required key")),
        ("timezone: Europe/London", "timezone: Europe/Londn", ("timestamp.timezone", "Europe/Londn")),
        ("status: delivered", "status: shipped_back", ("orders.status", "shipped_back")),
        ("max_bad_share: 0.05", "max_bad_share: 5", ("rules.max_bad_share", "between 0 and 1")),
        ("columns:", "columns: [", ("not valid YAML",)),
    ],
)
def test_mapping_errors_name_file_and_key(tmp_path: Path, old: str, new: str, fragments: tuple[str, ...]) -> None:
    path = _mapping_with(tmp_path, old, new)
    with pytest.raises(MappingError) as caught:
        load_mapping(path)
    message = str(caught.value)
    assert "\n" not in message and "shop.yaml" in message
    for fragment in fragments:
        assert fragment in message


def test_mapping_drives_the_import(orders_db: str, sample: Path, tmp_path: Path) -> None:
    """A shop that keeps guest orders: require_customer false loads them with no customer."""
    mapping = _mapping_with(tmp_path, "require_customer: true", "require_customer: false")
    lines = [
        _with_field(line, 6, "") if line.startswith("489435,") else line for line in sample.read_text().splitlines()
    ]
    guest = _write(tmp_path, "guest.csv", lines)
    result = _import(orders_db, guest, tmp_path, mapping=mapping)
    assert "missing_customer" not in result.rejects_by_reason
    guests = _query(orders_db, "SELECT external_ref FROM orders WHERE customer_id IS NULL")
    assert guests == [("489435",)]


def test_default_reject_file_goes_under_ecom_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared data folder is read-only, so rejects never go beside the source."""
    from ecom_ml.importer import default_rejects_path

    monkeypatch.setenv("ECOM_HOME", str(tmp_path))
    path = default_rejects_path(Path("/read/only/online_retail_ii_2009_2010.csv.gz"))
    assert path == tmp_path / "imports" / "online_retail_ii_2009_2010.rejects.csv"


def test_cli_import_and_error(orders_db: str, sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ecom_ml.cli import main

    rejects = tmp_path / "cli.rejects.csv"
    assert main(["import", str(sample), "--db-url", orders_db, "--rejects", str(rejects), "--quiet"]) == 0
    out = capsys.readouterr()
    assert "rows read: 200" in out.out and out.err == ""
    assert rejects.exists()
    assert main(["import", str(tmp_path / "absent.csv"), "--db-url", orders_db, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ecom-ml: error: ") and "absent.csv" in err and "\n" not in err


# --------------------------------------------------------------------------------------------------
# Truncated files, whole invoices, and conflicts with what an earlier import stored (issue 12, item 7).
# A "cut copy" is the shared file's first few thousand lines cut where a copy or download can stop.


def _cut_copy(retail_csv: Path, rows: int = 3000) -> tuple[list[str], str, int]:
    """The first ``rows`` data lines, ending inside an invoice: (lines, that invoice, its line count)."""
    lines = _sample_lines(retail_csv, rows=rows + 200)
    last = lines[rows].split(",")[0]
    invoice_lines = [i for i, line in enumerate(lines) if line.split(",")[0] == last]
    end = invoice_lines[-1] + 1
    assert len(invoice_lines) >= 4, "the cut must fall inside an invoice of several lines"
    return lines[:end], last, len(invoice_lines)


def _orders_of(url: str, invoice: str) -> list[tuple]:
    return _query(url, "SELECT o.external_ref, count(i.order_item_id) FROM orders o LEFT JOIN order_items i "
                       "USING (order_id) WHERE o.external_ref = %s GROUP BY 1", (invoice,))


def test_a_copy_cut_mid_field_is_refused_whole(loaded_db: str, retail_csv: Path, tmp_path: Path) -> None:
    lines, invoice, _ = _cut_copy(retail_csv)
    text = "\n".join(lines)
    cut = tmp_path / "cut.csv"
    cut.write_text(text[: text.rindex("United Kingdom") + len("United Ki")], encoding="utf-8")
    message = _assert_refused(loaded_db, cut, tmp_path, SourceError, "cut.csv: line ",
                              "ends without a newline, in the middle of", "United Ki'", "looks truncated",
                              "nothing was imported", "source.require_final_newline")
    assert f"line {len(lines)}:" in message
    assert _orders_of(loaded_db, invoice) == []


def test_a_copy_cut_mid_line_is_refused_whole(orders_db: str, retail_csv: Path, tmp_path: Path) -> None:
    lines, invoice, _ = _cut_copy(retail_csv)
    cut = tmp_path / "cut.csv"
    cut.write_text("\n".join(lines[:-5]) + "\n" + lines[-5][:25], encoding="utf-8")  # inside the SKU/description
    _assert_refused(orders_db, cut, tmp_path, SourceError, "ends without a newline", "looks truncated")
    assert _counts(orders_db)["orders"] == 0


def test_a_short_last_row_is_refused_even_with_a_newline(orders_db: str, retail_csv: Path, tmp_path: Path) -> None:
    lines, _, _ = _cut_copy(retail_csv)
    short = ",".join(lines[-1].split(",")[:5])
    cut = _write(tmp_path, "short.csv", lines[:-1] + [short])
    _assert_refused(orders_db, cut, tmp_path, SourceError, f"line {len(lines)}: the last row has 5 of 8 fields",
                    "looks truncated")


def test_a_cut_gzip_copy_is_refused(orders_db: str, retail_csv: Path, tmp_path: Path) -> None:
    lines, _, _ = _cut_copy(retail_csv)
    whole = gzip.compress(("\n".join(lines) + "\n").encode())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    _assert_refused(orders_db, cut, tmp_path, SourceError, "cut.csv.gz: the gzip stream ends early", "looks truncated")


def test_a_file_without_final_newline_imports_when_the_mapping_says_so(
    orders_db: str, retail_csv: Path, tmp_path: Path
) -> None:
    lines, invoice, n = _cut_copy(retail_csv, rows=300)
    source = tmp_path / "no-newline.csv"
    source.write_text("\n".join(lines), encoding="utf-8")
    mapping = tmp_path / "shop.yaml"
    default = load_mapping().path.read_text()
    mapping.write_text(default.replace("require_final_newline: true", "require_final_newline: false"))
    result = _import(orders_db, source, tmp_path, mapping=mapping)
    assert result.rows_read == len(lines) - 1
    assert _orders_of(orders_db, invoice)


def test_an_invoice_with_an_unreadable_line_is_not_loaded_at_all(orders_db: str, retail_csv: Path, tmp_path: Path) -> None:
    lines, invoice, n = _cut_copy(retail_csv)
    target = next(i for i, line in enumerate(lines) if line.split(",")[0] == invoice)
    lines[target + 1] = _with_field(lines[target + 1], 3, "12x")  # one line's quantity cannot be read
    rejects = tmp_path / "one-bad.rejects.csv"
    result = _import(orders_db, _write(tmp_path, "one-bad.csv", lines), tmp_path, rejects=rejects)
    assert _orders_of(orders_db, invoice) == [], "the invoice is loaded with all its lines or not at all"
    table = pd.read_csv(rejects, dtype=str, keep_default_na=False)
    mine = table[table["Invoice"] == invoice]
    assert len(mine) == n, "every line of the invoice is in the reject file"
    reasons = mine["reason"].value_counts().to_dict()
    assert reasons.pop("bad_number") == 1 and reasons.pop("incomplete_invoice") >= n - 3
    assert set(reasons) <= {"duplicate_row", "non_product_code", "zero_price"}, "rule rejects keep their reason"
    assert set(mine.loc[mine["reason"] == "incomplete_invoice", "detail"]) == {
        f"line {target + 2} of invoice {invoice} could not be read"}
    assert result.rejects_by_reason["incomplete_invoice"] == (mine["reason"] == "incomplete_invoice").sum()
    assert result.rows_read == result.order_lines + result.cancellation_lines + result.rejected


def test_a_later_import_with_more_lines_of_an_invoice_is_a_conflict(
    orders_db: str, retail_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The damage of an earlier import (an invoice stored with 27 of 32 lines) is named, not kept silently."""
    from ecom_ml.cli import main

    lines, invoice, n = _cut_copy(retail_csv)
    partial = _write(tmp_path, "partial.csv", lines[:-3])  # an older, shorter export: n - 3 lines of the invoice
    _import(orders_db, partial, tmp_path)
    ((_, stored),) = _orders_of(orders_db, invoice)
    complete = _write(tmp_path, "complete.csv", lines)
    message = _assert_refused(orders_db, complete, tmp_path, load_mod.ImportConflict,
                              "1 invoice(s) already in ", f"have other lines than this file: {invoice} "
                              f"({stored} lines in the database, ", "in the file); nothing was imported",
                              "--skip-conflicts")
    assert "password" not in message
    # The same through the command line: exit 2 and one line.
    assert main(["import", str(complete), "--db-url", orders_db, "--rejects", str(tmp_path / "c.csv"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ecom-ml: error: 1 invoice(s) already in") and "\n" not in err
    # Asked to, the import loads nothing of that invoice and says so in its summary.
    result = _import(orders_db, complete, tmp_path, on_conflict="skip")
    ((conflict,),) = [result.load.conflicts]
    assert conflict.order_ref == invoice and conflict.lines_in_db == stored < conflict.lines_in_file <= n
    assert "conflicts:   1 invoice(s) already present with other lines, left as they are" in result.describe()
    assert _orders_of(orders_db, invoice) == [(invoice, stored)]
    # An identical re-import is no conflict.
    again = _import(orders_db, partial, tmp_path)
    assert again.load.conflicts == [] and again.load.orders_new == 0
