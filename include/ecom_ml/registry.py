"""Experiment tracking and the model registry: candidates in, one champion out, every move on record.

What the training DAG calls (module-level functions on the default registry, see :func:`get_registry`)::

    cand = log_candidate("recommender", "recommender-2024-01-15", params, metrics, out / "model",
                         gate_report=report.to_dict())          # -> CandidateVersion(version, run_id, model_uri)
    champ = champion("recommender")                              # -> ChampionInfo | None (artifacts cached locally)
    promote("recommender", cand.version, reason=report.summary_line(), actor="airflow:recommender_training")
    rollback("recommender", None, reason="bad recs on the home page", actor="alice")
    history("recommender")                                       # every promotion/rollback: who, when, why
    attach_gate_report(cand, report)                             # JSON + Markdown next to the version

Where MLflow is comes from :func:`ecom_ml.mlflow_server.tracking_uri` (``MLFLOW_TRACKING_URI``, else
the project's local server). Nothing here depends on an MLflow model flavor: the folder handed to
:meth:`Registry.log_candidate` is logged as the run's ``model/`` artifact directory and the
registered version points at it, so any framework's files register the same way. The training DAG
hands it an MLflow pyfunc package (``ecom_ml.serving.package``: ``MLmodel`` + the kind's folder as
its artifact), so ``models:/<name>@champion`` loads with ``mlflow.pyfunc``; :meth:`Registry.champion`
returns the kind's folder inside either layout.

Decisions, and why:

* **Champion = the registry alias ``champion``.** ``set_registered_model_alias`` moves it in one
  write, so readers see the old or the new champion, never none. Serving resolves
  ``models:/<name>@champion``.
* **History = MLflow tags, not a side table.** Each promotion/rollback appends one registered-model
  tag ``ecom.history.<UTC timestamp>.<random>`` holding a JSON event (action, version, previous
  champion, actor, reason, time); keys are never reused or deleted, so the record is append-only and
  needs no extra schema, and it works over the REST API (compose/production workers have no access
  to MLflow's database). The promoted version also gets tags ``ecom.promoted_at``,
  ``ecom.promoted_by``, ``ecom.promotion_reason``, ``ecom.previous_champion`` (its latest promotion;
  the full record is the history).
* **Promote and register are safe to retry at any point.** The alias moves only to a version whose
  gate record is complete and passed (verdict tags plus ``ecom.gate.sha256``, the digest of the
  stored report, written last and checked against the file). The alias moves first (the commit
  point), then the history event and the version tags are written; a repeated call completes what
  an interrupted one left out and never records a move twice. A candidate is keyed by its Airflow
  run (``ecom.candidate_key``), so a retried registration reuses the run or version of the failed
  attempt. Every MLflow call is bounded (``ECOM_MLFLOW_TIMEOUT_SECONDS``, ``ECOM_MLFLOW_RETRIES``)
  and a server that stops answering is one line naming it.
* **A champion is verified before it is served** (:meth:`Registry.verified_champion`): anyone who
  can write to MLflow can move an alias with one REST call; a champion whose version has no passing
  gate record, or whose move is not the last one in the history, is refused and flagged.
* **Rollback returns only to a version that was champion before.** A never-promoted version never
  passed the gate as champion; to use it, promote it (through the gate). ``to_version=None`` undoes
  the last change like a stack: after v1 -> v2 -> v3, rollback gives v2, another rollback v1, and a
  further one is refused (nothing earlier on record). Unknown versions, the current champion, and a
  model without a champion are refused with one-line errors.
* **Metrics**: the evaluation dict is stored verbatim as the run artifact ``ecom/metrics.json``
  (nested slices/cost kept; :func:`champion` returns it) and, flattened, as MLflow metrics for the UI
  (``@`` is not allowed in MLflow metric names: ``recall@10`` is logged as ``recall_at_10``).
* **Champion artifacts are cached by run id** under ``$ECOM_MODEL_CACHE`` (default
  ``.ecom/cache/models/<model>/<run_id>/model``): a version's files never change, so a cached copy
  is always valid, and the download is renamed into place so a killed task leaves no half copy.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecom_ml import mlflow_server
from ecom_ml import settings as settings_mod
from ecom_ml.errors import EcomError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from ecom_ml.gate import GateReport

log = logging.getLogger(__name__)

ALIAS = "champion"
EXPERIMENT_PREFIX = "ecom-ml/"
MODEL_ARTIFACT_PATH = "model"
METRICS_ARTIFACT = "ecom/metrics.json"
GATE_JSON_ARTIFACT = "gate/gate_report.json"
GATE_MD_ARTIFACT = "gate/gate_report.md"

HISTORY_TAG_PREFIX = "ecom.history."
TAG_MODEL = "ecom.model"
TAG_RUN_NAME = "ecom.run_name"
TAG_PROMOTED_AT = "ecom.promoted_at"
TAG_PROMOTED_BY = "ecom.promoted_by"
TAG_PROMOTION_REASON = "ecom.promotion_reason"
TAG_PREVIOUS_CHAMPION = "ecom.previous_champion"
TAG_LAST_ACTION = "ecom.last_action"
TAG_GATE_PASSED = "ecom.gate.passed"
TAG_GATE_SUMMARY = "ecom.gate.summary"
#: Written last by :meth:`Registry.attach_gate_report`: the SHA-256 of the stored gate report JSON.
#: Its presence is what makes a version's gate record complete; the digest ties the tags to the file.
TAG_GATE_RECORDED = "ecom.gate.sha256"
#: Identifies "this candidate" across retries (the Airflow run that trained it), on run and version.
TAG_CANDIDATE_KEY = "ecom.candidate_key"

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Registered-model tag values are VARCHAR(5000) in MLflow's SQL schema; keep events well inside it.
_MAX_REASON = 1000
_MAX_DESCRIPTION = 5000
_MAX_PARAM = 6000


class RegistryError(EcomError):
    """A registry operation was refused or failed; one line saying which model, which version, why."""


@dataclass(frozen=True)
class CandidateVersion:
    """A registered, not (yet) promoted model version."""

    version: int
    run_id: str
    model_uri: str
    model_name: str = ""


@dataclass(frozen=True)
class ChampionInfo:
    """The version the ``champion`` alias points at, with what the DAG needs to compare against it."""

    model_name: str
    version: int
    #: When it became champion (its latest promotion or rollback), ISO 8601 UTC; None if it was
    #: aliased outside ecom-ml.
    since: str | None
    #: The evaluation result logged with the version (``ecom/metrics.json``), nested as evaluated.
    metrics: dict[str, Any]
    #: Local copy of the model kind's folder (None when ``download=False``): the version's
    #: ``model/`` artifact directory, or for an MLflow pyfunc version the kind's folder inside it
    #: (``ecom_ml.models.unpack_model_dir``).
    path: Path | None
    run_id: str
    model_uri: str
    promoted_by: str | None = None
    reason: str | None = None
    #: Whether the version is an MLflow pyfunc model (``MLmodel`` with a python_function flavour);
    #: None when not downloaded. Versions registered before ecom-ml packaged models are not.
    pyfunc: bool | None = None


@dataclass(frozen=True)
class GateRecord:
    """A version's gate record as the registry holds it (see :meth:`Registry.gate_record`)."""

    complete: bool
    passed: bool
    summary: str | None
    #: Why the version may not be (or stay) champion; None when complete and passed.
    problem: str | None


