"""Benchmark: the project's two-tower training step against the reference's hand-jitted Keras step.

Runs, in one process and at one shape, /work/shared/bench/two_tower_ref.py's ``keras_jit`` variant
(Keras 3 model, JAX train step jitted by hand, batches resident on the device) and the project's
``TwoTower`` trained by the same kind of step (``stateless_call`` + the model's own ``compute_loss``
+ ``optimizer.stateless_apply`` under ``jax.jit``), and prints samples/s of both and their ratio
(target: project >= 0.8 x reference). The project's model does more per step than the reference -
attention pooling, three item features, item bias, log-Q correction, accidental-hit masking and the
(B x H x B) repeat-bias term - so the ratio is the price of those, on the same harness.

Shapes: the reference's (1M users, 200k items, 1k categories, history 20, dim 64, hidden 256, batch
8192, synthetic ids) on a GPU; ``--small`` - or automatically without a GPU - 20k users, 5k items,
100 categories, batch 1024, a few steps, so the same figures print on a laptop CPU.

Backends: JAX when it is importable (the GPU machine has JAX and PyTorch, no TensorFlow; nothing
here imports TensorFlow, and the model module imports only ``keras``). Without JAX (this project's
CPU machines have TensorFlow only) there is no ``keras_jit`` to run; the benchmark then compares
``model.fit`` of the reference's Keras model with ``model.fit`` of the project's, both XLA-compiled
(what ``jit_compile="auto"`` means on JAX), and says so.

    python bench/train_gpu.py [--small] [--steps N] [--batch N] [--repeat N] [--ref PATH] [--with-fit] [--ablate]

``--ref`` defaults to ``../shared/bench/two_tower_ref.py`` beside the repository, else a copy in the
git-ignored ``.devbench/`` folder (for a machine that gets the working tree but not shared/).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))

TARGET_RATIO = 0.8
_HAS_JAX = importlib.util.find_spec("jax") is not None
if _HAS_JAX:
    os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported anywhere

import numpy as np  # noqa: E402


@dataclass(frozen=True)
class Shape:
    users: int
    items: int
    categories: int
    history: int
    dim: int
    batch: int
    steps: int


FULL = Shape(users=1_000_000, items=200_000, categories=1_000, history=20, dim=64, batch=8192, steps=300)
SMALL = Shape(users=20_000, items=5_000, categories=100, history=20, dim=64, batch=1024, steps=20)


def _default_ref() -> Path:
    for candidate in (REPO.parent / "shared" / "bench" / "two_tower_ref.py", REPO / ".devbench" / "two_tower_ref.py"):
        if candidate.exists():
            return candidate
    return REPO.parent / "shared" / "bench" / "two_tower_ref.py"


def load_reference(path: Path, shape: Shape) -> ModuleType:
    """Import the reference module and set its module-level shape to ``shape``."""
    if not path.exists():
        raise SystemExit(f"train_gpu: error: no reference benchmark at {path} (pass --ref PATH)")
    spec = importlib.util.spec_from_file_location("two_tower_ref", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.NU, module.NI, module.NC, module.H, module.D = (
        shape.users,
        shape.items,
        shape.categories,
        shape.history,
        shape.dim,
    )
    module.B, module.STEPS = shape.batch, shape.steps
    return module


def project_batch(shape: Shape, n: int, seed: int) -> dict[str, np.ndarray]:
    """Synthetic ids like the reference's, plus the history purchase counts the project's model reads."""
    r = np.random.default_rng(seed)
    return {
        "user": r.integers(0, shape.users + 1, n, dtype=np.int32),
        "history": r.integers(0, shape.items + 1, (n, shape.history), dtype=np.int32),
        "history_counts": r.integers(1, 5, (n, shape.history), dtype=np.int32),
        "item": r.integers(1, shape.items + 1, n, dtype=np.int32),
    }


def project_model(shape: Shape, repeat_bias: bool = True, pooling: str = "attention") -> Any:
    """The project's TwoTower at ``shape`` with a random catalogue (category per item, log-Q from Zipf)."""
    from ecom_ml.models.two_tower import AGE_BANDS, PRICE_BANDS, build_two_tower

    model = build_two_tower(
        shape.users,
        shape.items,
        shape.categories,
        embedding_dim=shape.dim,
        hidden_dim=256,
        history_len=shape.history,
        repeat_bias=repeat_bias,
        pooling=pooling,
        learning_rate=1e-3,
    )
    r = np.random.default_rng(1)
    n = shape.items + 1
    q = 1.0 / np.arange(1, n + 1)
    model.set_catalogue(
        r.integers(1, shape.categories + 1, n),
        r.integers(1, PRICE_BANDS + 1, n),
        r.integers(1, AGE_BANDS + 1, n),
        np.log(q / q.sum()),
    )
    return model


