"""The demand forecaster: one global Keras 3 model over all products, p50 and p90 of the next weeks.

Architecture (``keras`` / ``keras.ops`` only, so it runs on TensorFlow on the CPU and on JAX on the
GPU machine): the inputs of :func:`ecom_ml.demand.features.model_inputs` (scaled and sorted lags,
half-year quantiles, order lines, past closed days and prices, level, trend, age, the forecast
weeks' holidays and price plan) with a category embedding, through two ReLU layers to ``horizon x 2``
outputs. ``p50 = softplus(a)`` and ``p90 = p50 + softplus(b)``, so the quantiles never cross and
never go negative; both are multiplied by the series' scale and by ``price ** -elasticity`` (the
forecast week's planned price over the usual one; one learned elasticity per quantile), so the loss —
the pinball loss at 0.5 and 0.9 — is in units, and a product's weight in training is its volume,
as in WAPE. ``members`` such towers (5 by default, dropout 0.2 after each hidden layer) are trained
side by side in one model on the same batches and their forecasts averaged; the learning rate
decays to 0 (cosine) over the epochs. Settings are chosen on a validation month (the 4 weeks before
the bench's holdout, the model trained on what precedes them), never on the holdout: see
:func:`build_network` and ``bench/demand_retail.py``.

No product-id embedding: on Online Retail II one (8 wide, 4k products) memorised the training
weeks and raised holdout WAPE from 0.668 to 0.760 (20 epochs, without week of year, seed 0).
A product is known by its own lags, price, age and category, so a product first sold after the
model's cutoff is forecast like any other; an unknown category maps to embedding row 0.

``<out>/model/``: ``demand.keras``, ``vocab.json`` (product ids, categories) and ``model.json``
(format, cutoff, horizon, history length, parameters) — ``cutoff`` is what the generic leak and
champion-overlap checks read.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ecom_ml.errors import EcomError
from ecom_ml.models import TrainRequest, fetch_dir
from ecom_ml.training.model_dir import resolve_features as resolve_partition
from ecom_ml.training.model_dir import trainer_log, write_model_dir
from ecom_ml.training.params import TrainerParams

KIND = "demand"
#: 2: inputs with sorted lags, half-year quantiles, order lines, the forecast weeks' price plan and
#: the price elasticity; a format-1 model cannot read them.
FORMAT_VERSION = 2
KERAS_FILE = "demand.keras"
VOCAB_FILE = "vocab.json"
META_FILE = "model.json"
QUANTILES = (0.5, 0.9)
#: The price elasticity's weight counts in tens: Adam moves a weight by about the learning rate a
#: step, and a promotion's elasticity is several units (generated orders: 20 % off, +86 % units, 5.3),
#: which a weight in units would not reach in a nightly run's few hundred steps.
ELASTICITY_UNIT = 10.0


class DemandModelError(EcomError):
    """Bad trainer parameters or features the trainer cannot learn from."""


@dataclass(frozen=True)
class DemandTrainParams(TrainerParams):
    """The demand trainer's parameters (``python -m ecom_ml.train --model demand --epochs …``)."""

    KIND: ClassVar[str] = KIND
    ERROR: ClassVar[type[EcomError]] = DemandModelError

    epochs: int = 10
    #: Networks trained side by side in one model (own weights, same batches), forecasts averaged.
    members: int = 5
    batch_size: int = 256
    embedding_dim: int = 8
    hidden_dim: int = 64
    learning_rate: float = 0.003
    #: Dropout after each hidden layer (0: none). 0.2: chosen on the validation month (see
    #: :func:`build_network`).
    dropout: float = 0.2
    seed: int = 0
    horizon_weeks: int = 4
    #: None: the features' values (the split settings are set once, in the features manifest).
    history_len: int | None = None
    holdout_days: int | None = None
    #: Weeks before the cutoff held out of a first fit to choose the forecast's calibration on
    #: (:class:`Calibration`: off by default, see why there); 0: no validation fit, the network's
    #: forecast as it is.
    validation_weeks: int = 0

    _LIMITS: ClassVar[dict[str, tuple[int, int]]] = {
        "epochs": (1, 10_000), "members": (1, 16), "batch_size": (1, 1_000_000), "embedding_dim": (1, 512),
        "hidden_dim": (1, 8192), "seed": (0, 2**32 - 1), "horizon_weeks": (1, 52),
        "history_len": (1, 520), "holdout_days": (7, 366), "validation_weeks": (0, 52),
    }

    def __post_init__(self) -> None:
        self.check_limits()
        if self.holdout_days is not None and self.holdout_days % 7:
            raise DemandModelError(f"--holdout-days {self.holdout_days}: the demand holdout is whole weeks (a multiple of 7)")
        self.check_fraction("learning_rate", zero_allowed=False)
        self.check_fraction("dropout", zero_allowed=True)


