"""train_recommender end to end on the CPU: generated orders → validated lake → features → the real
trainer subprocess (local mode) → evaluation against champion and baselines → gate → promotion.

Real Airflow (`dag.test()`), real PostgreSQL, real MLflow registry (on a throwaway database).
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest


START = date(2024, 1, 1)
DAYS = 35
LAST = START + timedelta(days=DAYS - 1)


@pytest.fixture(scope="module")
def pipeline(training_pipeline):
    """A validated lake of 35 generated days (the demo shop: 1,500 orders a day, seed 7) and a registry of its own; env for the DAG."""
    return training_pipeline(START, DAYS, orders_per_day=1500, seed=7)


#: The training Variables at their defaults, as environment Variables (which win over the metadata
#: DB): the local stack's DB may hold others (`make demo` sets a 14-day window), and these tests must
#: not depend on it. A test that wants other values sets them before calling ``_dag``.
DEFAULT_VARIABLES = {"AIRFLOW_VAR_ECOM_RECOMMENDER_WINDOW_DAYS": "90",
                     "AIRFLOW_VAR_ECOM_RECOMMENDER_HOLDOUT_DAYS": "7",
                     "AIRFLOW_VAR_ECOM_RECOMMENDER_HISTORY_LEN": "20"}


def _dag(monkeypatch, env: dict[str, str]):
    import os

    from airflow.dag_processing.dagbag import DagBag

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key, value in DEFAULT_VARIABLES.items():
        if key not in os.environ:
            monkeypatch.setenv(key, value)
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags"))
    assert bag.import_errors == {}
    return bag.get_dag("train_recommender")


def _ml_rows(env: dict[str, str]) -> tuple[int, int, int]:
    """(rows, lowest, highest model version) of ml.recommendations in the pipeline's orders DB."""
    import psycopg2

    conn = psycopg2.connect(env["AIRFLOW_CONN_ORDERS_DB"])
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*), min(model_version), max(model_version) FROM ml.recommendations")
            return cur.fetchone()
    finally:
        conn.close()


def _states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _xcom(run, task_id: str):
    return run.get_task_instance(task_id).xcom_pull(task_ids=task_id)


def test_first_model_is_promoted_then_a_worse_candidate_is_blocked(pipeline, monkeypatch):
    from ecom_ml import registry

    dag = _dag(monkeypatch, pipeline)
    first = dag.test(run_conf={"day": LAST.isoformat()})
    assert str(first.state) == "success", _states(first)
    evaluation = _xcom(first, "evaluate")
    candidate, baselines = evaluation["candidate"], evaluation["baselines"]
    from ecom_ml.gate import GateConfig

    ungated = set(GateConfig.load("recommender").ungated_baselines)
    best_baseline = max(b["ndcg@10"] for name, b in baselines.items() if name not in ungated)
    # The signal exists by construction in generated data: the model must beat every gated baseline.
    assert candidate["ndcg@10"] > best_baseline, (candidate["ndcg@10"], {k: v["ndcg@10"] for k, v in baselines.items()})
    assert set(baselines) == {"popularity_30d", "copurchase_knn20", "repeat", "ease", "repeat_then_ease",
                              "decayed_frequency_ease"}
    assert candidate["cost"]["p99_ms"] > 0 and candidate["cost"]["model_bytes"] > 0
    gated = _xcom(first, "gate")
    champion = registry.champion("recommender", download=False)
    assert champion is not None and champion.version == gated["version"]
    # The champion's top-N per active customer is in the orders DB, every row of this version.
    published = _xcom(first, "publish")
    assert published["version"] == champion.version and published["table"] == "ml.recommendations", published
    assert _ml_rows(pipeline) == (published["rows"], champion.version, champion.version)
    out = Path(_xcom(first, "features")["out_uri"].removeprefix("file://"))
    report = json.loads((out / "gate_report.json").read_text())
    assert report["passed"] is True
    assert "| check" in (out / "gate_report.md").read_text().lower()

    # A candidate trained on far less history that sees only each customer's last product (the
    # window still holds 2 x 7 days before the holdout's end, for the baselines' validation split)
    # is far worse than the champion re-scored on the same holdout (NDCG@10 about -0.12, measured):
    # the gate blocks it and the champion stays.
    monkeypatch.setenv("AIRFLOW_VAR_ECOM_RECOMMENDER_WINDOW_DAYS", "15")
    monkeypatch.setenv("AIRFLOW_VAR_ECOM_RECOMMENDER_HISTORY_LEN", "1")
    second = dag.test(run_conf={"day": LAST.isoformat()})
    states = _states(second)
    assert states["gate"] == "failed" and states["promote"] == "upstream_failed", states
    assert states["publish"] == "upstream_failed", states
    assert registry.champion("recommender", download=False).version == champion.version, "the champion must stay"
    assert _ml_rows(pipeline) == (published["rows"], champion.version, champion.version), "and its predictions"
    out2 = Path(_xcom(second, "features")["out_uri"].removeprefix("file://"))
    # The evaluation records the drift of this run's window against the champion's training window,
    # and the gate report shows it (the first run had no champion to compare with).
    assert "skipped" in evaluation["drift"]
    drift = _xcom(second, "evaluate")["drift"]
    assert drift["champion_window_end"] == LAST.isoformat() and "unit_price" in drift["inputs"], drift
    assert "## Drift of the training window against the champion's" in (out2 / "gate_report.md").read_text()
    blocked = json.loads((out2 / "gate_report.json").read_text())
    assert blocked["passed"] is False
    failed = {c["name"] for c in blocked["checks"] if not c["passed"]}
    assert "no_regression_vs_champion" in failed, failed
    regression = next(c for c in blocked["checks"] if c["name"] == "no_regression_vs_champion")
    assert regression["applicable"] is True and blocked["champion"] is not None
    assert regression["interval"]["high"] < 0, "the candidate is worse than the champion beyond the noise"
    versions = [e for e in registry.history("recommender")]
    assert versions and versions[-1]["version"] == champion.version


