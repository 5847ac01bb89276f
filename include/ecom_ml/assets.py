"""Airflow Assets the DAGs exchange. Kept free of imports beyond the SDK so DAG files parse fast."""

from airflow.sdk import Asset

#: A day of orders passed the quality gate and sits in lake/validated/orders/dt=…/.
#: Each event's `extra` carries the day, row counts and the quality status.
ORDERS_VALIDATED = Asset(name="orders_validated", uri="ecom://lake/validated/orders", group="ecom-ml")
