# syntax=docker/dockerfile:1
# MLflow tracking server + model registry for the compose stack. A small image of its own because the
# upstream MLflow image has no PostgreSQL driver; the versions come from the project's constraints.txt,
# so the server and the clients in the Airflow/trainer images run the same MLflow. `mlflow[auth]` adds
# Flask-WTF for the basic-auth app the compose stack and the k8s Deployment run (`--app-name basic-auth`).
ARG PYTHON_BASE_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/mlflow-venv \
    PATH=/opt/mlflow-venv/bin:$PATH

COPY constraints.txt /opt/ecom/constraints.txt
RUN python -m venv /opt/mlflow-venv \
    && pip install -c /opt/ecom/constraints.txt "mlflow[auth]" psycopg2-binary

# Non-root, uid 50000 / gid 0 like the Airflow images; the artifact store and the auth app's user
# store are volumes it owns (a new named volume takes the ownership of the image's folder).
RUN useradd --uid 50000 --gid 0 --create-home --home-dir /home/mlflow --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlflow/artifacts /mlflow/auth \
    && chown -R 50000:0 /mlflow \
    && chmod -R g=u /mlflow
USER 50000:0
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
