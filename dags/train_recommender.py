"""
### train_recommender — nightly candidate, honest evaluation, gated promotion

`features` → `train` → `evaluate` → `gate` → `promote` → `publish`

Runs whenever `orders_ingest` publishes a validated day (the `orders_validated` Asset), or by hand
for any day (param `day`).

* **features** builds the recommender's features over a trailing window (default 90 days) of the
  validated lake into `lake/features/recommender/dt=…/`.
* **train** runs `python -m ecom_ml.train --model recommender …`: in a GPU pod through
  `KubernetesPodOperator` when `ECOM_TRAINING_MODE=kubernetes`, else as a local subprocess — the
  same command either way.
* **evaluate** scores the candidate, the current champion and the baselines (popularity,
  co-purchase, repeat purchase) on the same time-based holdout, against the full catalogue, with
  slices and CPU serving cost.
* **gate** registers the candidate in MLflow with its gate report (thresholds in
  `include/ecom_ml/gates/recommender.yaml`) and fails the run visibly when a check fails.
* **promote** moves the `champion` alias to the candidate. `ecom-ml rollback` moves it back.
* **publish** writes the champion's batch predictions (top-50 per active customer) into the orders DB as
  `ml.recommendations`, swapped in atomically (`ecom_ml.publishing`); a failure leaves the previous set and
  alerts. A rollback republishes the restored champion's.

A run that has not reached a gate verdict `ECOM_TRAINING_DEADLINE_HOURS` (default 6) after it was
queued raises a deadline alert (`ecom_ml.deadlines`). This Airflow DAG is built by
`ecom_ml.training.dag_factory.training_dag`, like every model kind's.
"""

from ecom_ml.training.dag_factory import training_dag

train_recommender = training_dag("recommender", doc_md=__doc__)
