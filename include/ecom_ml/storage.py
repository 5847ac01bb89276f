"""Paths on local disk and on object storage, the same API for both and without Airflow.

The lake, the model artifacts and the trainer all go through :func:`path`. It returns a
``universal_pathlib`` ``UPath`` (the pathlib-over-fsspec library that Airflow's own
``ObjectStoragePath`` is built on), so ``file:///srv/lake`` and ``s3://bucket/lake`` are the same
code. It deliberately does not use ``airflow.sdk.ObjectStoragePath``: importing Airflow configures
its metadata-database engine, and the trainer (a subprocess of a task, or a pod) must run with no
Airflow configuration at all (Airflow 3's task supervisor hands its tasks
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=airflow-db-not-allowed:///``, which Airflow's import then
refuses to parse).

Credentials for object storage come from the storage library's own standard chain (for ``s3://``:
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL`` for an
S3-compatible server, an instance or pod role), identical on an Airflow worker and in the trainer
pod, where the Secret ``ecom-ml-trainer`` provides them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ecom_ml.errors import EcomError

if TYPE_CHECKING:
    from upath import UPath

#: Schemes whose directory listings other processes change under us: never serve them from cache.
_LISTING_CACHE_OFF = ("s3", "s3a", "gs", "gcs", "abfs", "az")


class StorageError(EcomError):
    """A storage location is unusable (unknown scheme, missing driver); the message names it."""


def scheme(uri: str) -> str:
    """``file`` for paths and ``file://`` URIs, else the URI's scheme (``s3``, ``gs``, ...)."""
    found = urlsplit(uri).scheme if "://" in uri else ""
    return found or "file"


def path(uri: str) -> UPath:
    """A pathlib-style object for ``uri`` (a ``file://``/``s3://``/... URI or a local path)."""
    from upath import UPath

    kind = scheme(uri)
    options: dict[str, object] = {"use_listings_cache": False} if kind in _LISTING_CACHE_OFF else {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if kind in ("s3", "s3a") and endpoint:
        # Named explicitly (s3fs would read it from the environment too) so that it is part of
        # fsspec's filesystem-instance cache key: a process that talks to two S3 endpoints in turn
        # must not reuse a client of the first.
        options["client_kwargs"] = {"endpoint_url": endpoint}
    try:
        return UPath(uri, **options)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"{uri}: cannot open {kind}:// storage here ({exc})") from None
