"""The web UI as a person uses it, in headless Chromium (Debian's package) driven by Playwright.

The stack is Airflow's own api-server, scheduler, dag-processor and triggerer on a metadata
database of its own, the real orders database (generated days), a lake and an MLflow registry on
the project's PostgreSQL. Everything the Models view shows is what the DAGs produced from the UI:
a person ingests a day and backfills the history, asks for approval of every promotion (the
Variable ``ecom_recommender_approval``), triggers train_recommender for a day (the real trainer,
gate and promotion run through the scheduler) and approves its candidate in Required Actions,
changes a training Variable and trains again (the gate rejects it), restores it and trains a third
time, rejects that candidate in Required Actions, and the Models view shows the first run's
champion and the second run's rejected candidate; the registry records both people's decisions.
Screenshots of every step land in `tests/artifacts/` (the README shows some).
"""

from __future__ import annotations

import json
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
FIRST = date(2024, 1, 7)
DAYS = 10  # generated: 2024-01-07 .. 2024-01-16
TRIGGERED_DAY = date(2024, 1, 15)
BACKFILL = (date(2024, 1, 7), date(2024, 1, 14))  # the history before the triggered day, from the UI
#: Training settings, stored as Airflow Variables (a person changes them on the Variables page).
WINDOW_DAYS, HOLDOUT_DAYS = 9, 2


