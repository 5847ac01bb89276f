"""The "Models" view: its data from a real registry and lake, its pages through a real Airflow API server.

The registry is MLflow on a throwaway database of the project's PostgreSQL, filled the way the
training DAG fills it (``gate_and_register`` then ``promote``) over three nights: the first two
candidates pass their gate and become champion, the third fails it on the new-customer slice. The
lake holds three days of quality reports written the way ``orders_ingest`` writes them: one day
passed, one warned, one was quarantined. The HTTP tests start Airflow's own api-server with the
plugins folder on a migrated metadata database of their own and log in through Airflow's
simple auth manager.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pyarrow as pa
import pytest

from ecom_ml import local_airflow
from ecom_ml.errors import EcomError
from ecom_ml.gate import GateConfig, evaluate_gate
from ecom_ml.ingest.tasks import DATASET, REPORT_JSON, REPORT_MD
from ecom_ml.lake import QUARANTINE, RAW, VALIDATED, Lake
from ecom_ml.localhost import free_port
from ecom_ml.quality import QualityReport, RuleResult
from ecom_ml.registry import Registry
from ecom_ml.ui import models_data as data

# MLflow's own SQLAlchemy usage warns on import; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")

MODEL = "recommender"
DAYS = [date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 3)]
FAILING_CHECK = "slice:new:recall@10"
def _units(ndcg: float) -> dict:
    """Per-customer NDCG@10 (no spread) for the gate's bootstrap interval, as the evaluator keeps it."""
    return {"unit": "customer", "digest": "holdout", "values": {"ndcg@10": [ndcg] * 100}}


BASELINES = {
    "popularity": {"ndcg@10": 0.101, "recall@10": 0.120, "per_unit": _units(0.101)},
    "repeat_purchase": {"ndcg@10": 0.250, "recall@10": 0.287, "per_unit": _units(0.250)},
}
QUALITY_BAD_RULE = "order_items.quantity_positive"
QUALITY_WARN_RULE = "orders.volume_band"


def _evaluation(ndcg: float, recall: float, new_recall: float) -> dict:
    """A candidate's evaluation as RecommenderSteps.evaluate returns it."""
    return {
        "ndcg@10": ndcg, "recall@10": recall, "ks": [10], "history_len": 20,
        "recall_repeat@10": recall + 0.1, "recall_explore@10": recall / 10, "per_unit": _units(ndcg),
        "slices": {"new": {"recall@10": new_recall}, "returning": {"recall@10": recall + 0.02}},
        "cost": {"model_bytes": 4_200_000, "p50_ms": 2.0, "p99_ms": 9.5},
    }


NIGHTS = [  # (day, candidate evaluation): v1 and v2 pass and are promoted, v3 fails the slice floor
    (DAYS[0], _evaluation(0.300, 0.310, 0.050)),
    (DAYS[1], _evaluation(0.320, 0.330, 0.060)),
    (DAYS[2], _evaluation(0.330, 0.335, 0.010)),
]


# --------------------------------------------------------------------------------------------------
# Fixtures: a registry after three nights, a lake with three days of quality reports.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_db(pg_server, scratch_dbs) -> str:
    """SQLAlchemy URL of a fresh MLflow database for this module; dropped afterwards."""
    return pg_server.local_url(scratch_dbs("mlflow")["mlflow"], "postgresql+psycopg2")


