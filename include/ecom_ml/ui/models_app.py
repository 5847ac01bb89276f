"""The "Models" view: a read-only FastAPI app that Airflow's API server mounts at ``/ecom-ml``.

``plugins/ecom_models_view.py`` registers :data:`app` and a "Models" entry in Airflow's navigation;
the UI shows the page in an iframe. Routes (all GET, nothing here changes anything: promotion and
rollback stay in the training DAGs and ``ecom-ml rollback``):

* ``/ecom-ml/models/`` the page: per model the champion, recent candidates with their gate verdicts
  and report links, the metric trend as an inline SVG chart; then the last days' data quality.
* ``/ecom-ml/models/<model>/versions/<n>/gate-report`` and ``/ecom-ml/quality/<YYYY-MM-DD>``: the
  stored reports, rendered from their Markdown.
* ``/ecom-ml/api/models``, ``/ecom-ml/api/models/<model>/versions/<n>/gate-report``,
  ``/ecom-ml/api/quality/<day>``: the same data as JSON.

Authentication is Airflow's own: the user comes from Airflow's ``get_user`` (an ``Authorization:
Bearer`` token, or the ``_token`` cookie the UI login sets), so whatever auth manager Airflow runs
decides. Without a valid login a page redirects to the auth manager's login URL (coming back
afterwards) and the JSON API answers 401. Authorization reuses Airflow's ``requires_access_dag``
with method GET: a model's data is shown to users who may read its training DAG
(``train_<model>``), the data-quality results to users who may read ``orders_ingest``; the rest of
the page says what is hidden and why.

The data comes from ``ecom_ml.ui.models_data``, the HTML from ``ecom_ml.ui.models_html``; this
module holds the routes and the access checks. Every section is gathered separately: MLflow down, an empty lake or one broken model gives a
one-line message in that section, never an error page. No JavaScript, no external assets: the
machine may be offline and the UI's iframe runs sandboxed.
"""

from __future__ import annotations

import base64
import logging
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ecom_ml.errors import EcomError
from ecom_ml.ui import models_data as data
from ecom_ml.ui.models_data import INGEST_DAG, ModelSection, Overview, QualitySection
from ecom_ml.ui.models_html import Links, error_page, render_gate_report, render_overview, render_quality_report

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

log = logging.getLogger(__name__)

URL_PREFIX = "/ecom-ml"
PAGE_PATH = "/models/"
LAKE_ROOT_VARIABLE = "ecom_lake_root"

