"""The model kinds the pipeline can train, and where their artifacts live.

A small registry, so the training entrypoint (``python -m ecom_ml.train --model NAME``), the DAGs and
the evaluator are not written for one model: each kind names its trainer and its loader as
``"module:function"`` strings, resolved only when used. That keeps this module import-light (no
Keras, TensorFlow, pyarrow or Airflow at import), so ``--help``, argument errors and DAG parsing stay
fast, and the GPU benchmark can import the model code on a machine without TensorFlow.

A trainer is ``train(request: TrainRequest) -> dict`` (the body of ``return.json``, see
``ecom_ml.train``); a loader is ``load(model_dir_uri) -> object`` (for a recommender, something
satisfying ``ecom_ml.evaluation.protocol.Recommender``).

The artifact helpers at the bottom let every kind write ``<out>/model/`` and read it back the same
way on local disk (a path or ``file://`` URI) and on object storage (``s3://...``, through
``ecom_ml.storage``, which needs no Airflow).
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ecom_ml.errors import EcomError


@dataclass(frozen=True)
class TrainRequest:
    """What the entrypoint hands a trainer: where features are, which day, where to write, overrides.

    ``params`` holds only the options given on the command line; the trainer owns the defaults and
    the validation of its own parameters.
    """

    features: str
    day: date | None
    out: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelKind:
    """One trainable model kind."""

    name: str
    description: str
    trainer: str  # "module:function", function(TrainRequest) -> dict
    loader: str  # "module:function", function(model_dir_uri) -> model object
    steps: str  # "module:Class", what the kind contributes to its training DAG (ecom_ml.training.steps.ModelSteps)
    params: str | None = None  # "module:Class", a dataclass of the trainer's parameters and defaults

    def train(self, request: TrainRequest) -> dict[str, Any]:
        return _resolve(self.trainer)(request)

    def load(self, model_dir: str) -> Any:
        return _resolve(self.loader)(model_dir)

    def load_steps(self) -> Any:
        """The kind's training-DAG steps (features, evaluation): imported only when a task runs."""
        return _resolve(self.steps)()

    def defaults(self) -> dict[str, Any]:
        """The trainer's default parameters (for --help and reports); empty when it declares none."""
        from dataclasses import asdict

        return asdict(_resolve(self.params)()) if self.params else {}