# -- the network --------------------------------------------------------------------------------------


def _register() -> Any:
    import keras

    @keras.saving.register_keras_serializable(package="ecom_ml.demand")
    class QuantileHead(keras.layers.Layer):
        """(raw (n, H*2), scale (n, 1)[, log_price (n, H)]) -> (n, H, 2) non-crossing, non-negative
        p50/p90 in units.

        With ``log_price`` (the forecast weeks' planned price over the usual one, logged) both
        quantiles are multiplied by ``price ** -elasticity``, one learned elasticity per quantile
        (starting at 0: no response). Why a structural term beside the MLP's own view of the price:
        promotions are a few weeks of a few categories, too rare for the MLP alone to learn a
        response from (on a half year of generated orders it estimated +3 % where the generator's
        promotions added +86 %); a constant elasticity is learned from every promoted week at once.
        """

        def __init__(self, horizon: int, priced: bool = False, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.horizon = horizon
            self.priced = priced

        def build(self, *shapes: Any) -> None:
            if self.priced:
                self.elasticity = self.add_weight(shape=(2,), initializer="zeros", name="elasticity")

        def call(self, raw: Any, scale: Any, log_price: Any = None) -> Any:
            from keras import ops

            raw = ops.reshape(raw, (-1, self.horizon, 2))
            p50 = ops.softplus(raw[:, :, 0])
            p90 = p50 + ops.softplus(raw[:, :, 1])
            out = ops.stack([p50, p90], axis=-1) * ops.expand_dims(scale, -1)
            if self.priced and log_price is not None:
                elasticity = ELASTICITY_UNIT * ops.reshape(self.elasticity, (1, 1, 2))
                out = out * ops.exp(-ops.expand_dims(log_price, -1) * elasticity)
            return out

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "horizon": self.horizon, "priced": self.priced}

    return QuantileHead


_HEAD: Any = None


def quantile_head() -> Any:
    global _HEAD
    if _HEAD is None:
        _HEAD = _register()
    return _HEAD


def pinball_loss(y_true: Any, y_pred: Any) -> Any:
    """Mean pinball loss at 0.5 and 0.9; ``y_true`` (n, H), ``y_pred`` (n, H, 2) or, one per
    ensemble member, (n, H, 2, M): each member is fitted to the targets on its own."""
    from keras import ops

    members = len(y_pred.shape) == 4
    y = ops.expand_dims(ops.cast(y_true, y_pred.dtype), -1)
    q = np.asarray(QUANTILES, dtype="float32").reshape(1, 1, 2)
    if members:
        y = ops.expand_dims(y, -1)
        q = q[..., None]
    q = ops.convert_to_tensor(q)
    diff = y - y_pred
    return ops.mean(ops.maximum(q * diff, (q - 1.0) * diff))


