"""Drift of the model inputs: the statistics, the daily drift rules, window_drift for training, the UI cell."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from ecom_ml.ingest.tasks import DATASET, REPORT_JSON
from ecom_ml.lake import RAW, VALIDATED, Lake
from ecom_ml.quality import QualityConfig, QualityConfigError
from ecom_ml.quality.drift import categorical_drift, drift_inputs, numeric_drift, render_markdown, window_drift
from test_quality import DAY, START, clean_reference, clean_rows, open_history, run, to_tables


@pytest.fixture(scope="module")
def config() -> QualityConfig:
    return QualityConfig.load()


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.lognormal(1.0, 0.5, 5000)
    same = numeric_drift("unit_price", ref, rng.lognormal(1.0, 0.5, 2000), 10, "psi")
    moved = numeric_drift("unit_price", ref, rng.lognormal(1.7, 0.5, 2000), 10, "psi")
    assert same.value < 0.05 and moved.value > 1.0
    assert 0 <= same.js < moved.js <= 1


def test_quantile_bins_keep_a_heavy_tail_apart() -> None:
    """Wholesale quantities: most lines are 1-12, a few hundreds; bins follow the reference's quantiles."""
    rng = np.random.default_rng(1)
    ref = np.concatenate([rng.integers(1, 13, 9000), rng.integers(100, 800, 1000)]).astype(float)
    cur = np.concatenate([rng.integers(1, 13, 500), rng.integers(100, 800, 500)]).astype(float)
    assert numeric_drift("quantity", ref, cur, 10, "psi").value > 0.25


def test_a_small_day_from_the_same_distribution_does_not_drift(config: QualityConfig) -> None:
    """Issue 13 measurement: 40 orders' country mix moves by chance; the test keeps that from firing."""
    from ecom_ml.quality.drift import INPUTS, drift_results

    rng = np.random.default_rng(3)
    countries = np.array(["United Kingdom"] * 90 + ["Germany", "France", "EIRE", "Netherlands", "Spain"] * 2)

    def day(n: int) -> dict[str, np.ndarray]:
        inputs = {name: rng.choice(["a", "b"], n) for name in INPUTS}
        inputs.update(unit_price=rng.lognormal(1, 1, n * 20), quantity=rng.integers(1, 24, n * 20).astype(float),
                      basket_size=rng.integers(1, 40, n).astype(float), country_mix=rng.choice(countries, n))
        return inputs

    reference = [day(60) for _ in range(14)]
    flagged = sum(r.failed for _ in range(20) for r in drift_results(day(40), reference, config))
    assert flagged == 0
    # The same statistic without the significance test would have flagged noise.
    r = categorical_drift("country_mix", np.concatenate([d["country_mix"] for d in reference]),
                          rng.choice(countries, 40), 20, "js")
    assert r.p_value > config.drift.significance


def test_categorical_drift_names_the_largest_change() -> None:
    ref = np.array(["GB"] * 900 + ["FR"] * 50 + ["DE"] * 50)
    cur = np.array(["GB"] * 700 + ["DE"] * 300)
    d = categorical_drift("country_mix", ref, cur, 20, "js")
    assert d.value > 0.2 and d.summary == "largest change: DE 30.0% vs 5.0%"


def test_a_day_with_shifted_prices_drifts_as_a_warning(config: QualityConfig) -> None:
    rows = clean_rows()
    for line in rows["order_items"]:
        line["unit_price"] = line["unit_price"] * 3  # everything three times dearer (a currency bug?)
    report = run(rows, config, history=open_history(), reference=clean_reference())
    r = report.result("drift.unit_price")
    assert (r.success, r.severity) == (False, "warning") and r.observed > 0.25
    assert report.result("drift.quantity").success is True
    md = report.to_markdown()
    assert "## Drift against the trailing reference" in md and "| unit_price | **FAIL** | PSI |" in md


def test_drift_without_an_open_reference_day_says_so(config: QualityConfig) -> None:
    report = run(clean_rows(), config, history=open_history())  # no reference days at all
    r = report.result("drift.country_mix")
    assert r.outcome == "not evaluated"
    assert r.detail == "not evaluated: no reference: 0 open day(s) in the previous 28 days (need 5)"
    assert report.status == "pass"


