"""Publishing batch predictions into the orders DB's ``ml`` schema, on the real PostgreSQL.

The swap is atomic for readers (a reader polling throughout sees only complete sets), a database
that refuses the write leaves the previous set in place, readers' grants survive a publish, and a
champion registered before ecom-ml packaged models for MLflow is refused by name — also when
``ecom-ml rollback`` restores it. The nightly path (publish after promote, through the real
scheduler) is in tests/test_night.py; the pyfunc model and ``mlflow models serve`` are checked there
against the night's published rows.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import date
from pathlib import Path

import numpy as np
import psycopg2
import pyarrow as pa
import pytest

from ecom_ml.db.migrate import migrate
from ecom_ml.publishing import PredictionSet, PublishError, publish

COLUMNS = {"customer_id": "bigint", "rank": "smallint", "product_id": "bigint", "score": "real"}
DAY = date(2024, 3, 4)


def _set(customers: int, k: int, seed: int) -> PredictionSet:
    rng = np.random.default_rng(seed)
    rows = pa.table({
        "customer_id": np.repeat(np.arange(1, customers + 1, dtype=np.int64), k),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int16), customers),
        "product_id": rng.integers(1, 10_000, customers * k, dtype=np.int64),
        "score": np.tile((1.0 / np.arange(1, k + 1)).astype(np.float32), customers),
    })
    return PredictionSet("recommendations", COLUMNS, rows, key=("customer_id", "rank"))


def _one(url: str, sql: str, *params) -> tuple:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params or None)
            return cur.fetchone()
    finally:
        conn.close()


@pytest.fixture
def ml_db(empty_db: str) -> str:
    migrate(empty_db)
    return empty_db


def test_readers_see_the_old_complete_set_or_the_new_one_never_a_half(ml_db: str):
    # Each version has its own size, so a reader can tell a complete set from a half or a mix.
    sizes = {1: 20_000 * 10, 2: 30_000 * 10, 3: 25_000 * 10, 4: 35_000 * 10}
    first = publish(ml_db, "recommender", 1, DAY, _set(sizes[1] // 10, 10, 1), actor="test")
    assert first.rows == sizes[1]
    seen: list[tuple[int, int, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            conn = psycopg2.connect(ml_db)
            conn.autocommit = True
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.execute("SELECT count(*), min(model_version), max(model_version) FROM ml.recommendations")
                    seen.append(cur.fetchone())
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in (2, 3, 4):
            result = publish(ml_db, "recommender", version, DAY, _set(sizes[version] // 10, 10, version),
                             actor="test", reason=f"v{version}")
            assert result.rows == sizes[version] and result.lock_s < 1.0, result
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert seen, "the reader ran"
    versions_seen = set()
    for count, low, high in seen:
        assert low == high, f"a reader saw two versions in one set: {low}..{high}"
        assert count == sizes[low], f"a reader saw {count} rows of v{low}, whose complete set is {sizes[low]}"
        versions_seen.add(low)
    assert len(versions_seen) >= 2, f"the reader overlapped the swaps ({sorted(versions_seen)})"
    # Every row carries the version and the day; the log says who published what.
    assert _one(ml_db, "SELECT count(*), min(model_version), max(day) FROM ml.recommendations") == (sizes[4], 4, DAY)
    assert _one(ml_db, "SELECT count(*), max(model_version) FROM ml.publications WHERE table_name = 'recommendations'") \
        == (4, 4)
    leftovers = _one(ml_db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'ml' AND tablename LIKE '%\\_\\_%'")
    assert leftovers == (0,), "no staging or old tables are left behind"


def test_the_database_refusing_the_write_leaves_the_previous_set_and_readers_keep_their_grants(ml_db: str):
    publish(ml_db, "recommender", 1, DAY, _set(500, 5, 1), actor="test")
    role = f"ecom_shop_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(ml_db)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'shop'")
    try:
        cur.execute(f"GRANT USAGE ON SCHEMA ml TO {role}")
        cur.execute(f"GRANT SELECT ON ml.recommendations TO {role}")
        # A role that may read but not create tables in ml (a DBA's read-only publisher account).
        params = conn.get_dsn_parameters()
        shop_url = f"postgresql://{role}:shop@{params['host']}:{params['port']}/{params['dbname']}"
        with pytest.raises(PublishError) as refused:
            publish(shop_url, "recommender", 2, DAY, _set(800, 5, 2), actor="test")
        message = str(refused.value)
        assert "\n" not in message and "recommender v2 into ml.recommendations" in message
        assert "permission denied" in message and "previous predictions are unchanged" in message
        assert "shop@" not in message, "no password in the message"
        assert _one(ml_db, "SELECT count(*), max(model_version) FROM ml.recommendations") == (2500, 1)

        # The shop's reader keeps its SELECT grant across a publish (it lives on the swapped table).
        publish(ml_db, "recommender", 3, DAY, _set(700, 5, 3), actor="test")
        assert _one(shop_url, "SELECT count(*), max(model_version) FROM ml.recommendations") == (3500, 3)
    finally:
        cur.execute(f"DROP OWNED BY {role}")
        cur.execute(f"DROP ROLE {role}")
        conn.close()


def test_bad_prediction_sets_are_one_line_and_publish_nothing(ml_db: str):
    publish(ml_db, "recommender", 1, DAY, _set(100, 5, 1), actor="test")
    rows = _set(100, 5, 2).rows
    with_null = rows.set_column(3, "score", pa.array([None] + [0.5] * (rows.num_rows - 1), pa.float32()))
    cases = [
        (PredictionSet("recommendations", COLUMNS, with_null), "ml.recommendations.score has 1 null value"),
        (PredictionSet("recommendations", {**COLUMNS, "score": "text"}, rows), "type 'text' is not publishable"),
        (PredictionSet("Recs; drop", COLUMNS, rows), "is not a valid table/column name"),
        (PredictionSet("recommendations", {"customer_id": "bigint"}, rows), "the kind declares ['customer_id']"),
    ]
    for predictions, expected in cases:
        with pytest.raises(PublishError) as failed:
            publish(ml_db, "recommender", 2, DAY, predictions, actor="test")
        assert expected in str(failed.value) and "\n" not in str(failed.value), str(failed.value)
    assert _one(ml_db, "SELECT count(*), max(model_version) FROM ml.recommendations") == (500, 1)


def test_a_db_without_the_ml_schema_is_one_line_saying_to_migrate(empty_db: str):
    with pytest.raises(PublishError, match=r"there is no schema 'ml': run `ecom-ml db migrate`"):
        publish(empty_db, "recommender", 1, DAY, _set(10, 2, 1), actor="test")


# -- a champion that is not an MLflow pyfunc model (registered before packaging) -------------------------


def _plain_version(reg, root: Path, marker: str) -> int:
    """A recommender version registered as before ecom-ml packaged models: the bare model folder."""
    from test_registry import _metrics, _report

    folder = root / marker / "model"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"kind": "two_tower", "features": {"day": DAY.isoformat()}}))
    return reg.log_candidate("recommender", marker, {}, _metrics(0.31), folder, gate_report=_report(0.31)).version


def test_a_champion_without_a_pyfunc_flavour_is_refused_by_name_also_on_rollback(
        pg_server, scratch_dbs, ml_db, tmp_path, monkeypatch, capsys):
    from ecom_ml import cli, registry
    from ecom_ml.training.steps import NotPublishable, publish_champion

    mlflow_db = pg_server.local_url(scratch_dbs("mlflow")["mlflow"], "postgresql+psycopg2")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db)
    monkeypatch.setenv("ECOM_MLFLOW_ARTIFACTS", (tmp_path / "artifacts").as_uri())
    monkeypatch.setenv("ECOM_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ECOM_ORDERS_DB_URL", ml_db)
    reg = registry.get_registry()
    v1, v2 = _plain_version(reg, tmp_path, "v1"), _plain_version(reg, tmp_path, "v2")
    reg.promote("recommender", v1, "first", "test")
    reg.promote("recommender", v2, "second", "test")
    publish(ml_db, "recommender", v2, DAY, _set(50, 5, 2), actor="test")  # what the shop has now

    with pytest.raises(NotPublishable, match=rf"recommender v{v2} is not an MLflow pyfunc model"):
        publish_champion("recommender", lake_root=(tmp_path / "lake").as_uri(), orders_url=ml_db, actor="test",
                         reason="test")

    code = cli.main(["rollback", "--model", "recommender", "--reason", "bad recommendations", "--actor", "alice"])
    out, err = capsys.readouterr()
    assert code == 4, (out, err)
    assert f"champion v{v2} -> v{v1}" in out
    line = err.strip().splitlines()[-1]  # (MLflow's own INFO lines come before it)
    assert line.startswith("ecom-ml: error: ") and f"the champion is v{v1} but its predictions were not republished" in line
    assert f"recommender v{v1} is not an MLflow pyfunc model" in line
    assert _one(ml_db, "SELECT count(*), max(model_version) FROM ml.recommendations") == (250, v2), \
        "the previous set stays in place"