def project_jit(shape: Shape, **model_kwargs: Any) -> float:
    """samples/s of the project's model with a hand-jitted stateless step on device-resident batches.

    The same harness as the reference's ``keras_jit`` (8 resident batches, 10 warm-up steps, then
    ``steps`` timed), but the loss is the model's own ``compute_loss`` (log-Q, masking, weights).
    """
    import jax
    import jax.numpy as jnp

    model = project_model(shape, **model_kwargs)
    opt = model.optimizer
    opt.build(model.trainable_variables)
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    mv = [v.value for v in model.metrics_variables]
    ov = [v.value for v in opt.variables]

    def loss_fn(tv: list, ntv: list, x: dict, w: Any) -> tuple[Any, list]:
        y_pred, ntv = model.stateless_call(tv, ntv, x, training=True)
        loss, (_, ntv, _) = model.stateless_compute_loss(tv, ntv, mv, x=x, y_pred=y_pred, sample_weight=w)
        return loss, ntv

    @jax.jit
    def step(tv: list, ntv: list, ov: list, x: dict, w: Any) -> tuple:
        (loss, ntv), grads = jax.value_and_grad(loss_fn, has_aux=True)(tv, ntv, x, w)
        tv, ov = opt.stateless_apply(ov, grads, tv)
        return tv, ntv, ov, loss

    batches = [{k: jnp.asarray(v) for k, v in project_batch(shape, shape.batch, s).items()} for s in range(8)]
    weight = jnp.ones((shape.batch,), dtype=jnp.float32)
    for s in range(10):
        tv, ntv, ov, loss = step(tv, ntv, ov, batches[s % 8], weight)
    loss.block_until_ready()
    started = time.perf_counter()
    for s in range(shape.steps):
        tv, ntv, ov, loss = step(tv, ntv, ov, batches[s % 8], weight)
    loss.block_until_ready()
    if not np.isfinite(float(loss)):
        raise SystemExit(f"train_gpu: error: the project's loss is {float(loss)}")
    return shape.batch * shape.steps / (time.perf_counter() - started)


def _timed_fit(model: Any, x: dict[str, np.ndarray], shape: Shape, weight: np.ndarray | None) -> float:
    warm = {k: v[: shape.batch * 3] for k, v in x.items()}
    model.fit(
        warm,
        sample_weight=None if weight is None else weight[: shape.batch * 3],
        batch_size=shape.batch,
        epochs=1,
        verbose=0,
        shuffle=False,
    )
    started = time.perf_counter()
    model.fit(x, sample_weight=weight, batch_size=shape.batch, epochs=1, verbose=0, shuffle=False)
    return shape.batch * shape.steps / (time.perf_counter() - started)


def project_fit(shape: Shape, **model_kwargs: Any) -> float:
    """samples/s of the project's model through plain ``model.fit`` from host numpy arrays."""
    model = project_model(shape, **model_kwargs)
    n = shape.batch * shape.steps
    return _timed_fit(model, project_batch(shape, n, 0), shape, np.ones(n, dtype=np.float32))