def build_network(width: int, n_categories: int, params: DemandTrainParams) -> Any:
    """``params.members`` independent towers (category embedding, two ReLU layers, quantile head)
    on the same inputs, stacked on a last axis (n, H, 2, M). Why an ensemble: weekly units of a
    wholesale shop are noisy targets, and single networks differ by seed (Online Retail II, 3 seeds:
    WAPE 0.611 / 0.620 / 0.609, their average 0.605); one model file keeps serving one call.

    Dropout 0.2 and 5 members were chosen on the validation month (Online Retail II, 2010-10-15 ..
    11-11, models trained before it, seed 0, WAPE): 3 members 0.635, 5 members 0.633; with dropout
    0.2: 3 members 0.633, 5 members 0.632 (0.630 trained on active products only, kept), 8 members
    0.631 (0.6305 active only: no gain for 60 % more time); dropout 0.1 / 0.3 (5 members) 0.631 /
    0.632. Not kept: 20 epochs (0.638; with dropout 0.630 at 3 members but 0.632 at 5: no gain for
    twice the time); hidden 128 (0.632 without dropout, 0.6300 with the default), learning rate
    0.001 over 20 epochs (0.633), loss weights halving every 4 / 8 / 16 weeks back (0.633 / 0.635 / 0.632), targets up
    to the cutoff for the last anchors' first weeks (0.643), 6 epochs (0.636). README: the table."""
    import keras

    numeric = keras.Input((width,), name="numeric")
    scale = keras.Input((1,), name="scale")
    log_price = keras.Input((params.horizon_weeks,), name="log_price")
    category = keras.Input((), dtype="int32", name="category")
    outs = []
    for m in range(params.members):
        suffix = f"_{m}" if m else ""
        c_emb = keras.layers.Embedding(n_categories + 1, params.embedding_dim, name=f"category_embedding{suffix}")(category)
        x = keras.layers.Concatenate(name=f"inputs{suffix}")([numeric, c_emb])
        for layer in ("a", "b"):
            x = keras.layers.Dense(params.hidden_dim, activation="relu", name=f"hidden_{layer}{suffix}")(x)
            if params.dropout:
                x = keras.layers.Dropout(params.dropout, name=f"dropout_{layer}{suffix}")(x)
        raw = keras.layers.Dense(params.horizon_weeks * 2, name=f"quantiles{suffix}")(x)
        head = quantile_head()(params.horizon_weeks, priced=True, name=f"quantile_head{suffix}")(raw, scale, log_price)
        outs.append(keras.layers.Reshape((params.horizon_weeks, 2, 1), name=f"member{suffix}")(head))
    out = keras.layers.Concatenate(axis=-1, name="members")(outs) if len(outs) > 1 else outs[0]
    return keras.Model({"numeric": numeric, "scale": scale, "log_price": log_price, "category": category}, out)


# -- calibration (chosen on the validation weeks, never on the holdout) --------------------------------

#: The p50 factor is kept within this range: a validation month with a one-off wholesale week must
#: not be able to halve or double every forecast.
P50_FACTOR_RANGE = (0.8, 1.25)
#: The p90's calibration target: the share of validation product-weeks at or below it.
P90_TARGET = 0.9
P90_SPREADS = np.round(np.arange(0.5, 2.0001, 0.01), 2)


@dataclass(frozen=True)
class Calibration:
    """Corrections of the members' averaged forecast, fitted by the trainer on its own validation
    weeks (``validation_weeks`` > 0): ``p50 = p50_factor x p50_net`` and
    ``p90 = p50 + p90_spread x (p90_net - p50_net)`` (the quantiles still never cross, never go
    negative). The identity unless asked for, and why (Online Retail II, the previous default
    network of 3 members without dropout, seed 0):
    a month's level is not the next month's. At the cutoff 2010-11-12 the 4 weeks before it chose
    0.95 / 1.06 and the holdout's WAPE went 0.607 -> 0.603 (p90 coverage 0.908 -> 0.912); at the
    validation cutoff 2010-10-15 its 4 weeks before (the September surge, network bias -0.68) chose
    1.25 (the clip) / 2.0 and the next 4 weeks' WAPE went 0.635 -> 0.667, coverage 0.896 -> 0.954,
    out of the gate's band. The network's own quantiles were within it both times.
    """

    p50_factor: float = 1.0
    p90_spread: float = 1.0

    def apply(self, p50: np.ndarray, p90: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.p50_factor * p50, self.p50_factor * p50 + self.p90_spread * np.maximum(p90 - p50, 0.0)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any] | None) -> Calibration:
        """A model.json without ``calibration`` (trained before it existed): the identity."""
        return cls(**{k: float(v) for k, v in (doc or {}).items() if k in ("p50_factor", "p90_spread")})


