"""Read-only views of the pipeline for people: the "Models" page shown inside Airflow's UI.

``models_data`` gathers what the page shows (pure functions over the registry and the lake);
``models_app`` renders it (a FastAPI app that ``plugins/ecom_models_view.py`` mounts in Airflow's API
server at ``/ecom-ml``, behind Airflow's own login). Importing this package imports neither MLflow
nor pandas: those load on the first request.
"""