app = FastAPI(
    title="ecom-ml models view",
    description="Read-only view of the model registry and the data quality (see ecom_ml.ui.models_app).",
    # Airflow's auth guards every route below; an unauthenticated schema or docs page would not be.
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


def page_href() -> str:
    """Where the page is served, for the navigation entry: the app's prefix under Airflow's base path."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    base = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    return f"{base}{URL_PREFIX}{PAGE_PATH}"


def _svg_icon(stroke: str) -> str:
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="' + stroke + '" '
        'stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="M3 3v18h18"/>'
        '<path d="M7 15l4-4 3 3 5-6"/><circle cx="19" cy="8" r="1.5"/></svg>'
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


#: Navigation icons (data URIs: no request, nothing to serve without authentication).
ICON = _svg_icon("#57606a")
ICON_DARK_MODE = _svg_icon("#c9d1d9")


# --------------------------------------------------------------------------------------------------
# Authentication and authorization: Airflow's own.
# --------------------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False)


class _LoginRequired(Exception):
    """A page was requested without a valid Airflow login."""


async def _airflow_user(request: Request, bearer: HTTPAuthorizationCredentials | None) -> BaseUser:
    # Imported here: Airflow's security module pulls in its ORM models, which the plugin's import
    # (done in every task process for macros) should not pay for.
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request=request, _oauth_token=None, bearer_credentials=bearer)


async def api_user(
    request: Request, bearer: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> BaseUser:
    """The Airflow user of a JSON request; 401 without a login, as Airflow's own API answers."""
    return await _airflow_user(request, bearer)


async def page_user(
    request: Request, bearer: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> BaseUser:
    """The Airflow user of a page request; without a valid login, a redirect to Airflow's login."""
    try:
        return await _airflow_user(request, bearer)
    except HTTPException as exc:
        # 401: no token; 403 here means a token that does not verify (expired secret, tampered).
        if exc.status_code in (status.HTTP_401_UNAUTHORIZED, status.HTTP_403_FORBIDDEN):
            raise _LoginRequired() from None
        raise


@app.exception_handler(_LoginRequired)
async def _redirect_to_login(request: Request, exc: _LoginRequired) -> RedirectResponse:
    from airflow.api_fastapi.app import get_auth_manager

    login = get_auth_manager().get_url_login(next_url=str(request.url))
    return RedirectResponse(login, status_code=status.HTTP_307_TEMPORARY_REDIRECT)


def may_read_dag(request: Request, user: BaseUser, dag_id: str) -> bool:
    """Whether ``user`` may read DAG ``dag_id``: Airflow's ``requires_access_dag("GET")`` check."""
    from airflow.api_fastapi.core_api.security import requires_access_dag

    try:
        requires_access_dag("GET", param_dag_id=dag_id)(request, user)
    except HTTPException as exc:
        if exc.status_code == status.HTTP_403_FORBIDDEN:
            return False
        raise
    return True


def _require_dag(request: Request, user: BaseUser, dag_id: str) -> None:
    if not may_read_dag(request, user, dag_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"you may not read DAG {dag_id}, so not its results either")


# --------------------------------------------------------------------------------------------------
# Gathering: every section on its own, failures as one line.
# --------------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    """A user-fixable error as its message; anything else with its type (and logged in full)."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, EcomError):
        return text
    log.exception("models view: unexpected error")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def lake_root() -> str:
    """The lake as ingestion finds it: the ``ecom_lake_root`` Variable, else ``ECOM_LAKE_ROOT``/default."""
    from ecom_ml import settings

    try:
        from airflow.models import Variable

        value = Variable.get(LAKE_ROOT_VARIABLE, default_var=None)
    except Exception as exc:  # noqa: BLE001 - metadata DB trouble must not hide the lake
        log.warning("reading Airflow Variable %s failed (%s); using ECOM_LAKE_ROOT", LAKE_ROOT_VARIABLE, exc)
        value = None
    return value or settings.load().lake_root


def gather(request: Request, user: BaseUser, *, candidates: int, trend_days: int, quality_days: int) -> Overview:
    """Everything the page shows, each section gathered (and failing) on its own."""
    from ecom_ml import mlflow_server
    from ecom_ml.lake import Lake
    from ecom_ml import models

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    uri = mlflow_server.redact(mlflow_server.tracking_uri())
    reg = None
    mlflow_error = None
    names = models.names()
    try:
        reg = data.open_registry()
        names = data.known_models(reg)
    except Exception as exc:  # noqa: BLE001 - shown in the page, per section
        mlflow_error = _one_line(exc)

    models = []
    for name in names:
        section = ModelSection(name, data.training_dag(name), may_read_dag(request, user, data.training_dag(name)))
        if section.readable:
            if reg is None:
                section.error = mlflow_error
            else:
                try:
                    section.view = data.model_view(reg, name, candidates=candidates, days=trend_days)
                except Exception as exc:  # noqa: BLE001
                    section.error = _one_line(exc)
        models.append(section)

    quality = QualitySection(INGEST_DAG, may_read_dag(request, user, INGEST_DAG))
    if quality.readable:
        try:
            quality.lake_root = lake_root()
            quality.days = data.quality_days(Lake(quality.lake_root), days=quality_days)
        except Exception as exc:  # noqa: BLE001
            quality.error = _one_line(exc)
    return Overview(now, uri, mlflow_error, models, quality)


# --------------------------------------------------------------------------------------------------
# Routes (GET only).
# --------------------------------------------------------------------------------------------------

_NO_STORE = {"Cache-Control": "no-store"}
CandidatesQ = Query(data.DEFAULT_CANDIDATES, ge=1, le=200, description="candidates listed per model")
TrendQ = Query(data.DEFAULT_TREND_DAYS, ge=1, le=366, description="days in the metric trend")
QualityQ = Query(data.DEFAULT_QUALITY_DAYS, ge=1, le=366, description="days of data-quality results")


@app.get("/", include_in_schema=False)
def root(request: Request, user: BaseUser = Depends(page_user)) -> RedirectResponse:
    return RedirectResponse(request.url_for("models_page").path)


@app.get(PAGE_PATH, response_class=HTMLResponse, name="models_page")
def models_page(request: Request, user: BaseUser = Depends(page_user), candidates: int = CandidatesQ,
                trend_days: int = TrendQ, quality_days: int = QualityQ) -> HTMLResponse:
    overview = gather(request, user, candidates=candidates, trend_days=trend_days, quality_days=quality_days)
    return HTMLResponse(render_overview(overview, _links(request)), headers=_NO_STORE)


@app.get("/api/models", name="models_api")
def models_api(request: Request, user: BaseUser = Depends(api_user), candidates: int = CandidatesQ,
               trend_days: int = TrendQ, quality_days: int = QualityQ) -> JSONResponse:
    overview = gather(request, user, candidates=candidates, trend_days=trend_days, quality_days=quality_days)
    return JSONResponse(overview.to_dict(), headers=_NO_STORE)


def _gate_doc(request: Request, user: BaseUser, model: str, version: int) -> data.GateDoc:
    """The report, or an HTTPException: 403 (DAG not readable), 404 (no such report), 503 (MLflow down)."""
    _require_dag(request, user, data.training_dag(model))
    try:
        reg = data.open_registry()
    except EcomError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, _one_line(exc)) from None
    try:
        return data.gate_report(reg, model, version)
    except EcomError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, _one_line(exc)) from None