@dataclass(frozen=True)
class ChampionCheck:
    """Whether the champion alias can be trusted: its version passed the gate and ecom-ml moved it."""

    model_name: str
    version: int | None
    problems: tuple[str, ...]

    @property
    def verified(self) -> bool:
        return self.version is not None and not self.problems

    def line(self) -> str:
        if self.version is None:
            return f"{self.model_name} has no champion"
        if not self.problems:
            return f"{self.model_name}@{ALIAS} v{self.version}: verified (gate passed, move on record)"
        return f"{self.model_name}@{ALIAS} v{self.version} is NOT verified: {'; '.join(self.problems)}"


class UnverifiedChampion(RegistryError):
    """The champion alias points at a version that must not be served (one line: which, why, what to do)."""


@dataclass(frozen=True)
class RollbackResult:
    model_name: str
    from_version: int
    to_version: int
    reason: str
    actor: str
    at: str

    def describe(self) -> str:
        return (
            f"{self.model_name}: champion v{self.from_version} -> v{self.to_version} "
            f"(rollback by {self.actor} at {self.at}: {self.reason})"
        )


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _first_line(text: str) -> str:
    return (str(text).strip().splitlines() or [""])[0]


def metric_key(name: str) -> str:
    """An evaluation key as an MLflow metric name: ``slices.new.recall@10`` -> ``slices.new.recall_at_10``."""
    return re.sub(r"[^/\w.\- :]", "_", name.replace("@", "_at_"))


def _flatten_numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten_numbers(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[metric_key(name)] = float(value)
    return out


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 1] + "…"


def _require_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RegistryError(f"{what} is required (a non-empty text)")
    return value.strip()


def default_actor() -> str:
    """Who is acting, for the record: $USER, else the OS account name."""
    return os.environ.get("USER") or getpass.getuser()


