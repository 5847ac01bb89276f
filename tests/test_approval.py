"""When a passed candidate waits for a person (``ecom_ml.approval``) and how decisions are kept
(``ecom_ml.decisions``, on a real MLflow registry in PostgreSQL). The approval task itself runs
through the real scheduler in tests/test_ui_browser.py, where a person approves and rejects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecom_ml import decisions
from ecom_ml.approval import ApprovalConfigError, ApprovalPolicy, check_mode, decide
from ecom_ml.gate import GateConfig, GateConfigError, evaluate_gate
from ecom_ml.registry import Registry

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")

COST = {"model_bytes": 1000, "p99_ms": 2.0}
SLICES = {"new": {"recall@10": 0.05}, "returning": {"recall@10": 0.3}}


def _result(values: list[float]) -> dict:
    return {"ndcg@10": sum(values) / len(values), "slices": SLICES, "cost": COST,
            "per_unit": {"unit": "customer", "digest": "d", "values": {"ndcg@10": values}}}


def _report(candidate: list[float], baseline: list[float]) -> dict:
    report = evaluate_gate("recommender", _result(candidate), None, {"repeat": _result(baseline)})
    assert report.passed, report.summary_line()
    return report.to_dict()


BASE = [0.25, 0.35] * 200  # mean 0.30
CLEAR_WIN = [v + 0.05 for v in BASE]  # +0.05 on every customer: far above the 2% margin
JUST_ENOUGH = [v + 0.0075 for v in BASE]  # margin 0.02 x 0.30 = 0.006 needed; clears it by 0.0015


def test_never_and_always() -> None:
    report = _report(JUST_ENOUGH, BASE)
    assert decide(report, ApprovalPolicy("never"), None) == {"mode": "never", "required": False, "reasons": [],
                                                              "timeout_hours": 24.0}
    always = decide(report, ApprovalPolicy("never"), None, mode="always")
    assert always["required"] and "approval: always" in always["reasons"][0]


def test_borderline_asks_only_for_a_pass_close_to_failing() -> None:
    policy = ApprovalPolicy("borderline", distance=0.02)
    assert not decide(_report(CLEAR_WIN, BASE), policy, None)["required"]
    close = decide(_report(JUST_ENOUGH, BASE), policy, None)
    assert close["required"]
    assert close["reasons"] == ["beats_best_baseline: the low end of the interval of candidate - baseline repeat "
                                "(+0.0075) clears its requirement by 0.0015, 0.5% of 0.3000 (approval_distance 2%)"]


def test_borderline_without_an_interval_uses_the_point_margin() -> None:
    data = {k: v for k, v in GateConfig.load("recommender").to_dict().items() if k != "source"}
    cfg = GateConfig.from_dict({**data, "confidence_level": None}, source="test")
    report = evaluate_gate(cfg, _result(JUST_ENOUGH), None, {"repeat": _result(BASE)}).to_dict()
    found = decide(report, ApprovalPolicy("borderline", distance=0.02), None)
    assert found["required"] and found["reasons"][0].startswith("beats_best_baseline: ndcg@10 0.3075 clears")


def test_borderline_asks_when_inputs_drifted_unless_switched_off() -> None:
    drift = {"drifted": ["country_mix", "unit_price"]}
    report = _report(CLEAR_WIN, BASE)
    asked = decide(report, ApprovalPolicy("borderline"), drift)
    assert asked["reasons"] == ["inputs drifted against the champion's training window: country_mix, unit_price"]
    assert not decide(report, ApprovalPolicy("borderline", on_drift=False), drift)["required"]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("approval", "sometimes", "key 'approval' must be one of never, borderline, always, got 'sometimes'"),
    ("approval_distance", 2, "key 'approval_distance' must be a number in [0, 1) such as 0.02, got 2"),
    ("approval_on_drift", "yes", "key 'approval_on_drift' must be true or false, got 'yes'"),
    ("approval_timeout_hours", 0, "key 'approval_timeout_hours' must be a number of hours in (0, 336], got 0"),
])
def test_a_bad_approval_setting_is_one_line(key, value, message) -> None:
    data = {k: v for k, v in GateConfig.load("recommender").to_dict().items() if k != "source"}
    with pytest.raises(GateConfigError) as info:
        GateConfig.from_dict({**data, key: value}, source="gates/x.yaml")
    assert str(info.value) == f"gate config gates/x.yaml: {message}"


def test_the_packaged_gates_parse_their_approval_mode() -> None:
    for model in ("recommender", "demand", "propensity"):
        assert GateConfig.load(model).approval.mode in ("never", "borderline", "always")


def test_a_bad_variable_is_one_line() -> None:
    assert check_mode(" Always ", "Airflow Variable ecom_recommender_approval") == "always"
    with pytest.raises(ApprovalConfigError) as info:
        check_mode("yes", "Airflow Variable ecom_recommender_approval")
    assert str(info.value) == ("Airflow Variable ecom_recommender_approval='yes' is not an approval mode "
                               "(one of: never, borderline, always)")


# -- decisions on a real registry ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def reg(pg_server, scratch_dbs, tmp_path_factory) -> Registry:
    root = tmp_path_factory.mktemp("approvals")
    url = pg_server.local_url(scratch_dbs("mlflow")["mlflow"], "postgresql+psycopg2")
    return Registry(url, artifacts=(root / "artifacts").as_uri(), cache_dir=root / "cache")


def _candidate(reg: Registry, tmp_path: Path, model: str, name: str, ndcg: float = 0.36) -> int:
    folder = tmp_path / name / "model"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"name": name}))
    version = reg.log_candidate(model, name, {}, {"ndcg@10": ndcg}, folder)
    reg.attach_gate_report(version, _report([v + ndcg - 0.30 for v in BASE], BASE))
    return version.version


def test_decisions_are_recorded_once_per_key_and_kept_beside_the_moves(reg: Registry, tmp_path: Path) -> None:
    model = "appr_record"
    first = _candidate(reg, tmp_path, model, "a")
    reg.promote(model, first, "first", "tester")
    second = _candidate(reg, tmp_path, model, "b")
    for _ in range(2):  # a retried task records its decision again: stored once
        decisions.record(reg, model, second, "rejected", "Ada", "not this week", key="train_x/run1/approve")
    found = decisions.decisions(reg, model)
    assert [(d["version"], d["decision"], d["actor"], d["reason"]) for d in found] == [
        (second, "rejected", "Ada", "not this week")]
    tags = reg.client.get_model_version(model, str(second)).tags
    assert tags["ecom.approval.decision"] == "rejected" and tags["ecom.approval.by"] == "Ada"
    # A rejection moves nothing: the champion and the verified history are unchanged.
    assert reg.champion_version(model) == first and reg.verify_champion(model).verified
    assert [e["version"] for e in reg.history(model)] == [first]


def test_an_approval_of_a_superseded_candidate_is_refused(reg: Registry, tmp_path: Path) -> None:
    model = "appr_stale"
    first = _candidate(reg, tmp_path, model, "a")
    assert decisions.superseded(reg, model, first, None) is None
    second = _candidate(reg, tmp_path, model, "b")
    assert decisions.superseded(reg, model, first, None) == "a newer candidate was registered since (v2)"
    reg.promote(model, first, "promoted by hand meanwhile", "tester")
    assert decisions.superseded(reg, model, second, None) == (
        "the champion changed since the gate compared against it (no champion then, v1 now)")
    assert decisions.superseded(reg, model, second, first) is None


# -- the approve task's answers (the operator's own code; the scheduler path is in test_ui_browser) -----


class _TI:
    """The two things the approve task reads from its task instance: who it is and the gate's XCom."""

    dag_id, run_id, task_id = "train_appr", "manual__2024-01-15", "approve"

    def __init__(self, gated: dict) -> None:
        self.gated = gated

    def xcom_pull(self, task_ids: str) -> dict:
        assert task_ids == "gate"
        return self.gated


