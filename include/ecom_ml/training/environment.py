"""The environment the trainer runs with: chosen variable by variable, never inherited whole.

A local trainer is a subprocess of an Airflow task, and Airflow 3's task supervisor gives task
processes an environment meant for *them*: ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` set to
``airflow-db-not-allowed:///`` (task code may not reach the metadata DB), the execution-API token,
the worker's connection URIs (``AIRFLOW_CONN_*``, with passwords) and so on. Handing all of that to
the trainer broke training under the real scheduler, and would hand it secrets it has no use for.
So the trainer gets an explicit, minimal environment, the same names in both modes:

* **settings** (:data:`SETTINGS`, :data:`SETTING_PREFIXES`): lake root, MLflow URI, model cache,
  the Keras backend and its libraries' knobs. The pod gets these as plain ``env`` entries, the
  local subprocess from the worker's environment.
* **credentials** (:data:`CREDENTIAL_PREFIXES`): object-storage credentials (``AWS_*`` for s3fs and
  boto, ``GOOGLE_*``, ``AZURE_*``). The local subprocess takes them from the worker; the pod takes
  them from the ``ecom-ml-trainer`` Secret (``envFrom``), never from the worker: a pod spec is
  readable by anyone who can list pods.
* **process basics** (:data:`PROCESS`): ``PATH``, ``HOME``, locale, ``TMPDIR``, ``PYTHONPATH``, the
  virtualenv — only for the local subprocess; the pod's image defines its own.
* ``ECOM_TRAINER_ENV``: a comma-separated list of further variable names to pass, for a site's
  own needs (a proxy, a CA bundle); an explicit, reviewable choice rather than everything.

Nothing whose name starts with ``AIRFLOW`` is ever passed, even when listed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from ecom_ml.settings import ConfigError

#: Settings the trainer reads (or its libraries do), by exact name.
SETTINGS = (
    "ECOM_LAKE_ROOT",
    "ECOM_MODEL_CACHE",
    "MLFLOW_TRACKING_URI",
    "KERAS_BACKEND",
    "KERAS_HOME",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
)
#: Settings by prefix: TensorFlow, JAX/XLA, NVIDIA runtime knobs.
SETTING_PREFIXES = ("TF_", "JAX_", "XLA_", "NVIDIA_")
#: Credentials of the lake's object storage (s3fs/boto, gcsfs, adlfs), by prefix.
CREDENTIAL_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_")
#: What any local process needs to start and find its interpreter and packages.
PROCESS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH",
           "VIRTUAL_ENV", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
EXTRA_VARIABLE = "ECOM_TRAINER_ENV"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USERINFO = re.compile(r"://[^/@\s]*:[^/@\s]*@")


def _extra_names(source: Mapping[str, str]) -> list[str]:
    raw = source.get(EXTRA_VARIABLE, "")
    names = [name.strip() for name in raw.split(",") if name.strip()]
    bad = [name for name in names if not _NAME.match(name)]
    if bad:
        raise ConfigError(f"{EXTRA_VARIABLE}={raw!r}: {bad[0]!r} is not an environment variable name")
    return names


def _wanted(name: str, exact: tuple[str, ...], prefixes: tuple[str, ...]) -> bool:
    return name in exact or name.startswith(prefixes)


def _pick(source: Mapping[str, str], exact: tuple[str, ...], prefixes: tuple[str, ...]) -> dict[str, str]:
    return {key: value for key, value in source.items()
            if _wanted(key, exact, prefixes) and not key.upper().startswith("AIRFLOW")}


def local_environment(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a local trainer subprocess, picked from ``source`` (the task's)."""
    env = os.environ if source is None else source
    extra = tuple(_extra_names(env))
    picked = _pick(env, PROCESS + SETTINGS + extra, SETTING_PREFIXES + CREDENTIAL_PREFIXES)
    picked["PYTHONUNBUFFERED"] = "1"
    return picked


def pod_settings(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The plain (non-secret) ``env`` entries of a trainer pod: settings only, no credentials.

    Credentials reach the pod through the trainer Secret (``envFrom``); the process basics come
    from the image.
    """
    env = os.environ if source is None else source
    extra = tuple(name for name in _extra_names(env) if not name.startswith(CREDENTIAL_PREFIXES))
    # A URI with a password in it (http://user:secret@host) is a credential too.
    return {key: value for key, value in _pick(env, SETTINGS + extra, SETTING_PREFIXES).items()
            if not _USERINFO.search(value)}