@pytest.fixture(scope="module")
def reg(mlflow_db: str, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("registry")
    return Registry(mlflow_db, artifacts=(root / "artifacts").as_uri(), cache_dir=root / "cache")


@pytest.fixture(scope="module")
def nights(reg: Registry, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Register three nightly candidates as ``training.steps.gate_and_register`` + ``promote`` do."""
    out = []
    champion_eval = None
    config = GateConfig.load(MODEL)
    for day, evaluation in NIGHTS:
        folder = tmp_path_factory.mktemp(f"model-{day}") / "model"
        folder.mkdir()
        (folder / "recommender.keras").write_bytes(b"PK\x03\x04 not really keras " + day.isoformat().encode())
        (folder / "vocab.json").write_text(json.dumps({"items": ["A", "B"]}))
        report = evaluate_gate(config, evaluation, champion_eval, BASELINES)
        run_id = f"scheduled__{day.isoformat()}T02:00:00+00:00"
        candidate = reg.log_candidate(
            MODEL, run_name=f"{MODEL} {day.isoformat()} {run_id}", params={"epochs": 3}, metrics=evaluation,
            artifacts_dir=folder,
            tags={"day": day.isoformat(), "airflow_run_id": run_id, "gate": "passed" if report.passed else "failed"},
        )
        reg.attach_gate_report(candidate, json.loads(report.to_json()))
        if report.passed:
            reg.promote(MODEL, candidate.version, reason=f"gate passed on {day}: {report.summary_line()}",
                        actor=f"airflow:train_{MODEL}/{run_id}")
            champion_eval = evaluation
        out.append({"day": day.isoformat(), "version": candidate.version, "passed": report.passed,
                    "failed": [c.name for c in report.failed_checks], "run_id": run_id})
    assert [n["passed"] for n in out] == [True, True, False], out
    assert out[2]["failed"] == [FAILING_CHECK]
    return out


def _quality_report(day: date, failed: RuleResult | None, passed_rules: int = 3) -> QualityReport:
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    results = [
        RuleResult(rule=f"orders.rule_{i}", table="orders", severity="error", success=True, observed=0,
                   threshold="0 rows", description="a passing rule")
        for i in range(passed_rules)
    ]
    if failed is not None:
        results.append(failed)
    return QualityReport(day=day, interval_start=start, interval_end=start + timedelta(days=1), results=results,
                         row_counts={"orders": 200, "order_items": 610, "customers": 40, "products": 30})


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """Three days as ``orders_ingest`` leaves them: published, published with a warning, quarantined."""
    lk = Lake(tmp_path_factory.mktemp("lake").as_uri())
    reports = {
        DAYS[0]: _quality_report(DAYS[0], None),
        DAYS[1]: _quality_report(DAYS[1], RuleResult(
            rule=QUALITY_WARN_RULE, table="orders", severity="warning", success=False, observed=90,
            threshold="between 0.5x and 2x the median", description="order volume within the usual band",
            detail="90 orders, 0.45x the 14-day median")),
        DAYS[2]: _quality_report(DAYS[2], RuleResult(
            rule=QUALITY_BAD_RULE, table="order_items", severity="error", success=False, observed=10,
            threshold="0 rows", description="every order line has a positive quantity",
            sample=[{"order_item_id": 7, "quantity": -2}], detail="10 rows with quantity <= 0")),
    }
    tables = {"orders": pa.table({"order_id": pa.array([1, 2], pa.int64())})}
    for day, report in reports.items():
        lk.write(RAW, DATASET, day, tables)
        lk.write_text(RAW, DATASET, day, REPORT_JSON, report.to_json())
        lk.write_text(RAW, DATASET, day, REPORT_MD, report.to_markdown())
        target = QUARANTINE if report.status == "error" else VALIDATED
        lk.copy(RAW, target, DATASET, day, extra={"quality": report.status})
        lk.write_text(target, DATASET, day, REPORT_JSON, report.to_json())
        lk.write_text(target, DATASET, day, REPORT_MD, report.to_markdown())
    assert [reports[d].status for d in DAYS] == ["pass", "warning", "error"]
    return lk


# --------------------------------------------------------------------------------------------------
# The data layer
# --------------------------------------------------------------------------------------------------


def test_model_view_shows_champion_candidates_and_trend(reg: Registry, nights: list[dict]):
    assert MODEL in data.known_models(reg)
    view = data.model_view(reg, MODEL)

    assert (view.name, view.dag_id, view.primary_metric) == (MODEL, "train_recommender", "ndcg@10")
    assert view.gate_config == "ecom_ml/gates/recommender.yaml"
    assert view.metrics == ["ndcg@10", "recall@10", "recall_repeat@10", "recall_explore@10"]
    assert view.total_versions == 3

    champ = view.champion
    assert champ is not None and champ.version == nights[1]["version"] == 2
    assert champ.day == DAYS[1].isoformat()
    assert datetime.fromisoformat(champ.since) > datetime.now(timezone.utc) - timedelta(minutes=30)
    assert champ.promoted_by == f"airflow:train_recommender/{nights[1]['run_id']}"
    assert champ.reason.startswith(f"gate passed on {DAYS[1]}: gate PASSED for recommender")
    assert champ.metrics == NIGHTS[1][1], "the evaluation comes back nested, as logged"
    assert champ.mlflow_url is None, "a database tracking URI has no UI to link to"

    assert [(c.version, c.day, c.gate, c.is_champion, c.was_champion) for c in view.candidates] == [
        (3, "2024-03-03", "failed", False, False),
        (2, "2024-03-02", "passed", True, True),
        (1, "2024-03-01", "passed", False, True),
    ], "newest first"
    failed = view.candidates[0]
    assert failed.gate_summary.startswith("gate FAILED for recommender (1 of 6 checks): slice:new:recall@10 0.0100 < 0.0200")
    assert failed.metrics == {"ndcg@10": pytest.approx(0.330), "recall@10": pytest.approx(0.335),
                              "recall_repeat@10": pytest.approx(0.435), "recall_explore@10": pytest.approx(0.0335)}
    assert failed.airflow_run_id == nights[2]["run_id"] and failed.registered_at

    assert [(p.day, p.version, p.gate, p.became_champion) for p in view.trend] == [
        ("2024-03-01", 1, "passed", True), ("2024-03-02", 2, "passed", True), ("2024-03-03", 3, "failed", False),
    ]
    assert [p.values["ndcg@10"] for p in view.trend] == pytest.approx([0.300, 0.320, 0.330])
    assert all(p.baseline == "repeat_purchase" for p in view.trend), "the gate's best baseline, from its report"
    assert view.trend[0].baseline_values == {"ndcg@10": pytest.approx(0.25), "recall@10": pytest.approx(0.287),
                                             "recall_repeat@10": None, "recall_explore@10": None}
    assert (view.best_baseline, view.best_baseline_value) == ("repeat_purchase", pytest.approx(0.25))

    # Rendered: the repeat / explore recall are columns of the candidates table and rows of the champion
    # card, right after the headline metrics; the per-customer values and tuning params are not metrics.
    from types import SimpleNamespace

    from ecom_ml.ui import models_html

    links = models_html.Links(url_for=lambda name, **kw: SimpleNamespace(path=f"/{name}/{kw.get('version', '')}"))
    table = models_html._candidates_table(view, links)
    assert '<th class="num">recall_repeat@10</th><th class="num">recall_explore@10</th>' in table
    assert '<td class="num">0.4350</td><td class="num">0.0335</td>' in table  # v3
    card = models_html._champion_card(view, links)
    assert card.index("<td>recall_repeat@10</td>") < card.index("<td>slices.new.recall@10</td>")
    assert "per_unit" not in card

    window = data.model_view(reg, MODEL, candidates=1, days=2)
    assert [c.version for c in window.candidates] == [3]
    assert [p.day for p in window.trend] == ["2024-03-02", "2024-03-03"]
    assert json.loads(json.dumps(view.to_dict()))["champion"]["version"] == 2


def test_a_model_without_versions_is_an_empty_view(reg: Registry, nights: list[dict]):
    view = data.model_view(reg, "forecast")
    assert view.champion is None and view.candidates == [] and view.trend == [] and view.total_versions == 0
    assert view.primary_metric == "ndcg@10" and view.gate_config is None, "no gate config: the default metric"


def test_gate_report_of_a_failed_candidate(reg: Registry, nights: list[dict]):
    doc = data.gate_report(reg, MODEL, 3)
    assert doc.passed is False and doc.failed_checks == [FAILING_CHECK]
    assert doc.summary.startswith("gate FAILED for recommender")
    assert doc.markdown.startswith("## Gate FAILED: `recommender`") and FAILING_CHECK in doc.markdown
    assert doc.data["best_baseline"] == "repeat_purchase"
    with pytest.raises(data.ViewError, match="^recommender has no version 9$"):
        data.gate_report(reg, MODEL, 9)


def test_a_champion_moved_outside_the_gate_is_flagged(pg_server, scratch_dbs, tmp_path: Path):
    """Issue 12, item 2: the alias moved by hand (as one MLflow REST call would) to a version that
    failed its gate shows as NOT verified, with both reasons, and the view says not to serve it.
    A registry of its own: the module's is what the page tests count."""
    from ecom_ml.ui import models_html

    reg = Registry(pg_server.local_url(scratch_dbs("mlflow")["mlflow"], "postgresql+psycopg2"),
                   artifacts=(tmp_path / "artifacts").as_uri(), cache_dir=tmp_path / "cache")

    model = "reco_bypassed"
    config = GateConfig.load(MODEL)
    versions = []
    for name, evaluation in (("good", NIGHTS[0][1]), ("bad", NIGHTS[2][1])):
        folder = tmp_path / name / "model"
        folder.mkdir(parents=True)
        (folder / "recommender.keras").write_bytes(b"PK\x03\x04 " + name.encode())
        report = evaluate_gate(config, evaluation, None, BASELINES)
        versions.append(reg.log_candidate(model, f"{model} {name}", {}, evaluation, folder,
                                          gate_report=json.loads(report.to_json())).version)
    good, bad = versions
    reg.promote(model, good, "gate passed", "airflow")
    assert data.model_view(reg, model).champion.verified

    reg.client.set_registered_model_alias(model, "champion", str(bad))  # outside ecom-ml
    champ = data.model_view(reg, model).champion
    assert champ.version == bad and not champ.verified
    assert champ.problems[0].startswith(f"{model} v{bad} failed its gate: gate FAILED for recommender")
    assert champ.problems[1] == f"the alias move to v{bad} is not in the history (the last recorded champion is v{good})"

    class _Url:
        path = "/x"

    links = models_html.Links(url_for=lambda *a, **k: _Url())
    card = models_html._champion_card(data.model_view(reg, model), links)
    assert 'data-verified="false"' in card and 'data-testid="champion-unverified">not verified<' in card
    assert "this champion must not be served: " in card and "is not in the history" in card


def test_quality_days_newest_first_with_status_and_publication(lake: Lake):
    rows = data.quality_days(lake)
    assert [(r.day, r.status, r.published, r.report_zone) for r in rows] == [
        ("2024-03-03", "error", "quarantined", "raw"),
        ("2024-03-02", "warning", "validated", "raw"),
        ("2024-03-01", "pass", "validated", "raw"),
    ]
    assert rows[0].failed_rules == [QUALITY_BAD_RULE] and rows[1].failed_rules == [QUALITY_WARN_RULE]
    assert rows[0].summary.startswith("orders 2024-03-03: 1 error rule(s) failed: order_items.quantity_positive")
    assert rows[2].row_counts["orders"] == 200
    assert [r.day for r in data.quality_days(lake, days=2)] == ["2024-03-03", "2024-03-02"]

    doc = data.quality_report(lake, DAYS[2])
    assert (doc.zone, doc.status) == ("raw", "error") and QUALITY_BAD_RULE in doc.markdown
    assert data.quality_report(lake, DAYS[2], QUARANTINE).zone == "quarantine"
    with pytest.raises(data.ViewError, match="^no quality report for orders 2024-02-01 in any of raw, quarantine"):
        data.quality_report(lake, date(2024, 2, 1))
    assert data.quality_days(Lake((Path(lake.root[len("file://"):]) / "nowhere").as_uri())) == []


def test_an_unreachable_mlflow_is_one_line(monkeypatch: pytest.MonkeyPatch):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    with pytest.raises(EcomError) as info:
        data.open_registry()
    message = str(info.value)
    assert message.startswith(f"MLflow tracking server {url} is not reachable") and "\n" not in message


# --------------------------------------------------------------------------------------------------
# Through Airflow's API server
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def airflow_env(pg_server, scratch_dbs, tmp_path_factory) -> dict[str, str]:
    """Environment of an API server on a migrated metadata database of its own, with two users."""
    meta = pg_server.local_url(scratch_dbs("airflow")["airflow"], "postgresql+psycopg2")
    overrides = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path_factory.mktemp("auth") / "passwords.json"),
    }
    done = subprocess.run([local_airflow._airflow_bin(), "db", "migrate"], env=local_airflow.stack_env(0, overrides),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return overrides


class Server:
    def __init__(self, stack: local_airflow.Stack, passwords: Path) -> None:
        self.stack = stack
        self.url = stack.url
        self.passwords = json.loads(passwords.read_text())

    def token(self, user: str = "admin") -> str:
        resp = httpx.post(f"{self.url}/auth/token", json={"username": user, "password": self.passwords[user]}, timeout=30)
        assert resp.status_code == 201, resp.text
        return resp.json()["access_token"]

    def get(self, path: str, token: str | None = None, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{self.url}{path}", headers=headers, follow_redirects=False, timeout=120, **kwargs)


def _serve(env: dict[str, str], extra: dict[str, str], logs: Path) -> Server:
    stack = local_airflow.start(("api-server",), logs, env_overrides={**env, **extra})
    try:
        stack.wait_healthy()
        return Server(stack, Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]))
    except BaseException:
        stack.stop()
        raise