def test_one_split_setting_reaches_trainer_and_evaluator(pipeline, monkeypatch):
    """Variables set once (a 31-day holdout) give the same cutoff in the features, the trainer's
    return.json and the evaluation; nothing falls back to a default of its own."""
    monkeypatch.setenv("AIRFLOW_VAR_ECOM_RECOMMENDER_WINDOW_DAYS", str(DAYS))
    monkeypatch.setenv("AIRFLOW_VAR_ECOM_RECOMMENDER_HOLDOUT_DAYS", "31")
    monkeypatch.setenv("AIRFLOW_VAR_ECOM_RECOMMENDER_HISTORY_LEN", "12")
    dag = _dag(monkeypatch, pipeline)
    run = dag.test(run_conf={"day": LAST.isoformat()})
    states = _states(run)
    assert states["evaluate"] == "success", states
    holdout_start = datetime.combine(LAST - timedelta(days=30), datetime.min.time(), tzinfo=timezone.utc)
    built, trained, evaluation = _xcom(run, "features"), _xcom(run, "train"), _xcom(run, "evaluate")
    assert built["split"]["holdout_days"] == 31 and built["split"]["history_len"] == 12
    assert datetime.fromisoformat(built["split"]["holdout_start"]) == holdout_start
    assert datetime.fromisoformat(trained["features"]["cutoff"]) == holdout_start
    assert trained["features"]["holdout_days"] == 31 and trained["params"]["history_len"] == 12
    assert datetime.fromisoformat(evaluation["holdout_start"]) == holdout_start and evaluation["holdout_days"] == 31


