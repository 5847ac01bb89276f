"""The promotion gate: each check blocks what it should, the report shows every check, bad YAML is one line.

Pure functions on evaluation dicts shaped like the evaluator's output; no database, no MLflow.
Results built by ``_result`` carry per-customer values with no spread (every customer scores the
mean), so the bootstrap interval collapses to the point estimate and the checks' arithmetic is the
plain one; the noise tests build spread on purpose.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from ecom_ml.gate import GateConfig, GateConfigError, GateReport, evaluate_gate

N_UNITS = 400


def _per_unit(values: dict[str, list[float]], digest: str = "holdout-a") -> dict:
    return {"unit": "customer", "digest": digest, "values": values}


def _result(ndcg10: float, *, recall10: float = 0.25, new_recall: float = 0.05, returning_recall: float = 0.30,
            model_bytes: int = 50_000_000, p99_ms: float = 12.0) -> dict:
    return {
        "per_unit": _per_unit({"ndcg@10": [ndcg10] * N_UNITS, "recall@10": [recall10] * N_UNITS}),
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
    assert (config.confidence_level, config.bootstrap_resamples, config.bootstrap_seed) == (0.95, 1000, 0)


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
    assert ("beats_best_baseline ndcg@10: low end of the 95% interval of candidate - baseline repeat_purchase "
            "+0.0040 < required +0.0056") in line


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
    header = "| Check | Metric | Threshold | Candidate | Champion | Best baseline | Difference [interval] | Result | Detail |"
    assert header in md
    assert "| beats_best_baseline | ndcg@10 | >= 0.2856 | 0.3000 | 0.2900 | 0.2800 | +0.0200 [+0.0200, +0.0200] | **pass** |" in md
    assert "per_unit" not in md and "per_unit" not in report.to_json()  # thousands of numbers stay in evaluation.json
    for check in report.checks:
        row = next(line for line in md.splitlines() if line.startswith(f"| {check.name} |"))
        assert f"**{check.result}**" in row
    assert "| max_p99_ms | cost.p99_ms | <= 50.00 | 80.00 | 12.00 | 0.5000 | — | **FAIL** |" in md
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


# -- noise: the paired bootstrap interval ----------------------------------------------------------


def _noisy(base: np.ndarray, shift: float, spread: float, seed: int) -> dict:
    """A result whose per-customer NDCG is ``base + shift`` plus zero-mean noise of ``spread``."""
    noise = np.random.default_rng(seed).normal(0.0, 1.0, len(base))
    noise = (noise - noise.mean()) / noise.std() * spread if spread else np.zeros(len(base))
    values = base + shift + noise
    result = _result(float(values.mean()))
    result["per_unit"] = _per_unit({"ndcg@10": values.tolist()})
    return result


def test_same_mean_different_spread_different_verdicts(config):
    base = np.random.default_rng(1).uniform(0.0, 0.56, N_UNITS)  # the best baseline, mean ~0.28
    baselines = {"repeat_purchase": {**_result(float(base.mean())), "per_unit": _per_unit({"ndcg@10": base.tolist()})}}
    steady = _noisy(base, 0.02, 0.0, seed=2)  # +0.02 on every customer
    erratic = _noisy(base, 0.02, 0.30, seed=2)  # +0.02 on average, but all over the place
    assert steady["ndcg@10"] == pytest.approx(erratic["ndcg@10"], abs=1e-12)
    calm, wild = evaluate_gate(config, steady, None, baselines), evaluate_gate(config, erratic, None, baselines)
    assert calm.passed, calm.summary_line()
    assert not wild.passed and [c.name for c in wild.failed_checks] == ["beats_best_baseline"]
    calm_ci, wild_ci = _check(calm, "beats_best_baseline").interval, _check(wild, "beats_best_baseline").interval
    assert calm_ci["estimate"] == pytest.approx(wild_ci["estimate"]) == pytest.approx(0.02)
    # 0.30 spread over 400 customers: standard error 0.015, so the 95% interval reaches below the margin
    assert wild_ci["low"] < wild_ci["required"] < wild_ci["estimate"] < wild_ci["high"]
    assert f"low end {wild_ci['low']:+.4f} < required {wild_ci['required']:+.4f}" in _check(wild, "beats_best_baseline").detail
    assert f"low end {calm_ci['low']:+.4f} >= required" in _check(calm, "beats_best_baseline").detail
    assert wild_ci["high"] - wild_ci["low"] == pytest.approx(2 * 1.96 * 0.30 / np.sqrt(N_UNITS), rel=0.2)
    assert wild_ci["n_units"] == N_UNITS and wild_ci["resamples"] == 1000 and wild_ci["unit"] == "customer"
    # The point estimate alone would have passed both: the interval is what decides.
    point = GateConfig.from_dict({**_config_data(config), "confidence_level": None})
    assert evaluate_gate(point, erratic, None, baselines).passed
    md = wild.to_markdown()
    assert f"{wild_ci['estimate']:+.4f} [{wild_ci['low']:+.4f}, {wild_ci['high']:+.4f}]" in md
    assert "95% paired bootstrap interval" in md
    # Seeded: the same inputs give the same interval.
    assert _check(evaluate_gate(config, erratic, None, baselines), "beats_best_baseline").interval == wild_ci


def test_champion_check_uses_the_interval_too(config):
    base = np.random.default_rng(4).uniform(0.1, 0.5, N_UNITS)
    champion = {**_result(float(base.mean())), "per_unit": _per_unit({"ndcg@10": base.tolist()})}
    equal_but_noisy = _noisy(base, 0.0, 0.25, seed=5)  # same mean as the champion, paired noise
    report = evaluate_gate(config, equal_but_noisy, champion, BASELINES)
    check = _check(report, "no_regression_vs_champion")
    assert check.interval["estimate"] == pytest.approx(0.0, abs=1e-12)
    assert not check.passed and check.interval["low"] < check.interval["required"] == pytest.approx(-0.01 * base.mean())
    retrained = _noisy(base, 0.0, 0.001, seed=5)  # the same model, retrained: tiny per-customer changes
    assert _check(evaluate_gate(config, retrained, champion, BASELINES), "no_regression_vs_champion").passed


def test_missing_or_mismatched_per_unit_values_fail_with_a_reason(config):
    candidate = _result(0.300)
    del candidate["per_unit"]
    check = _check(evaluate_gate(config, candidate, None, BASELINES), "beats_best_baseline")
    assert not check.passed and "candidate has no per-unit values of ndcg@10" in check.detail
    other_holdout = _result(0.300)
    other_holdout["per_unit"]["digest"] = "holdout-b"
    check = _check(evaluate_gate(config, other_holdout, None, BASELINES), "beats_best_baseline")
    assert not check.passed and "scored on different units" in check.detail
    short = _result(0.300)
    short["per_unit"]["values"]["ndcg@10"] = [0.3] * 10
    check = _check(evaluate_gate(config, short, None, BASELINES), "beats_best_baseline")
    assert not check.passed and "not paired" in check.detail


def test_lower_is_better_ratio_metric_uses_the_upper_end():
    """The gate is generic: a forecast gated on WAPE (sum |error| / sum actual over products)."""
    cfg = GateConfig.from_dict({"model": "demand", "primary_metric": "wape", "higher_is_better": False,
                                "baseline_margin": 0.05, "champion_tolerance": 0.02, "slices": {},
                                "max_model_bytes": None, "max_p99_ms": None, "confidence_level": 0.9,
                                "bootstrap_resamples": 500})
    rng = np.random.default_rng(8)
    actual = rng.gamma(2.0, 10.0, 300)

    def forecast(error_scale: float, seed: int) -> dict:
        error = np.abs(np.random.default_rng(seed).normal(0.0, error_scale, 300)) * actual
        return {"wape": float(error.sum() / actual.sum()),
                "per_unit": {"unit": "product", "digest": "weeks-1-4",
                             "values": {"wape": {"numerator": error.tolist(), "denominator": actual.tolist()}}}}

    baseline, good, same = forecast(1.0, 1), forecast(0.5, 2), forecast(1.0, 3)
    passed = evaluate_gate(cfg, good, None, {"13_week_mean": baseline})
    check = _check(passed, "beats_best_baseline")
    assert passed.passed and check.interval["bound"] == "high" and check.interval["high"] <= check.interval["required"] < 0
    assert check.interval["unit"] == "product"
    blocked = evaluate_gate(cfg, same, None, {"13_week_mean": baseline})
    assert not blocked.passed and "high end of the 90% interval" in blocked.summary_line()


def _config_data(config: GateConfig) -> dict:
    return {key: value for key, value in config.to_dict().items() if key != "source"}


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
        (GOOD + "confidence_level: 1.5\n", "key 'confidence_level' must be a number in [0.5, 1)"),
        (GOOD + "confidence_level: high\n", "key 'confidence_level' must be a number"),
        (GOOD + "bootstrap_resamples: 10\n", "key 'bootstrap_resamples' must be an integer in [100, 100000]"),
        (GOOD + "bootstrap_resamples: 1000.5\n", "key 'bootstrap_resamples' must be an integer"),
        (GOOD + "bootstrap_seed: -1\n", "key 'bootstrap_seed' must be an integer >= 0"),
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


def test_every_baseline_is_gated_unless_listed_as_ungated(config, tmp_path):
    """The packaged recommender gate gates every baseline: a candidate that loses to
    decayed_frequency_ease fails. A baseline listed in ``ungated_baselines`` is reported, not gated."""
    assert config.ungated_baselines == ()
    strong = {**BASELINES, "decayed_frequency_ease": _result(0.330, recall10=0.31)}
    strict = evaluate_gate(config, _result(0.300), None, strong)
    assert not strict.passed and strict.best_baseline == "decayed_frequency_ease", strict.summary_line()
    from importlib import resources

    text = resources.files("ecom_ml.gates").joinpath("recommender.yaml").read_text("utf-8")
    assert "ungated_baselines: []" in text
    path = tmp_path / "ungated.yaml"
    path.write_text(text.replace("ungated_baselines: []", "ungated_baselines: [decayed_frequency_ease]"))
    report = evaluate_gate(GateConfig.load(path), _result(0.300), None, strong)
    check = _check(report, "beats_best_baseline")
    assert report.passed and report.best_baseline == "repeat_purchase", report.summary_line()
    assert "reported, not gated: decayed_frequency_ease" in check.detail
    assert "decayed_frequency_ease" in report.to_markdown()  # still shown beside the candidate
    path.write_text(text.replace("ungated_baselines: []", "ungated_baselines: ease"))
    with pytest.raises(GateConfigError, match="key 'ungated_baselines' must be a list of baseline names"):
        GateConfig.load(path)


# -- further gated metrics and undefined values (generic; the propensity gate uses both) ---------------

ALSO = {"model": "scores", "primary_metric": "log_loss", "higher_is_better": False, "baseline_margin": 0.01,
        "champion_tolerance": 0.01, "slices": {}, "max_model_bytes": None, "max_p99_ms": None,
        "also_gated": {"auc": {"higher_is_better": True, "baseline_margin": 0.02, "champion_tolerance": 0.01}}}


def _scores(log_loss: float | None, auc: float | None, **extra) -> dict:
    return {"log_loss": log_loss, "auc": auc, **extra}


def test_also_gated_metric_is_compared_with_its_own_best_baseline_and_direction():
    cfg = GateConfig.from_dict(ALSO)
    # The best baseline on AUC (ranker, 0.70) is not the best on log-loss (logistic, 0.55).
    baselines = {"logistic": _scores(0.55, 0.68), "ranker": _scores(None, 0.70), "rate": _scores(0.63, 0.5)}
    report = evaluate_gate(cfg, _scores(0.54, 0.72), None, baselines)
    auc = _check(report, "beats_best_baseline:auc")
    assert report.passed, report.summary_line()
    assert auc.baseline == 0.70 and auc.threshold == pytest.approx(0.714) and auc.comparison == ">="
    assert "ranker" in auc.detail and "point estimate" in auc.detail
    assert _check(report, "beats_best_baseline").baseline == 0.55  # the primary ignores the ranker (no log-loss)
    assert _check(report, "no_regression_vs_champion:auc").result == "n/a"

    blocked = evaluate_gate(cfg, _scores(0.54, 0.71), None, baselines)
    assert not blocked.passed and "beats_best_baseline:auc 0.7100 < 0.7140" in blocked.summary_line()
    regressed = evaluate_gate(cfg, _scores(0.54, 0.72), _scores(0.54, 0.74), baselines)
    check = _check(regressed, "no_regression_vs_champion:auc")
    assert not check.passed and check.threshold == pytest.approx(0.74 * 0.99)
    assert "also_gated" in regressed.config and regressed.config["also_gated"]["auc"]["baseline_margin"] == 0.02


def test_an_undefined_metric_fails_with_the_evaluations_reason_instead_of_passing():
    cfg = GateConfig.from_dict(ALSO)
    why = "no customer bought in the label window: a ranking cannot be judged"
    undefined = {"undefined": {"auc": why}}
    report = evaluate_gate(cfg, _scores(0.05, None, **undefined), None,
                           {"logistic": _scores(0.06, None, **undefined), "rate": _scores(0.07, None, **undefined)})
    check = _check(report, "beats_best_baseline:auc")
    assert not report.passed and not check.passed
    assert "no baseline has a numeric auc" in check.detail and f"logistic (undefined: {why})" in check.detail
    line = report.summary_line()
    assert "\n" not in line and "beats_best_baseline:auc" in line
    # With a baseline that has a value, the candidate's own reason is quoted.
    report = evaluate_gate(cfg, _scores(0.05, None, **undefined), None, {"logistic": _scores(0.06, 0.6)})
    assert f"candidate auc is undefined: {why}" in _check(report, "beats_best_baseline:auc").detail
    # A band on an undefined value quotes it too.
    banded = GateConfig.from_dict({**ALSO, "bands": {"ece": [0, 0.05]}})
    report = evaluate_gate(banded, _scores(0.5, 0.7, ece=None, undefined={"ece": "no customer"}), None,
                           {"logistic": _scores(0.6, 0.6)})
    assert _check(report, "band:ece:max").detail == "candidate ece is undefined: no customer"


@pytest.mark.parametrize(
    ("also", "expected"),
    [
        ({"auc": {"higher_is_better": True, "baseline_margin": 0.02}}, "key 'also_gated.auc.champion_tolerance' is missing"),
        ({"auc": {"higher_is_better": "yes", "baseline_margin": 0.02, "champion_tolerance": 0.01}},
         "key 'also_gated.auc.higher_is_better' must be true or false"),
        ({"auc": {"higher_is_better": True, "baseline_margin": -1, "champion_tolerance": 0.01}},
         "key 'also_gated.auc.baseline_margin' must be a number"),
        ({"auc": {"higher_is_better": True, "baseline_margin": 0.02, "champion_tolerance": 0.01, "margin": 1}},
         "key 'also_gated.auc.margin' is unknown"),
        ({"log_loss": {"higher_is_better": False, "baseline_margin": 0.02, "champion_tolerance": 0.01}},
         "key 'also_gated.log_loss' repeats the primary metric"),
        (["auc"], "key 'also_gated' must map metric"),
    ],
)
def test_bad_also_gated_is_one_line_naming_the_key(also, expected):
    with pytest.raises(GateConfigError) as info:
        GateConfig.from_dict({**ALSO, "also_gated": also}, source="scores.yaml")
    assert "\n" not in str(info.value) and expected in str(info.value)


def test_packaged_propensity_gate_loads():
    cfg = GateConfig.load("propensity")
    assert cfg.primary_metric == "log_loss" and cfg.higher_is_better is False and cfg.confidence_level == 0.95
    assert set(cfg.also_gated) == {"auc"} and cfg.also_gated["auc"].higher_is_better
    assert cfg.bands["ece"][0] == 0 and cfg.max_model_bytes and cfg.max_p99_ms
