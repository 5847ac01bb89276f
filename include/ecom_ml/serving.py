"""Every registered version as an MLflow pyfunc model: the project's own model code behind a
``PythonModel``, the model kind's folder as its one artifact.

So the tools a data team knows work on any champion, through ``ecom-ml serve``
(``ecom_ml.serve_champion``), which verifies the champion and names its *version*: the alias itself
can be moved by anyone who can write to MLflow, so it is never loaded or served directly::

    mlflow.pyfunc.load_model(uri).predict(df)   # uri: `ecom-ml serve --model recommender --print-uri`
    ecom-ml serve --model recommender --port 5001   # mlflow models serve -m models:/recommender/<v>; POST /invocations

How, and why this way:

* **No pickled Keras internals.** What is pickled is a :class:`KindModel` holding only the kind's
  name; its ``load_context`` calls the kind's own loader (``ecom_ml.models.REGISTRY[kind].loader``)
  on the artifact folder, exactly as evaluation and publishing load it. The Keras file stays a
  ``.keras`` file; a new Keras, or JAX instead of TensorFlow, loads it as before.
* **One answer for batch and online.** ``predict`` is the kind's steps' ``serve(model, frame,
  params)``, the same function the kind's batch ``predictions`` call, so ``/invocations`` answers
  what ``ml.<table>`` holds for the same inputs.
* **Signature and input example per kind** (the steps' ``serving_signature()`` and
  ``input_example(lake, day)``): declared, not inferred, so packaging never loads the model (the
  gate task stays cheap) and MLflow checks requests against the declared columns.
* **Requirements.** ``pip_requirements`` lists the installed versions of what the code needs
  (``mlflow``, ``keras``, ``numpy``, ``pandas``, ``pyarrow``): inferring them would load the model
  in a subprocess. The ``ecom_ml`` package itself must be importable where the model is loaded —
  it is, in the project's environment (``--env-manager local``) and in its images.

Packaging runs in the gate task (``ecom_ml.training.steps.gate_and_register``) on the trainer's
``<out>/model/``; the package is what the registry logs as the version's ``model/`` folder.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from ecom_ml.errors import EcomError

log = logging.getLogger(__name__)

#: The name of the pyfunc artifact that is the model kind's folder.
ARTIFACT = "model"
REQUIREMENTS = ("mlflow", "keras", "numpy", "pandas", "pyarrow")
#: What a kind's steps define to be served (``ecom_ml.training.steps.ModelSteps``).
SERVING_HOOKS = ("serving_signature", "input_example", "serve")


class KindModel(mlflow.pyfunc.PythonModel):
    """A model kind's own code as an MLflow pyfunc model (see the module doc)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._model: Any = None
        self._steps: Any = None

    def load_context(self, context: Any) -> None:
        from ecom_ml import models

        kind = models.get(self.kind)
        self._model = kind.load(context.artifacts[ARTIFACT])
        self._steps = kind.load_steps()

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        return self._steps.serve(self._model, model_input, dict(params or {}))

    def __getstate__(self) -> dict[str, Any]:
        return {"kind": self.kind}  # never the loaded model: the artifact folder is the model

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["kind"])


def _requirements() -> list[str]:
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def example_for(kind_name: str, lake_root: str | None, day: date | None) -> Any:
    """The kind's input example: a few real rows of ``day``'s features when the lake has them."""
    from ecom_ml.lake import Lake
    from ecom_ml.training.steps import steps_for

    steps = steps_for(kind_name)
    lake = None
    if lake_root:
        try:
            lake = Lake(lake_root)
        except EcomError as exc:
            log.warning("%s: no input example from the lake at %s (%s); using a minimal one", kind_name, lake_root, exc)
    return steps.input_example(lake, day)


def package(kind_name: str, model_dir: Path, dest: Path, *, lake_root: str | None = None,
            day: date | None = None) -> Path:
    """Write ``dest`` (must not exist): an MLflow pyfunc model whose artifact is ``model_dir``."""
    from ecom_ml.training.steps import steps_for

    steps = steps_for(kind_name)
    mlflow.pyfunc.save_model(
        path=str(dest),
        python_model=KindModel(kind_name),
        artifacts={ARTIFACT: str(model_dir)},
        signature=steps.serving_signature(),
        input_example=example_for(kind_name, lake_root, day),
        pip_requirements=_requirements(),
    )
    return dest


@contextmanager
def packaged(kind_name: str, model_uri: str, *, lake_root: str | None = None, day: date | None = None
             ) -> Iterator[Path]:
    """A temporary pyfunc package of the model folder at ``model_uri`` (a path or any URI)."""
    from ecom_ml.models import fetch_dir
    from ecom_ml.training.steps import steps_for

    local = fetch_dir(model_uri)
    if not all(hasattr(steps_for(kind_name), hook) for hook in SERVING_HOOKS):
        # A kind being added may not serve yet: it registers its plain folder (as versions did before
        # packaging) and publishing refuses it by name until its steps define the hooks.
        log.warning("%s: the model kind's steps define no %s: registering the model folder without an "
                    "MLflow pyfunc flavour", kind_name, "/".join(SERVING_HOOKS))
        yield local
        return
    tmp = Path(tempfile.mkdtemp(prefix="ecom-pyfunc-"))
    try:
        yield package(kind_name, local, tmp / "package", lake_root=lake_root, day=day)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
