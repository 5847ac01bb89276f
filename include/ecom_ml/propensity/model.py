"""The purchase-propensity model: a Keras 3 GRU over each customer's weekly behaviour joined with
RFM and tenure, a sigmoid output, calibrated on half of the newest training cutoff's customers.

Architecture (``keras`` / ``keras.ops`` only: TensorFlow on the CPU, JAX on the GPU machine): the
sequence of ``history_len`` weeks x (orders, units, spend, distinct products, refunds), each
``log1p``-ed and normalised, through a GRU; the static features (:data:`ecom_ml.propensity.features.STATIC`,
already ``log1p``-ed where they are counts or amounts), standardised on the training examples only,
through two ReLU layers with dropout; both concatenated, a ReLU layer and one logit. A "wide"
logistic part on the standardised static features is added to the deep logit: with few examples the
model is then at least the RFM regression. ``members`` such networks (independent initialisations)
are trained side by side in one pass, each on its own loss, and the served logit is their mean:
averaging cuts the run-to-run noise of one network (about ±0.006 AUC on the real file).

**Training and calibration.** Every rolling training cutoff trains, the newest one too (its label
window ends at the holdout start, and it is the closest in season to the holdout), except half of
the newest cutoff's customers, fixed by a hash of the id: they are never seen at that cutoff and
calibrate, ``p = sigmoid(a * logit + b)`` (Platt scaling: a temperature ``1/a`` and a shift) fitted
by maximum likelihood. A fixed number of epochs, chosen on that half (see the README); early
stopping on a few thousand customers picks its epoch by noise. ``a`` and ``b`` live in
``model.json``; the served probability is always the calibrated one.

``<out>/model/``: ``propensity.keras`` and ``model.json`` (format, kind, cutoff, history length,
label days, calibration, parameters) — ``cutoff`` is what the generic leak and champion-overlap
checks read.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ecom_ml.errors import EcomError
from ecom_ml.models import TrainRequest, fetch_dir
from ecom_ml.training.model_dir import resolve_features as resolve_partition
from ecom_ml.training.model_dir import trainer_log, write_model_dir
from ecom_ml.training.params import TrainerParams

KIND = "propensity"
FORMAT_VERSION = 1
KERAS_FILE = "propensity.keras"
META_FILE = "model.json"


class PropensityModelError(EcomError):
    """Bad trainer parameters or features the trainer cannot learn from."""


@dataclass(frozen=True)
class PropensityTrainParams(TrainerParams):
    """The propensity trainer's parameters (``python -m ecom_ml.train --model propensity --epochs …``)."""

    KIND: ClassVar[str] = KIND
    ERROR: ClassVar[type[EcomError]] = PropensityModelError

    epochs: int = 12
    batch_size: int = 512
    hidden_dim: int = 32
    #: Width of the two ReLU layers over the static features, and their dropout.
    static_dim: int = 64
    dropout: float = 0.2
    #: Networks of the ensemble (independent initialisations, trained side by side, logits averaged).
    members: int = 3
    learning_rate: float = 0.003
    seed: int = 0
    #: None: the features' values (the split settings are set once, in the features manifest).
    history_len: int | None = None
    holdout_days: int | None = None

    _LIMITS: ClassVar[dict[str, tuple[int, int]]] = {
        "epochs": (1, 10_000), "batch_size": (1, 1_000_000), "hidden_dim": (1, 4096), "static_dim": (1, 4096),
        "members": (1, 16), "seed": (0, 2**32 - 1),
        "history_len": (1, 520), "holdout_days": (1, 366),
    }

    def __post_init__(self) -> None:
        self.check_limits()
        self.check_fraction("learning_rate", zero_allowed=False)
        self.check_fraction("dropout", zero_allowed=True)


#: The static features of models trained before ``model.json`` recorded them (the first ten of STATIC).
LEGACY_STATIC_COUNT = 10


def static_columns(names: Any) -> list[int]:
    """Columns of ``STATIC`` a model reads, by the names it was trained on (one line if one is unknown)."""
    from ecom_ml.propensity.features import STATIC

    missing = [name for name in names if name not in STATIC]
    if missing:
        raise PropensityModelError(f"the model reads static feature(s) {', '.join(missing)} that these features do "
                                   f"not have (known: {', '.join(STATIC)})")
    return [STATIC.index(name) for name in names]


