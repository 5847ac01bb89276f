"""The two-tower recommender: model maths, serving, artifacts, and the training entrypoint.

Everything trains on tiny synthetic data for a few seconds: the point is that the pieces are right
(loss, log-Q, top-K, save/load, CLI contract), not that the model is good - quality is measured end
to end against the baselines by the evaluation.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402 - after the TensorFlow log level is set

# Keras 3.15 on TensorFlow 2.21 turns variables into arrays with np.array(x) when saving and reading
# weights, which numpy 2 flags; it is theirs, harmless, and not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

from ecom_ml.models import TrainRequest, get  # noqa: E402
from ecom_ml.models.recommender import (  # noqa: E402
    TrainParams,
    TwoTowerRecommender,
    Vocab,
    fit,
    load_two_tower,
    prepare,
    resolve_features,
    save_model_dir,
)
from ecom_ml.models.two_tower import (  # noqa: E402
    TopKServer,
    TwoTower,
    build_two_tower,
    in_batch_softmax_loss,
    logq_correct,
    mask_accidental_hits,
    sampled_softmax_loss,
)

REPO = Path(__file__).resolve().parents[1]
INCLUDE = REPO / "include"
DAY = date(2024, 3, 30)
TINY = {"epochs": 2, "batch_size": 64, "embedding_dim": 8, "hidden_dim": 16, "history_len": 5}


# -- tiny data ---------------------------------------------------------------------------------------


def _random_model(n_users: int = 40, n_items: int = 30, history_len: int = 5, seed: int = 0) -> TwoTower:
    """An untrained model whose scalar tables are random too, so every score term matters."""
    keras.utils.set_random_seed(seed)
    model = build_two_tower(
        n_users, n_items, 4, embedding_dim=8, hidden_dim=16, history_len=history_len, jit_compile=False
    )
    rng = np.random.default_rng(seed)
    model.set_catalogue(
        rng.integers(0, 5, n_items + 1),
        rng.integers(0, 6, n_items + 1),
        rng.integers(0, 13, n_items + 1),
        np.log(rng.dirichlet(np.ones(n_items + 1))),
    )
    for weight in (model.item_bias, model.repeat_item, model.repeat_position, model.repeat_count):
        weight.assign(rng.normal(0, 0.3, weight.shape).astype("float32"))
    return model


def _random_batch(n: int, n_users: int, n_items: int, history_len: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    history = rng.integers(1, n_items + 1, (n, history_len)).astype("int32")
    lengths = rng.integers(0, history_len + 1, n)
    history[np.arange(history_len)[None, :] >= lengths[:, None]] = 0  # padded tails, some empty rows
    item = rng.integers(1, n_items + 1, n).astype("int32")
    # Signal to learn: the positive is often in the history.
    repeat = (rng.random(n) < 0.6) & (lengths > 0)
    history[repeat, 0] = item[repeat]
    counts = np.where(history > 0, rng.integers(1, 9, history.shape), 0).astype("int32")
    return {
        "user": rng.integers(0, n_users + 1, n).astype("int32"),
        "history": history,
        "history_counts": counts,
        "item": item,
    }


def _orders_tables(seed: int = 3, customers: int = 80, products: int = 40, days: int = 35) -> dict[str, pa.Table]:
    """Raw current-state tables with a repeat-purchase signal: each customer re-buys a few staples."""
    rng = np.random.default_rng(seed)
    staples = rng.integers(1, products + 1, (customers, 3))
    first = DAY - timedelta(days=days - 1)
    order_ids, order_customers, created, line_orders, line_products = [], [], [], [], []
    order_id = 0
    for d in range(days):
        start = datetime.combine(first + timedelta(days=d), datetime.min.time(), tzinfo=timezone.utc)
        for customer in rng.choice(customers, size=8, replace=False):
            order_id += 1
            order_ids.append(order_id)
            order_customers.append(int(customer) + 1)
            created.append(start + timedelta(seconds=int(rng.integers(0, 86_000))))
            basket = {
                int(staples[customer, rng.integers(0, 3)]) if rng.random() < 0.6 else int(rng.integers(1, products + 1))
                for _ in range(int(rng.integers(1, 4)))
            }
            line_orders += [order_id] * len(basket)
            line_products += sorted(basket)
    ts = pa.timestamp("us", tz="UTC")
    return {
        "orders": pa.table(
            {
                "order_id": order_ids,
                "customer_id": order_customers,
                "status": ["delivered"] * len(order_ids),
                "created_at": pa.array(created, ts),
            }
        ),
        "order_items": pa.table(
            {"order_id": line_orders, "product_id": line_products, "quantity": [1] * len(line_orders)}
        ),
        "products": pa.table(
            {
                "product_id": list(range(1, products + 1)),
                "category": [f"cat{i % 4}" for i in range(products)],
                "price": [float(1 + i) for i in range(products)],
            }
        ),
    }


@pytest.fixture(scope="module")
def features() -> dict[str, pa.Table]:
    from ecom_ml.features.recommender import build_features

    return build_features(_orders_tables(), DAY, window_days=35)


@pytest.fixture(scope="module")
def lake_root(tmp_path_factory: pytest.TempPathFactory, features: dict[str, pa.Table]) -> str:
    """A lake with one day of recommender features, written the way the pipeline writes them."""
    from ecom_ml.features.recommender import write_features
    from ecom_ml.lake import Lake

    root = tmp_path_factory.mktemp("lake").as_uri()
    write_features(Lake(root), DAY, features)
    return root


# -- model maths -------------------------------------------------------------------------------------


def test_logq_correction_on_a_hand_example() -> None:
    # Equal model scores: the corrected softmax gives column c probability (1/q_c) / sum(1/q), i.e.
    # the popular item (q=0.8) is *not* favoured just for being sampled often.
    scores = np.zeros((2, 2), dtype="float32")
    log_q = np.log(np.array([0.8, 0.2], dtype="float32"))
    logits = keras.ops.convert_to_numpy(logq_correct(scores, log_q))
    np.testing.assert_allclose(logits, [[-np.log(0.8), -np.log(0.2)]] * 2, rtol=1e-6)
    # Row 0's positive is the popular item: p = 1.25 / (1.25 + 5) = 0.2; row 1's: p = 5 / 6.25 = 0.8.
    loss = float(in_batch_softmax_loss(logits))
    assert loss == pytest.approx((-np.log(0.2) - np.log(0.8)) / 2, rel=1e-5)
    # Weighted rows: only row 1 counts.
    assert float(in_batch_softmax_loss(logits, np.array([0.0, 2.0]))) == pytest.approx(-np.log(0.8), rel=1e-5)


def test_accidental_hits_are_masked_off_the_diagonal_only() -> None:
    logits = np.arange(9, dtype="float32").reshape(3, 3)
    masked = keras.ops.convert_to_numpy(mask_accidental_hits(logits, np.array([7, 7, 9], dtype="int32")))
    assert masked[0, 1] < -1e8 and masked[1, 0] < -1e8  # the same product as the row's positive
    keep = np.ones((3, 3), dtype=bool)
    keep[0, 1] = keep[1, 0] = False
    np.testing.assert_array_equal(masked[keep], logits[keep])  # diagonal (the positives) untouched


def test_deduplicated_loss_equals_the_textbook_in_batch_loss() -> None:
    # Items sorted, with duplicates (runs of 3 and 2): counting an item once with +log(multiplicity)
    # must give exactly log-Q + accidental-hit masking + in-batch softmax over all columns.
    rng = np.random.default_rng(0)
    items = np.array([2, 2, 2, 5, 7, 7, 9], dtype="int32")
    n = len(items)
    user_item = rng.normal(0, 2, (n, 10)).astype("float32")  # a score depends on (row, item) only
    scores = user_item[:, items]
    log_q = np.log(rng.dirichlet(np.ones(10)))[items].astype("float32")
    weight = rng.random(n).astype("float32")
    textbook = in_batch_softmax_loss(mask_accidental_hits(logq_correct(scores, log_q), items), weight)
    garbage = scores.copy()
    garbage[:, [1, 2, 5]] = 1e3  # columns that repeat an item must not be read at all
    assert float(sampled_softmax_loss(garbage, items, log_q, weight)) == pytest.approx(float(textbook), rel=1e-5)


def test_model_trains_and_loss_decreases() -> None:
    keras.utils.set_random_seed(0)
    model = build_two_tower(
        60, 50, 4, embedding_dim=8, hidden_dim=16, history_len=5, learning_rate=1e-2, jit_compile=False
    )
    model.set_catalogue(np.arange(51) % 5, np.arange(51) % 6, np.ones(51, dtype=int), np.full(51, np.log(1 / 50)))
    x = _random_batch(2048, 60, 50, 5)
    history = model.fit(x, sample_weight=np.ones(2048, dtype="float32"), batch_size=128, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.3, losses
    # The repeat signal was learned as a positive bias for the most recent history position.
    assert float(model.repeat_position.numpy()[0]) > 0


def test_serving_top_k_equals_brute_force_argsort() -> None:
    n_users, n_items, h = 40, 30, 5
    model = _random_model(n_users, n_items, h)
    batch = _random_batch(16, n_users, n_items, h, seed=4)
    user, history, counts = batch["user"], batch["history"], batch["history_counts"]
    # Brute force with the *training* formula: dense comparisons against every catalogue item.
    items = np.arange(1, n_items + 1, dtype="int32")
    buckets = model.count_buckets(history, counts)
    u = keras.ops.convert_to_numpy(model.user_vectors(user, history, buckets))
    v = keras.ops.convert_to_numpy(model.item_vectors(items))
    bias = model.item_bias.numpy()[1:]
    repeat = keras.ops.convert_to_numpy(model.repeat_scores(history, buckets, items))
    brute = (u @ v.T + bias[None, :] + repeat) / model.temperature
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :10] + 1
    for indices, values in (
        model.serve_top_k(user, history, 10, counts=counts),
        TopKServer(model, 10).top_k(user, history, counts),
    ):
        np.testing.assert_array_equal(indices, expected)
        np.testing.assert_allclose(values, np.take_along_axis(brute, expected - 1, axis=1), rtol=1e-5, atol=1e-5)
    # The training-time call computes the same scores for in-batch pairs (laid out in item order),
    # duplicated items in the batch included.
    item = batch["item"].copy()
    item[3] = item[7] = item[11] = history[2, 0] if history[2, 0] else 5
    scores = keras.ops.convert_to_numpy(
        model({"user": user, "history": history, "history_counts": counts, "item": item})
    )
    order = keras.ops.convert_to_numpy(model.batch_order(item))
    sorted_items = item[order]
    assert (np.diff(sorted_items) >= 0).all()
    first = np.r_[True, sorted_items[1:] != sorted_items[:-1]]  # later columns of a run are masked
    np.testing.assert_allclose(scores[:, first], brute[order][:, sorted_items[first] - 1], rtol=1e-5, atol=1e-5)
    assert (scores[:, ~first] < -1e8).all() and (~first).sum() >= 2


def test_save_load_round_trip_gives_identical_recommendations(tmp_path: Path) -> None:
    n_users, n_items = 40, 30
    model = _random_model(n_users, n_items)
    rng = np.random.default_rng(5)
    vocab = Vocab(
        customer_ids=np.sort(rng.choice(10_000, n_users, replace=False)).astype(np.int64),
        product_ids=np.sort(rng.choice(10_000, n_items, replace=False)).astype(np.int64),
        popular=np.zeros(0, dtype=np.int64),
        count_keys=np.array([1 * (n_items + 1) + 2], dtype=np.int64),
        count_values=np.array([7], dtype=np.int32),
    )
    vocab.popular = vocab.product_ids[::-1].copy()
    save_model_dir(
        model,
        vocab,
        {
            "format": 1,
            "kind": "recommender",
            "model": "two_tower",
            "files": {"keras": "two_tower.keras", "ids": "ids.npz"},
        },
        tmp_path / "model",
    )
    before = TwoTowerRecommender(model, vocab)
    after = load_two_tower(str(tmp_path / "model"))
    assert isinstance(after.model, TwoTower)
    customers = np.r_[vocab.customer_ids[:6], [-5, 123_456_789]]  # known, and two unknown
    histories = [vocab.product_ids[rng.choice(n_items, 3, replace=False)] for _ in range(7)] + [
        np.zeros(0, dtype=np.int64)
    ]
    histories[6] = np.array([424242], dtype=np.int64)  # only an unknown product: cold start
    first = before.recommend(customers, histories, 12)
    np.testing.assert_array_equal(first, after.recommend(customers, histories, 12))
    assert first.shape == (8, 12) and first.dtype == np.int64
    np.testing.assert_array_equal(first[-1], vocab.popular[:12])  # unknown customer, no history: popularity
    np.testing.assert_array_equal(first[-2], vocab.popular[:12])
    assert np.isin(first[:6], vocab.product_ids).all()
    np.testing.assert_array_equal(after.recommend_one(int(customers[0]), histories[0], 12), first[0])
    wide = after.recommend(customers[:2], histories[:2], n_items + 5)  # more than the catalogue: -1 padded
    assert (wide[:, n_items:] == -1).all() and len(set(wide[0, :n_items])) == n_items


# -- data preparation and training ------------------------------------------------------------------


def test_prepare_uses_only_strictly_earlier_purchases(features: dict[str, pa.Table]) -> None:
    params = TrainParams(**TINY, id_dropout=0.0)
    data = prepare(features, DAY, params)
    inter = features["interactions"]
    cutoff_us = int(datetime(2024, 3, 24, tzinfo=timezone.utc).timestamp() * 1e6)
    ts = inter.column("ts").cast(pa.int64()).to_numpy()
    assert data.train_interactions == int((ts < cutoff_us).sum()) == len(data.weight)
    assert data.holdout_interactions == inter.num_rows - data.train_interactions
    # Customers' very first training day has no history; every history item is a catalogue index.
    assert (data.x["history"] >= 0).all() and (data.x["history"] <= len(data.vocab.product_ids)).all()
    assert ((data.x["history_counts"] > 0) == (data.x["history"] > 0)).all()
    # No history item was bought on or after the example's own day: rebuild one example by hand.
    customers = inter.column("customer_id").to_numpy()
    products = inter.column("product_id").to_numpy()
    row = int(np.argmax((data.x["history"] > 0).sum(axis=1)))
    cust = data.vocab.customer_ids[data.x["user"][row] - 1]
    item = data.vocab.product_ids[data.x["item"][row] - 1]
    days = ts // 86_400_000_000
    example_day = days[(customers == cust) & (products == item) & (ts < cutoff_us)]
    hist_items = data.vocab.product_ids[data.x["history"][row][data.x["history"][row] > 0] - 1]
    earlier = set(products[(customers == cust) & (days < example_day.max())].tolist())
    assert set(hist_items.tolist()) <= earlier
    np.testing.assert_allclose(np.exp(data.item_log_q[1:]).sum(), 1.0, rtol=1e-5)


def test_training_is_deterministic_for_a_seed(features: dict[str, pa.Table]) -> None:
    params = TrainParams(**TINY, seed=11)
    runs = []
    for _ in range(2):
        model, losses = fit(prepare(features, DAY, params), params)
        runs.append((losses, [w.numpy() for w in model.weights]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        np.testing.assert_array_equal(a, b)


def test_resolve_features_accepts_a_root_with_day_or_a_partition(tmp_path: Path) -> None:
    root = tmp_path.as_uri()
    assert resolve_features(str(tmp_path), DAY) == (root, DAY)
    assert resolve_features(f"{root}/features/recommender/dt=2024-03-30", None) == (root, DAY)
    assert resolve_features(f"{tmp_path}/features/recommender/dt=2024-03-30/", DAY) == (root, DAY)
    from ecom_ml.errors import EcomError

    with pytest.raises(EcomError, match="--day"):
        resolve_features(root, None)
    with pytest.raises(EcomError, match="2024-03-29"):
        resolve_features(f"{root}/features/recommender/dt=2024-03-30", date(2024, 3, 29))


# -- the entrypoint ---------------------------------------------------------------------------------


def _pythonpath() -> str:
    """The package first, then whatever the test run had (e.g. a JAX installed outside the venv)."""
    return os.pathsep.join(p for p in (str(INCLUDE), os.environ.get("PYTHONPATH", "")) if p)


def _train_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": _pythonpath(), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ecom_ml.train", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )


RETURN_KEYS = {
    "format",
    "model",
    "out_uri",
    "return_uri",
    "model_uri",
    "artifacts",
    "features",
    "metrics",
    "model_size_bytes",
    "seconds",
    "backend",
    "params",
    "versions",
}


def test_entrypoint_end_to_end(tmp_path: Path, lake_root: str) -> None:
    out = tmp_path / "run"
    xcom = tmp_path / "airflow" / "xcom" / "return.json"
    done = _train_cli(
        "--model",
        "recommender",
        "--features",
        f"{lake_root}/features/recommender/dt={DAY}",
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--embedding-dim",
        "8",
        "--hidden-dim",
        "16",
        "--history-len",
        "5",
        "--seed",
        "3",
        "--retrieval",
        env={"ECOM_XCOM_PATH": str(xcom)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((out / "return.json").read_text())
    assert RETURN_KEYS <= set(doc), RETURN_KEYS - set(doc)
    assert json.loads(xcom.read_text()) == doc  # the pod's XCom copy
    assert doc["model"] == "recommender" and doc["backend"] == keras.backend.backend()
    assert doc["model_uri"] == (out / "model").as_uri() and doc["return_uri"] == (out / "return.json").as_uri()
    assert doc["features"] == {
        "root": lake_root,
        "day": "2024-03-30",
        "cutoff": "2024-03-24T00:00:00+00:00",
        "holdout_days": 7,
    }
    metrics = doc["metrics"]
    assert metrics["train_examples"] > 0 and metrics["holdout_interactions"] > 0
    assert np.isfinite(metrics["final_loss"]) and metrics["label_windows"] >= 1 and 0 < metrics["positive_rate"] < 1
    # The two-tower (stage 1) trained with the given settings, on the data before the ranker's windows.
    assert metrics["retrieval_examples"] > 0 and np.isfinite(metrics["retrieval_final_loss"])
    # ... and never on a day any of the ranker's label windows (7 days each, the holdout's length) covers.
    meta = json.loads((out / "model" / "model.json").read_text())
    earliest_label = datetime(2024, 3, 24, tzinfo=timezone.utc) - timedelta(days=7 * metrics["label_windows"])
    assert datetime.fromisoformat(meta["retrieval"]["trained_until"]) == earliest_label, meta["retrieval"]
    assert doc["params"]["epochs"] == 2 and doc["params"]["seed"] == 3 and doc["params"]["learning_rate"] > 0
    assert doc["model_size_bytes"] == sum(p.stat().st_size for p in (out / "model").iterdir())
    assert {p.name for p in (out / "model").iterdir()} == {"ranker.keras", "model.json", "candidates.npz"}
    assert set(doc["seconds"]) == {"read", "train", "retrieval", "export", "total"}
    assert f"-> {doc['return_uri']}" in done.stdout
    # The evaluator's loader, through the registry.
    recommender = get("recommender").load(doc["model_uri"])
    from ecom_ml.evaluation.protocol import Recommender

    assert isinstance(recommender, Recommender)
    answer = recommender.recommend(
        np.array([1, 2, 999_999]), [np.array([3, 4]), np.array([], dtype=np.int64), np.array([])], 10
    )
    assert answer.shape == (3, 10) and (answer > 0).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model", "forecast", "--features", "/nowhere", "--day", "2024-03-30", "--out", "/tmp/x"],
            "unknown model 'forecast'",
        ),
        (
            ["--model", "recommender", "--features", "/nowhere/lake", "--day", "2024-03-30", "--out", "/tmp/x"],
            "no recommender features",
        ),
        (
            [
                "--model",
                "recommender",
                "--features",
                "/nowhere",
                "--day",
                "2024-03-30",
                "--out",
                "/tmp/x",
                "--epochs",
                "0",
            ],
            "--epochs 0",
        ),
        (
            [
                "--model",
                "recommender",
                "--features",
                "/nowhere",
                "--day",
                "2024-03-30",
                "--out",
                "/tmp/x",
                "--batch-size",
                "x",
            ],
            "--batch-size",
        ),
        (["--model", "recommender", "--features", "/nowhere", "--out", "/tmp/x"], "--day"),
        (["--model", "recommender", "--out", "/tmp/x"], "--features"),
        (["--model", "recommender", "--features", "/l", "--day", "30/03/2024", "--out", "/tmp/x"], "YYYY-MM-DD"),
    ],
    ids=[
        "unknown-model",
        "missing-features",
        "bad-param",
        "not-a-number",
        "root-without-day",
        "no-features",
        "bad-day",
    ],
)
def test_user_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    done = _train_cli(*args, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip() and not _tf_noise(line)]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ecom-ml train: error: ") and message in lines[0], lines[0]


def _tf_noise(line: str) -> bool:
    """TensorFlow's C++ start-up lines, which it prints before honouring TF_CPP_MIN_LOG_LEVEL."""
    return bool(re.match(r"^(WARNING: All log messages before absl|I0000 |W0000 |To enable the following)", line))


