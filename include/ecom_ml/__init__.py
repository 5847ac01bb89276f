"""ecom-ml: a daily retraining pipeline for an online shop's models on Apache Airflow."""

__version__ = "0.1.0"
