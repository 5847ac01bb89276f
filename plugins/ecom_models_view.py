"""Airflow plugin: the ecom-ml "Models" view in Airflow's own UI, behind Airflow's own login.

The app (``ecom_ml.ui.models_app``) is mounted in the API server at ``/ecom-ml``; the external view
puts a "Models" entry in the navigation, which the UI shows as an iframe of ``/ecom-ml/models/``.
Airflow imports plugins in every component, task processes included (for macros), so this file
stays cheap: FastAPI only; MLflow, pandas and Airflow's ORM load on the first request.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from ecom_ml.ui.models_app import ICON, ICON_DARK_MODE, URL_PREFIX, app, page_href


class EcomModelsViewPlugin(AirflowPlugin):
    name = "ecom_models_view"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "ecom-ml models view"}]
    external_views = [
        {
            "name": "Models",
            "href": page_href(),
            "destination": "nav",
            # The UI route (/plugin/models) that embeds href as an iframe.
            "url_route": "models",
            "nav_top_level": True,
            "icon": ICON,
            "icon_dark_mode": ICON_DARK_MODE,
        }
    ]
