"""Registers ecom-ml's custom deadline reference with Airflow (see ``ecom_ml.deadlines``).

The scheduler evaluates a DAG's deadline references when it creates a run; a custom one must be
registered by a plugin so that the scheduler can import it from the serialized DAG. Without this
plugin the scheduler cannot create the ingestion deadline.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from ecom_ml.deadlines import NightlyRunLogicalDate


class EcomDeadlinesPlugin(AirflowPlugin):
    name = "ecom_deadlines"
    deadline_references = [NightlyRunLogicalDate]
