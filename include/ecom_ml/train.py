"""The one training entrypoint: ``python -m ecom_ml.train --model NAME --features ... --out ...``.

The KubernetesPodOperator (trainer image, GPU node) and the local mode (a subprocess on the Airflow
worker) run exactly this module with exactly these arguments; only where it runs differs.

    python -m ecom_ml.train --model recommender \\
        --features file:///srv/lake [--day 2024-03-31]   # a lake root + day, or
        --features file:///srv/lake/features/recommender/dt=2024-03-31 \\
        --out file:///srv/runs/recommender/2024-03-31 \\
        [--epochs N --batch-size N --embedding-dim N --history-len N --holdout-days N
         --learning-rate X --seed N] [--xcom /airflow/xcom/return.json]

Writes ``<out>/model/`` (the model kind's artifacts) and then ``<out>/return.json``, a small JSON
document that is also the task's XCom: written last, so its presence means the run completed.
With ``--xcom PATH`` or ``ECOM_XCOM_PATH`` set, a copy goes to that path (the pod's
``/airflow/xcom/return.json``, which the KubernetesPodOperator's sidecar pushes as XCom).

``return.json`` keys (every model kind): ``format``, ``model`` (the kind), ``out_uri``,
``return_uri``, ``model_uri``, ``artifacts`` (name -> URI), ``features`` (root, day, cutoff,
holdout_days), ``metrics`` (``final_loss``, ``loss_per_epoch``, ``train_examples``, ...),
``model_size_bytes``, ``seconds`` (``read``, ``prepare``, ``train``, ``export``, ``total``),
``backend``, ``params`` (every effective parameter), ``versions``.

Exit status: 0 done; 2 a failure the user can fix (unknown model, missing features, bad
parameters), reported as ONE line ``ecom-ml train: error: ...`` on stderr; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from typing import Any, NoReturn

from ecom_ml import __version__
from ecom_ml.errors import EcomError

PROG = "ecom-ml train"
XCOM_ENV = "ECOM_XCOM_PATH"
RETURN_FORMAT = 1


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2) like every other user error here."""

    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def build_parser() -> argparse.ArgumentParser:
    from ecom_ml.models import names

    parser = _OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=f"model kind: {', '.join(names())}")
    parser.add_argument("--features", required=True, help="lake root (with --day) or a features partition, path or URI")
    parser.add_argument(
        "--day", type=_day, default=None, help="features day YYYY-MM-DD (when --features is a lake root)"
    )
    parser.add_argument("--out", required=True, help="output folder, path or URI: gets model/ and return.json")
    parser.add_argument("--xcom", default=None, help=f"also write return.json here (default: ${XCOM_ENV} if set)")
    tuning = parser.add_argument_group("training parameters (defaults: the model kind's, see the end)")
    tuning.add_argument("--epochs", type=int, help="passes over the training examples")
    tuning.add_argument("--batch-size", type=int, help="examples per step (and in-batch negatives per example)")
    tuning.add_argument("--embedding-dim", type=int, help="tower output / embedding width")
    tuning.add_argument("--hidden-dim", type=int, help="hidden layer width of each tower")
    tuning.add_argument("--history-len", type=int,
                        help="most recent distinct products per history (default: the features' value)")
    tuning.add_argument("--holdout-days", type=int,
                        help="days up to --day held out for evaluation, 0: none (default: the features' value)")
    tuning.add_argument("--learning-rate", type=float, help="Adam learning rate")
    tuning.add_argument("--temperature", type=float, help="softmax temperature of the scores")
    tuning.add_argument("--id-dropout", type=float, help="share of examples trained as an unknown customer")
    tuning.add_argument("--pooling", choices=["attention", "mean"], help="how the history is pooled")
    tuning.add_argument("--seed", type=int, help="random seed (training is deterministic on CPU for a seed)")
    tuning.add_argument("--retrieval", action=argparse.BooleanOptionalAction, default=None,
                        help="recommender: also train the two-tower retrieval stage (the options above are its own)")
    parser.epilog = "defaults: " + "; ".join(f"{name}: {_defaults(name)}" for name in names())
    return parser


def _defaults(kind: str) -> str:
    """One line of a model kind's default parameters, for --help."""
    from ecom_ml.models import get

    defaults = get(kind).defaults()
    return ", ".join(f"{key.replace('_', '-')} {value}" for key, value in defaults.items()) or "none declared"


_PARAMS = (
    "epochs",
    "batch_size",
    "embedding_dim",
    "hidden_dim",
    "history_len",
    "holdout_days",
    "learning_rate",
    "temperature",
    "id_dropout",
    "pooling",
    "seed",
    "retrieval",
)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train one model as ``args`` say and publish it; returns the ``return.json`` document."""
    from ecom_ml import models

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before Keras pulls TensorFlow in
    kind = models.get(args.model)
    started = time.perf_counter()
    params = {name: getattr(args, name) for name in _PARAMS if getattr(args, name) is not None}
    request = models.TrainRequest(features=args.features, day=args.day, out=args.out, params=params)
    body = kind.train(request)
    out_uri = models.as_uri(args.out)
    return_uri = models.join(out_uri, "return.json")
    seconds = dict(body.pop("seconds", {}))
    seconds["total"] = round(time.perf_counter() - started, 3)
    import keras

    doc = {
        "format": RETURN_FORMAT,
        "model": kind.name,
        "out_uri": out_uri,
        "return_uri": return_uri,
        **body,
        "seconds": seconds,
        "versions": {"ecom_ml": __version__, "keras": keras.__version__, "python": platform.python_version()},
    }
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    models.write_text(return_uri, text)
    xcom = args.xcom or os.environ.get(XCOM_ENV)
    if xcom:
        models.write_text(xcom, text)
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        doc = run(args)
    except EcomError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    metrics = doc.get("metrics", {})
    print(
        f"trained {doc['model']} in {doc['seconds']['total']:.1f} s on {doc.get('backend')}: "
        f"final loss {metrics.get('final_loss', float('nan')):.4f}, {doc.get('model_size_bytes', 0):,} bytes "
        f"-> {doc['return_uri']}"
    )
    return 0


if __name__ == "__main__":
    from ecom_ml.process import leave

    leave(main())  # not sys.exit: see ecom_ml.process (a finished trainer must not abort at teardown)
