"""What the "Models" view shows, gathered from the registry (MLflow) and the lake: data, no HTML.

Per model: the champion (version, since when, by whom, why, its logged evaluation), the recent
candidates with their gate verdicts, and the trend of the gate's metrics over the days the
candidates were trained for; for the orders dataset, the latest data-quality result of each day.

    reg = open_registry()
    view = model_view(reg, "recommender")          # -> ModelView (champion, candidates, trend)
    doc = gate_report(reg, "recommender", 3)       # -> GateDoc (verdict, JSON, Markdown)
    rows = quality_days(Lake(root), days=14)       # -> [QualityDay], newest first
    qdoc = quality_report(Lake(root), date(2024, 3, 3))

Decisions, and why:

* **Only what the pipeline already records is read**, nothing is written: model-version tags from
  ``training.steps.gate_and_register`` (``day``, ``airflow_run_id``, ``gate``) and
  ``Registry.attach_gate_report`` (``ecom.gate.passed``, ``ecom.gate.summary``), the registry's
  promotion history, run metrics, and the reports beside the lake partitions. The view therefore
  cannot disagree with ``ecom-ml history`` or the DAGs, and needs no schema of its own.
* **Table and chart metrics are the runs' MLflow metrics** (flattened, ``recall@10`` logged as
  ``recall_at_10``), fetched in one ``search_runs`` call for every version on the page instead of
  one ``ecom/metrics.json`` download per version. The champion's nested evaluation (slices, cost)
  is downloaded once, through :meth:`Registry.champion`.
* **The best baseline comes from each candidate's gate report** (``gate/gate_report.json``): the
  metrics logged with a candidate are its own; the gate's evaluation holds the baselines.
* **One trend point per day**: the newest version trained for that day (a re-run supersedes the
  earlier try), marked when any version of that day became champion.
* **The primary metric is the gate's** (``ecom_ml/gates/<model>.yaml``), ``ndcg@10`` for a model
  without a gate config, so the chart plots what decides promotion; the gate's ``also_gated``
  metrics follow it (e.g. a propensity model's AUC beside its log-loss).
* **Tables an evaluation carries are shown as they are**: a result's ``tables`` entry
  (``{name: {"title", "columns", "rows"}}``, e.g. a reliability table) is rendered for the
  champion without the view knowing what the table means.
* **A day's latest quality result is the report in the raw zone**: ``check_quality`` rewrites it on
  every run, while publish/quarantine only copy it. The validated and quarantine partitions say
  whether the day was published.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecom_ml import mlflow_server
from ecom_ml.errors import EcomError
from ecom_ml.ingest.tasks import DATASET, REPORT_JSON, REPORT_MD
from ecom_ml.lake import QUARANTINE, RAW, VALIDATED
from ecom_ml.registry import (
    EXPERIMENT_PREFIX,
    GATE_JSON_ARTIFACT,
    GATE_MD_ARTIFACT,
    TAG_GATE_PASSED,
    TAG_GATE_SUMMARY,
    TAG_MODEL,
    metric_key,
)

if TYPE_CHECKING:
    from ecom_ml.lake import Lake
    from ecom_ml.registry import Registry

log = logging.getLogger(__name__)

#: The Airflow DAG whose readers may see a model's registry entries, and the one for quality results.
TRAINING_DAG = "train_{model}"
INGEST_DAG = "orders_ingest"

DEFAULT_PRIMARY_METRIC = "ndcg@10"
#: Plotted and tabulated after the primary metric, when a model logs them. The repeat / explore split
#: of Recall@10 (Li et al. 2023) says whether a gain came from re-finding the customer's own items or
#: from finding new ones, which the overall figure hides.
SECONDARY_METRICS = ("ndcg@10", "recall@10", "recall_repeat@10", "recall_explore@10")
DEFAULT_CANDIDATES = 10
DEFAULT_TREND_DAYS = 30
DEFAULT_QUALITY_DAYS = 14
#: Newest versions read per model; older ones are outside every window the page shows.
MAX_VERSIONS = 500

TAG_DAY = "day"
TAG_AIRFLOW_RUN = "airflow_run_id"
TAG_GATE = "gate"

#: Where a day's quality report is read from, in order of preference (see the module docstring):
#: a quarantine copy is newer than a validated one, since publishing removes the quarantined day.
REPORT_ZONES = (RAW, QUARANTINE, VALIDATED)


class ViewError(EcomError):
    """Something the view needs cannot be read; the message says what and where, in one line."""


def training_dag(model: str) -> str:
    return TRAINING_DAG.format(model=model)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Champion:
    version: int
    #: ISO 8601 UTC of its latest promotion or rollback (None when aliased outside ecom-ml).
    since: str | None
    promoted_by: str | None
    reason: str | None
    day: str | None
    run_id: str
    #: The evaluation logged with the version, nested as evaluated (slices, cost).
    metrics: dict[str, Any]
    mlflow_url: str | None = None
    #: Tables its evaluation carries (``tables``: name -> {title, columns, rows}), shown as they are.
    tables: dict[str, Any] = field(default_factory=dict)
    #: False when its version has no passing gate record or its alias move is not in the history
    #: (``Registry.verify_champion``: e.g. the alias was moved by hand over MLflow's REST API).
    verified: bool = True
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Candidate:
    version: int
    run_id: str
    day: str | None
    registered_at: str | None
    airflow_run_id: str | None
    #: "passed", "failed", or "unknown" (no gate report attached).
    gate: str
    gate_summary: str
    #: The view's metrics (primary first) from the run's MLflow metrics; None when not logged.
    metrics: dict[str, float | None]
    is_champion: bool
    #: Was champion at some point (a promotion or rollback on record).
    was_champion: bool
    mlflow_url: str | None = None
    #: A person's decision on it (ecom_ml.decisions): "approved by ada", "rejected by bob", "timed_out by airflow".
    decision: str | None = None


@dataclass(frozen=True)
class TrendPoint:
    day: str
    version: int
    gate: str
    values: dict[str, float | None]
    #: A version trained for this day became champion (promotion or rollback on record).
    became_champion: bool
    champion_versions: list[int] = field(default_factory=list)
    #: The gate's best baseline for this candidate and its values of the view's metrics.
    baseline: str | None = None
    baseline_values: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelView:
    name: str
    dag_id: str
    primary_metric: str
    #: Metrics of tables and chart, primary first.
    metrics: list[str]
    gate_config: str | None
    champion: Champion | None
    candidates: list[Candidate]
    trend: list[TrendPoint]
    total_versions: int
    #: The best baseline of the newest gate report, and its primary-metric value.
    best_baseline: str | None = None
    best_baseline_value: float | None = None
    #: The gate's direction of the primary metric (False for an error such as WAPE).
    higher_is_better: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateDoc:
    """A version's stored gate report: the verdict, the JSON (``GateReport.to_dict``) and the Markdown."""

    model: str
    version: int
    run_id: str
    passed: bool | None
    summary: str
    failed_checks: list[str]
    data: dict[str, Any] | None
    markdown: str