def model_inputs(examples: Any, columns: list[int] | None = None) -> dict[str, np.ndarray]:
    """The network's inputs: ``log1p`` of the weekly counts and amounts, the static features as built
    (the ``columns`` the model was trained on; None: all)."""
    static = np.asarray(examples.static, dtype=np.float32)
    return {"sequence": np.log1p(np.clip(examples.sequence, 0, None)).astype(np.float32),
            "static": static if columns is None else static[:, columns]}


def build_network(weeks: int, channels: int, n_static: int, params: PropensityTrainParams,
                  inputs: dict[str, np.ndarray]) -> tuple[Any, Any]:
    """``(trainer, scorer)``, uncompiled, sharing their layers: the trainer outputs each member's
    logit (one loss each, so the members learn independently in one pass over the batches), the
    scorer their mean. Normalisation layers are adapted on ``inputs`` (the training examples only)."""
    import keras

    sequence = keras.Input((weeks, channels), name="sequence")
    static = keras.Input((n_static,), name="static")
    seq_norm = keras.layers.Normalization(axis=-1, name="sequence_norm")
    seq_norm.adapt(inputs["sequence"].reshape(-1, channels))
    static_norm = keras.layers.Normalization(axis=-1, name="static_norm")
    static_norm.adapt(inputs["static"])
    seq_in, static_in = seq_norm(sequence), static_norm(static)
    logits = []
    for m in range(params.members):
        encoded = keras.layers.GRU(params.hidden_dim, name=f"weekly_gru_{m}")(seq_in)
        # The static features through a small MLP: what gradient boosting finds in them (interactions,
        # thresholds such as "overdue by more than two usual gaps") a single linear layer cannot.
        s = static_in
        for k in range(2):
            s = keras.layers.Dense(params.static_dim, activation="relu", name=f"static_dense_{m}_{k}")(s)
            s = keras.layers.Dropout(params.dropout, name=f"static_dropout_{m}_{k}")(s)
        x = keras.layers.Concatenate(name=f"joint_in_{m}")([encoded, s])
        x = keras.layers.Dense(params.hidden_dim, activation="relu", name=f"joint_{m}")(x)
        deep = keras.layers.Dense(1, name=f"deep_logit_{m}")(x)
        # The "wide" part: a logistic regression on the normalised static features, added to the deep
        # logit, so that with few examples the model is at least the RFM baseline.
        wide = keras.layers.Dense(1, name=f"wide_logit_{m}")(static_in)
        logits.append(keras.layers.Add(name=f"logit_{m}")([deep, wide]))
    inputs_ = {"sequence": sequence, "static": static}
    trainer = keras.Model(inputs_, logits, name="propensity_members")
    mean = logits[0] if len(logits) == 1 else keras.layers.Average(name="logit")(logits)
    return trainer, keras.Model(inputs_, mean, name="propensity")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b) maximising the likelihood of ``labels`` under ``sigmoid(a * logit + b)`` (scipy)."""
    from scipy.optimize import minimize

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = theta[0] * z + theta[1]
        p = _sigmoid(t)
        value = float(np.mean(np.logaddexp(0, t) - y * t))
        grad = p - y
        return value, np.asarray([np.mean(grad * z), np.mean(grad)])

    found = minimize(loss, np.asarray([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return float(found.x[0]), float(found.x[1])


class PropensityModel:
    """A trained network with its calibration: ``predict(examples) -> probabilities`` (n,)."""

    def __init__(self, network: Any, meta: dict[str, Any]) -> None:
        self.network = network
        self.meta = meta
        self.history_len = int(meta["history_len"])
        from ecom_ml.propensity.features import STATIC

        self.static_features = list(meta.get("static_features", STATIC[:LEGACY_STATIC_COUNT]))
        self.columns = static_columns(self.static_features)
        self.scale = float(meta["calibration"]["a"])
        self.shift = float(meta["calibration"]["b"])

    def logits(self, examples: Any, batch_size: int = 8192) -> np.ndarray:
        n = len(examples)
        if n == 0:
            return np.zeros(0)
        if examples.sequence.shape[1] != self.history_len:
            raise PropensityModelError(f"the model reads {self.history_len} weeks of behaviour, the examples have "
                                       f"{examples.sequence.shape[1]}")
        inputs = model_inputs(examples, self.columns)
        # predict_on_batch runs the compiled graph: an eager call steps the GRU op by op, which for one
        # customer was ~70x slower on the CPU (1.4 s against 19 ms, measured on a loaded 2-core machine).
        out = [np.asarray(self.network.predict_on_batch({k: v[i:i + batch_size] for k, v in inputs.items()}))
               for i in range(0, n, batch_size)]
        return np.concatenate(out).reshape(-1).astype(np.float64)

    def predict(self, examples: Any) -> np.ndarray:
        return _sigmoid(self.scale * self.logits(examples) + self.shift)


def load_model(model_dir: str) -> PropensityModel:
    """The registry's loader: a model folder (local or remote) as a :class:`PropensityModel`."""
    import keras

    folder = fetch_dir(model_dir)
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise PropensityModelError(f"{model_dir}: not a propensity model folder ({exc})") from None
    if meta.get("kind") != KIND:
        raise PropensityModelError(f"{model_dir}: model.json says kind {meta.get('kind')!r}, not {KIND!r}")
    network = keras.saving.load_model(folder / KERAS_FILE, compile=False)
    return PropensityModel(network, meta)


