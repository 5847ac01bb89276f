"""The web UI as a person uses it, in headless Chromium (Debian's package) driven by Playwright.

The stack is Airflow's own api-server, scheduler, dag-processor and triggerer on a metadata
database of its own, the real orders database (generated days), a lake and an MLflow registry on
the project's PostgreSQL. The registry is seeded through the training DAG's own gate and promote
steps (`gate_and_register`, `promote`) with evaluation results written here instead of trained —
training is tested elsewhere, and this test is about what a person sees: a champion and a rejected
candidate. Screenshots of every step land in `tests/artifacts/` (the README shows some).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from ecom_ml import local_airflow
from ecom_ml.generator import GeneratorConfig, generate
from ecom_ml.localhost import free_port
from ecom_ml.lake import Lake

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
# Chromium's own background traffic is refused by a closed network, many requests at a time.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
FIRST = date(2024, 1, 8)
DAYS = 9  # generated: 2024-01-08 .. 2024-01-16
TRIGGERED_DAY = date(2024, 1, 15)
BACKFILL = (date(2024, 1, 12), date(2024, 1, 13))


def _evaluation(ndcg: float, champion_ndcg: float | None) -> dict[str, Any]:
    """An evaluation result of the shape `training.steps.evaluate` returns."""

    def result(value: float) -> dict[str, Any]:
        return {"ndcg@10": value, "recall@10": value * 1.6, "users": 800,
                "slices": {"new": {"recall@10": 0.05}, "returning": {"recall@10": value * 1.7}},
                "cost": {"model_bytes": 4_000_000, "p50_ms": 2.0, "p99_ms": 6.0, "mean_ms": 2.5}}

    out = {"candidate": result(ndcg), "baselines": {"popularity": result(0.12), "repeat_purchase": result(0.18)}}
    if champion_ndcg is not None:
        out["champion"] = result(champion_ndcg)
    return out


def _seed_registry(root: Path) -> None:
    """Two nights through the real gate: 01-13 passes and is promoted, 01-14 regresses and is rejected."""
    from ecom_ml.training.steps import GateFailed, gate_and_register, promote

    for day, ndcg, champion in ((date(2024, 1, 13), 0.30, None), (date(2024, 1, 14), 0.21, 0.30)):
        model_dir = root / day.isoformat() / "model"
        model_dir.mkdir(parents=True)
        (model_dir / "recommender.keras").write_bytes(b"PK\x03\x04 weights of " + day.isoformat().encode())
        run_id = f"scheduled__{day.isoformat()}"
        trained = {"model_uri": str(model_dir), "out_uri": (root / day.isoformat()).as_uri(),
                   "params": {"epochs": 3}}
        try:
            gated = gate_and_register("recommender", day, run_id, trained, _evaluation(ndcg, champion))
        except GateFailed:
            continue
        promote("recommender", gated, run_id)


@pytest.fixture(scope="module")
def ui(pg_server, scratch_dbs, tmp_path_factory) -> Iterator[dict[str, Any]]:
    names = scratch_dbs("orders", "airflow", "mlflow")
    orders_url = pg_server.local_url(names["orders"])
    from ecom_ml.db.migrate import migrate

    migrate(orders_url)
    generate(orders_url, GeneratorConfig(start=FIRST, days=DAYS, orders_per_day=150, seed=11), progress=False)
    work = tmp_path_factory.mktemp("ui")
    overrides = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_server.local_url(names["airflow"], "postgresql+psycopg2"),
        "AIRFLOW_CONN_ORDERS_DB": orders_url,
        "ECOM_LAKE_ROOT": (work / "lake").as_uri(),
        "MLFLOW_TRACKING_URI": pg_server.local_url(names["mlflow"], "postgresql+psycopg2"),
        "ECOM_MODEL_CACHE": str(work / "model-cache"),
        "ECOM_TASK_RETRIES": "0",
        "ECOM_DEADLINE_ALERTS": "on",
    }
    Lake(overrides["ECOM_LAKE_ROOT"]).init()  # lake roots are created on purpose, never by a write
    saved = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)  # the registry seeding below reads the same settings as the stack
    try:
        _seed_registry(work / "seed")
        port = free_port()
        env = local_airflow.stack_env(port, overrides)
        for cmd in (["db", "migrate"], ["dags", "reserialize"]):
            done = subprocess.run([local_airflow._airflow_bin(), *cmd], env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-3000:]
        stack = local_airflow.start(local_airflow.COMPONENTS, work / "logs", port=port, env_overrides=overrides)
        try:
            stack.wait_healthy()
            users = json.loads((Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated").read_text())
            yield {"url": stack.url, "user": "admin", "password": users["admin"], "logs": work / "logs"}
        finally:
            stack.stop()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: `make test` installs it (scripts/ensure-browser)"
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _run_state_badge(page, run_id: str):
    """The state badge next to the run's title on its page."""
    return page.locator(f"div:has(> h2:text-is('{run_id}')) > [data-testid=state-badge]")


