"""The two-tower retrieval model, in Keras 3 with ``keras`` and ``keras.ops`` only.

Import-light on purpose: this module imports ``keras`` and ``numpy`` and nothing of TensorFlow,
pyarrow or Airflow, so the same model trains under ``KERAS_BACKEND=tensorflow`` (the trainer image),
``KERAS_BACKEND=jax`` (the GPU benchmark machine has JAX but no TensorFlow) and serves on a CPU.

Shape of the model (indices, not raw ids: ``ecom_ml.models.recommender`` owns the id mappings)

* **user tower**: ``user`` index (0 = out-of-vocabulary, i.e. a customer the model has not seen),
  ``history`` (the last ``history_len`` distinct item indices, most recent first, 0 = padding) and
  ``history_counts`` (how often the customer bought each of them). The history is pooled by masked
  attention with learned recency (position) and purchase-count biases - recent and habitual
  purchases say more about the next one, and a learned pooling finds out by how much - or by a
  masked mean (``pooling="mean"``). Concatenated with the customer's own embedding, an MLP,
  L2-normalised.
* **item tower**: item index plus catalogue features (category, price band, age band) held *inside*
  the model as non-trainable lookup tables, so the model owns its catalogue and an item with few
  purchases still has a representation. Summed feature embeddings, concatenated with the id
  embedding, an MLP, L2-normalised.
* **score** ``s(u, i) = (<u, i> + b_i + r(u, i)) / temperature`` where ``b_i`` is a learned item bias
  (with unit-norm embeddings popularity has no natural place in the dot product, so it gets a scalar
  of its own) and ``r(u, i)`` is the *repeat bias* below. All three terms live on the cosine scale and
  share the temperature, so one Adam learning rate moves them at comparable speeds.

Why a repeat bias, and why this one. In retail what a customer bought before is the strongest
signal (design.md: the repeat-purchase baseline beats popularity by 2x and beats item-item models on
the real data). A dot product of two towers can only express "u is close to i", which has to be
learned per pair and is diluted by everything else the embedding must encode; the fact "i is in u's
own history, bought n times, k purchases ago" is exact and available at serving time. So each
history entry adds to its own item's score a learned weight for its recency position, for its
purchase-count bucket (1, 2-3, 4-7, ...) and for the item's repeatability (staples and consumables
are re-bought, a sofa is not)::

    r(u, i) = sum_j [h_j == i] * (w_pos[j] + w_count[bucket(n_j)] + w_item[i])

It is trained jointly, inside the same sampled softmax as the towers: the in-batch logits carry ``r``
for every (user, candidate) pair, so the model learns how much a past purchase is worth *relative
to* the two-tower similarity and the popularity bias - the repeat baseline (own items by purchase
count), generalised and calibrated, while new items still come from the towers. Nothing ever
*excludes* past items: the model ranks them, it does not filter them. Without the count term the
model only matched "own items by recency" on generated data; with it, it beats "own items by count".

Training objective: in-batch sampled softmax with the log-Q correction (Yi et al., RecSys 2019).
Each row's positive is its own item; the other rows' items are its negatives. Items enter a batch in
proportion to their frequency ``q_i`` among the training examples, so popular items are
over-represented as negatives; subtracting ``log q_i`` from every logit of column ``i`` makes the
sampled softmax an estimate of the full-catalogue softmax rather than a popularity-penalising one.
Accidental hits (the same item as the row's positive in another column) are masked. Rows are
weighted by the recency weight of their interaction. The temperature (0.25 by default in training,
see ``recommender.TrainParams``) was chosen on generated data: 0.05 overfits the id embeddings and
drowns the repeat term; 0.2-0.3 was best.

Cost. The batch is laid out in item order and each distinct item is counted once with ``log`` of
its multiplicity (``sampled_softmax_loss``, equal to the textbook loss), so the repeat term is a
``B * H`` scatter into the ``(B, B)`` logits rather than ``B * H * B`` comparisons: on the reference
shape it adds about one ``(B, B)`` pass to a step that already makes several (see bench/train_gpu.py).

Serving: ``catalogue_embeddings()`` runs the item tower once over the whole catalogue; a request runs
only the user tower, one matrix product against that matrix, scatters the repeat bias onto the
request's own history, and takes ``keras.ops.top_k``. Serving is exact retrieval over the catalogue
(no approximate index): at a few hundred thousand items a dense product is a few milliseconds on a CPU.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops

#: Registration package for ``.keras`` files: ``ecom_ml>TwoTower``.
PACKAGE = "ecom_ml"
#: Price bands are 0..4 in the features; index 0 of the table is "unknown", so band b is index b + 1.
PRICE_BANDS = 5
#: Item age bands (log2 of days on sale as of training, see ``recommender.age_band``), plus "unknown".
AGE_BANDS = 12
#: Purchase-count buckets of a history item: floor(log2(count)) capped, i.e. 1, 2-3, 4-7, ... 128+.
COUNT_BUCKETS = 8
#: Finite "minus infinity" for masked logits: exp() underflows to exactly 0 and gradients stay finite.
MASKED = -1e9


# -- loss pieces, as plain functions so they can be checked by hand ----------------------------------


def logq_correct(scores: Any, log_q: Any) -> Any:
    """Subtract each candidate column's log sampling probability from its logits.

    ``scores`` is ``(B, C)`` (rows = users, columns = in-batch candidate items) and ``log_q`` is
    ``(C,)``: ``log`` of the probability that a random training example carries that item.
    """
    return scores - ops.expand_dims(log_q, 0)


def mask_accidental_hits(logits: Any, items: Any) -> Any:
    """Mask column ``c`` of row ``b`` when ``items[c] == items[b]`` and ``c != b``.

    Such a column is the row's own positive sampled again by another example; as a "negative" it
    would push the positive's score down.
    """
    n = ops.shape(items)[0]
    same = ops.equal(ops.expand_dims(items, 1), ops.expand_dims(items, 0))
    positions = ops.arange(n)
    off_diagonal = ops.not_equal(ops.expand_dims(positions, 1), ops.expand_dims(positions, 0))
    return ops.where(ops.logical_and(same, off_diagonal), ops.cast(MASKED, logits.dtype), logits)


def in_batch_softmax_loss(logits: Any, sample_weight: Any | None = None) -> Any:
    """Weighted mean over rows of ``-log softmax(logits)[b, b]`` (row b's positive is column b).

    With ``logq_correct`` and ``mask_accidental_hits`` this is the textbook in-batch objective; the
    model trains on ``sampled_softmax_loss``, which equals it and needs no repeat term on duplicates.
    """
    return _weighted_mean(-ops.diagonal(ops.log_softmax(logits, axis=1)), sample_weight)


def _weighted_mean(values: Any, sample_weight: Any | None) -> Any:
    if sample_weight is None:
        return ops.mean(values)
    w = ops.cast(ops.reshape(sample_weight, (-1,)), values.dtype)
    return ops.sum(values * w) / ops.maximum(ops.sum(w), ops.cast(1e-12, values.dtype))


def item_runs(sorted_items: Any) -> tuple[Any, Any]:
    """For items sorted ascending: each position's run start (first position of its item) and run length."""
    lo = ops.searchsorted(sorted_items, sorted_items, side="left")
    hi = ops.searchsorted(sorted_items, sorted_items, side="right")
    return ops.cast(lo, "int32"), ops.cast(hi - lo, "float32")


def sampled_softmax_loss(scores: Any, sorted_items: Any, log_q: Any, sample_weight: Any | None = None) -> Any:
    """The in-batch softmax loss with log-Q correction and accidental hits masked, over distinct items.

    ``scores`` is ``(B, B)`` with rows and columns in item order (``sorted_items``; example ``i`` is
    row and column ``i``), ``log_q`` and ``sample_weight`` aligned with it. An item that fills ``m``
    columns is kept once, in the first column of its run, with ``+log m`` on its logit for every row
    but its own (``m`` equal terms ``exp(l)`` are ``exp(l + log m)``; a row's own item counts once, as
    the accidental-hit mask leaves it), and row ``i``'s positive is the first column of its item's run.
    Exactly ``logq_correct`` + ``mask_accidental_hits`` + ``in_batch_softmax_loss``, but the other
    columns of a run are never read - so the repeat term need not be computed for them.
    """
    n = ops.shape(sorted_items)[0]
    start, multiplicity = item_runs(sorted_items)
    positions = ops.arange(n, dtype="int32")
    first = ops.equal(start, positions)  # (B,) column is the first of its run
    own = ops.equal(ops.expand_dims(start, 1), ops.expand_dims(positions, 0))  # (B, B): the row's own item
    logits = logq_correct(scores, log_q) + ops.where(own, 0.0, ops.expand_dims(ops.log(multiplicity), 0))
    logits = ops.where(ops.expand_dims(first, 0), logits, ops.cast(MASKED, logits.dtype))
    positive = ops.take_along_axis(logits, ops.expand_dims(start, 1), axis=1)[:, 0]
    return _weighted_mean(ops.logsumexp(logits, axis=1) - positive, sample_weight)


# -- the model ---------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=PACKAGE)
class TwoTower(keras.Model):
    """Two-tower retrieval model with a jointly trained repeat bias (see the module docstring).

    Inputs of ``call`` (a dict, int32): ``user`` ``(B,)``, ``history`` and ``history_counts``
    ``(B, history_len)`` (counts optional: 1 per item when absent), ``item`` ``(B,)``. ``call``
    returns the ``(B, B)`` score matrix of every batch user against every batch item (in item order,
    see ``call``); ``compute_loss`` turns it into the log-Q corrected in-batch softmax loss, so plain
    ``model.fit(x, sample_weight=w)`` trains it on any backend.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        n_categories: int,
        embedding_dim: int = 64,
        hidden_dim: int = 256,
        history_len: int = 20,
        temperature: float = 0.25,
        pooling: str = "attention",
        repeat_bias: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if pooling not in ("attention", "mean"):
            raise ValueError(f"pooling must be 'attention' or 'mean', not {pooling!r}")
        if min(n_users, n_items, n_categories, embedding_dim, hidden_dim, history_len) < 1:
            raise ValueError("sizes must be positive")
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self.n_categories = int(n_categories)
        self.embedding_dim = int(embedding_dim)
        self.hidden_dim = int(hidden_dim)
        self.history_len = int(history_len)
        self.temperature = float(temperature)
        self.pooling = pooling
        self.repeat_bias = bool(repeat_bias)
        d, h = self.embedding_dim, self.hidden_dim

        # Index 0 of every table is reserved: OOV customer, padding item, unknown category/band/age.
        self.user_embedding = layers.Embedding(self.n_users + 1, d, name="user_embedding")
        self.history_embedding = layers.Embedding(self.n_items + 1, d, name="history_embedding")
        self.item_embedding = layers.Embedding(self.n_items + 1, d, name="item_embedding")
        self.category_embedding = layers.Embedding(self.n_categories + 1, d, name="category_embedding")
        self.band_embedding = layers.Embedding(PRICE_BANDS + 1, d, name="band_embedding")
        self.age_embedding = layers.Embedding(AGE_BANDS + 1, d, name="age_embedding")
        self.user_hidden = layers.Dense(h, activation="relu", name="user_hidden")
        self.user_out = layers.Dense(d, name="user_out")
        self.item_hidden = layers.Dense(h, activation="relu", name="item_hidden")
        self.item_out = layers.Dense(d, name="item_out")
        for emb in (
            self.user_embedding,
            self.history_embedding,
            self.item_embedding,
            self.category_embedding,
            self.band_embedding,
            self.age_embedding,
        ):
            emb.build((None,))
        for dense, width in (
            (self.user_hidden, 2 * d),
            (self.user_out, h),
            (self.item_hidden, 2 * d),
            (self.item_out, h),
        ):
            dense.build((None, width))

        zeros = keras.initializers.Zeros()
        self.history_query = self.add_weight(shape=(d,), initializer=zeros, name="history_query")
        self.history_position = self.add_weight(shape=(self.history_len,), initializer=zeros, name="history_position")
        self.item_bias = self.add_weight(shape=(self.n_items + 1,), initializer=zeros, name="item_bias")
        self.repeat_position = self.add_weight(shape=(self.history_len,), initializer=zeros, name="repeat_position")
        self.repeat_item = self.add_weight(shape=(self.n_items + 1,), initializer=zeros, name="repeat_item")
        self.repeat_count = self.add_weight(shape=(COUNT_BUCKETS,), initializer=zeros, name="repeat_count")
        self.history_count = self.add_weight(shape=(COUNT_BUCKETS,), initializer=zeros, name="history_count")
        # The catalogue: per item index, its feature indices and log sampling probability. Set with
        # ``set_catalogue``; saved with the weights, so a loaded model carries its own catalogue.
        n = self.n_items + 1
        self.item_category = self.add_weight(
            shape=(n,), initializer=zeros, dtype="int32", trainable=False, name="item_category"
        )
        self.item_band = self.add_weight(
            shape=(n,), initializer=zeros, dtype="int32", trainable=False, name="item_band"
        )
        self.item_age = self.add_weight(shape=(n,), initializer=zeros, dtype="int32", trainable=False, name="item_age")
        self.item_log_q = self.add_weight(
            shape=(n,), initializer=zeros, dtype="float32", trainable=False, name="item_log_q"
        )
        self.built = True
        self._catalogue_cache: Any = None

    # -- configuration ---------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            n_users=self.n_users,
            n_items=self.n_items,
            n_categories=self.n_categories,
            embedding_dim=self.embedding_dim,
            hidden_dim=self.hidden_dim,
            history_len=self.history_len,
            temperature=self.temperature,
            pooling=self.pooling,
            repeat_bias=self.repeat_bias,
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TwoTower:
        return cls(**config)

    def build(self, input_shape: Any = None) -> None:  # everything is built in __init__
        self.built = True

    def set_catalogue(self, category: np.ndarray, band: np.ndarray, age: np.ndarray, log_q: np.ndarray) -> None:
        """Install the per-item feature indices and log sampling probabilities (length ``n_items + 1``)."""
        n = self.n_items + 1
        for name, values in (("category", category), ("band", band), ("age", age), ("log_q", log_q)):
            if np.shape(values) != (n,):
                raise ValueError(f"{name} must have shape ({n},), not {np.shape(values)}")
        self.item_category.assign(np.asarray(category, dtype="int32"))
        self.item_band.assign(np.asarray(band, dtype="int32"))
        self.item_age.assign(np.asarray(age, dtype="int32"))
        self.item_log_q.assign(np.asarray(log_q, dtype="float32"))
        self._catalogue_cache = None

    # -- towers ----------------------------------------------------------------------------------

    @staticmethod
    def count_buckets(history: Any, counts: Any | None) -> Any:
        """Bucket index ``(B, H)`` of each history item's purchase count (count 1 when not given)."""
        if counts is None:
            return ops.zeros(ops.shape(history), dtype="int32")
        c = ops.maximum(ops.cast(counts, "float32"), 1.0)
        return ops.cast(ops.minimum(ops.floor(ops.log2(c)), COUNT_BUCKETS - 1), "int32")

    def _pool_history(self, history: Any, buckets: Any) -> Any:
        """Masked pooling of the history item embeddings; all-padding rows pool to zeros."""
        emb = self.history_embedding(history)  # (B, H, D)
        mask = ops.greater(history, 0)
        maskf = ops.cast(mask, emb.dtype)
        if self.pooling == "mean":
            total = ops.sum(emb * ops.expand_dims(maskf, -1), axis=1)
            return total / ops.maximum(ops.sum(maskf, axis=1, keepdims=True), 1.0)
        attn = (
            ops.matmul(emb, self.history_query) + self.history_position + ops.take(self.history_count, buckets, axis=0)
        )
        attn = ops.softmax(ops.where(mask, attn, MASKED), axis=1) * maskf
        attn = attn / ops.maximum(ops.sum(attn, axis=1, keepdims=True), 1e-9)
        return ops.sum(emb * ops.expand_dims(attn, -1), axis=1)

    def user_vectors(self, user: Any, history: Any, buckets: Any) -> Any:
        """Unit-norm user embeddings ``(B, D)`` from user indices ``(B,)``, histories and count buckets ``(B, H)``."""
        x = ops.concatenate([self.user_embedding(user), self._pool_history(history, buckets)], axis=-1)
        return ops.normalize(self.user_out(self.user_hidden(x)), axis=-1)

    def item_vectors(self, item: Any) -> Any:
        """Unit-norm item embeddings ``(C, D)`` from item indices ``(C,)``."""
        features = (
            self.category_embedding(ops.take(self.item_category, item, axis=0))
            + self.band_embedding(ops.take(self.item_band, item, axis=0))
            + self.age_embedding(ops.take(self.item_age, item, axis=0))
        )
        x = ops.concatenate([self.item_embedding(item), features], axis=-1)
        return ops.normalize(self.item_out(self.item_hidden(x)), axis=-1)

    def _repeat_weights(self, history: Any, buckets: Any) -> Any:
        """What each history entry adds to its own item's score ``(B, H)``: recency + count + item terms."""
        weights = (
            ops.expand_dims(self.repeat_position, 0)
            + ops.take(self.repeat_count, buckets, axis=0)
            + ops.take(self.repeat_item, history, axis=0)
        )
        return weights * ops.cast(ops.greater(history, 0), weights.dtype)

    def repeat_scores(self, history: Any, buckets: Any, items: Any) -> Any:
        """``r(u, i)`` of every history row against every item in ``items``: ``(B, C)``.

        The plain definition, by ``B * H * C`` comparisons. Training (``repeat_scores_first``) and
        serving (``serve_scores``) compute the same values by scattering ``B * H`` updates instead;
        this one is the reference the tests hold them to.
        """
        match = ops.logical_and(
            ops.equal(ops.expand_dims(history, 2), ops.reshape(items, (1, 1, -1))),
            ops.expand_dims(ops.greater(history, 0), 2),
        )
        matchf = ops.cast(match, "float32")  # (B, H, C)
        return ops.sum(matchf * ops.expand_dims(self._repeat_weights(history, buckets), 2), axis=1)

    def repeat_scores_first(self, history: Any, buckets: Any, sorted_items: Any) -> Any:
        """``repeat_scores`` against ``sorted_items`` (sorted ascending), exact in each run's first column.

        Each history entry finds its item's run by ``searchsorted`` and adds its weight at the run's
        first column: ``B * H`` scattered values instead of ``B * H * B`` comparisons (forwards, and
        again backwards). Other columns of a run read 0 - ``sampled_softmax_loss`` never reads them.
        """
        n = ops.shape(sorted_items)[0]
        flat = ops.reshape(history, (-1,))
        slot = ops.minimum(ops.cast(ops.searchsorted(sorted_items, flat, side="left"), "int32"), n - 1)
        found = ops.logical_and(ops.equal(ops.take(sorted_items, slot, axis=0), flat), ops.greater(flat, 0))
        rows = ops.reshape(
            ops.repeat(ops.expand_dims(ops.arange(n, dtype="int32"), 1), self.history_len, axis=1), (-1,)
        )
        weights = ops.reshape(self._repeat_weights(history, buckets), (-1,)) * ops.cast(found, "float32")
        return ops.scatter(ops.stack([rows, slot], axis=1), weights, (n, n))

    @staticmethod
    def batch_order(item: Any) -> Any:
        """The order ``call`` lays a batch out in: by item, so equal items sit in adjacent columns."""
        return ops.argsort(item)

    def call(self, inputs: dict[str, Any], training: bool = False) -> Any:
        """Scores ``(B, B)`` of every batch user (row) against every batch item (column).

        Rows and columns come in ``batch_order(inputs["item"])`` - example ``order[i]`` is row and
        column ``i``, so positives stay on the diagonal - and a column repeating the item of the
        column before it is ``MASKED``: the loss counts each distinct item once, with its
        multiplicity (``sampled_softmax_loss``), which is what lets the repeat term be a scatter.
        """
        order = self.batch_order(inputs["item"])
        item = ops.take(inputs["item"], order, axis=0)
        history = ops.take(inputs["history"], order, axis=0)
        counts = inputs.get("history_counts")
        buckets = self.count_buckets(history, None if counts is None else ops.take(counts, order, axis=0))
        u = self.user_vectors(ops.take(inputs["user"], order, axis=0), history, buckets)
        v = self.item_vectors(item)
        scores = ops.matmul(u, ops.transpose(v)) + ops.expand_dims(ops.take(self.item_bias, item, axis=0), 0)
        if self.repeat_bias:
            scores = scores + self.repeat_scores_first(history, buckets, item)
        scores = scores / self.temperature
        start, _ = item_runs(item)
        first = ops.equal(start, ops.arange(ops.shape(item)[0], dtype="int32"))
        return ops.where(ops.expand_dims(first, 0), scores, ops.cast(MASKED, scores.dtype))

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        """Log-Q corrected in-batch softmax over the batch's distinct items; ``y`` is unused."""
        order = self.batch_order(x["item"])
        item = ops.take(x["item"], order, axis=0)
        weight = None if sample_weight is None else ops.take(ops.reshape(sample_weight, (-1,)), order, axis=0)
        loss = sampled_softmax_loss(y_pred, item, ops.take(self.item_log_q, item, axis=0), weight)
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    # -- serving ---------------------------------------------------------------------------------

    def catalogue_embeddings(self, refresh: bool = False) -> Any:
        """Item tower over the whole catalogue, computed once and cached: ``(n_items + 1, D)``.

        Only this derived matrix is cached; variables (item bias, repeat weights) are always read as
        variables, so a compiled serving function never holds a buffer the backend may replace.
        """
        if self._catalogue_cache is None or refresh:
            self._catalogue_cache = self.item_vectors(ops.arange(self.n_items + 1, dtype="int32"))
        return self._catalogue_cache

    def serve_scores(self, user: Any, history: Any, counts: Any | None = None) -> Any:
        """Scores of each request row against the whole catalogue: ``(B, n_items + 1)``.

        Column 0 (padding) is masked. The repeat bias is scattered onto each row's own history
        (``B * H`` updates) instead of compared against every catalogue item.
        """
        matrix = self.catalogue_embeddings()
        user = ops.convert_to_tensor(user, dtype="int32")
        history = ops.convert_to_tensor(history, dtype="int32")
        buckets = self.count_buckets(history, None if counts is None else ops.convert_to_tensor(counts, dtype="int32"))
        u = self.user_vectors(user, history, buckets)
        scores = ops.matmul(u, ops.transpose(matrix)) + ops.expand_dims(self.item_bias, 0)
        n_rows = ops.shape(history)[0]
        n_cols = self.n_items + 1
        if self.repeat_bias:
            rows = ops.repeat(ops.expand_dims(ops.arange(n_rows, dtype="int32"), 1), self.history_len, axis=1)
            index = ops.stack([ops.reshape(rows, (-1,)), ops.reshape(history, (-1,))], axis=1)
            weights = ops.reshape(self._repeat_weights(history, buckets), (-1,))
            scores = scores + ops.scatter(index, weights, (n_rows, n_cols))
        pad = ops.expand_dims(ops.equal(ops.arange(n_cols), 0), 0)
        return ops.where(pad, MASKED, scores / self.temperature)

    def serve_top_k(self, user: Any, history: Any, k: int, counts: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item indices (best first) and their scores for each request row, as numpy.

        Op by op (eager); for repeated requests use a ``TopKServer``, which compiles the same ops.
        """
        k = min(int(k), self.n_items)
        values, indices = ops.top_k(self.serve_scores(user, history, counts), k)
        return ops.convert_to_numpy(indices).astype(np.int64), ops.convert_to_numpy(values)


class TopKServer(keras.Model):
    """The compiled serving function of a ``TwoTower``: request rows in, top-``k`` indices out.

    A thin Keras model so that ``predict_on_batch`` compiles ``serve_top_k``'s ops on any backend (a
    traced graph on TensorFlow, ``jax.jit`` on JAX): executed op by op the ~30 small ops cost ~10 ms
    a request on a CPU, nearly all dispatch. Not saved - rebuilt from a loaded ``TwoTower``, whose
    catalogue matrix (computed eagerly here, once) the compiled function closes over.
    """

    def __init__(self, tower: TwoTower, k: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        tower.catalogue_embeddings()
        self.tower = tower
        self.k = min(int(k), tower.n_items)

    def top_k(
        self, user: np.ndarray, history: np.ndarray, counts: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``serve_top_k`` for numpy request rows, compiled."""
        history = np.asarray(history, dtype=np.int32)
        counts = (history > 0).astype(np.int32) if counts is None else np.asarray(counts, dtype=np.int32)
        out = self.predict_on_batch(
            {"user": np.asarray(user, dtype=np.int32), "history": history, "history_counts": counts}
        )
        return np.asarray(out["indices"]).astype(np.int64), np.asarray(out["values"])

    def call(self, inputs: dict[str, Any]) -> dict[str, Any]:
        scores = self.tower.serve_scores(inputs["user"], inputs["history"], inputs["history_counts"])
        values, indices = ops.top_k(scores, self.k)
        return {"indices": indices, "values": values}


def build_two_tower(
    n_users: int,
    n_items: int,
    n_categories: int,
    *,
    embedding_dim: int = 64,
    hidden_dim: int = 256,
    history_len: int = 20,
    temperature: float = 0.25,
    pooling: str = "attention",
    repeat_bias: bool = True,
    learning_rate: float = 1e-3,
    jit_compile: bool | str = True,
) -> TwoTower:
    """A compiled ``TwoTower`` (Adam), ready for ``fit``."""
    model = TwoTower(
        n_users,
        n_items,
        n_categories,
        embedding_dim=embedding_dim,
        hidden_dim=hidden_dim,
        history_len=history_len,
        temperature=temperature,
        pooling=pooling,
        repeat_bias=repeat_bias,
    )
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=jit_compile)
    return model