@pytest.fixture(scope="module")
def server(airflow_env, mlflow_db, nights, lake, tmp_path_factory):
    running = _serve(airflow_env, {"MLFLOW_TRACKING_URI": mlflow_db, "ECOM_LAKE_ROOT": lake.root},
                     tmp_path_factory.mktemp("api-server-logs"))
    try:
        yield running
    finally:
        running.stack.stop()


def test_the_plugin_is_listed_with_its_nav_entry(server: Server):
    resp = server.get("/api/v2/plugins", server.token())
    assert resp.status_code == 200, resp.text
    plugin = next(p for p in resp.json()["plugins"] if p["name"] == "ecom_models_view")
    view = plugin["external_views"][0]
    assert (view["name"], view["href"], view["destination"], view["url_route"]) == (
        "Models", "/ecom-ml/models/", "nav", "models")
    assert view["nav_top_level"] is True and view["icon"].startswith("data:image/svg+xml;base64,")
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/ecom-ml"]
    errors = server.get("/api/v2/plugins/importErrors", server.token())
    assert errors.status_code == 200 and errors.json()["total_entries"] == 0, errors.text


def test_without_a_login_pages_redirect_and_the_api_says_401(server: Server):
    page = server.get("/ecom-ml/models/")
    assert page.status_code == 307
    location = urlsplit(page.headers["location"])
    assert location.path == "/auth/login"
    assert parse_qs(location.query)["next"] == [f"{server.url}/ecom-ml/models/"]
    report = server.get("/ecom-ml/models/recommender/versions/3/gate-report")
    assert report.status_code == 307 and report.headers["location"].startswith("/auth/login?next=")

    for path in ("/ecom-ml/api/models", "/ecom-ml/api/models/recommender/versions/3/gate-report",
                 "/ecom-ml/api/quality/2024-03-03"):
        resp = server.get(path)
        assert resp.status_code == 401 and resp.json() == {"detail": "Not authenticated"}, (path, resp.text)

    forged = server.get("/ecom-ml/models/", cookies={"_token": "not-a-jwt"})
    assert forged.status_code == 307 and forged.headers["location"].startswith("/auth/login")
    assert server.get("/ecom-ml/api/models", cookies={"_token": "not-a-jwt"}).status_code == 403


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", html)