def _wait_run_success(page, url: str, timeout: float = 240) -> None:
    """Reload the run's page until its state badge says Success; fail on a failed run."""
    run_id = url.rsplit("/runs/", 1)[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page.goto(url)
        badge = _run_state_badge(page, run_id)
        badge.wait_for(timeout=30_000)
        text = badge.inner_text().strip()
        if text == "Success":
            return
        assert text not in ("Failed", "Upstream Failed"), f"run {run_id} ended {text}"
        page.wait_for_timeout(3000)
    raise AssertionError(f"run {run_id} did not succeed within {timeout:.0f} s")


def _trigger_dialog(page):
    """The Trigger/Backfill modal (its date pickers are popovers, which also have the dialog role)."""
    return page.locator("[data-scope=dialog][data-part=content]")


def _pick_datetime(page, dialog, index: int, day: date) -> None:
    dialog.get_by_test_id("datetime-input").nth(index).click()
    popover = page.locator("[data-scope=popover][data-part=content][data-state=open]").last
    popover.get_by_placeholder("YYYY/MM/DD").fill(day.strftime("%Y/%m/%d"))
    popover.get_by_placeholder("HH:mm").fill("00:00")
    page.keyboard.press("Escape")


def test_a_person_logs_in_triggers_a_day_backfills_and_reads_the_models_view(ui, browser):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        # 1. Log in through Airflow's own login page.
        page.goto(ui["url"] + "/")
        page.wait_for_url("**/auth/login**")
        page.get_by_label("Username").fill(ui["user"])
        page.get_by_label("Password").fill(ui["password"])
        _shot(page, "01-login")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(ui["url"] + "/")

        # 2. Trigger orders_ingest for one day from its page; the trigger form unpauses it.
        page.goto(ui["url"] + "/dags/orders_ingest")
        page.get_by_role("button", name="Trigger").first.click()
        dialog = _trigger_dialog(page)
        dialog.locator("#element_day").fill(TRIGGERED_DAY.isoformat())
        _shot(page, "02-trigger-form")
        dialog.get_by_role("button", name="Trigger").click()
        page.wait_for_url("**/dags/orders_ingest/runs/**")
        _wait_run_success(page, page.url)
        # The run met its deadline alert ("no champion decision by 06:00"), which the run page shows.
        expect(page.get_by_test_id("stat").filter(has_text="Deadline")).to_contain_text("Met")
        _shot(page, "03-run-succeeded")

        # 3. Backfill two days from the same dialog.
        page.goto(ui["url"] + "/dags/orders_ingest")
        page.get_by_role("button", name="Trigger").first.click()
        dialog = _trigger_dialog(page)
        dialog.get_by_text("Backfill", exact=True).click()
        _pick_datetime(page, dialog, 0, BACKFILL[0])
        _pick_datetime(page, dialog, 1, BACKFILL[1])
        dialog.get_by_role("button", name="Run Backfill").click()
        dialog.wait_for(state="hidden")
        _wait_backfill(page, ui["url"])
        page.goto(ui["url"] + "/dags/orders_ingest")
        page.wait_for_timeout(2000)
        _shot(page, "04-backfilled-grid")

        # 4. The Models view, from Airflow's navigation.
        page.goto(ui["url"] + "/")
        page.get_by_role("link", name="Models").or_(page.get_by_role("button", name="Models")).first.click()
        page.wait_for_url("**/models**")
        view = page.frame_locator("iframe").first
        view.get_by_test_id("champion-version").wait_for()
        assert view.get_by_test_id("champion-version").inner_text().strip().lstrip("v") == "1"
        rejected = view.locator("[data-testid=candidate-row]", has_text="2024-01-14")
        assert "failed" in rejected.inner_text().lower()
        assert view.locator("[data-testid=dq-row]", has_text=TRIGGERED_DAY.isoformat()).count() == 1
        _shot(page, "05-models-view")
    finally:
        context.close()


def _wait_backfill(page, url: str, timeout: float = 300) -> None:
    """The backfill exists, completed, and each of its days succeeded (read with the UI's own session)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        backfills = page.request.get(f"{url}/api/v2/backfills?dag_id=orders_ingest").json()["backfills"]
        if backfills and backfills[-1]["completed_at"]:
            runs = page.request.get(f"{url}/api/v2/dags/orders_ingest/dagRuns?run_type=backfill").json()["dag_runs"]
            states = {run["logical_date"][:10]: run["state"] for run in runs}
            want = {d.isoformat() for d in (BACKFILL[0] + timedelta(days=i)
                                            for i in range((BACKFILL[1] - BACKFILL[0]).days + 1))}
            assert set(states) == want and set(states.values()) == {"success"}, states
            return
        time.sleep(2)
    raise AssertionError(f"the backfill created in the UI did not complete within {timeout:.0f} s")
