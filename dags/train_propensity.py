"""
### train_propensity — who buys in the next 30 days, gated on discrimination and calibration

`features` → `train` → `evaluate` → `gate` → `promote`

Runs whenever `orders_ingest` publishes a validated day (the `orders_validated` Asset), or by hand
for any day (param `day`). This Airflow DAG is built by `ecom_ml.training.dag_factory.training_dag`,
the same function as `train_recommender` and `train_demand`.

* **features** writes the window's order lines (customer, placed, refunded, units, spend) into
  `lake/features/propensity/dt=…/`; every cutoff's examples (weekly behaviour, RFM, tenure, label)
  are computed from them.
* **train** runs `python -m ecom_ml.train --model propensity …` (GPU pod or local subprocess): a
  Keras GRU over 26 weeks of behaviour with RFM features, trained on weekly rolling cutoffs and
  calibrated on the newest one.
* **evaluate** scores candidate, champion and the baselines (recency rank, RFM logistic regression,
  base rate) at the cutoff 30 days before the day: AUC, PR-AUC, log-loss, Brier, ECE, reliability
  table, slices (new / established, high / low spend).
* **gate** registers the candidate in MLflow with its gate report (`include/ecom_ml/gates/propensity.yaml`:
  log-loss and AUC against the best baseline and the champion, an ECE ceiling, size and latency).
* **promote** moves the `champion` alias of `propensity`. `ecom-ml rollback --model propensity` moves it back.
"""

from ecom_ml.training.dag_factory import training_dag

train_propensity = training_dag("propensity", doc_md=__doc__)