def test_cli_help_and_registry_do_not_import_keras() -> None:
    probe = (
        "import sys, ecom_ml.train, ecom_ml.models; ecom_ml.train.build_parser(); "
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'pyarrow', 'airflow') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": _pythonpath()}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- keras only --------------------------------------------------------------------------------------


MODEL_CODE = [
    INCLUDE / "ecom_ml/models/two_tower.py",
    INCLUDE / "ecom_ml/models/recommender.py",
    INCLUDE / "ecom_ml/models/__init__.py",
    INCLUDE / "ecom_ml/train.py",
    REPO / "bench/train_gpu.py",
]


@pytest.mark.parametrize("path", MODEL_CODE, ids=lambda p: p.name)
def test_model_code_uses_keras_not_tensorflow(path: Path) -> None:
    source = path.read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert "tensorflow" not in imported
    assert not re.search(r"\btf\.\w", source), "tf.* used"
    if path.name == "two_tower.py":  # the model itself: keras and keras.ops, numpy for host arrays
        assert imported <= {"__future__", "typing", "keras", "numpy"}, imported


def test_registry_trainer_rejects_unknown_parameters(tmp_path: Path) -> None:
    from ecom_ml.errors import EcomError

    with pytest.raises(EcomError, match="no parameter"):
        get("recommender").train(
            TrainRequest(features=str(tmp_path), day=DAY, out=str(tmp_path), params={"dropout": 1})
        )
