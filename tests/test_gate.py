"""The promotion gate: each check blocks what it should, the report shows every check, bad YAML is one line.

Pure functions on evaluation dicts shaped like the evaluator's output; no database, no MLflow.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from ecom_ml.gate import GateConfig, GateConfigError, GateReport, evaluate_gate


def _result(ndcg10: float, *, recall10: float = 0.25, new_recall: float = 0.05, returning_recall: float = 0.30,
            model_bytes: int = 50_000_000, p99_ms: float = 12.0) -> dict:
    return {
        "recall@10": recall10,
        "ndcg@10": ndcg10,
        "recall@50": recall10 + 0.2,
        "ndcg@50": ndcg10 + 0.05,
        "slices": {
            "new": {"recall@10": new_recall, "ndcg@10": new_recall * 0.8},
            "returning": {"recall@10": returning_recall, "ndcg@10": ndcg10 * 1.1},
            "head_items": {"recall@10": 0.4, "ndcg@10": 0.35},
            "tail_items": {"recall@10": 0.01, "ndcg@10": 0.005},
        },
        "cost": {"model_bytes": model_bytes, "p50_ms": p99_ms / 3, "p99_ms": p99_ms},
    }


# Reference-like baselines (Online Retail II figures): repeat purchase is the one to beat.
BASELINES = {
    "popularity": _result(0.120, recall10=0.135, new_recall=0.06, model_bytes=40_000, p99_ms=0.2),
    "item_knn": _result(0.170, recall10=0.184, model_bytes=5_000_000, p99_ms=2.0),
    "repeat_purchase": _result(0.280, recall10=0.287, new_recall=0.0, model_bytes=1_000_000, p99_ms=0.5),
}


@pytest.fixture(scope="module")
def config() -> GateConfig:
    return GateConfig.load("recommender")


def _check(report: GateReport, name: str):
    return next(c for c in report.checks if c.name == name)


def test_packaged_recommender_config_loads(config):
    assert config.primary_metric == "ndcg@10"
    assert config.baseline_margin > 0 and 0 < config.champion_tolerance < 1
    assert "new" in config.slices and config.max_model_bytes and config.max_p99_ms


def test_first_model_promotes_when_it_beats_the_baselines(config):
    candidate = _result(0.300)  # 0.300 >= 0.280 * 1.02 = 0.2856
    report = evaluate_gate(config, candidate, None, BASELINES)
    assert report.passed, report.summary_line()
    champion_check = _check(report, "no_regression_vs_champion")
    assert champion_check.applicable is False and champion_check.passed
    assert "no champion" in champion_check.detail
    base = _check(report, "beats_best_baseline")
    assert report.best_baseline == "repeat_purchase"
    assert base.baseline == pytest.approx(0.280) and base.threshold == pytest.approx(0.280 * 1.02)
    assert report.summary_line().startswith("gate PASSED for recommender")


def test_blocked_below_the_baseline_margin(config):
    candidate = _result(0.284)  # beats repeat purchase (0.280), but not by 2%
    report = evaluate_gate(config, candidate, None, BASELINES)
    assert not report.passed
    assert [c.name for c in report.failed_checks] == ["beats_best_baseline"]
    line = report.summary_line()
    assert "\n" not in line
    assert "beats_best_baseline ndcg@10 0.2840 < 0.2856" in line


def test_blocked_when_worse_than_champion_beyond_tolerance(config):
    champion = _result(0.320)
    slightly_worse = evaluate_gate(config, _result(0.318), champion, BASELINES)  # -0.6%: within 1%
    assert slightly_worse.passed, slightly_worse.summary_line()
    much_worse = evaluate_gate(config, _result(0.300), champion, BASELINES)  # -6%
    assert not much_worse.passed
    check = _check(much_worse, "no_regression_vs_champion")
    assert not check.passed and check.champion == pytest.approx(0.320)
    assert check.threshold == pytest.approx(0.320 * 0.99)
    assert [c.name for c in much_worse.failed_checks] == ["no_regression_vs_champion"]


def test_slice_floor_blocks_a_broken_cold_start(config):
    report = evaluate_gate(config, _result(0.300, new_recall=0.0), None, BASELINES)
    assert not report.passed
    check = _check(report, "slice:new:recall@10")
    assert not check.passed and check.threshold == pytest.approx(0.02) and check.candidate == 0.0
    assert "slice:new:recall@10 0.0000 < 0.0200" in report.summary_line()


def test_missing_slice_fails_with_a_reason_instead_of_raising(config):
    candidate = _result(0.300)
    del candidate["slices"]["new"]
    report = evaluate_gate(config, candidate, None, BASELINES)
    check = _check(report, "slice:new:recall@10")
    assert not check.passed and "missing" in check.detail


@pytest.mark.parametrize(
    ("overrides", "failed"),
    [
        ({"model_bytes": 2_000_000_000}, "max_model_bytes"),
        ({"p99_ms": 80.0}, "max_p99_ms"),
    ],
)
def test_size_and_latency_budgets(config, overrides, failed):
    report = evaluate_gate(config, _result(0.300, **overrides), None, BASELINES)
    assert not report.passed
    assert [c.name for c in report.failed_checks] == [failed]
    assert _check(report, failed).comparison == "<="


def test_disabled_budget_is_not_applicable(config):
    data = {key: value for key, value in config.to_dict().items() if key != "source"}
    relaxed = GateConfig.from_dict({**data, "max_p99_ms": None})
    report = evaluate_gate(relaxed, _result(0.300, p99_ms=10_000.0), None, BASELINES)
    assert report.passed
    assert _check(report, "max_p99_ms").result == "n/a"


def test_no_baselines_blocks_promotion(config):
    report = evaluate_gate(config, _result(0.300), None, {})
    assert not report.passed
    assert "no baseline results" in _check(report, "beats_best_baseline").detail


def test_markdown_has_every_check_and_the_metrics_table(config):
    champion = _result(0.290)
    report = evaluate_gate(config, _result(0.300, p99_ms=80.0), champion, BASELINES)
    md = report.to_markdown()
    assert md.startswith("## Gate FAILED: `recommender`")
    header = "| Check | Metric | Threshold | Candidate | Champion | Best baseline | Result | Detail |"
    assert header in md
    for check in report.checks:
        row = next(line for line in md.splitlines() if line.startswith(f"| {check.name} |"))
        assert f"**{check.result}**" in row
    assert "| max_p99_ms | cost.p99_ms | <= 50.00 | 80.00 | 12.00 | 0.5000 | **FAIL** |" in md
    metrics_header = "| Metric | candidate | champion | baseline: popularity | baseline: item_knn | baseline: repeat_purchase |"
    assert metrics_header in md
    assert "| ndcg@10 | 0.3000 | 0.2900 | 0.1200 | 0.1700 | 0.2800 |" in md
    assert "| slices.new.recall@10 |" in md and "| cost.model_bytes | 50,000,000 |" in md


def test_json_round_trip(config):
    report = evaluate_gate(config, _result(0.300), _result(0.295), BASELINES)
    data = json.loads(report.to_json())
    assert data["passed"] is True and data["summary"] == report.summary_line()
    assert {c["name"] for c in data["checks"]} >= {"beats_best_baseline", "no_regression_vs_champion",
                                                   "slice:new:recall@10", "max_model_bytes", "max_p99_ms"}
    again = GateReport.from_dict(data)
    assert again.to_markdown() == report.to_markdown()


def test_report_does_not_alias_the_inputs(config):
    candidate = _result(0.300)
    snapshot = copy.deepcopy(candidate)
    report = evaluate_gate(config, candidate, None, BASELINES)
    report.candidate["ndcg@10"] = 0.0
    assert candidate == snapshot


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recommender.yaml"
    path.write_text(text)
    return path


GOOD = """\
model: recommender
primary_metric: ndcg@10
baseline_margin: 0.02
champion_tolerance: 0.01
slices: {new: {recall@10: 0.02}}
max_model_bytes: 1000000
max_p99_ms: 50
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("baseline_margin: 0.02", "baseline_margin: lots"), "key 'baseline_margin' must be a number"),
        (GOOD.replace("champion_tolerance: 0.01", "champion_tolerance: 1.5"), "key 'champion_tolerance'"),
        (GOOD.replace("baseline_margin: 0.02\n", ""), "key 'baseline_margin' is missing"),
        (GOOD + "baseline_marign: 0.05\n", "unknown key 'baseline_marign'"),
        (GOOD.replace("{recall@10: 0.02}", "{recall@10: -1}"), "key 'slices.new.recall@10'"),
        (GOOD.replace("max_model_bytes: 1000000", "max_model_bytes: 1.5"), "key 'max_model_bytes'"),
        (GOOD.replace("slices: {new: {recall@10: 0.02}}", "slices: {new: [oops"), "not valid YAML (line"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_yaml_is_one_line_naming_file_and_key(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(GateConfigError) as info:
        GateConfig.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"gate config {path}:")
    assert expected in message


def test_unknown_model_and_missing_file(tmp_path):
    with pytest.raises(GateConfigError, match="no gate is configured for model 'nope'.*recommender"):
        GateConfig.load("nope")
    with pytest.raises(GateConfigError, match="no such file"):
        GateConfig.load(tmp_path / "absent.yaml")
    assert GateConfig.load(_write(tmp_path, GOOD)).slices == {"new": {"recall@10": 0.02}}
