"""Training task: the GPU pod spec built in one place, and the local mode running the same command.

No Kubernetes cluster can run here, so the kubernetes-mode tests stop at the pod the operator would
submit: ``KubernetesPodOperator.build_pod_request_obj(context)`` with a real (unsaved) TaskInstance
and a kubeconfig that points nowhere, exactly the object the operator sends to the API server. What
they cannot show is the cluster's side (scheduling on the GPU pool, the device plugin, the Secret
existing, the xcom sidecar round trip); include/k8s/README.md has the manual smoke test for that.

The local mode is checked on real subprocesses: its command line is the pod's minus ``--xcom``
(same builder), the real trainer's argument parser accepts it, and the runner turns a child's
``<out>/return.json`` into the XCom, fails in one line on a non-zero exit, and kills the child on kill.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pendulum
import pytest
from airflow.sdk import DAG

from ecom_ml import k8s_training
from ecom_ml.k8s_training import (
    LocalTrainingOperator,
    TrainingConfig,
    TrainingError,
    run_training_subprocess,
    trainer_command,
    training_operator,
)
from ecom_ml.settings import ConfigError

FEATURES = "s3://ecom-lake/features/recommender/dt={{ ds }}"
OUT = "s3://ecom-lake/runs/recommender/{{ ds }}"
EXTRA = ["--epochs", "3", "--seed", "7"]
KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "current-context": "test",
    "clusters": [{"name": "test", "cluster": {"server": "https://kubernetes.invalid:6443"}}],
    "users": [{"name": "test", "user": {"token": "not-a-real-token"}}],
    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
}


@pytest.fixture
def kube_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `kubernetes_default` connection from the environment (no metadata DB), to a fake cluster."""
    conn = {"conn_type": "kubernetes", "extra": {"kube_config": json.dumps(KUBECONFIG)}}
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(conn))


def _k8s_config(**overrides: str) -> TrainingConfig:
    return TrainingConfig.from_env_and_variables({"ECOM_TRAINING_MODE": "kubernetes", **overrides})