@dataclass(frozen=True)
class QualityDay:
    day: str
    #: "pass", "warning", "error", or "unreadable" (the stored report could not be parsed).
    status: str
    summary: str
    failed_rules: list[str]
    row_counts: dict[str, int]
    #: The lake zone the report was read from.
    report_zone: str
    #: "validated", "quarantined", "validated, rows quarantined" (bad rows taken out, the rest
    #: published), or "not published".
    published: str
    #: The day's drift against its trailing reference, one cell: drifted inputs with value and threshold,
    #: else the largest statistic; "" when not evaluated.
    drift: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QualityDoc:
    day: str
    zone: str
    status: str
    summary: str
    data: dict[str, Any]
    markdown: str


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


def _first_line(text: Any) -> str:
    return (str(text).strip().splitlines() or [""])[0]


@contextlib.contextmanager
def _reading(what: str, uri: str) -> Iterator[None]:
    """MLflow and database errors as one-line ViewErrors naming what was being read."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise ViewError(f"{what}: {_first_line(exc.message)}") from None
    except Exception as exc:
        if (type(exc).__module__ or "").startswith(("sqlalchemy", "requests", "urllib3", "psycopg2")):
            raise ViewError(f"{what}: {type(exc).__name__}: {_first_line(exc)} ({mlflow_server.redact(uri)})") from None
        raise


def open_registry() -> Registry:
    """The default registry, checked reachable *now*.

    :func:`ecom_ml.registry.get_registry` probes MLflow only when it first creates its client; a
    long-running API server must not sit in MLflow's minutes of retries when the tracking server or
    its database went away later, so every page load probes again (a quick HTTP or TCP check).
    """
    from ecom_ml import registry

    reg = registry.get_registry()
    if mlflow_server.is_http(reg.uri):
        mlflow_server.check_http_reachable(reg.uri, timeout=3)
    else:
        mlflow_server.check_backend_reachable(reg.uri, hint="check MLFLOW_TRACKING_URI of the Airflow API server")
    return reg


def gate_metrics(model: str) -> tuple[str, str | None]:
    """(primary metric, gate config source): the gate's primary metric, ndcg@10 without a gate."""
    from ecom_ml.gate import GateConfig, GateConfigError

    try:
        cfg = GateConfig.load(model)
    except GateConfigError:
        return DEFAULT_PRIMARY_METRIC, None
    return cfg.primary_metric, cfg.source