class Registry:
    """MLflow tracking + model registry at one URI (see the module docstring for the semantics).

    ``uri`` defaults to :func:`ecom_ml.mlflow_server.tracking_uri`. ``artifacts`` is the artifact
    root for experiments this class creates when talking to a database URI directly (a tracking
    *server* decides that itself); it defaults to :func:`ecom_ml.mlflow_server.artifacts_uri`.
    """

    def __init__(
        self,
        uri: str | None = None,
        *,
        artifacts: str | None = None,
        cache_dir: Path | None = None,
        check: bool = True,
    ) -> None:
        cfg = settings_mod.load()
        #: As given (for messages, always redacted); MLflow gets it without credentials.
        self.uri = uri or mlflow_server.tracking_uri()
        self._client_uri = mlflow_server.configure_client(self.uri) if mlflow_server.is_http(self.uri) else self.uri
        self.artifacts = artifacts or mlflow_server.artifacts_uri(cfg)
        self.cache_dir = Path(cache_dir or os.environ.get("ECOM_MODEL_CACHE") or cfg.home / "cache" / "models")
        if check:
            self._check_reachable()
        from mlflow import MlflowClient

        self.client: MlflowClient = MlflowClient(tracking_uri=self._client_uri, registry_uri=self._client_uri)

    # ---- plumbing ---------------------------------------------------------------------------------

    def _check_reachable(self) -> None:
        """One quick probe so an unreachable MLflow is one line now, not minutes of retries then a traceback."""
        if mlflow_server.is_http(self.uri):
            try:
                mlflow_server.check_http_reachable(self.uri)
            except EcomError as exc:
                raise RegistryError(str(exc)) from None
        elif urllib.parse.urlsplit(self.uri).scheme.startswith("postgresql"):
            try:
                mlflow_server.check_backend_reachable(
                    self.uri, hint="start it with `ecom-ml db start` (or fix MLFLOW_TRACKING_URI)"
                )
            except EcomError as exc:
                raise RegistryError(str(exc)) from None

    @contextlib.contextmanager
    def _mlflow(self, what: str) -> Iterator[None]:
        """Turn MLflow/SQLAlchemy exceptions into one-line RegistryErrors naming the operation."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            raise self._error(what, exc) from None
        except Exception as exc:  # SQLAlchemy/requests errors below MLflow's client
            module = type(exc).__module__ or ""
            if module.startswith(("sqlalchemy", "requests", "urllib3", "psycopg2")):
                raise self._error(what, exc) from None
            raise

    def _error(self, what: str, exc: BaseException) -> RegistryError:
        """One line: what we were doing, and either "the server did not answer" or its answer."""
        text = str(getattr(exc, "message", None) or exc)
        reason = mlflow_server.connection_failure(text) if mlflow_server.is_http(self.uri) else None
        if reason is not None:
            return RegistryError(f"{what}: {mlflow_server.unreachable_line(self.uri, reason)}")
        if type(exc).__module__.startswith(("sqlalchemy", "requests", "urllib3", "psycopg2")):
            return RegistryError(f"{what}: {type(exc).__name__}: {mlflow_server.redact(_first_line(text))} "
                                 f"({mlflow_server.redact(self.uri)})")
        return RegistryError(f"{what}: {mlflow_server.redact(_first_line(text))}")

    @staticmethod
    def _is_missing(exc: Exception) -> bool:
        return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"

    @staticmethod
    def _check_model_name(model_name: str) -> str:
        if not isinstance(model_name, str) or not _MODEL_NAME.match(model_name):
            raise RegistryError(f"{model_name!r} is not a valid model name (letters, digits, '.', '_', '-')")
        return model_name

    def _registered_model(self, model_name: str):
        """The registered model, or None when no version of it was ever registered."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(model_name)
        except MlflowException as exc:
            if self._is_missing(exc):
                return None
            raise self._error(f"reading registered model {model_name}", exc) from None
        except Exception as exc:  # requests/SQLAlchemy below MLflow
            if (type(exc).__module__ or "").startswith(("sqlalchemy", "requests", "urllib3", "psycopg2")):
                raise self._error(f"reading registered model {model_name}", exc) from None
            raise

    def _version(self, model_name: str, version: int):
        """The model version, or a one-line error listing the versions that do exist."""
        from mlflow.exceptions import MlflowException

        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RegistryError(f"{model_name}: {version!r} is not a model version number")
        try:
            return self.client.get_model_version(model_name, str(version))
        except MlflowException as exc:
            if not self._is_missing(exc):
                raise self._error(f"reading {model_name} v{version}", exc) from None
        existing = self._version_numbers(model_name)
        listed = ", ".join(str(v) for v in existing) if existing else "none"
        raise RegistryError(f"{model_name} has no version {version} (existing versions: {listed})")

    def _version_numbers(self, model_name: str) -> list[int]:
        with self._mlflow(f"listing versions of {model_name}"):
            versions = self.client.search_model_versions(f"name = '{model_name}'", max_results=10000)
        return sorted(int(v.version) for v in versions)

    def _experiment_id(self, model_name: str) -> str:
        from mlflow.exceptions import MlflowException

        name = f"{EXPERIMENT_PREFIX}{model_name}"
        with self._mlflow(f"reading experiment {name}"):
            experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        # A tracking server chooses the artifact location itself (proxied or its default root); a
        # client writing straight to the database must say where artifacts go, else MLflow would use
        # ./mlruns relative to whatever the task's working directory happens to be.
        location = None if mlflow_server.is_http(self.uri) else f"{self.artifacts.rstrip('/')}/{model_name}"
        try:
            return self.client.create_experiment(name, artifact_location=location, tags={TAG_MODEL: model_name})
        except MlflowException as exc:
            if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                raise self._error(f"creating experiment {name}", exc) from None
        with self._mlflow(f"reading experiment {name}"):  # created concurrently by another task
            return self.client.get_experiment_by_name(name).experiment_id

    # ---- candidates -------------------------------------------------------------------------------

    def log_candidate(
        self,
        model_name: str,
        run_name: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, Any],
        artifacts_dir: Path | str,
        gate_report: Mapping[str, Any] | GateReport | None = None,
        tags: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
    ) -> CandidateVersion:
        """Log one training run (params, metrics, the model folder) and register it as a new version.

        ``artifacts_dir`` is the trainer's ``<out>/model/`` folder: a local path, a ``file://`` URI,
        or any fsspec URI (``s3://…``), which is copied to a temporary folder first.

        ``key`` names the candidate across retries (the DAG passes its Airflow run id): when a version
        with that key exists it is returned (a retry after MLflow failed half-way reuses the orphan
        instead of registering a second version); a finished run with the key but no version yet is
        registered; an unfinished one is marked FAILED and logged afresh.
        """
        from mlflow.exceptions import MlflowException

        self._check_model_name(model_name)
        run_name = _require_text(run_name, "a run name")
        if not isinstance(metrics, Mapping) or not isinstance(params, Mapping):
            raise RegistryError(f"{model_name}: params and metrics must be mappings")
        user_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        if key is not None:
            key = _require_text(key, "a candidate key")
            user_tags[TAG_CANDIDATE_KEY] = key
            existing = self._version_with_key(model_name, key)
            if existing is not None:
                log.info("%s: reusing v%s registered earlier for %s", model_name, existing.version, key)
                if gate_report is not None:
                    self.attach_gate_report(existing, gate_report)
                return existing

        with _local_dir(artifacts_dir) as local:
            experiment_id = self._experiment_id(model_name)
            run = self._finished_run_with_key(experiment_id, key) if key is not None else None
            if run is None:
                with self._mlflow(f"creating a run for {model_name}"):
                    run = self.client.create_run(
                        experiment_id, run_name=run_name,
                        tags={**user_tags, TAG_MODEL: model_name, TAG_RUN_NAME: run_name},
                    )
                self._log_run(run.info.run_id, model_name, params, metrics, local)
            else:
                log.info("%s: registering run %s logged earlier for %s", model_name, run.info.run_id, key)
        run_id = run.info.run_id

        try:
            self.client.create_registered_model(
                model_name, tags={TAG_MODEL: model_name},
                description=f"ecom-ml model `{model_name}`; the serving version is the alias `@{ALIAS}`.",
            )
        except MlflowException as exc:
            if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                raise self._error(f"registering model {model_name}", exc) from None
        with self._mlflow(f"registering run {run_id} as a version of {model_name}"):
            mv = self.client.create_model_version(
                model_name,
                source=f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}",
                run_id=run_id,
                tags={**user_tags, TAG_RUN_NAME: run_name},
                description=f"candidate from run `{run_name}`",
            )
        candidate = CandidateVersion(
            version=int(mv.version),
            run_id=run_id,
            model_uri=f"models:/{model_name}/{mv.version}",
            model_name=model_name,
        )
        if gate_report is not None:
            self.attach_gate_report(candidate, gate_report)
        log.info("registered %s v%s from run %s (%s)", model_name, mv.version, run_name, run_id)
        return candidate

    def _log_run(self, run_id: str, model_name: str, params: Mapping[str, Any], metrics: Mapping[str, Any],
                 local: Path) -> None:
        """Params, metrics, ``ecom/metrics.json`` and the model files; FINISHED last (what makes the
        run reusable by a retry), FAILED if anything before it failed."""
        from mlflow.entities import Metric, Param

        try:
            now_ms = int(_now().timestamp() * 1000)
            flat = _flatten_numbers(metrics)
            param_list = [Param(str(k), _param_value(v)) for k, v in params.items()]
            metric_list = [Metric(k, v, now_ms, 0) for k, v in flat.items()]
            with self._mlflow(f"logging run {run_id} of {model_name}"):
                # log_batch accepts at most 100 params / 1000 metrics per call.
                for start in range(0, max(len(param_list), 1), 100):
                    self.client.log_batch(run_id, params=param_list[start:start + 100])
                for start in range(0, len(metric_list), 1000):
                    self.client.log_batch(run_id, metrics=metric_list[start:start + 1000])
                self.client.log_dict(run_id, json.loads(json.dumps(metrics, default=str)), METRICS_ARTIFACT)
                self.client.log_artifacts(run_id, str(local), artifact_path=MODEL_ARTIFACT_PATH)
                self.client.set_terminated(run_id, "FINISHED")
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.set_terminated(run_id, "FAILED")
            raise

    def _version_with_key(self, model_name: str, key: str) -> CandidateVersion | None:
        """The newest READY version registered under ``key``, if any."""
        with self._mlflow(f"looking up the version of {model_name} for {key}"):
            found = self.client.search_model_versions(
                f"name = '{model_name}' and tags.`{TAG_CANDIDATE_KEY}` = '{_quote(key)}'", max_results=100
            )
        ready = sorted((mv for mv in found if mv.status == "READY"), key=lambda mv: int(mv.version))
        if not ready:
            return None
        mv = ready[-1]
        return CandidateVersion(int(mv.version), mv.run_id, f"models:/{model_name}/{mv.version}", model_name)

    def _finished_run_with_key(self, experiment_id: str, key: str):
        """A FINISHED run logged under ``key`` whose version was never registered; unfinished ones
        (their logging was cut off) are marked FAILED so nobody mistakes them for a candidate."""
        with self._mlflow(f"looking up earlier runs for {key}"):
            runs = self.client.search_runs(
                [experiment_id], filter_string=f"tags.`{TAG_CANDIDATE_KEY}` = '{_quote(key)}'", max_results=100
            )
        finished = [r for r in runs if r.info.status == "FINISHED"]
        for run in runs:
            if run.info.status in ("RUNNING", "SCHEDULED"):
                with self._mlflow(f"marking the cut-off run {run.info.run_id} FAILED"):
                    self.client.set_terminated(run.info.run_id, "FAILED")
        return max(finished, key=lambda r: r.info.start_time) if finished else None

    def attach_gate_report(
        self,
        version: CandidateVersion | int,
        report: GateReport | Mapping[str, Any],
        *,
        model_name: str | None = None,
    ) -> None:
        """Store a gate report with a version: ``gate/gate_report.{json,md}`` in its run, verdict tags,
        and the Markdown as the version's description (what the MLflow UI shows on the version page).

        ``version`` is a :class:`CandidateVersion`, or a version number together with ``model_name``.
        """
        from ecom_ml.gate import GateReport

        if isinstance(version, CandidateVersion):
            name, number = version.model_name or model_name, version.version
        else:
            name, number = model_name, version
        if not name:
            raise RegistryError(f"attach_gate_report: model_name is required with a bare version number ({version!r})")
        mv = self._version(self._check_model_name(name), number)
        if isinstance(report, GateReport):
            rendered: GateReport | None = report
            data = report.to_dict()
        elif isinstance(report, Mapping):
            data = json.loads(json.dumps(report, default=str))
            try:
                rendered = GateReport.from_dict(data)
            except EcomError:
                rendered = None
        else:
            raise RegistryError(f"{name} v{number}: a gate report must be a GateReport or its dict, got {type(report).__name__}")
        passed = bool(data.get("passed"))
        summary = rendered.summary_line() if rendered else str(data.get("summary", ""))
        markdown = rendered.to_markdown() if rendered else f"```json\n{json.dumps(data, indent=2)}\n```\n"
        description = markdown
        if len(description) > _MAX_DESCRIPTION:
            note = f"\n\n… (truncated; full report: `{GATE_MD_ARTIFACT}` in run `{mv.run_id}`)"
            description = description[: _MAX_DESCRIPTION - len(note)] + note
        if not mv.run_id:
            raise RegistryError(f"{name} v{number} has no run to store its gate report in")
        stored = _canonical_json(data)
        with self._mlflow(f"attaching the gate report to {name} v{number}"):
            # The digest tag goes first and last: removed before anything changes, so a record
            # rewritten half-way never reads as complete, and written once every part is stored.
            if TAG_GATE_RECORDED in (mv.tags or {}):
                self.client.delete_model_version_tag(name, str(number), TAG_GATE_RECORDED)
            self.client.log_text(mv.run_id, stored, GATE_JSON_ARTIFACT)
            self.client.log_text(mv.run_id, markdown, GATE_MD_ARTIFACT)
            self.client.set_model_version_tag(name, str(number), TAG_GATE_PASSED, "true" if passed else "false")
            self.client.set_model_version_tag(name, str(number), TAG_GATE_SUMMARY, summary[:_MAX_DESCRIPTION])
            self.client.update_model_version(name, str(number), description=description)
            self.client.set_model_version_tag(name, str(number), TAG_GATE_RECORDED, _sha256(stored))

    def gate_record(self, model_name: str, version: int, *, check_file: bool = True) -> GateRecord:
        """What the registry holds about ``version``'s gate: complete or not, passed or not, and why not.

        Complete means the verdict tags and the digest tag are there and (``check_file``) the stored
        report has that digest and the same verdict: a tag set by hand over the REST API does not
        make a failed version look passed.
        """
        mv = self._version(self._check_model_name(model_name), version)
        return self._gate_record_of(model_name, mv, check_file=check_file)

    def _gate_record_of(self, model_name: str, mv: Any, *, check_file: bool) -> GateRecord:
        tags = mv.tags or {}
        label = f"{model_name} v{mv.version}"
        verdict = tags.get(TAG_GATE_PASSED)
        digest = tags.get(TAG_GATE_RECORDED)
        summary = tags.get(TAG_GATE_SUMMARY)
        if verdict is None or digest is None or summary is None:
            missing = [t for t, v in ((TAG_GATE_PASSED, verdict), (TAG_GATE_SUMMARY, summary),
                                      (TAG_GATE_RECORDED, digest)) if v is None]
            return GateRecord(False, False, summary, f"{label} has no complete gate record (missing {', '.join(missing)})")
        if check_file:
            with tempfile.TemporaryDirectory(prefix="ecom-gate-") as tmp:
                try:
                    local = self.client.download_artifacts(mv.run_id, GATE_JSON_ARTIFACT, tmp)
                    stored = Path(local).read_text()
                except Exception as exc:  # noqa: BLE001 - a missing file is the finding, not a crash
                    reason = mlflow_server.connection_failure(str(exc))
                    if reason is not None:
                        raise self._error(f"reading the gate report of {label}", exc) from None
                    return GateRecord(False, False, summary, f"{label}: its gate report {GATE_JSON_ARTIFACT} is missing")
            if _sha256(stored) != digest:
                return GateRecord(False, False, summary,
                                  f"{label}: its gate report does not match the digest recorded with it")
            try:
                file_passed = json.loads(stored).get("passed") is True
            except (ValueError, AttributeError):
                file_passed = False
            if file_passed != (verdict == "true"):
                return GateRecord(False, False, summary, f"{label}: its gate tag says {verdict!r}, its report does not")
        if verdict != "true":
            return GateRecord(True, False, summary, f"{label} failed its gate: {summary}")
        return GateRecord(True, True, summary, None)

    # ---- champion ---------------------------------------------------------------------------------

    def champion_version(self, model_name: str) -> int | None:
        """The version the ``champion`` alias points at, or None (no model, or never promoted)."""
        model = self._registered_model(self._check_model_name(model_name))
        if model is None:
            return None
        value = (model.aliases or {}).get(ALIAS)
        return int(value) if value is not None else None

    def champion(self, model_name: str, *, download: bool = True) -> ChampionInfo | None:
        """The current champion with its logged metrics and (by default) a local copy of its files."""
        version = self.champion_version(model_name)
        if version is None:
            return None
        mv = self._version(model_name, version)
        metrics = self._metrics_of(mv.run_id)
        path, pyfunc = None, None
        if download:
            from ecom_ml.models import unpack_model_dir

            path, pyfunc = unpack_model_dir(self._cached_model_dir(model_name, mv.run_id))
        tags = mv.tags or {}
        return ChampionInfo(
            model_name=model_name,
            version=version,
            since=tags.get(TAG_PROMOTED_AT),
            metrics=metrics,
            path=path,
            run_id=mv.run_id,
            model_uri=f"models:/{model_name}/{version}",
            promoted_by=tags.get(TAG_PROMOTED_BY),
            reason=tags.get(TAG_PROMOTION_REASON),
            pyfunc=pyfunc,
        )

    def _metrics_of(self, run_id: str) -> dict[str, Any]:
        """The evaluation dict as logged; falls back to the run's (flat, renamed) MLflow metrics."""
        with tempfile.TemporaryDirectory(prefix="ecom-metrics-") as tmp:
            try:
                local = self.client.download_artifacts(run_id, METRICS_ARTIFACT, tmp)
                return json.loads(Path(local).read_text())
            except Exception as exc:  # noqa: BLE001 - a version registered outside ecom-ml has no file
                log.warning("run %s has no %s (%s); using its MLflow metrics", run_id, METRICS_ARTIFACT, exc)
        with self._mlflow(f"reading run {run_id}"):
            return dict(self.client.get_run(run_id).data.metrics)

    def _cached_model_dir(self, model_name: str, run_id: str) -> Path:
        final = self.cache_dir / model_name / run_id
        if (final / MODEL_ARTIFACT_PATH).is_dir():
            return final / MODEL_ARTIFACT_PATH
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
        try:
            with self._mlflow(f"downloading the model files of run {run_id}"):
                self.client.download_artifacts(run_id, MODEL_ARTIFACT_PATH, str(scratch))
            try:
                scratch.rename(final)
            except OSError:
                if not (final / MODEL_ARTIFACT_PATH).is_dir():  # not a concurrent download that won
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return final / MODEL_ARTIFACT_PATH

    # ---- promotion, rollback, history -------------------------------------------------------------

    def promote(self, model_name: str, version: int, reason: str, actor: str) -> None:
        """Make ``version`` the champion: only a version whose complete gate record says passed.

        Safe to retry at any point. The alias moves first (the commit point), then the history event
        and the version's ``ecom.promoted_*`` tags are written. Promoting the current champion again
        writes nothing when its move is on record, and otherwise completes what an interrupted
        attempt left out (the event, the tags), so a retry after MLflow failed half-way finishes the
        job and never records a move twice.
        """
        self._check_model_name(model_name)
        reason = _require_text(reason, "a reason")
        actor = _require_text(actor, "an actor")
        mv = self._version(model_name, version)
        if mv.status != "READY":
            raise RegistryError(f"{model_name} v{version} is not ready (status {mv.status})")
        record = self._gate_record_of(model_name, mv, check_file=True)
        if not record.passed:
            raise RegistryError(f"{model_name} v{version} cannot be promoted: {record.problem}")
        self._move_champion(model_name, version, "promote", reason, actor)

    def rollback(self, model_name: str, to_version: int | None, reason: str, actor: str) -> RollbackResult:
        """Point ``champion`` back at an earlier champion; ``to_version=None`` undoes the last change.

        Refused, with one line: no champion, an unknown version, the current champion, a version that
        was never champion or has no passing gate record, or (with None) no earlier champion on record.
        """
        self._check_model_name(model_name)
        reason = _require_text(reason, "a reason")
        actor = _require_text(actor, "an actor")
        if self._registered_model(model_name) is None:
            raise RegistryError(f"there is no registered model {model_name!r}")
        current = self.champion_version(model_name)
        if current is None:
            raise RegistryError(f"{model_name} has no champion to roll back from")
        events = self.history(model_name)
        on_record = bool(events) and events[-1]["version"] == current
        if to_version is None and not on_record:
            raise RegistryError(
                f"{model_name}@{ALIAS} points at v{current} but that move is not in the history (moved outside "
                f"ecom-ml, or an interrupted rollback): name the version to restore with --to-version"
            )
        if to_version is not None and to_version == current and not on_record:
            # The retry of a rollback whose alias move went through but whose record did not.
            if to_version not in {event["version"] for event in events}:
                raise RegistryError(f"{model_name} v{to_version} was never champion: rollback only returns to a "
                                    f"version that was promoted before (promote a new version through the gate instead)")
            record = self.gate_record(model_name, to_version)
            if not record.passed:
                raise RegistryError(f"{model_name} v{to_version} cannot be restored: {record.problem}")
            previous = events[-1]["version"]
            at = self._move_champion(model_name, to_version, "rollback", reason, actor)
            return RollbackResult(model_name, previous, to_version, reason, actor, at)
        if to_version is None:
            stack = _champion_stack(events, current)
            if len(stack) < 2:
                raise RegistryError(
                    f"{model_name}: no earlier champion on record before v{current}; nothing to roll back to"
                )
            target = stack[-2]
        else:
            target = to_version
            self._version(model_name, target)  # exists?
            if target == current:
                raise RegistryError(f"{model_name} v{target} is already the champion")
            if target not in {event["version"] for event in events}:
                raise RegistryError(
                    f"{model_name} v{target} was never champion: rollback only returns to a version that was "
                    f"promoted before (promote a new version through the gate instead)"
                )
        mv = self._version(model_name, target)
        if mv.status != "READY":
            raise RegistryError(f"{model_name} v{target} is not ready (status {mv.status})")
        record = self._gate_record_of(model_name, mv, check_file=True)
        if not record.passed:
            raise RegistryError(f"{model_name} v{target} cannot be restored: {record.problem}")
        at = self._move_champion(model_name, target, "rollback", reason, actor)
        return RollbackResult(model_name, current, target, reason, actor, at)

    def _move_champion(self, model_name: str, version: int, action: str, reason: str, actor: str) -> str:
        """Move the alias (the commit point), then record the event and stamp the version; returns the
        event's time. Every step is idempotent, so a call repeated after a failure completes the move.

        Why the alias moves *before* the event is written: a failure in between then leaves a move
        that is not on record, which :meth:`verify_champion` flags and the retry fills in. The other
        order would leave an event for a move that never happened, which nothing could tell apart
        from a real one.
        """
        events = self.history(model_name)
        recorded = events[-1]["version"] if events else None
        current = self.champion_version(model_name)
        if current == version and recorded == version:
            event = events[-1]
            if self._stamped(model_name, version, event):
                log.info("%s v%s is already the champion; nothing to do", model_name, version)
                return str(event["at"])
            self._stamp(model_name, version, event)  # an earlier attempt moved and recorded, not stamped
            return str(event["at"])
        if current != version:
            with self._mlflow(f"moving {model_name}@{ALIAS} to v{version}"):
                self.client.set_registered_model_alias(model_name, ALIAS, str(version))
        elif current is not None:
            log.warning("%s@%s already points at v%s but the move is not on record; recording it now",
                        model_name, ALIAS, version)
        # The champion before this move is the last one on record (if the alias had been moved
        # outside ecom-ml, the version it pointed at never was champion by any record).
        previous = recorded if recorded != version else None
        now = _now()
        event = {
            "at": now.isoformat(timespec="seconds"),
            "action": action,
            "model": model_name,
            "version": version,
            "previous_champion": previous,
            "actor": actor[:200],
            "reason": reason[:_MAX_REASON],
        }
        if current == version:
            event["recorded_after_the_move"] = True
        key = f"{HISTORY_TAG_PREFIX}{now.strftime('%Y%m%dT%H%M%S.%fZ')}.{uuid.uuid4().hex[:8]}"
        with self._mlflow(f"recording the {action} of {model_name} v{version} (the alias has moved)"):
            self.client.set_registered_model_tag(model_name, key, json.dumps(event, sort_keys=True))
        self._stamp(model_name, version, event)
        log.info("%s: champion %s -> v%s (%s by %s: %s)", model_name,
                 f"v{previous}" if previous else "none", version, action, actor, reason)
        return str(event["at"])

    @staticmethod
    def _version_stamp(event: Mapping[str, Any]) -> dict[str, str]:
        previous = event.get("previous_champion")
        return {
            TAG_PROMOTED_AT: str(event["at"]),
            TAG_PROMOTED_BY: str(event.get("actor", "")),
            TAG_PROMOTION_REASON: str(event.get("reason", "")),
            TAG_PREVIOUS_CHAMPION: "" if previous is None else str(previous),
            TAG_LAST_ACTION: str(event.get("action", "")),
        }

    def _stamped(self, model_name: str, version: int, event: Mapping[str, Any]) -> bool:
        tags = self._version(model_name, version).tags or {}
        return all(tags.get(k) == v for k, v in self._version_stamp(event).items())

    def _stamp(self, model_name: str, version: int, event: Mapping[str, Any]) -> None:
        with self._mlflow(f"tagging {model_name} v{version} with its {event.get('action')} (the alias has moved)"):
            for tag, value in self._version_stamp(event).items():
                self.client.set_model_version_tag(model_name, str(version), tag, value)

    def verify_champion(self, model_name: str) -> ChampionCheck:
        """Can the champion be trusted? Its version must have a complete, passing gate record and its
        alias move must be the last one in the history. Anyone who can write to the MLflow server can
        move an alias with one REST call; this is the check that notices (see README, Security)."""
        self._check_model_name(model_name)
        version = self.champion_version(model_name)
        if version is None:
            return ChampionCheck(model_name, None, ())
        problems = []
        record = self.gate_record(model_name, version)
        if not record.passed:
            problems.append(record.problem or "no passing gate record")
        events = self.history(model_name)
        if not events or events[-1]["version"] != version:
            recorded = f"the last recorded champion is v{events[-1]['version']}" if events else "no move is on record"
            problems.append(f"the alias move to v{version} is not in the history ({recorded})")
        return ChampionCheck(model_name, version, tuple(problems))

    def verified_champion(self, model_name: str, *, download: bool = True) -> ChampionInfo:
        """The champion, for serving and publishing: refused with one line unless verified."""
        check = self.verify_champion(model_name)
        if check.version is None:
            raise UnverifiedChampion(f"{model_name} has no champion: nothing to serve")
        if not check.verified:
            raise UnverifiedChampion(
                f"refusing to serve {check.line()}: promote a version through the gate, or "
                f"`ecom-ml rollback --model {model_name}` to the last recorded champion"
            )
        info = self.champion(model_name, download=download)
        if info is None or info.version != check.version:  # moved between the check and the read
            raise UnverifiedChampion(f"{model_name}@{ALIAS} moved while it was being verified: try again")
        return info

    def history(self, model_name: str) -> list[dict[str, Any]]:
        """Every promotion and rollback, oldest first: ``at, action, model, version,
        previous_champion, actor, reason``."""
        return self.tagged_events(model_name, HISTORY_TAG_PREFIX)

    def tagged_events(self, model_name: str, prefix: str) -> list[dict[str, Any]]:
        """The JSON documents stored as registered-model tags under ``prefix`` (each with an integer
        ``version``), oldest first by tag name; a tag that is not one is logged and skipped. The
        promotion history and the approval decisions (``ecom_ml.decisions``) are kept this way."""
        model = self._registered_model(self._check_model_name(model_name))
        if model is None:
            return []
        events = []
        for key in sorted(k for k in (model.tags or {}) if k.startswith(prefix)):
            try:
                event = json.loads(model.tags[key])
                event["version"] = int(event["version"])
            except (ValueError, KeyError, TypeError):
                log.warning("%s: tag %s is not an ecom-ml event; skipped", model_name, key)
                continue
            events.append(event)
        return events