def _dag_with(*factories) -> tuple[DAG, list]:
    with DAG("recommender_training", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")) as dag:
        ops = [factory() for factory in factories]
    return dag, ops


def _context(dag: DAG, op) -> dict:
    """A minimal real context, as the provider's own tests build one: an unsaved TaskInstance."""
    from airflow.models.taskinstance import TaskInstance

    run_id = "scheduled__2024-01-15T00:00:00+00:00"
    ti = TaskInstance(task=op, dag_version_id=None, run_id=run_id)
    return {"dag": dag, "task": op, "ti": ti, "task_instance": ti, "run_id": run_id, "ds": "2024-01-15"}


def test_kubernetes_pod_spec(kube_connection):
    cfg = _k8s_config(ECOM_TRAINER_IMAGE="registry.example.com/ecom-ml-trainer:1.4.0",
                      ECOM_K8S_NAMESPACE="ml-training", ECOM_TRAINING_TIMEOUT_MINUTES="120")
    dag, (op,) = _dag_with(lambda: training_operator(
        "train", model="recommender", features_uri=FEATURES, out_uri=OUT, extra_args=EXTRA, config=cfg))
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    assert isinstance(op, KubernetesPodOperator)
    assert op.deferrable is True and op.do_xcom_push is True and op.get_logs is True
    assert op.on_finish_action.value == "delete_pod"
    assert op.execution_timeout == timedelta(minutes=120) and op.startup_timeout_seconds == 900

    context = _context(dag, op)
    op.render_template_fields(context)
    pod = op.build_pod_request_obj(context)

    assert pod.metadata.namespace == "ml-training"
    assert pod.metadata.name.startswith("train-recommender-")
    labels = pod.metadata.labels
    assert labels["dag_id"] == "recommender_training" and labels["task_id"] == "train"
    assert labels["ecom-ml/model"] == "recommender" and labels["app.kubernetes.io/component"] == "training"
    assert pod.metadata.annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"

    spec = pod.spec
    base = next(c for c in spec.containers if c.name == "base")
    assert base.image == "registry.example.com/ecom-ml-trainer:1.4.0"
    assert base.command == ["python", "-m", "ecom_ml.train"]
    assert base.args == ["--model", "recommender",
                         "--features", "s3://ecom-lake/features/recommender/dt=2024-01-15",
                         "--out", "s3://ecom-lake/runs/recommender/2024-01-15",
                         *EXTRA, "--xcom", "/airflow/xcom/return.json"]

    assert base.resources.limits["nvidia.com/gpu"] == "1"
    assert base.resources.limits["memory"] == base.resources.requests["memory"] == "16Gi"
    assert base.resources.requests["cpu"] == "4" and "nvidia.com/gpu" not in base.resources.requests
    assert spec.node_selector == {"ecom-ml/pool": "gpu"}
    assert [(t.key, t.operator, t.effect) for t in spec.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]

    pod_sc = spec.security_context
    assert pod_sc.run_as_non_root is True and pod_sc.run_as_user == 50000
    # No root group either: volumes mounted into the pod must not become group-owned by gid 0.
    assert pod_sc.run_as_group == 50000 and pod_sc.fs_group == 50000
    assert pod_sc.seccomp_profile.type == "RuntimeDefault"
    for container in spec.containers:  # the xcom sidecar too: a "restricted" namespace checks every one
        sc = container.security_context
        assert sc.allow_privilege_escalation is False, container.name
        assert sc.capabilities.drop == ["ALL"], container.name
        assert sc.read_only_root_filesystem is True, container.name

    assert [e.secret_ref.name for e in base.env_from] == ["ecom-ml-trainer"]
    assert spec.service_account_name == "ecom-ml-trainer"
    assert spec.automount_service_account_token is False  # from the pod template
    assert spec.restart_policy == "Never"
    assert spec.active_deadline_seconds == 120 * 60 + 900
    mounts = {m.mount_path for m in base.volume_mounts}
    assert {"/airflow/xcom", "/tmp", "/home/trainer", "/dev/shm"} <= mounts
    sidecar = next(c for c in spec.containers if c.name == "airflow-xcom-sidecar")
    assert sidecar.resources.limits == {"cpu": "100m", "memory": "64Mi"}, "the sidecar must be bounded"
    assert sidecar.resources.requests == {"cpu": "10m", "memory": "16Mi"}
    xcom = next(v for v in spec.volumes if v.name == "xcom")
    assert xcom.empty_dir.size_limit == "16Mi"


def test_pod_env_has_the_trainer_settings_and_no_airflow_or_credentials(kube_connection, monkeypatch):
    """The pod gets the same settings as the local subprocess; credentials only via the Secret."""
    monkeypatch.setenv("ECOM_LAKE_ROOT", "s3://ecom-lake/lake")
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://ml:s3cr3t-pw@mlflow:5000")  # has a password: not in env
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "worker-s3cr3t")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "airflow-db-not-allowed:///")
    dag, (op,) = _dag_with(lambda: training_operator("train", model="recommender", features_uri=FEATURES,
                                                     out_uri=OUT, config=_k8s_config()))
    pod = op.build_pod_request_obj(_context(dag, op))
    base = next(c for c in pod.spec.containers if c.name == "base")
    env = {e.name: e.value for e in base.env}
    assert env["ECOM_LAKE_ROOT"] == "s3://ecom-lake/lake" and env["KERAS_BACKEND"] == "jax"
    assert env["ECOM_TRAINING_MODE"] == "kubernetes" and env["HOME"] == "/home/trainer"
    assert not [name for name in env if name.startswith("AIRFLOW")]
    assert "MLFLOW_TRACKING_URI" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert "s3cr3t" not in repr(pod.to_dict())