def _operator(model: str):
    from ecom_ml.approval_operator import PromotionApproval

    return PromotionApproval(task_id="approve", model=model)


def test_no_answer_in_time_is_recorded_and_fails_the_task(reg: Registry, tmp_path: Path, monkeypatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ecom_ml import registry

    monkeypatch.setattr(registry, "get_registry", lambda: reg)
    model = "appr_timeout"
    version = _candidate(reg, tmp_path, model, "a")
    gated = {"version": version, "day": "2024-01-15", "champion_at_gate": None,
             "approval": {"required": True, "timeout_hours": 0.5, "reasons": ["always"]}}
    with pytest.raises(AirflowFailException) as info:
        _operator(model).execute_complete({"ti": _TI(gated)}, {"error": "no response", "error_type": "timeout"})
    assert str(info.value) == (f"{model} v{version}: nobody approved it within 0.5 h; not promoted "
                               f"(trigger the day again to ask again)")
    assert [(d["decision"], d["actor"]) for d in decisions.decisions(reg, model)] == [("timed_out", "airflow")]
    assert reg.champion_version(model) is None


def test_an_approval_after_the_champion_changed_is_refused(reg: Registry, tmp_path: Path, monkeypatch) -> None:
    from datetime import datetime, timezone

    from airflow.sdk.exceptions import AirflowFailException

    from ecom_ml import registry

    monkeypatch.setattr(registry, "get_registry", lambda: reg)
    model = "appr_superseded"
    old = _candidate(reg, tmp_path, model, "a")
    waiting = _candidate(reg, tmp_path, model, "b")
    reg.promote(model, old, "rolled out by hand while v2 waited", "ops")
    gated = {"version": waiting, "day": "2024-01-15", "champion_at_gate": None,
             "approval": {"required": True, "timeout_hours": 24, "reasons": ["always"]}}
    event = {"chosen_options": ["Approve"], "params_input": {}, "responded_at": datetime.now(timezone.utc),
             "responded_by_user": {"id": "7", "name": "ada"}}
    with pytest.raises(AirflowFailException) as info:
        _operator(model).execute_complete({"ti": _TI(gated)}, event)
    assert str(info.value) == (f"{model} v{waiting}: the approval by ada is refused: the champion changed since "
                               f"the gate compared against it (no champion then, v{old} now); not promoted")
    assert [(d["version"], d["decision"], d["actor"]) for d in decisions.decisions(reg, model)] == [
        (waiting, "refused", "ada")]
    assert reg.champion_version(model) == old
