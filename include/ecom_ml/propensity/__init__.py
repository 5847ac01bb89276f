"""The purchase-propensity kind: will a customer buy in the next 30 days (features, model,
evaluation and training-DAG steps; reached through its entry in ``ecom_ml.models.REGISTRY``)."""