def test_the_page_shows_champion_candidates_chart_and_quality(server: Server, nights: list[dict]):
    token = server.token()
    resp = server.get("/ecom-ml/models/", token)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/html")
    page = _text(resp.text)

    assert re.search(r'<span data-testid="champion-version" id="champion-version-recommender">v2</span>', page)
    assert 'data-testid="champion-since"' in page and "airflow:train_recommender/scheduled__2024-03-02" in page
    assert re.search(r'<tr data-testid="candidate-row" data-version="3" data-gate="failed">.*?'
                     r'<span class="badge failed" data-testid="gate-verdict">failed</span>', page)
    assert page.count('data-testid="candidate-row"') == 3
    assert page.count('<span class="badge passed" data-testid="gate-verdict">passed</span>') == 2
    assert '<svg data-testid="trend-chart"' in page and page.count('data-testid="champion-marker"') == 2
    assert "best baseline ndcg@10 (repeat_purchase)" in page, "the chart's baseline legend"
    assert "<script" not in page, "no JavaScript"
    for day, status in (("2024-03-03", "error"), ("2024-03-02", "warning"), ("2024-03-01", "pass")):
        assert f'<tr data-testid="dq-row" data-day="{day}" data-status="{status}">' in page

    # The failed candidate's report link works and names the failing check.
    link = re.search(r'<tr data-testid="candidate-row" data-version="3".*?'
                     r'<a data-testid="gate-report-link" href="([^"]+)">', page).group(1)
    assert link == "/ecom-ml/models/recommender/versions/3/gate-report"
    report = server.get(link, token)
    assert report.status_code == 200, report.text
    assert f'<code data-testid="failed-check">{FAILING_CHECK}</code>' in report.text
    assert "<h2>Gate FAILED: <code>recommender</code></h2>" in report.text and "<table>" in report.text

    dq_link = re.search(r'data-day="2024-03-03".*?<a data-testid="dq-report-link" href="([^"]+)">', page).group(1)
    dq = server.get(dq_link, token)
    assert dq.status_code == 200 and QUALITY_BAD_RULE in dq.text and "quantity &lt;= 0" in dq.text

    # The same page with the cookie the UI's login sets, as the browser loads it in the iframe.
    cookie = server.get("/ecom-ml/models/", cookies={"_token": token})
    assert cookie.status_code == 200 and "champion-version-recommender\">v2<" in cookie.text
    # A Viewer (read-only role) may read DAGs, so the page too.
    viewer = server.get("/ecom-ml/models/", server.token("viewer"))
    assert viewer.status_code == 200 and 'data-testid="model-hidden"' not in viewer.text