def test_kubernetes_settings_from_variables_and_overrides(kube_connection):
    cfg = TrainingConfig.from_env_and_variables({
        "AIRFLOW_VAR_ECOM_TRAINING_MODE": "kubernetes",  # an Airflow Variable given as env: no DB
        "ECOM_K8S_NODE_SELECTOR": "cloud.google.com/gke-accelerator=nvidia-l4, ecom-ml/pool=gpu",
        "ECOM_K8S_TRAINER_SECRET": "trainer-s3",
        "AIRFLOW_VAR_ECOM_TRAINER_GPUS": "2",
        "ECOM_TRAINER_GPUS": "4",  # ECOM_* wins over the Variable form
    })
    assert cfg.mode == "kubernetes" and cfg.gpus == 4
    dag, (op,) = _dag_with(lambda: training_operator("train", model="recommender", features_uri="f", out_uri="o",
                                                     config=cfg))
    pod = op.build_pod_request_obj(_context(dag, op))
    base = pod.spec.containers[0]
    assert base.resources.limits["nvidia.com/gpu"] == "4"
    assert pod.spec.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4", "ecom-ml/pool": "gpu"}
    assert [e.secret_ref.name for e in base.env_from] == ["trainer-s3"]


def test_cpu_only_pod_has_no_gpu_limit_or_toleration(kube_connection):
    cfg = _k8s_config(ECOM_TRAINER_GPUS="0", ECOM_K8S_NODE_SELECTOR="", ECOM_K8S_TRAINER_SECRET="")
    dag, (op,) = _dag_with(lambda: training_operator("train", model="recommender", features_uri="f", out_uri="o",
                                                     config=cfg))
    pod = op.build_pod_request_obj(_context(dag, op))
    assert "nvidia.com/gpu" not in pod.spec.containers[0].resources.limits
    assert not pod.spec.tolerations and not pod.spec.node_selector
    assert not pod.spec.containers[0].env_from


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ECOM_TRAINING_MODE": "gpu"}, "ECOM_TRAINING_MODE='gpu' is not a training mode (local or kubernetes)"),
        ({"AIRFLOW_VAR_ECOM_TRAINER_GPUS": "one"}, "AIRFLOW_VAR_ECOM_TRAINER_GPUS='one' is not an integer >= 0"),
        ({"ECOM_TRAINER_MEMORY": "16 GB"}, "ECOM_TRAINER_MEMORY='16 GB' is not a Kubernetes quantity"),
        ({"ECOM_K8S_NODE_SELECTOR": "gpu"}, "ECOM_K8S_NODE_SELECTOR='gpu': 'gpu' is not a label key=value pair"),
        ({"ECOM_TRAINING_MODE": "kubernetes", "ECOM_K8S_POD_TEMPLATE": "/nope.yaml"},
         "ECOM_K8S_POD_TEMPLATE='/nope.yaml': no such pod template file"),
    ],
)
def test_bad_settings_are_one_line(env, message):
    with pytest.raises(ConfigError) as info:
        TrainingConfig.from_env_and_variables(env)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_local_command_is_the_pod_command_minus_xcom(kube_connection):
    k8s_cfg = _k8s_config()
    local_cfg = TrainingConfig.from_env_and_variables({})
    assert local_cfg.mode == "local", "local is the default"
    dag, (pod_op, local_op) = _dag_with(
        lambda: training_operator("train", model="recommender", features_uri=FEATURES, out_uri=OUT,
                                  extra_args=EXTRA, config=k8s_cfg),
        lambda: training_operator("train_local", model="recommender", features_uri=FEATURES, out_uri=OUT,
                                  extra_args=EXTRA, config=local_cfg),
    )
    assert isinstance(local_op, LocalTrainingOperator)
    assert local_op.execution_timeout == local_cfg.execution_timeout
    for op in (pod_op, local_op):
        op.render_template_fields(_context(dag, op))
    pod_argv = [*pod_op.cmds, *pod_op.arguments]
    assert pod_argv[-2:] == ["--xcom", "/airflow/xcom/return.json"]
    assert local_op.command() == [sys.executable, *pod_argv[1:-2]]
    assert local_op.out_uri == "s3://ecom-lake/runs/recommender/2024-01-15"
    assert trainer_command("recommender", "f", "o", EXTRA, xcom=False) == [
        "python", "-m", "ecom_ml.train", "--model", "recommender", "--features", "f", "--out", "o", *EXTRA]


