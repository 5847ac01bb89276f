"""The trainer's ``KubernetesPodOperator``: the provider's operator plus what it cannot be told.

Imported only in ``kubernetes`` training mode (the provider is heavy), by
``ecom_ml.k8s_training.kubernetes_operator``, which sets every constructor argument. This subclass
adds, when the pod is built at execute time (never at DAG-parse time):

* the trainer's settings as ``env`` entries (``ecom_ml.training.environment.pod_settings``: lake
  root, MLflow URI without credentials, Keras backend...) read from the worker's environment, the
  same names the local mode passes to its subprocess; credentials stay in the Secret (``envFrom``);
* resource requests *and limits* on the xcom sidecar and a size limit on its ``emptyDir``: the
  provider gives the sidecar requests only and the volume no cap, which a namespace with a
  LimitRange or a quota rejects, and which leaves a node's disk open to a runaway writer.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from kubernetes.client import models as k8s

from ecom_ml.training.environment import pod_settings

BASE_CONTAINER = "base"


class TrainerPodOperator(KubernetesPodOperator):
    """``KubernetesPodOperator`` with the trainer's env and a bounded xcom sidecar (see module doc)."""

    def build_pod_request_obj(self, context: Any = None) -> k8s.V1Pod:
        from ecom_ml.k8s_training import SIDECAR_RESOURCES, XCOM_VOLUME, XCOM_VOLUME_LIMIT

        pod = super().build_pod_request_obj(context)
        for container in pod.spec.containers:
            if container.name == BASE_CONTAINER:
                present = {entry.name for entry in container.env or []}
                added = [k8s.V1EnvVar(name=key, value=value) for key, value in sorted(pod_settings().items())
                         if key not in present]
                container.env = [*(container.env or []), *added]
            elif container.name == PodDefaults.SIDECAR_CONTAINER_NAME:
                container.resources = k8s.V1ResourceRequirements(**SIDECAR_RESOURCES)
        for volume in pod.spec.volumes or []:
            if volume.name == XCOM_VOLUME:
                volume.empty_dir = k8s.V1EmptyDirVolumeSource(size_limit=XCOM_VOLUME_LIMIT)
        return pod