def test_the_json_api_and_report_endpoints(server: Server, nights: list[dict]):
    token = server.token()
    body = server.get("/ecom-ml/api/models", token).json()
    model = next(m for m in body["models"] if m["name"] == MODEL)
    assert model["readable"] and model["error"] is None and body["mlflow"]["error"] is None
    view = model["view"]
    assert view["champion"]["version"] == 2 and view["champion"]["metrics"]["slices"]["new"]["recall@10"] == 0.06
    assert [(c["version"], c["gate"]) for c in view["candidates"]] == [(3, "failed"), (2, "passed"), (1, "passed")]
    assert [p["day"] for p in view["trend"] if p["became_champion"]] == ["2024-03-01", "2024-03-02"]
    assert [(d["day"], d["status"]) for d in body["quality"]["days"]] == [
        ("2024-03-03", "error"), ("2024-03-02", "warning"), ("2024-03-01", "pass")]
    assert body["quality"]["lake_root"] == server.stack.env["ECOM_LAKE_ROOT"]

    gate = server.get("/ecom-ml/api/models/recommender/versions/3/gate-report", token).json()
    assert gate["passed"] is False and gate["failed_checks"] == [FAILING_CHECK]
    assert gate["report"]["checks"][2]["name"] == FAILING_CHECK
    quality = server.get("/ecom-ml/api/quality/2024-03-02", token).json()
    assert quality["status"] == "warning" and quality["report"]["results"][-1]["rule"] == QUALITY_WARN_RULE

    missing = server.get("/ecom-ml/api/models/recommender/versions/9/gate-report", token)
    assert missing.status_code == 404 and missing.json() == {"detail": "recommender has no version 9"}
    page = server.get("/ecom-ml/models/recommender/versions/9/gate-report", token)
    assert page.status_code == 404 and "recommender has no version 9" in page.text
    assert server.get("/ecom-ml/api/quality/2024-02-30", token).status_code == 422, "not a date"