def _quality_doc(request: Request, user: BaseUser, day: date, zone: str | None) -> data.QualityDoc:
    from ecom_ml.lake import Lake

    _require_dag(request, user, INGEST_DAG)
    try:
        return data.quality_report(Lake(lake_root()), day, zone)
    except EcomError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, _one_line(exc)) from None


@app.get("/models/{model}/versions/{version}/gate-report", response_class=HTMLResponse, name="gate_report_page")
def gate_report_page(request: Request, model: str, version: int,
                     user: BaseUser = Depends(page_user)) -> HTMLResponse:
    links = _links(request)
    try:
        doc = _gate_doc(request, user, model, version)
    except HTTPException as exc:
        return _error_page(links, f"{model} v{version}: gate report", exc)
    return HTMLResponse(render_gate_report(doc, links), headers=_NO_STORE)


@app.get("/api/models/{model}/versions/{version}/gate-report", name="gate_report_api")
def gate_report_api(request: Request, model: str, version: int, user: BaseUser = Depends(api_user)) -> JSONResponse:
    doc = _gate_doc(request, user, model, version)
    return JSONResponse({"model": doc.model, "version": doc.version, "run_id": doc.run_id, "passed": doc.passed,
                         "summary": doc.summary, "failed_checks": doc.failed_checks, "report": doc.data,
                         "markdown": doc.markdown}, headers=_NO_STORE)


@app.get("/quality/{day}", response_class=HTMLResponse, name="quality_report_page")
def quality_report_page(request: Request, day: date, zone: str | None = None,
                        user: BaseUser = Depends(page_user)) -> HTMLResponse:
    links = _links(request)
    try:
        doc = _quality_doc(request, user, day, zone)
    except HTTPException as exc:
        return _error_page(links, f"data quality {day.isoformat()}", exc)
    return HTMLResponse(render_quality_report(doc, links), headers=_NO_STORE)


@app.get("/api/quality/{day}", name="quality_report_api")
def quality_report_api(request: Request, day: date, zone: str | None = None,
                       user: BaseUser = Depends(api_user)) -> JSONResponse:
    doc = _quality_doc(request, user, day, zone)
    return JSONResponse({"day": doc.day, "zone": doc.zone, "status": doc.status, "summary": doc.summary,
                         "report": doc.data, "markdown": doc.markdown}, headers=_NO_STORE)


def _links(request: Request) -> Links:
    return Links(request.url_for)


def _error_page(links: Links, title: str, exc: HTTPException) -> HTMLResponse:
    return HTMLResponse(error_page(links, title, str(exc.detail)), status_code=exc.status_code, headers=_NO_STORE)