@pytest.fixture(scope="module")
def ui(pg_server, scratch_dbs, tmp_path_factory) -> Iterator[dict[str, Any]]:
    names = scratch_dbs("orders", "airflow", "mlflow")
    orders_url = pg_server.local_url(names["orders"])
    from ecom_ml.db.migrate import migrate

    migrate(orders_url)
    generate(orders_url, GeneratorConfig(start=FIRST, days=DAYS, orders_per_day=1500, seed=11), progress=False)
    work = tmp_path_factory.mktemp("ui")
    overrides = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_server.local_url(names["airflow"], "postgresql+psycopg2"),
        "AIRFLOW_CONN_ORDERS_DB": orders_url,
        "ECOM_LAKE_ROOT": (work / "lake").as_uri(),
        "MLFLOW_TRACKING_URI": pg_server.local_url(names["mlflow"], "postgresql+psycopg2"),
        "ECOM_MLFLOW_ARTIFACTS": (work / "mlflow-artifacts").as_uri(),
        "ECOM_MODEL_CACHE": str(work / "model-cache"),
        "ECOM_TASK_RETRIES": "0",
        "ECOM_DEADLINE_ALERTS": "on",
    }
    Lake(overrides["ECOM_LAKE_ROOT"]).init()  # lake roots are created on purpose, never by a write
    port = free_port()
    env = local_airflow.stack_env(port, overrides)
    for cmd in (["db", "migrate"], ["dags", "reserialize"],
                ["variables", "set", "ecom_recommender_window_days", str(WINDOW_DAYS)],
                ["variables", "set", "ecom_recommender_holdout_days", str(HOLDOUT_DAYS)]):
        done = subprocess.run([local_airflow._airflow_bin(), *cmd], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    stack = local_airflow.start(local_airflow.COMPONENTS, work / "logs", port=port, env_overrides=overrides)
    try:
        stack.wait_healthy()
        users = json.loads((Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated").read_text())
        yield {"url": stack.url, "user": "admin", "password": users["admin"], "logs": work / "logs",
               "overrides": overrides}
    finally:
        stack.stop()


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


def _wait_run_end(page, url: str, want: str = "Success", timeout: float = 420) -> None:
    """Reload the run's page until its state badge says ``want``; fail on another final state."""
    run_id = url.rsplit("/runs/", 1)[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page.goto(url)
        badge = _run_state_badge(page, run_id)
        badge.wait_for(timeout=30_000)
        text = badge.inner_text().strip()
        if text == want:
            return
        assert text not in ({"Success", "Failed", "Upstream Failed"} - {want}), f"run {run_id} ended {text}"
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


def _trigger_training(page, url: str, day: date) -> str:
    """Trigger train_recommender for ``day`` from its page's Trigger form; returns the run's URL."""
    page.goto(url + "/dags/train_recommender")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = _trigger_dialog(page)
    dialog.locator("#element_day").fill(day.isoformat())
    dialog.get_by_role("button", name="Trigger").click()
    page.wait_for_url("**/dags/train_recommender/runs/**")
    return page.url


def test_a_person_loads_history_trains_and_reads_the_models_view(ui, browser, monkeypatch):
    from playwright.sync_api import expect

    from ecom_ml import registry

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
        _wait_run_end(page, page.url)
        # The run met its deadline alert ("no champion decision by 06:00"), which the run page shows.
        expect(page.get_by_test_id("stat").filter(has_text="Deadline")).to_contain_text("Met")
        _shot(page, "03-run-succeeded")

        # 3. Backfill the history before it from the same dialog.
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

        # 4. Every promotion of the recommender waits for a person (the Variable overrides the gate
        #    YAML's `approval: never`). Train for the triggered day from train_recommender's Trigger
        #    form (it unpauses the DAG): the real trainer, evaluation and gate through the scheduler;
        #    then the person approves the candidate in Required Actions and it is promoted.
        made = page.request.post(f"{ui['url']}/api/v2/variables",
                                 data={"key": "ecom_recommender_approval", "value": "always"})
        assert made.ok, made.text()
        first = _trigger_training(page, ui["url"], TRIGGERED_DAY)
        _respond(page, first, "Approve", "07-approval-requested")
        _wait_run_end(page, first)
        _shot(page, "05-training-succeeded")

        # 5. A person shrinks the training window on the Variables API (what the Variables page
        #    does), and trains again: a worse candidate, which the gate rejects; the run fails.
        changed = page.request.patch(f"{ui['url']}/api/v2/variables/ecom_recommender_window_days",
                                   data={"key": "ecom_recommender_window_days", "value": "5"})
        assert changed.ok, changed.text()
        second = _trigger_training(page, ui["url"], TRIGGERED_DAY)
        _wait_run_end(page, second, want="Failed")

        # 5b. The window back as it was, a third run: its candidate passes the gate, and the person
        #     rejects it in Required Actions; promote is skipped and the champion stays.
        restored = page.request.patch(f"{ui['url']}/api/v2/variables/ecom_recommender_window_days",
                                      data={"key": "ecom_recommender_window_days", "value": str(WINDOW_DAYS)})
        assert restored.ok, restored.text()
        third = _trigger_training(page, ui["url"], TRIGGERED_DAY)
        _respond(page, third, "Reject", "08-rejection")
        _wait_run_end(page, third)
        assert _task_state(page, third, "promote") == "skipped"

        # 6. The Models view, from Airflow's navigation: the champion is the first run's version,
        #    the second run's candidate is listed with its failed gate.
        for key, value in ui["overrides"].items():
            monkeypatch.setenv(key, value)  # the test's own registry reads (the page is what is checked)
        from ecom_ml import decisions

        reg = registry.get_registry()
        ours = reg.client.search_model_versions("name = 'recommender'")
        by_run = {v.tags["airflow_run_id"]: v for v in ours}
        promoted = by_run[first.rsplit("/runs/", 1)[1]]
        rejected_version = by_run[second.rsplit("/runs/", 1)[1]]
        refused_by_person = by_run[third.rsplit("/runs/", 1)[1]]
        assert promoted.tags["gate"] == "passed" and rejected_version.tags["gate"] == "failed"
        assert refused_by_person.tags["gate"] == "passed"
        # The history: both decisions by the person who answered, one promotion (the approved one).
        said = [(d["version"], d["decision"], d["actor"]) for d in decisions.decisions(reg, "recommender")]
        assert said == [(int(promoted.version), "approved", ui["user"]),
                        (int(refused_by_person.version), "rejected", ui["user"])]
        moves = registry.history("recommender")
        assert [(e["action"], e["version"]) for e in moves] == [("promote", int(promoted.version))]
        assert f"approved by {ui['user']}" in moves[0]["reason"]
        assert reg.champion_version("recommender") == int(promoted.version)
        page.goto(ui["url"] + "/")
        page.get_by_role("link", name="Models").or_(page.get_by_role("button", name="Models")).first.click()
        page.wait_for_url("**/models**")
        view = page.frame_locator("iframe").first
        # One section per model kind (recommender, demand): read the recommender's.
        section = view.locator("[data-testid=model][data-model=recommender]")
        section.get_by_test_id("champion-version").wait_for()
        assert section.get_by_test_id("champion-version").inner_text().strip().lstrip("v") == str(promoted.version)
        rejected = section.locator(f"[data-testid=candidate-row][data-version='{rejected_version.version}']")
        assert "failed" in rejected.inner_text().lower()
        decided = section.locator(f"[data-testid=candidate-row][data-version='{refused_by_person.version}']")
        assert decided.get_by_test_id("decision").inner_text().strip() == f"rejected by {ui['user']}"
        assert view.locator("[data-testid=dq-row]", has_text=TRIGGERED_DAY.isoformat()).count() == 1
        _shot(page, "06-models-view")
    finally:
        context.close()


def _task_state(page, run_url: str, task_id: str) -> str | None:
    """A task instance's state, read with the UI's own session from the REST API."""
    run_id = run_url.rsplit("/runs/", 1)[1]
    got = page.request.get(f"{run_url.split('/dags/', 1)[0]}/api/v2/dags/train_recommender/dagRuns/{run_id}"
                           f"/taskInstances/{task_id}")
    return got.json().get("state") if got.ok else None


def _respond(page, run_url: str, option: str, shot: str, timeout: float = 900) -> None:
    """Wait until the run's ``approve`` task asks for a person, then answer ``option`` in its
    Required Actions tab, the way a person does (the gate report is the request's body)."""
    deadline = time.monotonic() + timeout
    while (state := _task_state(page, run_url, "approve")) != "awaiting_input":
        assert state not in ("failed", "upstream_failed", "success", "skipped"), f"approve ended {state} unasked"
        assert time.monotonic() < deadline, f"approve did not ask for a person within {timeout:.0f} s ({state})"
        page.wait_for_timeout(3000)
    # A person reads the report before answering. Answering within the scheduler's first loops after
    # the task parked lost the task once (Airflow 3.3.2: the executor's "success" for the parking
    # process arrived after the answer had resumed the task, and the scheduler failed it as "state
    # changed externally"); the scheduler has long seen the park by the time a person has read.
    page.wait_for_timeout(15_000)
    page.goto(f"{run_url}/tasks/approve/required_actions")
    page.get_by_text("Gate PASSED").first.wait_for()  # the body: the gate report
    _shot(page, shot)
    page.get_by_role("button", name=option, exact=True).click()
    deadline = time.monotonic() + 120
    while _task_state(page, run_url, "approve") == "awaiting_input":
        assert time.monotonic() < deadline, f"the {option!r} answer did not resume the approve task"
        page.wait_for_timeout(1000)


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