# -- training -----------------------------------------------------------------------------------------


_log = trainer_log(KIND)


def resolve_features(features: str, day: date | None) -> tuple[str, date]:
    from ecom_ml.propensity.features import DATASET

    return resolve_partition(features, day, DATASET, PropensityModelError)


def fit(facts: Any, fparams: Any, params: PropensityTrainParams) -> tuple[PropensityModel, dict[str, Any]]:
    """Fit on the rolling cutoffs of ``fparams`` (split settings from ``params`` where given), calibrate
    on the newest; returns the model and a report (examples, losses, calibration, timings)."""
    import keras

    from ecom_ml.propensity.features import (CHANNELS, STATIC, concat, examples_at, training_examples,
                                             validation_customers)

    label_days = params.holdout_days or fparams.holdout_days
    weeks = params.history_len or fparams.history_len
    cutoff = fparams.end - timedelta(days=label_days)
    split = replace(fparams, holdout_days=label_days)
    cutoffs = split.training_cutoffs()
    t = time.perf_counter()
    newest = examples_at(facts, cutoffs[0], label_days, weeks, cutoff)
    # Half of the newest cutoff's customers (fixed by a hash of the id) calibrate; the other half and
    # every older cutoff train. The newest cutoff is the closest in season to the holdout, so it
    # trains as well, and the calibration half is never seen at that cutoff.
    held = validation_customers(newest.customer_ids)
    validation = newest.take(held)
    older = training_examples(facts, split, cutoffs[1:], weeks, label_days, cutoff) if len(cutoffs) > 1 else None
    train = concat([p for p in (older, newest.take(~held)) if p is not None and len(p)] or [newest.take(~held)])
    if len(train) == 0 or len(validation) == 0:
        raise PropensityModelError(f"propensity features of {fparams.day}: no customer with an order before the "
                                   f"training cutoffs ({cutoffs[-1].date()}..{cutoffs[0].date()}): nothing to learn from")
    if train.label.min() == train.label.max():
        what = "bought again" if train.label.max() == 0 else "failed to buy again"
        raise PropensityModelError(f"propensity features of {fparams.day}: no customer {what} in the label windows of "
                                   f"the training cutoffs ({cutoffs[-1].date()}..{cutoffs[0].date()}): nothing to learn from")
    prepare_s = time.perf_counter() - t
    _log(f"{len(train):,} training examples over {len(cutoffs)} cutoffs ({cutoffs[-1].date()}..{cutoffs[0].date()}), "
         f"calibration {len(validation):,} at {cutoffs[0].date()}; base rate {train.label.mean():.3f} / "
         f"{validation.label.mean():.3f}")

    keras.utils.set_random_seed(params.seed)
    x_train, x_val = model_inputs(train), model_inputs(validation)
    trainer, network = build_network(weeks, len(CHANNELS), len(STATIC), params, x_train)
    trainer.compile(optimizer=keras.optimizers.Adam(params.learning_rate),
                    loss=[keras.losses.BinaryCrossentropy(from_logits=True)] * params.members)
    t = time.perf_counter()
    y_train, y_val = train.label.astype(np.float32), validation.label.astype(np.float32)
    single_class = validation.label.min() == validation.label.max()
    # A fixed number of epochs (chosen on the calibration half, see the README), no early stopping:
    # stopping on a few thousand customers picks an epoch by noise.
    history = trainer.fit(x_train, [y_train] * params.members, batch_size=params.batch_size, epochs=params.epochs,
                          shuffle=True, verbose=0, validation_data=(x_val, [y_val] * params.members))
    train_s = time.perf_counter() - t
    model = PropensityModel(network, {"history_len": weeks, "calibration": {"a": 1.0, "b": 0.0},
                                      "static_features": list(STATIC)})
    if single_class:  # nothing to calibrate against: keep the network's own probabilities
        a, b = 1.0, 0.0
    else:
        a, b = fit_platt(model.logits(validation), validation.label)
    model.scale, model.shift = a, b
    # The members' mean loss per epoch (each output has its own; "loss" is their sum).
    losses = [float(v) / params.members for v in history.history["loss"]]
    val_losses = [float(v) / params.members for v in history.history.get("val_loss", [])]
    _log(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} (calibration half {val_losses[-1] if val_losses else float('nan'):.4f},"
         f" per epoch {' '.join(f'{v:.4f}' for v in val_losses)}) in {train_s:.1f} s; calibration a={a:.3f} b={b:+.3f}")
    report = {
        "cutoff": cutoff, "weeks": weeks, "label_days": label_days, "cutoffs": cutoffs,
        "train_examples": int(len(train)), "validation_examples": int(len(validation)),
        "train_base_rate": float(train.label.mean()), "validation_base_rate": float(validation.label.mean()),
        "losses": losses, "val_losses": val_losses, "calibration": {"a": a, "b": b},
        "prepare_s": prepare_s, "train_s": train_s,
    }
    return model, report


