# syntax=docker/dockerfile:1
# The trainer image: what the KubernetesPodOperator runs on a GPU node, and what
# `docker compose --profile gpu run trainer ...` runs locally. Same module, same arguments.
#
# Base: Debian + CPython 3.11 (the Airflow image's Python), with CUDA and cuDNN coming from NVIDIA's
# pip wheels through `tensorflow[and-cuda]` - TensorFlow's documented Linux GPU install, which pins
# the CUDA/cuDNN builds TensorFlow was compiled against. The host (or GPU node) needs only the NVIDIA
# driver and the NVIDIA Container Toolkit; no CUDA base image whose Python version we would have to
# match. Without a GPU the same image trains on the CPU.
ARG PYTHON_BASE_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_BASE_IMAGE}

# Must equal tensorflow-cpu's pin in constraints.txt (tests/test_compose.py checks it), so the
# trainer and the CPU-only environments build the same model code against the same TensorFlow.
ARG TENSORFLOW_VERSION=2.21.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/trainer-venv \
    PATH=/opt/trainer-venv/bin:$PATH \
    KERAS_BACKEND=tensorflow \
    TF_CPP_MIN_LOG_LEVEL=1

# Heavy, rarely-changing layer first. Every version except TensorFlow's GPU build comes from
# constraints.txt (keras, mlflow-skinny, numpy, ...), the same pins as the Airflow image and the tests.
COPY constraints.txt /opt/ecom/constraints.txt
RUN python -m venv /opt/trainer-venv \
    && pip install -c /opt/ecom/constraints.txt \
        "tensorflow[and-cuda]==${TENSORFLOW_VERSION}" \
        keras \
        mlflow-skinny \
        universal_pathlib \
        s3fs
# The trainer needs no Airflow: it reads the lake and writes the model through ecom_ml.storage
# (universal_pathlib over fsspec; s3fs for s3://), with credentials from the pod's Secret.

# The project package; its own dependencies resolve against the same constraints.
COPY include/ /opt/ecom/include/
RUN pip install -c /opt/ecom/constraints.txt /opt/ecom/include \
    && rm -rf /opt/ecom/include/build

# Non-root user and group 50000 (also what the pod's securityContext sets): no root group either.
RUN groupadd --gid 50000 trainer \
    && useradd --uid 50000 --gid 50000 --create-home --home-dir /home/trainer --shell /usr/sbin/nologin trainer
USER 50000:50000
WORKDIR /home/trainer

ENTRYPOINT ["python", "-m", "ecom_ml.train"]
CMD ["--help"]