def test_the_trainer_accepts_the_command_line():
    """The contract with ecom_ml.train: its own parser takes exactly what both modes pass."""
    from ecom_ml.train import build_parser

    args = build_parser().parse_args(trainer_command("recommender", "file:///lake", "file:///out", EXTRA, xcom=True)[3:])
    assert (args.model, args.features, args.out, args.xcom, args.epochs) == (
        "recommender", "file:///lake", "file:///out", "/airflow/xcom/return.json", 3)


def test_bad_arguments_fail_at_parse_time():
    with pytest.raises(ConfigError, match="--xcom is added by the operator"):
        trainer_command("recommender", "f", "o", ["--xcom", "/tmp/x"], xcom=False)
    with pytest.raises(ConfigError, match="is not a model name"):
        trainer_command("Recommender; rm -rf /", "f", "o", xcom=False)


WRITE_RETURN = (
    "import json, pathlib, sys\n"
    "out = pathlib.Path(sys.argv[1]); (out / 'model').mkdir(parents=True)\n"
    "print('epoch 1/1 loss 0.5', flush=True)\n"
    "(out / 'return.json').write_text(json.dumps({'model': 'recommender', 'model_uri': (out / 'model').as_uri(),"
    " 'metrics': {'final_loss': 0.5}}))\n"
)


def test_runner_pushes_return_json_of_a_real_subprocess(tmp_path: Path):
    out = tmp_path / "run"
    result = run_training_subprocess([sys.executable, "-c", WRITE_RETURN, str(out)], out.as_uri())
    assert result == {"model": "recommender", "model_uri": (out / "model").as_uri(), "metrics": {"final_loss": 0.5}}


def test_local_operator_execute_returns_the_xcom(tmp_path: Path):
    out = tmp_path / "run"
    op = LocalTrainingOperator(task_id="train", cmds=["python", "-c", WRITE_RETURN], arguments=[str(out)],
                               out_uri=str(out), model="recommender")
    assert op.execute({})["metrics"] == {"final_loss": 0.5}


def test_runner_failures_are_one_line(tmp_path: Path):
    failing = "import sys; print('loading features'); print('ecom-ml train: error: no features for 2024-01-15', file=sys.stderr); sys.exit(2)"
    with pytest.raises(TrainingError) as info:
        run_training_subprocess([sys.executable, "-c", failing], str(tmp_path))
    assert str(info.value).startswith("the trainer exited with status 2: ecom-ml train: error: no features for 2024-01-15")
    with pytest.raises(TrainingError, match=r"the trainer exited 0 but wrote no .*/return\.json$"):
        run_training_subprocess([sys.executable, "-c", "pass"], str(tmp_path))
    (tmp_path / "return.json").write_text("[1, 2]")
    with pytest.raises(TrainingError, match="must hold a JSON object, got list"):
        run_training_subprocess([sys.executable, "-c", "pass"], str(tmp_path))


def test_on_kill_stops_the_trainer(tmp_path: Path):
    op = LocalTrainingOperator(task_id="train", cmds=["python", "-c", "import time; time.sleep(60)"], arguments=[],
                               out_uri=str(tmp_path), model="recommender")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            op.execute({})
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    thread = threading.Thread(target=run)
    started = time.monotonic()
    thread.start()
    while op._proc is None and time.monotonic() - started < 10:
        time.sleep(0.05)
    op.on_kill()
    thread.join(timeout=20)
    assert not thread.is_alive() and time.monotonic() - started < 20
    assert errors and isinstance(errors[0], TrainingError) and "status -15" in str(errors[0])