def train(request: TrainRequest) -> dict[str, Any]:
    """The registry's trainer: read the day's propensity features, fit, calibrate, write ``<out>/model/``."""
    import keras

    from ecom_ml.lake import Lake
    from ecom_ml.propensity.features import Facts, PropensityFeatureError, read_features

    params = PropensityTrainParams.from_overrides(dict(request.params))
    started = time.perf_counter()
    root, day = resolve_features(request.features, request.day)
    try:
        fparams, tables = read_features(Lake(root), day)
    except PropensityFeatureError:
        raise  # already one line naming the day and the lake
    except FileNotFoundError as exc:
        raise PropensityModelError(f"no propensity features for {day} under {root} ({exc})") from None
    label_days = params.holdout_days or fparams.holdout_days
    if fparams.window_days < 2 * label_days + 7:
        raise PropensityModelError(f"propensity features of {day} cover {fparams.window_days} days: a {label_days}-day "
                                   f"label window needs at least {2 * label_days + 7}")
    facts = Facts.from_tables(tables)
    read_s = time.perf_counter() - started
    model, report = fit(facts, fparams, params)
    params = replace(params, history_len=report["weeks"], holdout_days=report["label_days"])

    t = time.perf_counter()
    cutoff = report["cutoff"]
    meta = {
        "format": FORMAT_VERSION, "kind": KIND,
        "cutoff": cutoff.isoformat(), "history_len": report["weeks"], "label_days": report["label_days"],
        "static_features": model.static_features,
        "calibration": report["calibration"], "calibration_cutoff": report["cutoffs"][0].isoformat(),
        "training_cutoffs": [c.isoformat() for c in report["cutoffs"]],
        "features": {"root": root, "day": day.isoformat()}, "params": params.to_dict(),
        "backend": keras.backend.backend(), "keras_version": keras.__version__,
    }

    def write_files(folder: Path) -> dict[str, str]:
        model.network.save(folder / KERAS_FILE)
        return {"keras": KERAS_FILE}

    written = write_model_dir(request.out, write_files, meta, prefix="ecom-train-propensity-")
    export_s = time.perf_counter() - t
    return {
        "model_uri": written.uri,
        "artifacts": written.artifacts,
        "features": {"root": root, "day": day.isoformat(), "cutoff": cutoff.isoformat(),
                     "holdout_days": report["label_days"]},
        "metrics": {"final_loss": report["losses"][-1], "first_loss": report["losses"][0],
                    "loss_per_epoch": report["losses"], "validation_loss_per_epoch": report["val_losses"],
                    "train_examples": report["train_examples"], "validation_examples": report["validation_examples"],
                    "train_base_rate": report["train_base_rate"], "validation_base_rate": report["validation_base_rate"],
                    "calibration_a": report["calibration"]["a"], "calibration_b": report["calibration"]["b"],
                    "parameters": int(model.network.count_params())},
        "model_size_bytes": written.size_bytes,
        "seconds": {"read": round(read_s, 3), "prepare": round(report["prepare_s"], 3),
                    "train": round(report["train_s"], 3), "export": round(export_s, 3)},
        "backend": keras.backend.backend(),
        "params": params.to_dict(),
    }