def choose_calibration(actual: np.ndarray, p50: np.ndarray, p90: np.ndarray) -> Calibration:
    """The calibration that fits the validation weeks: the p50 factor minimising Σ|y − f·p50| (the
    p50-weighted median of y / p50, the exact minimiser, clipped to :data:`P50_FACTOR_RANGE`), then
    the smallest p90 spread of :data:`P90_SPREADS` with at least :data:`P90_TARGET` of the weeks at
    or below the p90 (the largest one where none reaches it)."""
    y, p, q = (np.asarray(a, dtype=np.float64).ravel() for a in (actual, p50, p90))
    positive = p > 0
    factor = 1.0
    if positive.any() and y.sum() > 0:
        ratio, weight = y[positive] / p[positive], p[positive]
        order = np.argsort(ratio, kind="stable")
        cumulative = np.cumsum(weight[order])
        factor = float(ratio[order][np.searchsorted(cumulative, cumulative[-1] / 2)])
        factor = float(np.clip(factor, *P50_FACTOR_RANGE))
    gap = np.maximum(q - p, 0.0)
    covered = np.asarray([(y <= factor * p + g * gap).mean() for g in P90_SPREADS])
    reached = np.flatnonzero(covered >= P90_TARGET)
    spread = float(P90_SPREADS[reached[0]] if len(reached) else P90_SPREADS[-1])
    return Calibration(p50_factor=round(factor, 4), p90_spread=spread)


# -- the forecaster (what evaluation and serving load) -----------------------------------------------