def _canonical_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _quote(value: str) -> str:
    """A value inside a single-quoted MLflow search-filter string."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _champion_stack(events: list[dict[str, Any]], current: int) -> list[int]:
    """Champions as an undo stack: a promotion pushes; a rollback to a version on the stack pops back
    to it (a rollback to one no longer on it pushes). The alias, if moved outside ecom-ml, is on top."""
    stack: list[int] = []
    for event in events:
        version = event["version"]
        if event.get("action") == "rollback" and version in stack:
            while stack[-1] != version:
                stack.pop()
        elif not stack or stack[-1] != version:
            stack.append(version)
    if not stack or stack[-1] != current:
        stack.append(current)
    return stack


@contextlib.contextmanager
def _local_dir(source: Path | str) -> Iterator[Path]:
    """A local folder with the model files: the folder itself, or a temporary copy of a remote one."""
    text = str(source)
    scheme = urllib.parse.urlsplit(text).scheme if "://" in text else ""
    if scheme in ("", "file"):
        path = Path(urllib.parse.unquote(urllib.parse.urlsplit(text).path)) if scheme else Path(text)
        if not path.is_dir():
            raise RegistryError(f"model artifacts folder {path} does not exist")
        if not any(path.iterdir()):
            raise RegistryError(f"model artifacts folder {path} is empty")
        yield path
        return
    import fsspec

    fs, remote = fsspec.core.url_to_fs(text)
    if not fs.isdir(remote):
        raise RegistryError(f"model artifacts folder {text} does not exist")
    with tempfile.TemporaryDirectory(prefix="ecom-model-") as tmp:
        local = Path(tmp) / "model"
        fs.get(remote.rstrip("/") + "/", str(local) + "/", recursive=True)
        if not local.is_dir() or not any(local.iterdir()):
            raise RegistryError(f"model artifacts folder {text} is empty")
        yield local


# --------------------------------------------------------------------------------------------------
# Module-level API on the default registry (what the DAG imports).
# --------------------------------------------------------------------------------------------------

_registries: dict[tuple[str, str, str], Registry] = {}


def get_registry() -> Registry:
    """The registry at :func:`~ecom_ml.mlflow_server.tracking_uri`, one client per URI per process."""
    cfg = settings_mod.load()
    key = (
        mlflow_server.tracking_uri(),
        mlflow_server.artifacts_uri(cfg),
        os.environ.get("ECOM_MODEL_CACHE") or str(cfg.home / "cache" / "models"),
    )
    if key not in _registries:
        _registries[key] = Registry(key[0], artifacts=key[1], cache_dir=Path(key[2]))
    return _registries[key]


def log_candidate(
    model_name: str,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    artifacts_dir: Path | str,
    gate_report: Mapping[str, Any] | GateReport | None = None,
    tags: Mapping[str, str] | None = None,
    *,
    key: str | None = None,
) -> CandidateVersion:
    return get_registry().log_candidate(model_name, run_name, params, metrics, artifacts_dir, gate_report, tags,
                                        key=key)


def champion(model_name: str, *, download: bool = True) -> ChampionInfo | None:
    return get_registry().champion(model_name, download=download)


def promote(model_name: str, version: int, reason: str, actor: str) -> None:
    get_registry().promote(model_name, version, reason, actor)


def rollback(model_name: str, to_version: int | None, reason: str, actor: str) -> RollbackResult:
    return get_registry().rollback(model_name, to_version, reason, actor)


def verify_champion(model_name: str) -> ChampionCheck:
    return get_registry().verify_champion(model_name)


def verified_champion(model_name: str, *, download: bool = True) -> ChampionInfo:
    """The champion to serve or publish; raises :class:`UnverifiedChampion` (one line) unless its
    version passed the gate and its alias move is on record. Serving and publishing call this."""
    return get_registry().verified_champion(model_name, download=download)


def history(model_name: str) -> list[dict[str, Any]]:
    return get_registry().history(model_name)


def attach_gate_report(
    version: CandidateVersion | int, report: GateReport | Mapping[str, Any], *, model_name: str | None = None
) -> None:
    get_registry().attach_gate_report(version, report, model_name=model_name)


# --------------------------------------------------------------------------------------------------
# CLI: `ecom-ml rollback …`, `ecom-ml history …`, and `ecom-ml mlflow …` (one call from cli.py).
# --------------------------------------------------------------------------------------------------


def _cmd_rollback(args: argparse.Namespace) -> int:
    """Move the alias back, then republish the restored champion's predictions into the orders DB
    (``ecom_ml.training.steps.publish_champion``: the set it published when it was promoted).

    Exit 4 when the alias moved but the predictions could not be republished (one line saying so;
    the ml tables keep the set they had)."""
    actor = args.actor or default_actor()
    result = rollback(args.model, args.to_version, args.reason, actor)
    print(result.describe())
    if args.no_publish:
        return 0
    from ecom_ml import models
    from ecom_ml.training.steps import publish_champion

    if args.model not in models.REGISTRY:  # a registered model that no ecom-ml model kind trains
        print(f"{args.model}: not an ecom-ml model kind ({', '.join(models.names())}); no predictions to republish")
        return 0

    cfg = settings_mod.load()
    try:
        published = publish_champion(args.model, lake_root=cfg.lake_root, orders_url=cfg.orders_db_url, actor=actor,
                                     reason=f"rollback to v{result.to_version}: {result.reason}",
                                     expect_version=result.to_version)
    except EcomError as exc:
        print(f"ecom-ml: error: the champion is v{result.to_version} but its predictions were not republished: {exc}",
              file=sys.stderr)
        return 4
    if "skipped" in published:
        print(f"{args.model}: no predictions to republish ({published['skipped']})")
    else:
        print(f"republished {published['rows']:,} rows of {args.model} v{published['version']} "
              f"({published['day']}) into {published['table']}")
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    events = history(args.model)
    check = verify_champion(args.model)
    if args.json:
        print(json.dumps(events, indent=2))
        if check.version is not None and not check.verified:
            print(f"ecom-ml: warning: {check.line()}", file=sys.stderr)
        return 0 if check.verified or check.version is None else 3
    from ecom_ml import decisions

    if not events:
        print(f"{args.model}: no promotions on record")
    lines = []
    for event in events:
        previous = f"v{event['previous_champion']}" if event.get("previous_champion") else "none"
        late = "  (recorded after the move)" if event.get("recorded_after_the_move") else ""
        lines.append((event["at"], f"{event['at']}  {event['action']:<8} v{event['version']:<4} (was {previous})  "
                                   f"by {event.get('actor')}: {event.get('reason')}{late}"))
    # People's decisions (approved, rejected, timed out, refused) between the moves, by time.
    for event in decisions.decisions(get_registry(), args.model):
        lines.append((event["at"], f"{event['at']}  {event['decision']:<8} v{event['version']:<4}            "
                                   f"by {event.get('actor')}: {event.get('reason')}"))
    for _, line in sorted(lines, key=lambda item: item[0]):
        print(line)
    if check.version is not None and not check.verified:
        print(f"!! {check.line()}")
        return 3
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number (1, 2, …)")
    return value


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mlflow``, ``rollback`` and ``history`` on the ``ecom-ml`` parser's subcommands.

    From ``cli.build_parser``: ``registry.add_cli(sub)``. Importing this module is cheap (MLflow
    is imported on first use), so the CLI's start-up time does not change.
    """
    mlflow_server.add_cli(subparsers)

    rb = subparsers.add_parser(
        "rollback",
        help="point a model's champion alias back at an earlier champion",
        description="Without --to-version, undoes the last promotion/rollback. Only versions that were "
        "champion before are accepted. Who and why are recorded in the model's history. The restored "
        "champion's predictions are then republished into the orders DB (schema ml); exit 4 if that fails.",
    )
    rb.add_argument("--model", required=True, help="registered model, e.g. recommender")
    rb.add_argument("--to-version", type=_positive_int, default=None, help="version to restore (default: the previous champion)")
    rb.add_argument("--reason", required=True, help="why (kept in the history)")
    rb.add_argument("--actor", default=None, help="who (default: $USER)")
    rb.add_argument("--no-publish", action="store_true",
                    help="only move the alias; do not republish the restored champion's predictions into the orders DB")
    rb.set_defaults(func=_cmd_rollback)

    hist = subparsers.add_parser(
        "history", help="a model's promotions, rollbacks and approval decisions: who, when, why",
        description="Exits 3 (with a line starting '!!') when the current champion is not verified: its "
        "version has no passing gate record, or its alias move is not in the history.",
    )
    hist.add_argument("--model", required=True)
    hist.add_argument("--json", action="store_true", help="machine-readable output")
    hist.set_defaults(func=_cmd_history)
