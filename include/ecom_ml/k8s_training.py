"""Training as one Airflow task: a GPU pod on Kubernetes, or the same command as a local subprocess.

One training code path: both modes run ``python -m ecom_ml.train --model M --features F --out O
[extra args]``, built by :func:`trainer_command` alone; only *where* it runs differs.

* ``kubernetes``: a deferrable ``KubernetesPodOperator`` on the trainer image, on a GPU node
  (``nvidia.com/gpu`` limit, node selector, toleration), non-root with the restricted security
  profile, credentials from a Secret, base pod from ``include/k8s/trainer-pod-template.yaml``. The
  trainer gets ``--xcom /airflow/xcom/return.json`` and writes its result JSON there too, which the
  operator's sidecar hands to XCom.
* ``local`` (default): :class:`LocalTrainingOperator` runs the same command (without ``--xcom …``)
  with this interpreter, streams its output to the task log, and pushes ``<out>/return.json`` as XCom.

Both modes give the trainer the same, explicit environment (``ecom_ml.training.environment``), never
the task supervisor's: the pod gets the settings as ``env`` and credentials from its Secret.

Trainer contract (``ecom_ml.train``): write ``<out>/model/`` and, last, ``<out>/return.json`` (a
small JSON object: URIs and metrics, no arrays); with ``--xcom PATH`` also write a copy to PATH. Exit
non-zero on failure (2 with one ``ecom-ml train: error: …`` line for user-fixable ones). Both modes
push that document as the task's XCom ``return_value``.

Configuration (:class:`TrainingConfig`) is read from the **environment only, at DAG parse time**.
Each setting ``ecom_x`` is taken from ``ECOM_X``, else from ``AIRFLOW_VAR_ECOM_X`` (the form of an
Airflow Variable that Airflow itself resolves from the environment, without the metadata DB), else
its default. A Variable stored in the metadata DB is deliberately *not* read: the mode decides which
operator class the DAG contains, i.e. the DAG's structure, and Airflow 3 discourages (and the
project forbids) database access while parsing. Set these on the dag-processor and workers.

========================================  =========================  ==================================
setting (env / AIRFLOW_VAR_ form)         default                    meaning
========================================  =========================  ==================================
ECOM_TRAINING_MODE                        local                      ``local`` or ``kubernetes``
ECOM_TRAINER_IMAGE                        ecom-ml-trainer:latest     trainer image
ECOM_K8S_NAMESPACE                        ecom-ml                    namespace of the pods
ECOM_K8S_CONN_ID                          kubernetes_default         Airflow connection to the cluster
ECOM_K8S_SERVICE_ACCOUNT                  ecom-ml-trainer            pod service account
ECOM_K8S_NODE_SELECTOR                    ecom-ml/pool=gpu           ``k=v,k2=v2``; empty: none
ECOM_K8S_TRAINER_SECRET                   ecom-ml-trainer            Secret whose keys become env; empty: none
ECOM_K8S_POD_TEMPLATE                     include/k8s/…yaml          base pod spec
ECOM_TRAINER_GPUS                         1                          ``nvidia.com/gpu`` limit; 0 = CPU pod
ECOM_TRAINER_CPU / ECOM_TRAINER_CPU_LIMIT 4 / 8                      CPU request / limit
ECOM_TRAINER_MEMORY                       16Gi                       memory request = limit
ECOM_K8S_STARTUP_TIMEOUT_SECONDS          900                        pod pending (scale-up + pull) limit
ECOM_TRAINING_TIMEOUT_MINUTES             240                        task execution_timeout (both modes)
========================================  =========================  ==================================
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from ecom_ml.errors import EcomError
from ecom_ml.settings import ConfigError

if TYPE_CHECKING:
    from kubernetes.client import models as k8s

TRAINER_MODULE = "ecom_ml.train"
MODES = ("local", "kubernetes")
#: Where the KPO's xcom sidecar reads the task result from (the trainer writes it with --xcom).
POD_XCOM_PATH = "/airflow/xcom/return.json"
TEMPLATE_NAME = "trainer-pod-template.yaml"
TRAINER_UID = 50000  # the trainer image's user (docker/trainer.Dockerfile), also Airflow's convention
TRAINER_GID = 50000  # and its own group: nothing in the pod runs with the root group
XCOM_VOLUME = "xcom"
#: The xcom sidecar only sleeps and then ``cat``s one small JSON file.
SIDECAR_RESOURCES = {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}}
#: ``return.json`` is a few kB (URIs and metrics); the cap keeps a runaway writer off the node's disk.
XCOM_VOLUME_LIMIT = "16Mi"

_MODEL = re.compile(r"^[a-z][a-z0-9_-]{0,40}$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


class TrainingError(EcomError):
    """The trainer failed or produced no usable result; the message says which model and why."""


# --------------------------------------------------------------------------------------------------
# The one command line.
# --------------------------------------------------------------------------------------------------


def trainer_command(
    model: str, features_uri: str, out_uri: str, extra_args: Sequence[str] = (), *, xcom: bool
) -> list[str]:
    """``python -m ecom_ml.train --model … --features … --out … [extra…] [--xcom /airflow/xcom/return.json]``.

    The single source of the training command for both modes: the pod runs it as is (``python`` of
    the trainer image); the local mode swaps ``python`` for this interpreter and builds it with
    ``xcom=False`` (it reads ``<out>/return.json`` itself).
    Values may hold Airflow templates (``{{ ds }}``): both operators render them the same way.
    """
    if not isinstance(model, str) or not _MODEL.match(model):
        raise ConfigError(f"training: {model!r} is not a model name (lowercase letters, digits, '_', '-')")
    for name, value in (("features_uri", features_uri), ("out_uri", out_uri)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"training {model}: {name} must be a non-empty URI or path")
    extra = [str(arg) for arg in extra_args]
    if any(arg == "--xcom" or arg.startswith("--xcom=") for arg in extra):
        raise ConfigError(f"training {model}: --xcom is added by the operator, not by extra_args")
    argv = ["python", "-m", TRAINER_MODULE, "--model", model, "--features", features_uri, "--out", out_uri, *extra]
    if xcom:
        argv += ["--xcom", POD_XCOM_PATH]
    return argv


def local_command(argv: Sequence[str]) -> list[str]:
    """The pod's command as a local one: this interpreter instead of the image's ``python``."""
    return [sys.executable, *argv[1:]]


# --------------------------------------------------------------------------------------------------
# Configuration.
# --------------------------------------------------------------------------------------------------


def _default_template() -> Path | None:
    """``include/k8s/trainer-pod-template.yaml``: beside the package in a checkout or the Airflow
    image's ``$AIRFLOW_HOME/include`` (the package itself is pip-installed into site-packages there)."""
    candidates = [Path(__file__).resolve().parents[1] / "k8s" / TEMPLATE_NAME]
    airflow_home = os.environ.get("AIRFLOW_HOME")
    if airflow_home:
        candidates.append(Path(airflow_home) / "include" / "k8s" / TEMPLATE_NAME)
    candidates.append(Path("/opt/airflow/include/k8s") / TEMPLATE_NAME)
    return next((path for path in candidates if path.is_file()), None)