def test_the_view_is_read_only(server: Server):
    token = server.token()
    for path in ("/ecom-ml/models/", "/ecom-ml/api/models", "/ecom-ml/models/recommender/versions/3/gate-report"):
        resp = httpx.post(f"{server.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert resp.status_code == 405, (path, resp.status_code)


def test_mlflow_down_and_an_empty_lake_still_render(airflow_env, tmp_path_factory):
    """A second API server whose MLflow is a closed port and whose lake is empty: one line each."""
    mlflow_url = f"http://127.0.0.1:{free_port()}"
    empty = tmp_path_factory.mktemp("empty-lake").as_uri()
    running = _serve(airflow_env, {"MLFLOW_TRACKING_URI": mlflow_url, "ECOM_LAKE_ROOT": empty},
                     tmp_path_factory.mktemp("api-server-down-logs"))
    try:
        resp = running.get("/ecom-ml/models/", running.token())
        assert resp.status_code == 200, resp.text
        page = _text(resp.text)
        assert re.search(rf'data-testid="mlflow-error">MLflow: MLflow tracking server {re.escape(mlflow_url)} '
                         r"is not reachable \([^<]*\): check MLFLOW_TRACKING_URI</p>", page)
        assert 'data-testid="model-error"' in page
        assert f'data-testid="quality-empty">no quality reports yet under {empty}: run orders_ingest</p>' in page
        report = running.get("/ecom-ml/api/models/recommender/versions/1/gate-report", running.token())
        assert report.status_code == 503 and "is not reachable" in report.json()["detail"]
    finally:
        running.stack.stop()