def reference_fit_xla(ref: ModuleType, shape: Shape) -> float:
    """samples/s of the reference's Keras model through ``model.fit``, compiled with XLA like on JAX."""
    import keras

    model = ref.keras_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    return _timed_fit(model, ref.data(shape.batch * shape.steps), shape, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ref", type=Path, default=None, help="the reference benchmark script (default: see module doc)"
    )
    parser.add_argument("--small", action="store_true", help="CPU-sized shape (automatic without a GPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 300 full, 20 small)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 8192 full, 1024 small)")
    parser.add_argument("--with-fit", action="store_true", help="also time model.fit from host arrays (JAX)")
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per variant, best kept (default: 3 small, 1 full)"
    )
    parser.add_argument(
        "--ablate",
        action="store_true",
        help="also time the project's model without the repeat bias / with mean pooling",
    )
    args = parser.parse_args(argv)

    import keras

    backend = keras.backend.backend()
    device = "cpu"
    if backend == "jax":
        import jax

        device = jax.devices()[0].platform
    shape = SMALL if args.small or device not in ("gpu", "cuda") else FULL
    if args.steps or args.batch:
        shape = Shape(**{**shape.__dict__, "steps": args.steps or shape.steps, "batch": args.batch or shape.batch})
    ref_path = (args.ref or _default_ref()).resolve()
    ref = load_reference(ref_path, shape)
    print(f"backend={backend} device={device} keras={keras.__version__} ref={ref_path}", flush=True)
    print(
        f"shape: users={shape.users:,} items={shape.items:,} categories={shape.categories:,} history={shape.history} "
        f"dim={shape.dim} batch={shape.batch} steps={shape.steps}",
        flush=True,
    )

    # Each variant is run ``repeat`` times, interleaved, and its best rate kept: on a shared CPU the
    # spread between runs is larger than the differences being measured.
    variants: list[tuple[str, Callable[[], float]]]
    if backend == "jax":
        label = "jit"
        variants = [
            ("reference keras_jit", ref.bench_keras_stateless_jit),
            ("project   jit", lambda: project_jit(shape)),
        ]
        if args.ablate:
            variants += [
                ("project   jit, no repeat bias", lambda: project_jit(shape, repeat_bias=False)),
                (
                    "project   jit, no repeat bias, mean pooling",
                    lambda: project_jit(shape, repeat_bias=False, pooling="mean"),
                ),
            ]
        if args.with_fit:
            variants += [("reference keras_fit", ref.bench_keras_fit), ("project   fit", lambda: project_fit(shape))]
    else:
        label = "fit"
        print(
            "JAX is not importable: no keras_jit to run; comparing model.fit (XLA) on this backend instead", flush=True
        )
        variants = [
            ("reference fit (XLA)", lambda: reference_fit_xla(ref, shape)),
            ("project   fit (XLA)", lambda: project_fit(shape)),
        ]
        if args.ablate:
            variants += [
                ("project   fit, no repeat bias", lambda: project_fit(shape, repeat_bias=False)),
                (
                    "project   fit, no repeat bias, mean pooling",
                    lambda: project_fit(shape, repeat_bias=False, pooling="mean"),
                ),
            ]
    repeat = args.repeat or (1 if shape == FULL else 3)
    best: dict[str, float] = {}
    for _ in range(repeat):
        for name, bench in variants:
            best[name] = max(best.get(name, 0.0), bench())
    rows = list(best.items())
    reference, project = rows[0][1], rows[1][1]
    for name, rate in rows:
        print(
            f"{name:45s} batch={shape.batch} steps={shape.steps} samples_per_s={rate:,.0f} (best of {repeat})",
            flush=True,
        )
    ratio = project / reference
    verdict = "meets" if ratio >= TARGET_RATIO else "below"
    print(
        f"ratio project/reference ({label}) = {ratio:.2f} ({verdict} the {TARGET_RATIO} target; device={device})",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