def test_a_candidate_trained_into_the_holdout_is_refused(pipeline, monkeypatch, tmp_path):
    """The real trainer run by hand with a 1-day holdout on features built for 7: the evaluator sees
    from the candidate's own return.json that it trained on six of the holdout's days."""
    import subprocess
    import sys

    from ecom_ml.training.steps import LeakedHoldout, TrainingSettings, build_features, evaluate

    for key, value in pipeline.items():
        monkeypatch.setenv(key, value)
    lake_root = pipeline["ECOM_LAKE_ROOT"]
    cfg = TrainingSettings(lake_root=lake_root, window_days=28, holdout_days=7)
    build_features("recommender", cfg, LAST, "leak-test")
    out = tmp_path / "leaked"
    done = subprocess.run([sys.executable, "-m", "ecom_ml.train", "--model", "recommender", "--features", lake_root,
                           "--day", LAST.isoformat(), "--out", out.as_uri(), "--holdout-days", "1", "--epochs", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    trained = json.loads((out / "return.json").read_text())
    with pytest.raises(LeakedHoldout) as info:
        evaluate("recommender", lake_root, LAST, {**trained, "out_uri": out.as_uri()})
    message = str(info.value)
    assert "\n" not in message
    assert f"trained on data up to {LAST.isoformat()}" in message
    assert f"holdout starts {(LAST - timedelta(days=6)).isoformat()}" in message
    assert not (out / "evaluation.json").exists(), "a refused candidate is never scored"


def test_a_champion_that_saw_todays_holdout_is_not_the_regression_reference(pipeline, monkeypatch):
    """Training an older day (a backfill) while the champion was trained on later data: the
    regression check reads n/a with the reason instead of comparing against a flattered figure."""
    from ecom_ml import registry

    dag = _dag(monkeypatch, pipeline)
    if registry.champion("recommender", download=False) is None:
        assert str(dag.test(run_conf={"day": LAST.isoformat()}).state) == "success"
    champion = registry.champion("recommender")
    from ecom_ml.models import training_cutoff

    # A day whose 7-day holdout starts before the champion's training cutoff, with a week of
    # history before that holdout.
    cutoff = training_cutoff(champion.path).date()
    older = max(cutoff + timedelta(days=2), START + timedelta(days=8))
    assert older - timedelta(days=6) < cutoff and older <= LAST, (cutoff, older)
    run = dag.test(run_conf={"day": older.isoformat()})
    evaluation = _xcom(run, "evaluate")
    assert "champion" not in evaluation
    reason = evaluation["champion_unusable"]["reason"]
    assert reason.startswith(f"champion v{champion.version}: it was trained on data up to ")
    assert f"overlaps today's holdout from {(older - timedelta(days=6)).isoformat()}" in reason
    out = Path(_xcom(run, "features")["out_uri"].removeprefix("file://"))
    report = json.loads((out / "gate_report.json").read_text())
    check = next(c for c in report["checks"] if c["name"] == "no_regression_vs_champion")
    assert check["applicable"] is False and check["detail"] == reason
    assert "Champion not compared (n/a)" in (out / "gate_report.md").read_text()


def test_rollback_republishes_the_previous_champions_predictions(pipeline, monkeypatch, capsys):
    """The same night trained again is as good and promoted (its predictions replace the set);
    ``ecom-ml rollback`` then puts the previous champion's predictions back, as one more publish."""
    from ecom_ml import cli, registry

    dag = _dag(monkeypatch, pipeline)
    if registry.champion("recommender", download=False) is None:
        assert str(dag.test(run_conf={"day": LAST.isoformat()}).state) == "success"
    before = registry.champion("recommender", download=False).version
    run = dag.test(run_conf={"day": LAST.isoformat()})
    assert _states(run)["publish"] == "success", _states(run)
    after = registry.champion("recommender", download=False).version
    assert after != before and _ml_rows(pipeline)[1:] == (after, after)

    monkeypatch.setenv("ECOM_ORDERS_DB_URL", pipeline["AIRFLOW_CONN_ORDERS_DB"])
    code = cli.main(["rollback", "--model", "recommender", "--reason", "test the rollback", "--actor", "alice"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"champion v{after} -> v{before}" in out and f"of recommender v{before}" in out
    rows, low, high = _ml_rows(pipeline)
    assert rows > 0 and low == high == before, "the restored champion's set, nothing of the rolled-back one"
    import psycopg2

    conn = psycopg2.connect(pipeline["AIRFLOW_CONN_ORDERS_DB"])
    with conn, conn.cursor() as cur:
        cur.execute("SELECT model_version, published_by, reason FROM ml.publications ORDER BY publication_id DESC LIMIT 1")
        logged = cur.fetchone()
    conn.close()
    assert logged[0] == before and logged[1] == "alice" and "rollback" in logged[2], logged



def test_a_trainer_that_crashes_fails_the_run_naming_its_last_error_and_keeps_the_champion(pipeline, monkeypatch,
                                                                                             caplog):
    """The trainer subprocess dies (here: a Keras backend that does not exist, passed through to it
    as a backend setting): ``train`` fails with the trainer's last error line, nothing after it runs,
    nothing is registered, and the champion and its published predictions stay."""
    import logging

    from ecom_ml import registry

    dag = _dag(monkeypatch, pipeline)
    if registry.champion("recommender", download=False) is None:
        assert str(dag.test(run_conf={"day": LAST.isoformat()}).state) == "success"
    champion = registry.champion("recommender", download=False).version
    published = _ml_rows(pipeline)
    versions = len(registry.get_registry().client.search_model_versions("name = 'recommender'"))
    monkeypatch.setenv("KERAS_BACKEND", "no-such-backend")
    with caplog.at_level(logging.ERROR):
        run = dag.test(run_conf={"day": LAST.isoformat()})
    states = _states(run)
    assert states["features"] == "success" and states["train"] == "failed", states
    assert all(states[t] == "upstream_failed" for t in ("evaluate", "gate", "approve", "promote", "publish")), states
    failures = [r.getMessage() for r in caplog.records if "the trainer exited with status" in r.getMessage()]
    assert failures, [r.getMessage() for r in caplog.records][-5:]
    assert "no-such-backend" in failures[-1] and "\n" not in failures[-1].split("the trainer exited")[1], failures[-1]
    assert registry.champion("recommender", download=False).version == champion
    assert len(registry.get_registry().client.search_model_versions("name = 'recommender'")) == versions
    assert _ml_rows(pipeline) == published

@pytest.mark.parametrize(("env", "message"), [
    ({"AIRFLOW_VAR_ECOM_RECOMMENDER_HOLDOUT_DAYS": "a week"},
     "Airflow Variable ecom_recommender_holdout_days='a week' is not a whole number"),
    ({"AIRFLOW_VAR_ECOM_RECOMMENDER_WINDOW_DAYS": "0"},
     "Airflow Variable ecom_recommender_window_days='0' is out of range: must be from 2 to 3660"),
    ({"AIRFLOW_VAR_ECOM_RECOMMENDER_HISTORY_LEN": "5000"},
     "Airflow Variable ecom_recommender_history_len='5000' is out of range: must be from 1 to 1000"),
    ({"AIRFLOW_VAR_ECOM_RECOMMENDER_WINDOW_DAYS": "30", "AIRFLOW_VAR_ECOM_RECOMMENDER_HOLDOUT_DAYS": "31"},
     "Airflow Variable ecom_recommender_holdout_days=31 must be less than ecom_recommender_window_days=30"),
])
def test_a_bad_training_variable_is_one_line_naming_it(env, message, monkeypatch):
    from ecom_ml.errors import EcomError
    from ecom_ml.training.steps import TrainingSettings

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(EcomError) as info:
        TrainingSettings.from_airflow("recommender")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_a_crashing_trainer_fails_the_task_with_its_last_error_line(tmp_path):
    """The real trainer, run by the training operator on a lake without that day's features: the
    task fails with the trainer's own one-line error, not a traceback, and nothing is registered."""
    from ecom_ml.k8s_training import LocalTrainingOperator, TrainingError, trainer_command

    argv = trainer_command("recommender", (tmp_path / "lake").as_uri(), (tmp_path / "out").as_uri(),
                           ["--day", "2024-02-01"], xcom=False)
    op = LocalTrainingOperator(task_id="train", cmds=argv[:3], arguments=argv[3:], out_uri=(tmp_path / "out").as_uri(),
                               model="recommender")
    with pytest.raises(TrainingError) as info:
        op.execute({})
    message = str(info.value)
    assert message.startswith("the trainer exited with status 2: ecom-ml train: error: no recommender features "
                              "for 2024-02-01 under file://"), message
    assert "\n" not in message and not (tmp_path / "out" / "return.json").exists()