def test_missing_pod_template_is_a_config_error(tmp_path: Path):
    cfg = TrainingConfig(mode="kubernetes", pod_template_file=tmp_path / "gone.yaml")
    with pytest.raises(ConfigError, match=r"the pod template trainer-pod-template.yaml was not found \(.*gone.yaml\)"):
        training_operator("train", model="recommender", features_uri="f", out_uri="o", config=cfg)
    assert k8s_training._default_template() is not None, "found in include/k8s/ of this checkout"
    assert TrainingConfig(mode="kubernetes").pod_template_file is None  # resolved when the operator is built


SHOW_ENV = ("import json, os, sys; from pathlib import Path; out = Path(sys.argv[1]); out.mkdir(parents=True); "
            "(out / 'return.json').write_text(json.dumps({'env': dict(os.environ)}))")


def test_local_trainer_gets_a_minimal_environment_not_the_supervisors(tmp_path: Path, monkeypatch):
    """What Airflow 3's task supervisor puts in a task's environment never reaches the trainer."""
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "airflow-db-not-allowed:///")
    monkeypatch.setenv("AIRFLOW_CONN_ORDERS_DB", "postgresql://shop:pw@db/orders")
    monkeypatch.setenv("SUPERVISOR_COMMS_TOKEN", "not-for-the-trainer")
    monkeypatch.setenv("ECOM_LAKE_ROOT", "file:///srv/lake")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-worker")
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    monkeypatch.setenv("ECOM_TRAINER_ENV", "HTTPS_PROXY, AIRFLOW_HOME")  # AIRFLOW* is refused even if listed
    out = tmp_path / "run"
    op = LocalTrainingOperator(task_id="train", cmds=["python", "-c", SHOW_ENV], arguments=[str(out)],
                               out_uri=str(out), model="recommender")
    env = op.execute({})["env"]
    assert not [name for name in env if name.upper().startswith("AIRFLOW")], sorted(env)
    assert "SUPERVISOR_COMMS_TOKEN" not in env
    assert env["ECOM_LAKE_ROOT"] == "file:///srv/lake" and env["AWS_ACCESS_KEY_ID"] == "AKIA-worker"
    assert env["KERAS_BACKEND"] == "jax" and env["HTTPS_PROXY"] == "http://proxy:3128"
    assert env["PATH"] == os.environ["PATH"] and env["PYTHONUNBUFFERED"] == "1"


def test_the_trainer_imports_need_no_airflow_configuration(tmp_path: Path):
    """Even handed the supervisor's poisoned setting, the trainer's lake and model code works:
    nothing it imports touches Airflow (the bug: ecom_ml.lake imported airflow.sdk)."""
    code = ("import sys; from datetime import date; import ecom_ml.train, ecom_ml.models.recommender, "
            "ecom_ml.features.recommender, ecom_ml.evaluation; from ecom_ml.lake import Lake; "
            f"lake = Lake({tmp_path.as_uri()!r}); import pyarrow as pa; "
            "lake.write('features', 'x', date(2024, 1, 1), {'t': pa.table({'a': [1]})}); "
            "assert lake.read('features', 'x', date(2024, 1, 1))['t'].num_rows == 1; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'airflow'), flush=True); "
            # Leave as the trainer does (ecom_ml.process.leave): native thread pools have aborted
            # interpreter teardown now and then, which says nothing about what this test checks.
            "from ecom_ml.process import leave; leave(0)")
    env = {**os.environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "airflow-db-not-allowed:///"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", "the trainer's modules must not import Airflow"


@pytest.mark.parametrize(("raw", "message"), [
    ("BAD-NAME", "ECOM_TRAINER_ENV='BAD-NAME': 'BAD-NAME' is not an environment variable name"),
])
def test_bad_trainer_env_list_is_one_line(raw, message, monkeypatch):
    from ecom_ml.training.environment import local_environment

    with pytest.raises(ConfigError) as info:
        local_environment({"ECOM_TRAINER_ENV": raw})
    assert str(info.value) == message