#: Model kinds by name: the one entry a kind adds. Each kind's code (trainer, loader, training-DAG
#: steps, parameters) lives in its own modules, named here as strings so nothing heavy is imported.
REGISTRY: dict[str, ModelKind] = {
    "recommender": ModelKind(
        name="recommender",
        description="two stages: own items, EASE and two-tower candidates, then a learned ranker (Keras 3)",
        trainer="ecom_ml.models.recommender:train",
        loader="ecom_ml.models.recommender:load_recommender",
        steps="ecom_ml.models.recommender_steps:RecommenderSteps",
        params="ecom_ml.models.recommender:TrainParams",
    ),
    "demand": ModelKind(
        name="demand",
        description="global weekly demand forecaster, p50 and p90 of the next 4 weeks (Keras 3)",
        trainer="ecom_ml.demand.model:train",
        loader="ecom_ml.demand.model:load_forecaster",
        steps="ecom_ml.demand.steps:DemandSteps",
        params="ecom_ml.demand.model:DemandTrainParams",
    ),
    "propensity": ModelKind(
        name="propensity",
        description="purchase in the next 30 days: GRU over weekly behaviour + RFM, calibrated (Keras 3)",
        trainer="ecom_ml.propensity.model:train",
        loader="ecom_ml.propensity.model:load_model",
        steps="ecom_ml.propensity.steps:PropensitySteps",
        params="ecom_ml.propensity.model:PropensityTrainParams",
    ),
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> ModelKind:
    """The kind called ``name``, or a one-line error listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise EcomError(f"unknown model {name!r}; known models: {', '.join(names())}") from None


def _resolve(target: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


# -- artifact locations ------------------------------------------------------------------------------


def is_local(uri: str) -> bool:
    """A plain path or a ``file://`` URI."""
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(uri: str) -> Path:
    """The filesystem path of a local URI (``file:///a/b`` or ``/a/b`` or ``a/b``)."""
    parsed = urlparse(uri)
    return Path(unquote(parsed.path) if parsed.scheme == "file" else uri).expanduser().absolute()


def as_uri(location: str) -> str:
    """``file://`` URI for local locations (the Lake wants URIs), remote URIs unchanged.

    Not ``Path.as_uri()``: that percent-encodes ``=``, and lake partitions are named ``dt=...``.
    """
    return "file://" + local_path(location).as_posix() if is_local(location) else location.rstrip("/")


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def _remote(uri: str) -> Any:
    from ecom_ml import storage

    return storage.path(uri)


def publish_dir(local_dir: Path, uri: str) -> None:
    """Make ``uri`` hold exactly the files of ``local_dir``.

    Locally the folder is written under a temporary name and renamed into place, so a reader never
    sees half a model; on object storage the files are uploaded one by one (each object appears
    whole) and completeness is signalled by ``return.json``, which the entrypoint writes last.
    """
    if is_local(uri):
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
        shutil.copytree(local_dir, staging)
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
        return
    dest = _remote(uri)
    for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        part = dest.joinpath(*file.relative_to(local_dir).parts)
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(file.read_bytes())


def fetch_dir(uri: str) -> Path:
    """A local folder with the files under ``uri`` (the folder itself when local, else a download)."""
    if is_local(uri):
        path = local_path(uri)
        if not path.is_dir():
            raise EcomError(f"no model folder at {path}")
        return path
    src = _remote(uri)
    if not src.exists():
        raise EcomError(f"no model folder at {uri}")
    tmp = Path(tempfile.mkdtemp(prefix="ecom-model-"))
    for obj in src.rglob("*"):
        if obj.is_file():
            rel = Path(*obj.relative_to(src).parts)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(obj.read_bytes())
    return tmp


def write_text(uri: str, text: str) -> None:
    """Write a small document atomically (temporary name + rename) locally, as one object remotely."""
    if is_local(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
        tmp.write_text(text)
        tmp.replace(path)
        return
    target = _remote(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def utc_moment(text: Any) -> Any:
    """An ISO 8601 timestamp as an aware datetime (UTC when it names no zone); None if it is not one."""
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(str(text))
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def model_meta(model_dir: str | Path) -> dict[str, Any]:
    """A model folder's ``model.json`` (every model kind writes one); empty when it has none."""
    import json

    try:
        meta = json.loads((fetch_dir(str(model_dir)) / "model.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def training_cutoff(model_dir: str | Path) -> Any:
    """The training cutoff a model folder records (``model.json`` ``cutoff``: it was trained on data
    strictly before it), as an aware datetime; None when the folder does not say.

    Every model kind writes ``model.json`` with ``cutoff``, so evaluation can tell whether a model
    has seen the days it would be scored on without knowing the kind.
    """
    return utc_moment(model_meta(model_dir).get("cutoff"))


def training_day(model_dir: str | Path) -> Any:
    """The features day a model folder records (``model.json`` ``features.day``), or None."""
    from datetime import date

    features = model_meta(model_dir).get("features")
    try:
        return date.fromisoformat(str(features["day"]))
    except (TypeError, ValueError, KeyError):
        return None


#: The file MLflow writes at the root of a packaged model (``ecom_ml.serving.package``).
MLMODEL_FILE = "MLmodel"


def unpack_model_dir(folder: Path | str) -> tuple[Path, bool]:
    """The model kind's own folder inside a registered version's files, and whether they are an
    MLflow pyfunc model.

    A version registered since ecom-ml packages models for MLflow holds ``MLmodel`` at its root and
    the kind's folder as the pyfunc artifact (``artifacts/model/``, the path MLmodel records); an
    older version holds the kind's folder itself. Everything that reads a champion's files (the
    evaluation, the drift check, publishing) goes through this, so both layouts work.
    """
    import yaml

    folder = Path(folder)
    mlmodel = folder / MLMODEL_FILE
    if not mlmodel.is_file():
        return folder, False
    try:
        doc = yaml.safe_load(mlmodel.read_text()) or {}
        relative = doc["flavors"]["python_function"]["artifacts"]["model"]["path"]
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return folder, False
    return folder / relative, True


def dir_size(path: Path) -> int:
    """Total bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