def test_drift_settings_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text("drift: {min_reference_days: 20}\n")
    with pytest.raises(QualityConfigError, match=r"drift: min_reference_days \(20\) > reference_days \(14\)"):
        QualityConfig.load(path)
    path.write_text("rules:\n  drift:\n    unit_price: {statistic: kl}\n")
    with pytest.raises(QualityConfigError, match=r"rules.drift.unit_price.statistic: expected 'psi' or 'js'"):
        QualityConfig.load(path)
    path.write_text("max_bad_row_share: lots\n")
    with pytest.raises(QualityConfigError, match=r"max_bad_row_share: expected a number, got 'lots'"):
        QualityConfig.load(path)
    path.write_text("closed_dates: ['2024-13-01']\n")
    with pytest.raises(QualityConfigError, match=r"closed_dates\[0\]: expected a date YYYY-MM-DD"):
        QualityConfig.load(path)
    path.write_text("max_bad_row_shares: 0.1\n")
    with pytest.raises(QualityConfigError, match=r"unknown key 'max_bad_row_shares'"):
        QualityConfig.load(path)


def _window(customers: int = 60) -> dict:
    """A training window's rows: 240 orders by ``customers`` customers."""
    rows = clean_rows(orders=240)
    for i, order in enumerate(rows["orders"]):
        order["customer_id"] = 1 + i % customers
    template = rows["customers"][0]
    rows["customers"] = [{**template, "customer_id": c, "external_ref": f"C{c}"} for c in range(1, customers + 1)]
    return rows


def test_window_drift_for_training(config: QualityConfig) -> None:
    """What the training evaluate step records: the new window against the champion's window."""
    champion = to_tables(_window())
    same = window_drift(champion, to_tables(_window()))
    assert same["drifted"] == [] and set(same["inputs"]) == {
        "unit_price", "quantity", "basket_size", "category_mix", "country_mix", "new_customer_share",
        "new_product_share"}
    assert same["inputs"]["unit_price"]["value"] == pytest.approx(0.0, abs=1e-9)
    rows = _window()
    for order in rows["orders"]:
        order["country"] = "FR"
    moved = window_drift(champion, to_tables(rows))
    assert moved["drifted"] == ["country_mix"] and moved["inputs"]["country_mix"]["severity"] == "warning"
    md = render_markdown(moved)
    assert "| country_mix | js |" in md and "**yes**" in md


def test_new_customers_and_products_are_flagged_in_the_inputs() -> None:
    rows = clean_rows()
    rows["customers"][0]["created_at"] = START  # customer 1 first ordered today
    rows["products"][0]["created_at"] = START - timedelta(days=3)
    inputs = drift_inputs(to_tables(rows))
    # Counted per customer: customer 1 (9 orders) is one new customer among the 5.
    assert list(inputs["new_customer_share"]).count("new") == 1 and len(inputs["new_customer_share"]) == 5
    assert len(inputs["country_mix"]) == 5
    assert (inputs["new_product_share"] == "new").sum() == sum(1 for i in rows["order_items"] if i["product_id"] == 1)


def test_the_models_view_shows_drift_per_day(tmp_path: Path, config: QualityConfig) -> None:
    from ecom_ml.ui import models_data as data

    lake = Lake(tmp_path.as_uri())
    rows = clean_rows()
    for line in rows["order_items"]:
        line["unit_price"] = line["unit_price"] * 3
    report = run(rows, config, history=open_history(), reference=clean_reference())
    lake.write(RAW, DATASET, DAY, to_tables(rows))
    lake.write_text(RAW, DATASET, DAY, REPORT_JSON, report.to_json())
    lake.copy(RAW, VALIDATED, DATASET, DAY, extra={"quality": "warning"})
    [day] = data.quality_days(lake)
    assert day.drift.startswith("unit_price ") and "(allowed ≤ 0.25)" in day.drift
    from ecom_ml.ui.models_html import _quality_section

    section = data.QualitySection(dag_id="orders_ingest", readable=True, lake_root=lake.root, days=[day])
    links = type("L", (), {"quality": staticmethod(lambda d, zone=None: f"/q/{d}")})()
    html = _quality_section(section, links)
    assert "<th>drift</th>" in html and 'data-testid="dq-drift">unit_price' in html


def test_clean_reference_days_do_not_drift(config: QualityConfig) -> None:
    report = run(clean_rows(), config, history=open_history(), reference=clean_reference())
    assert all(r.success is True for r in report.results if r.table == "drift")
