"""Promotion gates, one YAML file per model (``<model>.yaml``); loaded by :mod:`ecom_ml.gate`.

A package only so that the YAML files ship inside the wheel next to the code that reads them.
"""