@dataclass(frozen=True)
class TrainingConfig:
    """Where and how training runs (see the module docstring for each setting's env name)."""

    mode: str = "local"
    image: str = "ecom-ml-trainer:latest"
    namespace: str = "ecom-ml"
    kubernetes_conn_id: str = "kubernetes_default"
    service_account: str = "ecom-ml-trainer"
    node_selector: Mapping[str, str] = field(default_factory=lambda: {"ecom-ml/pool": "gpu"})
    secret_name: str | None = "ecom-ml-trainer"
    #: None: ``include/k8s/trainer-pod-template.yaml`` where this checkout or image has it.
    pod_template_file: Path | None = None
    gpus: int = 1
    cpu_request: str = "4"
    cpu_limit: str = "8"
    memory: str = "16Gi"
    startup_timeout_seconds: int = 900
    execution_timeout: timedelta = timedelta(minutes=240)

    @classmethod
    def from_env_and_variables(cls, environ: Mapping[str, str] | None = None) -> TrainingConfig:
        """Read ``ECOM_*`` then ``AIRFLOW_VAR_ECOM_*`` from the environment; no database access.

        Bad values raise :class:`~ecom_ml.settings.ConfigError` naming the variable and the value.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> tuple[str, str] | None:
            for key in (name, f"AIRFLOW_VAR_{name}"):
                if key in env:
                    return key, env[key].strip()
            return None

        def text(name: str, default: str) -> str:
            found = get(name)
            return found[1] if found and found[1] else default

        def optional_text(name: str, default: str | None) -> str | None:
            found = get(name)
            return default if found is None else (found[1] or None)

        def integer(name: str, default: int, minimum: int) -> int:
            found = get(name)
            if found is None or found[1] == "":
                return default
            key, raw = found
            if not re.fullmatch(r"\d+", raw) or int(raw) < minimum:
                raise ConfigError(f"{key}={raw!r} is not an integer >= {minimum}")
            return int(raw)

        def quantity(name: str, default: str) -> str:
            found = get(name)
            if found is None or found[1] == "":
                return default
            key, raw = found
            if not _QUANTITY.match(raw):
                raise ConfigError(f"{key}={raw!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
            return raw

        found = get("ECOM_TRAINING_MODE")
        mode = (found[1].lower() if found and found[1] else "local")
        if mode not in MODES:
            raise ConfigError(f"{found[0]}={found[1]!r} is not a training mode (local or kubernetes)")  # type: ignore[index]

        selector: dict[str, str] = {"ecom-ml/pool": "gpu"}
        found = get("ECOM_K8S_NODE_SELECTOR")
        if found is not None:
            selector = {}
            for pair in filter(None, (p.strip() for p in found[1].split(","))):
                key, sep, value = pair.partition("=")
                if not sep or not _LABEL_KEY.match(key.strip()):
                    raise ConfigError(f"{found[0]}={found[1]!r}: {pair!r} is not a label key=value pair")
                selector[key.strip()] = value.strip()

        template: Path | None
        found = get("ECOM_K8S_POD_TEMPLATE")
        if found is not None and found[1]:
            template = Path(found[1])
            if mode == "kubernetes" and not template.is_file():
                raise ConfigError(f"{found[0]}={found[1]!r}: no such pod template file")
        else:
            template = _default_template()

        return cls(
            mode=mode,
            image=text("ECOM_TRAINER_IMAGE", cls.image),
            namespace=text("ECOM_K8S_NAMESPACE", cls.namespace),
            kubernetes_conn_id=text("ECOM_K8S_CONN_ID", cls.kubernetes_conn_id),
            service_account=text("ECOM_K8S_SERVICE_ACCOUNT", cls.service_account),
            node_selector=selector,
            secret_name=optional_text("ECOM_K8S_TRAINER_SECRET", "ecom-ml-trainer"),
            pod_template_file=template,
            gpus=integer("ECOM_TRAINER_GPUS", cls.gpus, 0),
            cpu_request=quantity("ECOM_TRAINER_CPU", cls.cpu_request),
            cpu_limit=quantity("ECOM_TRAINER_CPU_LIMIT", cls.cpu_limit),
            memory=quantity("ECOM_TRAINER_MEMORY", cls.memory),
            startup_timeout_seconds=integer("ECOM_K8S_STARTUP_TIMEOUT_SECONDS", cls.startup_timeout_seconds, 1),
            execution_timeout=timedelta(minutes=integer("ECOM_TRAINING_TIMEOUT_MINUTES", 240, 1)),
        )


# --------------------------------------------------------------------------------------------------
# Kubernetes: the pod spec, built here and only here.
# --------------------------------------------------------------------------------------------------


def _restricted_container_context() -> k8s.V1SecurityContext:
    """Pod Security Standard "restricted" for a container: no escalation, no capabilities, no root."""
    from kubernetes.client import models as k8s

    return k8s.V1SecurityContext(
        allow_privilege_escalation=False,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        run_as_non_root=True,
        read_only_root_filesystem=True,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def kubernetes_operator(
    task_id: str,
    argv: list[str],
    *,
    model: str,
    config: TrainingConfig,
    **operator_kwargs: Any,
) -> BaseOperator:
    """The deferrable ``KubernetesPodOperator`` that runs ``argv`` (from :func:`trainer_command`)."""
    from kubernetes.client import models as k8s

    template = config.pod_template_file or _default_template()
    if template is None or not Path(template).is_file():
        # The provider only logs a warning for a missing template and builds the pod without it.
        raise ConfigError(
            f"training {model}: the pod template {TEMPLATE_NAME} was not found "
            f"({template or 'include/k8s/ and $AIRFLOW_HOME/include/k8s/ searched'}); set ECOM_K8S_POD_TEMPLATE"
        )
    limits = {"cpu": config.cpu_limit, "memory": config.memory}
    tolerations = []
    if config.gpus > 0:
        # Extended resources are set as limits only (the request defaults to the limit).
        limits["nvidia.com/gpu"] = str(config.gpus)
        # GPU node pools are tainted nvidia.com/gpu:NoSchedule (GKE and AKS do it automatically) so
        # that only pods that need a GPU land there.
        tolerations.append(k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"))
    env_from = []
    if config.secret_name:
        env_from.append(k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=config.secret_name)))
    startup = config.startup_timeout_seconds
    kwargs: dict[str, Any] = {
        "execution_timeout": config.execution_timeout,
        **operator_kwargs,
    }
    from ecom_ml.trainer_pod import TrainerPodOperator

    return TrainerPodOperator(
        task_id=task_id,
        name=f"train-{model}".replace("_", "-"),
        kubernetes_conn_id=config.kubernetes_conn_id,
        namespace=config.namespace,
        image=config.image,
        cmds=argv[:3],
        arguments=argv[3:],
        pod_template_file=str(template),
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": config.cpu_request, "memory": config.memory},
            limits=limits,
        ),
        node_selector=dict(config.node_selector) or None,
        tolerations=tolerations or None,
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=TRAINER_UID,
            run_as_group=TRAINER_GID,
            fs_group=TRAINER_GID,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        container_security_context=_restricted_container_context(),
        # The xcom sidecar must satisfy the same policy, or the "restricted" namespace rejects the pod.
        xcom_sidecar_container_security_context=_restricted_container_context(),
        env_from=env_from or None,
        env_vars=[k8s.V1EnvVar(name="ECOM_TRAINING_MODE", value="kubernetes")],
        labels={"app.kubernetes.io/name": "ecom-ml-trainer", "app.kubernetes.io/part-of": "ecom-ml",
                "ecom-ml/model": model},
        service_account_name=config.service_account,
        startup_timeout_seconds=startup,
        # Kubernetes itself kills a pod that outlives the task's budget, even if Airflow is gone.
        active_deadline_seconds=int(kwargs["execution_timeout"].total_seconds()) + startup
        if kwargs.get("execution_timeout") else None,
        deferrable=True,
        do_xcom_push=True,
        get_logs=True,
        log_events_on_failure=True,
        on_finish_action="delete_pod",
        **kwargs,
    )


# --------------------------------------------------------------------------------------------------
# Local: the same command as a subprocess.
# --------------------------------------------------------------------------------------------------


def _join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


def read_return_json(out_uri: str) -> dict[str, Any]:
    """``<out>/return.json`` as a dict: a local path, ``file://`` URI, or any fsspec URI."""
    target = _join(out_uri, "return.json")
    scheme = urllib.parse.urlsplit(target).scheme if "://" in target else ""
    try:
        if scheme in ("", "file"):
            path = Path(urllib.parse.unquote(urllib.parse.urlsplit(target).path)) if scheme else Path(target)
            text = path.read_text("utf-8")
        else:
            import fsspec

            with fsspec.open(target, "r", encoding="utf-8") as handle:
                text = handle.read()
    except FileNotFoundError:
        raise TrainingError(f"the trainer exited 0 but wrote no {target}") from None
    except OSError as exc:
        raise TrainingError(f"cannot read {target}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{target} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise TrainingError(f"{target} must hold a JSON object, got {type(data).__name__}")
    return data


def run_training_subprocess(
    argv: Sequence[str],
    out_uri: str,
    *,
    log: Any = None,
    env: Mapping[str, str] | None = None,
    on_start: Any = None,
) -> dict[str, Any]:
    """Run ``argv``, stream its output to ``log``, and return the parsed ``<out>/return.json``.

    The child gets its own process group, which is killed if this call is interrupted (task timeout,
    ``on_kill``), so a stopped task never leaves a trainer running. A non-zero exit raises
    :class:`TrainingError` with the exit status and the last lines of output.
    """
    import logging

    logger = log or logging.getLogger(__name__)
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        env=child_env,
        start_new_session=True,
    )
    if on_start is not None:
        on_start(proc)
    tail: collections.deque[str] = collections.deque(maxlen=20)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            logger.info("%s", line)
        code = proc.wait()
    except BaseException:
        _kill_group(proc)
        raise
    if code != 0:
        last = next((line.strip() for line in reversed(tail) if line.strip()), "no output")
        raise TrainingError(f"the trainer exited with status {code}: {last} (command: {' '.join(argv[:6])} …)")
    return read_return_json(out_uri)


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class LocalTrainingOperator(BaseOperator):
    """Run the trainer's command line locally; XCom ``return_value`` = ``<out>/return.json``.

    ``cmds``/``arguments`` come from :func:`trainer_command` exactly as the pod's do (and are
    templated the same way); ``python`` is replaced by this interpreter at execute time.
    """

    template_fields: Sequence[str] = ("arguments", "out_uri")
    ui_color = "#e8f4fd"

    def __init__(self, *, cmds: list[str], arguments: list[str], out_uri: str, model: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cmds = list(cmds)
        self.arguments = list(arguments)
        self.out_uri = out_uri
        self.model = model
        self._proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return local_command([*self.cmds, *self.arguments])

    def execute(self, context: Any) -> dict[str, Any]:
        argv = self.command()
        self.log.info("training %s locally: %s", self.model, " ".join(argv))

        def remember(proc: subprocess.Popen) -> None:
            self._proc = proc

        from ecom_ml.training.environment import local_environment

        try:
            return run_training_subprocess(argv, self.out_uri, log=self.log, env=local_environment(),
                                           on_start=remember)
        finally:
            self._proc = None

    def on_kill(self) -> None:
        if self._proc is not None:
            _kill_group(self._proc)


# --------------------------------------------------------------------------------------------------
# The factory the DAGs call.
# --------------------------------------------------------------------------------------------------


def training_operator(
    task_id: str,
    *,
    model: str,
    features_uri: str,
    out_uri: str,
    extra_args: Sequence[str] = (),
    config: TrainingConfig | None = None,
    **operator_kwargs: Any,
) -> BaseOperator:
    """The training task for ``model`` in the configured mode (see the module docstring).

    Cheap at parse time in local mode (the Kubernetes provider is imported only in kubernetes
    mode). ``operator_kwargs`` (retries, pool, queue, …) go to the operator; ``execution_timeout``
    defaults to the config's training timeout in both modes.
    """
    cfg = config or TrainingConfig.from_env_and_variables()
    if cfg.mode == "kubernetes":
        argv = trainer_command(model, features_uri, out_uri, extra_args, xcom=True)
        return kubernetes_operator(task_id, argv, model=model, config=cfg, **operator_kwargs)
    argv = trainer_command(model, features_uri, out_uri, extra_args, xcom=False)
    operator_kwargs.setdefault("execution_timeout", cfg.execution_timeout)
    return LocalTrainingOperator(
        task_id=task_id, cmds=argv[:3], arguments=argv[3:], out_uri=out_uri, model=model, **operator_kwargs
    )
