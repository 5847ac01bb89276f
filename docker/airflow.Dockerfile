# syntax=docker/dockerfile:1
# The Airflow image for the compose stack (and for Celery/Kubernetes executors in production):
# the official image plus the project's pinned dependencies, the ecom_ml package and the DAGs.
# Build context: the repository root (see docker-compose.yaml and .dockerignore).
ARG AIRFLOW_BASE_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_BASE_IMAGE}

# The official image requires installing as the `airflow` user (it is already the current user;
# stated so a reader need not know that). pip's cache is kept out of the layer.
USER airflow
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first, so editing DAGs or the package does not reinstall them. requirements.txt
# pins apache-airflow to the base image's version, so pip cannot up- or downgrade Airflow itself;
# constraints.txt pins every transitive dependency to the set the test suite runs with.
COPY --chown=airflow:0 requirements.txt constraints.txt /opt/ecom/
RUN pip install -r /opt/ecom/requirements.txt -c /opt/ecom/constraints.txt

# The project package (include/ = the `ecom_ml` distribution). Installed as a regular (non-editable)
# package so it works for every user, including the root-run airflow-init; the compose file also
# puts /opt/airflow/include first on PYTHONPATH, so a bind-mounted ./include is live in development.
COPY --chown=airflow:0 include/ /opt/airflow/include/
RUN pip install -c /opt/ecom/constraints.txt /opt/airflow/include \
    && rm -rf /opt/airflow/include/build

# DAGs and plugins (the Models view) baked in, so the image runs without bind mounts (e.g. with the
# Helm chart); the compose file mounts ./dags and ./plugins over them.
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