def also_gated_metrics(model: str) -> list[str]:
    """The gate's further gated metrics (``also_gated``), in config order; none without a gate."""
    from ecom_ml.gate import GateConfig, GateConfigError

    try:
        return list(GateConfig.load(model).also_gated)
    except GateConfigError:
        return []


def champion_tables(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The well-formed entries of an evaluation's ``tables`` (title, columns, rows of cells)."""
    raw = metrics.get("tables") if isinstance(metrics, Mapping) else None
    out: dict[str, Any] = {}
    for name, table in (raw or {}).items() if isinstance(raw, Mapping) else ():
        if not isinstance(table, Mapping):
            continue
        columns, rows = table.get("columns"), table.get("rows")
        if isinstance(columns, list) and isinstance(rows, list) and all(isinstance(r, list) for r in rows):
            out[str(name)] = {"title": str(table.get("title") or name), "columns": [str(c) for c in columns],
                              "rows": rows}
    return out


def primary_higher_is_better(model: str) -> bool:
    """Whether the gate's primary metric is better when higher (true without a gate config)."""
    from ecom_ml.gate import GateConfig, GateConfigError

    try:
        return GateConfig.load(model).higher_is_better
    except GateConfigError:
        return True


def known_models(reg: Registry) -> list[str]:
    """Models with training steps (they have a DAG, even before a first version) and every registered
    model ecom-ml created (tag ``ecom.model``), sorted."""
    from ecom_ml import models

    names = set(models.names())
    with _reading("listing registered models", reg.uri):
        found = reg.client.search_registered_models(max_results=1000)
    names.update(rm.name for rm in found if TAG_MODEL in (rm.tags or {}))
    return sorted(names)


def mlflow_url(reg: Registry, model: str, version: int) -> str | None:
    """The version's page in the MLflow UI, when MLflow is a tracking server (not a database URL)."""
    if not mlflow_server.is_http(reg.uri):
        return None
    return f"{reg.uri.rstrip('/')}/#/models/{urllib.parse.quote(model, safe='')}/versions/{version}"


def _iso_ms(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _verdict(tags: Mapping[str, str]) -> str:
    passed = tags.get(TAG_GATE_PASSED)
    if passed in ("true", "false"):
        return "passed" if passed == "true" else "failed"
    return tags.get(TAG_GATE) if tags.get(TAG_GATE) in ("passed", "failed") else "unknown"


def _decision(tags: Mapping[str, str]) -> str | None:
    from ecom_ml.decisions import TAG_DECIDED_BY, TAG_DECISION

    decision = tags.get(TAG_DECISION)
    return f"{decision.replace('_', ' ')} by {tags.get(TAG_DECIDED_BY, 'unknown')}" if decision else None


def _versions(reg: Registry, model: str) -> list[Any]:
    """The newest :data:`MAX_VERSIONS` versions, newest first."""
    with _reading(f"listing versions of {model}", reg.uri):
        return list(reg.client.search_model_versions(
            f"name = '{model}'", max_results=MAX_VERSIONS, order_by=["version_number DESC"]))


def _run_metrics(reg: Registry, model: str, run_ids: Iterable[str]) -> dict[str, dict[str, float]]:
    """run id -> its MLflow metrics: one search in the model's experiment, single reads for the rest."""
    wanted = sorted({r for r in run_ids if r})
    out: dict[str, dict[str, float]] = {}
    with _reading(f"reading the runs of {model}", reg.uri):
        experiment = reg.client.get_experiment_by_name(f"{EXPERIMENT_PREFIX}{model}")
        if experiment is not None:
            for start in range(0, len(wanted), 100):
                chunk = ", ".join(f"'{r}'" for r in wanted[start:start + 100])
                runs = reg.client.search_runs([experiment.experiment_id], f"attributes.run_id IN ({chunk})",
                                              max_results=100)
                out.update({run.info.run_id: dict(run.data.metrics) for run in runs})
        for run_id in wanted:
            if run_id not in out:  # registered from a run outside the model's experiment
                out[run_id] = dict(reg.client.get_run(run_id).data.metrics)
    return out


def _artifact_text(reg: Registry, run_id: str, path: str) -> str | None:
    """A run artifact's text, or None when the run has no such file."""
    with tempfile.TemporaryDirectory(prefix="ecom-ui-") as tmp:
        try:
            local = reg.client.download_artifacts(run_id, path, tmp)
            return Path(local).read_text("utf-8")
        except Exception as exc:  # noqa: BLE001 - each artifact store says "missing" differently
            log.info("run %s: no readable %s (%s)", run_id, path, _first_line(exc))
            return None


def _gate_json(reg: Registry, run_id: str) -> dict[str, Any] | None:
    text = _artifact_text(reg, run_id, GATE_JSON_ARTIFACT)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        log.warning("run %s: %s is not JSON", run_id, GATE_JSON_ARTIFACT)
        return None
    return data if isinstance(data, dict) else None


def _baseline(report: Mapping[str, Any] | None, metrics: list[str]) -> tuple[str | None, dict[str, float | None]]:
    """The gate report's best baseline and its values of ``metrics``."""
    if not report or not report.get("best_baseline"):
        return None, {}
    name = str(report["best_baseline"])
    result = (report.get("baselines") or {}).get(name) or {}
    return name, {m: _number(result.get(m)) for m in metrics}


def model_view(reg: Registry, model: str, *, candidates: int = DEFAULT_CANDIDATES,
               days: int = DEFAULT_TREND_DAYS) -> ModelView:
    """Champion, the newest ``candidates`` versions and one trend point per day for the newest ``days``
    days with a candidate. A model without versions gives an empty view (no candidate yet)."""
    primary, source = gate_metrics(model)
    gated = [m for m in also_gated_metrics(model) if m != primary]
    champion_version = reg.champion_version(model)
    events = reg.history(model)
    ever_champion = {int(e["version"]) for e in events}
    if champion_version is not None:
        ever_champion.add(champion_version)
    versions = _versions(reg, model)
    base = dict(name=model, dag_id=training_dag(model), primary_metric=primary, gate_config=source,
                total_versions=len(versions), higher_is_better=primary_higher_is_better(model))
    if not versions:
        metrics = [primary, *gated, *(m for m in SECONDARY_METRICS if m != primary and m not in gated)]
        return ModelView(**base, metrics=metrics, champion=None, candidates=[], trend=[])

    newest_of_day: dict[str, Any] = {}
    for mv in versions:  # newest first: the first version seen for a day is its newest
        day = (mv.tags or {}).get(TAG_DAY)
        if day:
            newest_of_day.setdefault(day, mv)
    trend_days = sorted(newest_of_day)[-days:] if days > 0 else []
    shown = versions[:candidates] if candidates > 0 else []

    champion_info = reg.champion(model, download=False) if champion_version is not None else None
    run_ids = [mv.run_id for mv in shown] + [newest_of_day[d].run_id for d in trend_days]
    if champion_info is not None:
        run_ids.append(champion_info.run_id)
    logged = _run_metrics(reg, model, run_ids)
    # A metric belongs in the view when it is the primary one or any shown run logged it.
    present = {key for run in logged.values() for key in run}
    metrics = [primary, *gated,
               *(m for m in SECONDARY_METRICS if m != primary and m not in gated and metric_key(m) in present)]

    def values(run_id: str) -> dict[str, float | None]:
        run = logged.get(run_id, {})
        return {m: _number(run.get(metric_key(m))) for m in metrics}

    days_of_version = {int(mv.version): (mv.tags or {}).get(TAG_DAY) for mv in versions}
    champion_days: dict[str, list[int]] = {}
    for version in sorted(ever_champion):
        if days_of_version.get(version):
            champion_days.setdefault(days_of_version[version], []).append(version)

    candidates_out = []
    for mv in shown:
        tags = mv.tags or {}
        version = int(mv.version)
        candidates_out.append(Candidate(
            version=version, run_id=mv.run_id, day=tags.get(TAG_DAY), registered_at=_iso_ms(mv.creation_timestamp),
            airflow_run_id=tags.get(TAG_AIRFLOW_RUN), gate=_verdict(tags), gate_summary=tags.get(TAG_GATE_SUMMARY, ""),
            metrics=values(mv.run_id), is_champion=version == champion_version, was_champion=version in ever_champion,
            mlflow_url=mlflow_url(reg, model, version), decision=_decision(tags),
        ))

    trend = []
    for day in trend_days:
        mv = newest_of_day[day]
        name, base_values = _baseline(_gate_json(reg, mv.run_id), metrics)
        trend.append(TrendPoint(
            day=day, version=int(mv.version), gate=_verdict(mv.tags or {}), values=values(mv.run_id),
            became_champion=day in champion_days, champion_versions=champion_days.get(day, []),
            baseline=name, baseline_values=base_values,
        ))
    best = next((p for p in reversed(trend) if p.baseline), None)

    champion = None
    if champion_info is not None:
        check = reg.verify_champion(model)
        champion = Champion(
            version=champion_info.version, since=champion_info.since, promoted_by=champion_info.promoted_by,
            reason=champion_info.reason, day=days_of_version.get(champion_info.version),
            run_id=champion_info.run_id, metrics=champion_info.metrics,
            mlflow_url=mlflow_url(reg, model, champion_info.version),
            tables=champion_tables(champion_info.metrics),
            verified=check.verified, problems=list(check.problems),
        )
    return ModelView(**base, metrics=metrics, champion=champion, candidates=candidates_out, trend=trend,
                     best_baseline=best.baseline if best else None,
                     best_baseline_value=best.baseline_values.get(primary) if best else None)


def gate_report(reg: Registry, model: str, version: int) -> GateDoc:
    """The gate report stored with a version (``gate/gate_report.{json,md}`` in its run)."""
    from mlflow.exceptions import MlflowException

    from ecom_ml.gate import GateReport

    try:
        mv = reg.client.get_model_version(model, str(version))
    except MlflowException as exc:
        if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            raise ViewError(f"{model} has no version {version}") from None
        raise ViewError(f"reading {model} v{version}: {_first_line(exc.message)}") from None
    data = _gate_json(reg, mv.run_id)
    markdown = _artifact_text(reg, mv.run_id, GATE_MD_ARTIFACT)
    report = None
    if data is not None:
        with contextlib.suppress(EcomError):
            report = GateReport.from_dict(data)
    if markdown is None and report is not None:
        markdown = report.to_markdown()
    if markdown is None:
        raise ViewError(f"{model} v{version} has no gate report stored (run {mv.run_id})")
    tags = mv.tags or {}
    verdict = _verdict(tags)
    passed = report.passed if report is not None else (None if verdict == "unknown" else verdict == "passed")
    summary = report.summary_line() if report is not None else tags.get(TAG_GATE_SUMMARY, "")
    failed = [c.name for c in report.failed_checks] if report is not None else []
    return GateDoc(model=model, version=int(version), run_id=mv.run_id, passed=passed, summary=summary,
                   failed_checks=failed, data=data, markdown=markdown)


# --------------------------------------------------------------------------------------------------
# Lake: data quality
# --------------------------------------------------------------------------------------------------


def _report_days(lake: Lake, dataset: str) -> dict[date, list[str]]:
    """Day -> zones holding its quality report (in :data:`REPORT_ZONES` order)."""
    found: dict[date, list[str]] = {}
    for zone in REPORT_ZONES:
        root = lake.dataset(zone, dataset)
        if not root.exists():
            continue
        for child in root.iterdir():
            if not child.name.startswith("dt="):
                continue
            try:
                day = date.fromisoformat(child.name[3:])
            except ValueError:
                continue
            if (child / REPORT_JSON).exists():
                found.setdefault(day, []).append(zone)
    return found


def _published(lake: Lake, dataset: str, day: date) -> str:
    zones = []
    for zone, name in ((VALIDATED, "validated"), (QUARANTINE, "quarantined")):
        manifest = lake.manifest(zone, dataset, day)
        if manifest is not None:
            zones.append("rows quarantined" if zone == QUARANTINE and manifest.extra.get("scope") == "rows" else name)
    return ", ".join(zones) or "not published"


def _drift_cell(report: Any) -> str:
    """Drifted inputs (value > threshold), else the largest evaluated statistic (see ecom_ml.quality.drift)."""
    drift = [r for r in report.results if r.table == "drift" and r.success is not None]
    if not drift:
        return ""
    failed = [r for r in drift if r.failed]
    if failed:
        return "; ".join(f"{r.rule.split('.', 1)[1]} {r.observed} (allowed {r.threshold})" for r in failed)
    top = max(drift, key=lambda r: float(r.observed or 0))
    return f"none (largest: {top.rule.split('.', 1)[1]} {top.observed})"


def quality_days(lake: Lake, *, days: int = DEFAULT_QUALITY_DAYS, dataset: str = DATASET) -> list[QualityDay]:
    """The latest quality result of each of the newest ``days`` days with a report, newest first."""
    from ecom_ml.quality import QualityReport, QualityReportError

    found = _report_days(lake, dataset)
    out = []
    for day in sorted(found, reverse=True)[:max(days, 0)]:
        zone = found[day][0]
        published = _published(lake, dataset, day)
        text = (lake.partition(zone, dataset, day) / REPORT_JSON).read_text()
        try:
            report = QualityReport.from_json(text)
        except QualityReportError as exc:
            out.append(QualityDay(day.isoformat(), "unreadable", str(exc), [], {}, zone, published))
            continue
        out.append(QualityDay(
            day=day.isoformat(), status=report.status, summary=report.summary_line(),
            failed_rules=[r.rule for r in report.failures()], row_counts=dict(report.row_counts),
            report_zone=zone, published=published, drift=_drift_cell(report),
        ))
    return out


def quality_report(lake: Lake, day: date, zone: str | None = None, *, dataset: str = DATASET) -> QualityDoc:
    """A day's quality report: from ``zone``, else the latest (see :data:`REPORT_ZONES`)."""
    from ecom_ml.quality import QualityReport, QualityReportError

    if zone is not None and zone not in REPORT_ZONES:
        raise ViewError(f"{zone!r} is not a lake zone with quality reports (one of: {', '.join(REPORT_ZONES)})")
    zones = [zone] if zone else list(REPORT_ZONES)
    for candidate in zones:
        folder = lake.partition(candidate, dataset, day)
        if not (folder / REPORT_JSON).exists():
            continue
        text = (folder / REPORT_JSON).read_text()
        try:
            report = QualityReport.from_json(text)
        except QualityReportError as exc:
            raise ViewError(f"{folder / REPORT_JSON}: {exc}") from None
        md_path = folder / REPORT_MD
        markdown = md_path.read_text() if md_path.exists() else report.to_markdown()
        return QualityDoc(day=day.isoformat(), zone=candidate, status=report.status, summary=report.summary_line(),
                          data=report.to_dict(), markdown=markdown)
    where = f"the {zone} zone" if zone else f"any of {', '.join(REPORT_ZONES)}"
    raise ViewError(f"no quality report for {dataset} {day.isoformat()} in {where} under {lake.root}")


# ---- what the page shows, section by section ----------------------------------------------------


@dataclass
class ModelSection:
    name: str
    dag_id: str
    readable: bool
    view: ModelView | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dag_id": self.dag_id, "readable": self.readable, "error": self.error,
                "view": self.view.to_dict() if self.view else None}


@dataclass
class QualitySection:
    dag_id: str
    readable: bool
    lake_root: str | None = None
    days: list[QualityDay] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"dag_id": self.dag_id, "readable": self.readable, "lake_root": self.lake_root, "error": self.error,
                "days": [d.to_dict() for d in self.days]}


@dataclass
class Overview:
    generated_at: str
    mlflow_uri: str
    mlflow_error: str | None
    models: list[ModelSection]
    quality: QualitySection

    def to_dict(self) -> dict[str, Any]:
        return {"generated_at": self.generated_at, "mlflow": {"uri": self.mlflow_uri, "error": self.mlflow_error},
                "models": [m.to_dict() for m in self.models], "quality": self.quality.to_dict()}