class DemandForecaster:
    """A trained model with its vocabularies: ``forecast(inputs) -> (p50, p90)``, each (n, horizon)."""

    def __init__(self, network: Any, product_ids: list[int], categories: list[str], meta: dict[str, Any]) -> None:
        self.network = network
        self.meta = meta
        self.horizon = int(meta["horizon_weeks"])
        self.history_len = int(meta["history_len"])
        self.seasonal = bool(meta.get("seasonal", False))
        self.priced = bool(meta.get("priced", False))
        self.calibration = Calibration.from_dict(meta.get("calibration"))
        self.product_ids = list(product_ids)
        self._categories = {str(c): i + 1 for i, c in enumerate(categories)}

    def encode(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            "numeric": inputs["numeric"], "scale": inputs["scale"],
            **({"log_price": inputs["log_price"]} if self.priced else {}),
            "category": np.asarray([self._categories.get(str(c), 0) for c in inputs["category"]], dtype=np.int32),
        }

    def forecast(self, inputs: dict[str, np.ndarray], batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """p50 and p90 (n, horizon): the members' average, calibrated (:class:`Calibration`)."""
        return self.calibration.apply(*self.network_forecast(inputs, batch_size))

    def network_forecast(self, inputs: dict[str, np.ndarray], batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """The members' averaged p50 and p90 before calibration (what the calibration is fitted to)."""
        n = len(inputs["scale"])
        if n == 0:
            empty = np.zeros((0, self.horizon))
            return empty, empty
        encoded = self.encode(inputs)
        # predict_on_batch runs Keras' compiled predict step (a traced function on TensorFlow, jit on
        # JAX); a plain call runs the graph op by op: 50 ms against 5 ms for one product on the CPU.
        out = np.concatenate([np.asarray(self.network.predict_on_batch({k: v[i:i + batch_size] for k, v in encoded.items()}))
                              for i in range(0, n, batch_size)])
        if out.ndim == 4:  # ensemble members on the last axis: their mean (still p50 <= p90, >= 0)
            out = out.mean(axis=-1)
        return out[:, :, 0].astype(np.float64), out[:, :, 1].astype(np.float64)


def load_forecaster(model_dir: str) -> DemandForecaster:
    import keras

    quantile_head()
    folder = fetch_dir(model_dir)
    try:
        meta = json.loads((folder / META_FILE).read_text())
        vocab = json.loads((folder / VOCAB_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise DemandModelError(f"{model_dir}: not a demand model folder ({exc})") from None
    if meta.get("kind") != KIND:
        raise DemandModelError(f"{model_dir}: model.json says kind {meta.get('kind')!r}, not {KIND!r}")
    if meta.get("format") != FORMAT_VERSION:
        raise DemandModelError(f"{model_dir}: a demand model of format {meta.get('format')!r}; this code forecasts with "
                               f"the inputs of format {FORMAT_VERSION}: retrain it (or roll back the code)")
    network = keras.saving.load_model(folder / KERAS_FILE, compile=False)
    return DemandForecaster(network, vocab["product_ids"], vocab["categories"], meta)


# -- training -----------------------------------------------------------------------------------------


def training_examples(panel: Any, history_len: int, horizon: int, train_weeks: int,
                      seasonal: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every (product, anchor) whose ``horizon`` target weeks lie before ``train_weeks`` and that
    sold in the 13 weeks before the anchor (``Panel.active``), with its targets (units as at the
    cutoff).

    Active products only, because they are the population the evaluation scores and the shop
    restocks: with every product ever sold (dormant ones add zero-target examples) the validation
    month's WAPE was 0.632, with active ones 0.630 (Online Retail II, dropout 0.2, 5 members, seed 0).
    A dormant product is still forecast (the batch forecast covers every product): from all-zero
    lags, like a product that stopped selling a quarter ago.

    Anchors start once a whole lag window lies after the lake's first order (when there are enough
    weeks): earlier ones would read the weeks before the history as zero sales, and teach the model
    that demand jumps from nothing — for every product, in the weeks of the year just after the
    history's start, which a one-year window then forecasts a year later.
    """
    from ecom_ml.demand.features import model_inputs

    rows, anchors = [], []
    start = panel.first_order_week()
    first = max(1, start + min(history_len, train_weeks - horizon - start))
    for anchor in range(first, train_weeks - horizon + 1):
        idx = np.flatnonzero(panel.active(anchor))
        rows.append(idx)
        anchors.append(np.full(len(idx), anchor))
    rows_a = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    anchors_a = np.concatenate(anchors) if anchors else np.zeros(0, dtype=np.int64)
    inputs = model_inputs(panel, rows_a, anchors_a, history_len, horizon, seasonal)
    known = panel.known(train_weeks)
    targets = np.stack([known[rows_a, anchors_a + h] for h in range(horizon)], axis=1) if len(rows_a) else np.zeros((0, horizon))
    return inputs, targets.astype(np.float32)


_log = trainer_log(KIND)


def resolve_features(features: str, day: date | None) -> tuple[str, date]:
    from ecom_ml.demand.features import DATASET

    return resolve_partition(features, day, DATASET, DemandModelError)


def fit(panel: Any, params: DemandTrainParams, train_weeks: int, seasonal: bool, categories: list[str],
        product_ids: list[int]) -> tuple[Any, list[float], int, float]:
    """``(network, loss per epoch, examples, prepare seconds)``: the network fitted on the
    examples whose target weeks lie before ``train_weeks`` (no examples: ``(None, [], 0, …)``)."""
    import keras

    from ecom_ml.demand.features import numeric_width

    t = time.perf_counter()
    inputs, targets = training_examples(panel, params.history_len, params.horizon_weeks, train_weeks, seasonal)
    if len(targets) == 0 or float(targets.sum()) <= 0:
        return None, [], 0, time.perf_counter() - t
    keras.utils.set_random_seed(params.seed)
    network = build_network(numeric_width(params.history_len, params.horizon_weeks, seasonal), len(categories), params)
    encoded = DemandForecaster(network, product_ids, categories,
                               {"horizon_weeks": params.horizon_weeks, "history_len": params.history_len,
                                "seasonal": seasonal, "priced": True}).encode(inputs)
    prepare_s = time.perf_counter() - t
    # The learning rate decays to 0 over the run (cosine): single networks at a constant rate ended
    # far apart by seed on Online Retail II (WAPE 0.672 / 0.621 / 0.620, seeds 0-2), with the decay
    # 0.618 / 0.606 / 0.616; the last epochs average the noisy wholesale weeks instead of chasing them.
    steps = params.epochs * -(-len(targets) // params.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(params.learning_rate, decay_steps=max(steps, 1))
    network.compile(optimizer=keras.optimizers.Adam(schedule), loss=pinball_loss)
    unit = float(targets.mean()) or 1.0
    history = network.fit(encoded, targets, batch_size=params.batch_size, epochs=params.epochs, shuffle=True, verbose=0)
    return network, [float(v) / unit for v in history.history["loss"]], int(len(targets)), prepare_s


def validate(panel: Any, params: DemandTrainParams, train_weeks: int, seasonal: bool, categories: list[str],
             product_ids: list[int]) -> dict[str, Any]:
    """Fit on the weeks before the last ``params.validation_weeks`` of the training weeks, forecast
    those weeks (scored like the holdout: products sold in the 13 weeks before them, units as known
    at the cutoff) and choose the :class:`Calibration` there. The holdout is never read: whatever
    the trainer chooses, it chooses on its own weeks. Returns the report (``calibration`` absent,
    with a ``skipped`` reason, when the validation cannot run: too little history, no sale in it)."""
    from ecom_ml.demand.evaluation import forecast_metrics
    from ecom_ml.demand.features import model_inputs

    weeks = params.validation_weeks
    if not weeks:
        return {"skipped": "validation_weeks=0"}
    anchor = train_weeks - weeks
    scored = min(weeks, params.horizon_weeks)
    if anchor - panel.first_order_week() < params.horizon_weeks + 1:
        reason = (f"{anchor - panel.first_order_week()} week(s) with orders before the {weeks} validation weeks; "
                  f"a validation fit needs {params.horizon_weeks + 1}: the network's forecast is not calibrated")
        _log(reason)
        return {"skipped": reason}
    network, losses, examples, _ = fit(panel, params, anchor, seasonal, categories, product_ids)
    rows = np.flatnonzero(panel.active(anchor))
    actual = panel.known(train_weeks)[rows, anchor:anchor + scored]
    if network is None or len(rows) == 0 or actual.sum() <= 0:
        reason = f"no units sold in the {weeks} validation weeks or before them: the forecast is not calibrated"
        _log(reason)
        return {"skipped": reason}
    model = DemandForecaster(network, product_ids, categories,
                             {"horizon_weeks": params.horizon_weeks, "history_len": params.history_len,
                              "seasonal": seasonal, "priced": True})
    p50, p90 = model.network_forecast(model_inputs(panel, rows, np.full(len(rows), anchor), params.history_len,
                                                   params.horizon_weeks, seasonal))
    p50, p90 = p50[:, :scored], p90[:, :scored]
    calibration = choose_calibration(actual, p50, p90)
    raw, calibrated = forecast_metrics(actual, p50, p90), forecast_metrics(actual, *calibration.apply(p50, p90))
    report = {"weeks": weeks, "start": panel.params.week_start(anchor).date().isoformat(), "products": int(len(rows)),
              "train_examples": examples, "calibration": calibration.to_dict(),
              **{f"{key}_network": round(raw[key], 4) for key in ("wape", "bias", "coverage_p90")},
              **{key: round(calibrated[key], 4) for key in ("wape", "bias", "coverage_p90")}}
    _log(f"validation ({weeks} weeks from {report['start']}, {len(rows):,} products): WAPE {raw['wape']:.4f} -> "
         f"{calibrated['wape']:.4f}, p90 coverage {raw['coverage_p90']:.3f} -> {calibrated['coverage_p90']:.3f} "
         f"with {calibration.to_dict()}")
    return report


def train(request: TrainRequest) -> dict[str, Any]:
    """The registry's trainer: read the day's demand features, fit, write ``<out>/model/``."""
    import keras

    from ecom_ml.demand.features import SEASONAL_WEEKS, DemandFeatureError, Panel, read_features
    from ecom_ml.lake import Lake

    params = DemandTrainParams.from_overrides(dict(request.params))
    started = time.perf_counter()
    root, day = resolve_features(request.features, request.day)
    try:
        fparams, tables = read_features(Lake(root), day)
    except DemandFeatureError:
        raise  # already one line naming the day and the lake
    except FileNotFoundError as exc:
        raise DemandModelError(f"no demand features for {day} under {root} ({exc})") from None
    params = replace(params, history_len=params.history_len or fparams.history_len,
                     holdout_days=params.holdout_days or fparams.holdout_days)
    train_weeks = fparams.weeks - params.holdout_days // 7
    if train_weeks < params.horizon_weeks + 1:
        raise DemandModelError(f"demand features of {day} have {fparams.weeks} weeks: a {params.holdout_days}-day holdout "
                               f"leaves {train_weeks} to train on, fewer than the {params.horizon_weeks}-week horizon + 1")
    panel = Panel.from_tables(fparams, tables)
    history = train_weeks - panel.first_order_week()
    if history < params.horizon_weeks + 1:
        raise DemandModelError(
            f"demand features of {day}: the lake has orders from {fparams.week_start(panel.first_order_week()).date()} "
            f"only, {max(history, 0)} week(s) before the {params.holdout_days}-day holdout; training needs at least "
            f"{params.horizon_weeks + 1} (load more history, or wait)")
    read_s = time.perf_counter() - started
    cutoff = fparams.end - timedelta(days=params.holdout_days)

    seasonal = train_weeks >= SEASONAL_WEEKS
    categories = sorted({str(c) for c in panel.categories})
    product_ids = [int(p) for p in panel.product_ids]

    t = time.perf_counter()
    calibration, validation = Calibration(), validate(panel, params, train_weeks, seasonal, categories, product_ids)
    if validation.get("calibration"):
        calibration = Calibration(**validation["calibration"])
    validation_s = time.perf_counter() - t

    t = time.perf_counter()
    network, losses, examples, prepare_s = fit(panel, params, train_weeks, seasonal, categories, product_ids)
    if examples == 0:
        raise DemandModelError(f"demand features of {day}: no product sold in the {train_weeks} weeks before "
                               f"{cutoff.date()}: nothing to learn from")
    train_s = time.perf_counter() - t - prepare_s
    _log(f"{examples:,} examples ({len(product_ids):,} products x {train_weeks} weeks before {cutoff.isoformat()}): "
         f"pinball loss (per mean weekly unit) {losses[0]:.4f} -> {losses[-1]:.4f} in {train_s:.1f} s; "
         f"calibration {calibration.to_dict()}")

    t = time.perf_counter()
    meta = {
        "format": FORMAT_VERSION, "kind": KIND,
        "cutoff": cutoff.isoformat(), "horizon_weeks": params.horizon_weeks, "history_len": params.history_len,
        "seasonal": seasonal, "priced": True, "calibration": calibration.to_dict(),
        "quantiles": list(QUANTILES), "n_products": len(product_ids), "n_categories": len(categories),
        "features": {"root": root, "day": day.isoformat()}, "params": params.to_dict(),
        "backend": keras.backend.backend(), "keras_version": keras.__version__,
    }

    def write_files(folder: Path) -> dict[str, str]:
        network.save(folder / KERAS_FILE)
        (folder / VOCAB_FILE).write_text(json.dumps({"product_ids": product_ids, "categories": categories}))
        return {"keras": KERAS_FILE, "vocab": VOCAB_FILE}

    written = write_model_dir(request.out, write_files, meta, prefix="ecom-train-demand-")
    export_s = time.perf_counter() - t
    return {
        "model_uri": written.uri,
        "artifacts": written.artifacts,
        "features": {"root": root, "day": day.isoformat(), "cutoff": cutoff.isoformat(),
                     "holdout_days": params.holdout_days},
        "metrics": {"final_loss": losses[-1], "first_loss": losses[0], "loss_per_epoch": losses,
                    "train_examples": int(examples), "products": len(product_ids),
                    "parameters": int(network.count_params()), "validation": validation},
        "model_size_bytes": written.size_bytes,
        "seconds": {"read": round(read_s, 3), "validation": round(validation_s, 3), "prepare": round(prepare_s, 3),
                    "train": round(train_s, 3), "export": round(export_s, 3)},
        "backend": keras.backend.backend(),
        "params": params.to_dict(),
    }
