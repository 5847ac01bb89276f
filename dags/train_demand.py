"""
### train_demand — weekly demand forecast per product, gated against classical forecasters

`features` → `train` → `evaluate` → `gate` → `promote` → `publish`

Runs whenever `orders_ingest` publishes a validated day (the `orders_validated` Asset), or by hand
for any day (param `day`). This Airflow DAG is built by `ecom_ml.training.dag_factory.training_dag`,
the same function as `train_recommender`.

* **features** builds weekly units per product (net of cancelled/refunded orders) with calendar,
  relative price, age and category over a trailing window (default 52 weeks) into
  `lake/features/demand/dt=…/`.
* **train** runs `python -m ecom_ml.train --model demand …` (GPU pod or local subprocess): a global
  Keras model predicting p50 and p90 of the next 4 weeks.
* **evaluate** scores candidate, champion and the baselines (last week, 4- and 13-week moving
  averages) on the last 4 weeks before the day: WAPE, bias, MASE, pinball loss, p90 coverage, slices.
* **gate** registers the candidate in MLflow with its gate report (`include/ecom_ml/gates/demand.yaml`:
  WAPE lower is better, p90 coverage band, size and latency budgets).
* **promote** moves the `champion` alias of `demand`. `ecom-ml rollback --model demand` moves it back.
* **publish** writes the champion's batch predictions (p50/p90 per product for the next 4 weeks) into the orders DB as
  `ml.demand_forecasts`, swapped in atomically (`ecom_ml.publishing`); a failure leaves the previous set and
  alerts. A rollback republishes the restored champion's.
"""

from ecom_ml.training.dag_factory import training_dag

train_demand = training_dag("demand", doc_md=__doc__)
