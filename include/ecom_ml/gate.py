"""The promotion gate: is a candidate model good enough, and cheap enough, to become champion?

Gates are data. Thresholds live per model in ``ecom_ml/gates/<model>.yaml``; the verdict is a
:class:`GateReport` that lists every check with its threshold and the candidate's, champion's and
best baseline's values, and renders as JSON (stored with the model version) and Markdown (shown to
people, attached to alerts). One check failing blocks promotion; the report says which and by how much.

The checks, in report order:

``beats_best_baseline``
    candidate[primary] >= best baseline[primary] x (1 + baseline_margin). A model must beat the
    strongest heuristic (the best of all baselines by the primary metric) by a margin, or it is not
    worth serving.
``no_regression_vs_champion``
    candidate[primary] >= champion[primary] x (1 - champion_tolerance); "n/a" (passes) when there is
    no champion yet. Pass the champion *re-scored on today's holdout*, not the metrics it had when it
    was trained: figures from different holdouts do not compare.

**Noise.** With ``confidence_level`` set (the packaged gates do), both comparisons are made on a
paired bootstrap interval instead of the point estimate: the difference ``candidate - reference``
of the primary metric is resampled over the evaluation's units (test customers), and the check
passes only if the interval's *conservative* end clears the margin -- for a higher-is-better metric
``low(candidate - best) >= margin x best`` and ``low(candidate - champion) >= -tolerance x champion``;
for a lower-is-better one (WAPE) the mirror image on the upper end. A lucky holdout therefore cannot
promote a model whose advantage is within the noise, and the report shows estimate and interval.
The per-unit values come from the results' ``per_unit`` entry (``{"unit", "digest",
"values": {metric: [...]}}``, as ``ecom_ml.evaluation`` writes it; a ratio metric may give
``{"numerator": [...], "denominator": [...]}`` instead of a list); results with different unit
digests were scored on different units and fail the check. ``confidence_level: null`` falls back to
point estimates.
``beats_best_baseline:<metric>`` / ``no_regression_vs_champion:<metric>``
    the same two comparisons for every further metric in ``also_gated`` (``{metric: {higher_is_better,
    baseline_margin, champion_tolerance}}``), each in its own direction and against the best baseline
    *on that metric*, on point estimates (a metric such as AUC is not a mean over units, so it has no
    paired per-unit values to resample). A model kind whose promotion needs two things at once —
    ranking quality and calibrated probabilities — gates on both.
``slice:<slice>:<metric>``
    candidate.slices[slice][metric] >= floor, for every floor in the config. Averages hide a broken
    cold-start path (new customers are a small share of the test set).
``band:<metric>:min`` / ``band:<metric>:max``
    low <= candidate[metric] <= high for every ``bands: {metric: [low, high]}`` entry (a dotted
    path, e.g. ``coverage_p90``): a quantity that must be neither too low nor too high, such as the
    share of actuals under a p90 forecast (too low: stock-outs; too high: the p90 is padded).
``max_model_bytes`` / ``max_p99_ms``
    candidate.cost.model_bytes / p99_ms within budget: a better model that costs ten times more to
    serve is not automatically better. ``null`` in the YAML disables a budget ("n/a").

**A person.** ``approval: never | borderline | always`` (with ``approval_distance``,
``approval_on_drift``, ``approval_timeout_hours``) says when a *passed* candidate still waits for a
person's approval before promotion; the decision is ``ecom_ml.approval.decide``'s, not a check here.

Missing or non-finite values fail their check (with the reason in ``detail``) rather than raising:
a report that shows *what* was missing is more useful in an alert than a traceback. An evaluation
may say why a metric has no value (``"undefined": {metric: reason}``, e.g. AUC when nobody bought in
the label window); the failed check then quotes that reason instead of "missing".
Only stdlib and PyYAML are imported at module level, so DAG files may import this module at parse
time; numpy/scipy (the bootstrap) are imported when a gate is evaluated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ecom_ml.approval import MODES, ApprovalConfigError, ApprovalPolicy, check_mode
from ecom_ml.errors import EcomError

_REQUIRED_KEYS = ("model", "primary_metric", "baseline_margin", "champion_tolerance", "slices",
                  "max_model_bytes", "max_p99_ms")
_OPTIONAL_KEYS: dict[str, Any] = {"higher_is_better": True, "confidence_level": None, "bootstrap_resamples": 1000,
                                  "bootstrap_seed": 0, "ungated_baselines": [], "bands": {}, "also_gated": {},
                                  "approval": "never", "approval_distance": 0.02, "approval_on_drift": True,
                                  "approval_timeout_hours": 24}
NO_CHAMPION = "no champion yet (first model)"


class GateConfigError(EcomError):
    """A gate configuration cannot be used; the message names the file and the offending key."""


class GateInputError(EcomError):
    """The evaluation results handed to the gate are not shaped like evaluation results."""


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class AlsoGated:
    """One further gated metric: its direction, its margin over the best baseline, its tolerance
    against the champion (the same meaning as the primary metric's ``baseline_margin`` and
    ``champion_tolerance``)."""

    higher_is_better: bool
    baseline_margin: float
    champion_tolerance: float


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of one model's gate (see the module docstring for what each one checks)."""

    model: str
    primary_metric: str
    baseline_margin: float
    champion_tolerance: float
    slices: Mapping[str, Mapping[str, float]]
    max_model_bytes: int | None
    max_p99_ms: float | None
    higher_is_better: bool = True
    #: Two-sided confidence level of the paired bootstrap interval; None compares point estimates.
    confidence_level: float | None = None
    bootstrap_resamples: int = 1000
    #: Baselines left out when choosing the "best baseline" (still computed and reported, marked
    #: "reported, not gated"); every other baseline is gated, so a new one is gated by default.
    ungated_baselines: tuple[str, ...] = ()
    bootstrap_seed: int = 0
    #: metric (dotted path) -> (low, high): the candidate's value must lie within, inclusive.
    bands: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    #: When a passed candidate still waits for a person (see ecom_ml.approval).
    approval: ApprovalPolicy = field(default_factory=ApprovalPolicy)
    #: Further metrics gated against the best baseline and the champion (point estimates).
    also_gated: Mapping[str, AlsoGated] = field(default_factory=dict)
    #: Where the values came from, for messages and the report.
    source: str = "<dict>"

    @classmethod
    def load(cls, model_or_path: str | Path) -> GateConfig:
        """Load ``ecom_ml/gates/<model>.yaml`` (a model name) or a YAML file (a path).

        Anything wrong (no file, bad YAML, missing/unknown key, wrong type or range) raises
        :class:`GateConfigError` with one line naming the file and the key.
        """
        text: str
        if isinstance(model_or_path, Path) or str(model_or_path).endswith((".yaml", ".yml")) or "/" in str(
            model_or_path
        ):
            path = Path(model_or_path)
            source = str(path)
            try:
                text = path.read_text("utf-8")
            except FileNotFoundError:
                raise GateConfigError(f"gate config {source}: no such file") from None
            except OSError as exc:
                raise GateConfigError(f"gate config {source}: cannot be read ({exc.strerror})") from None
        else:
            name = str(model_or_path)
            resource = resources.files("ecom_ml.gates").joinpath(f"{name}.yaml")
            source = f"ecom_ml/gates/{name}.yaml"
            if not resource.is_file():
                known = sorted(
                    p.name[: -len(".yaml")] for p in resources.files("ecom_ml.gates").iterdir()
                    if p.name.endswith(".yaml")
                )
                raise GateConfigError(
                    f"gate config {source}: no gate is configured for model {name!r} (known: {', '.join(known)})"
                )
            text = resource.read_text("utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise GateConfigError(f"gate config {source}: not valid YAML{where}: {problem}") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<dict>") -> GateConfig:
        """Validate a parsed config; every problem is reported as ``gate config <source>: key …``."""

        def fail(key: str, message: str) -> GateConfigError:
            return GateConfigError(f"gate config {source}: key '{key}' {message}")

        if not isinstance(data, Mapping):
            raise GateConfigError(f"gate config {source}: expected a mapping of settings, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
        if unknown:
            expected = ", ".join([*_REQUIRED_KEYS, *_OPTIONAL_KEYS])
            raise GateConfigError(f"gate config {source}: unknown key '{unknown[0]}' (expected: {expected})")
        for key in _REQUIRED_KEYS:
            if key not in data:
                raise fail(key, "is missing")

        model = data["model"]
        if not isinstance(model, str) or not model:
            raise fail("model", f"must be a model name, got {model!r}")
        primary = data["primary_metric"]
        if not isinstance(primary, str) or not primary:
            raise fail("primary_metric", f"must be a metric name such as 'ndcg@10', got {primary!r}")

        def fraction(key: str, upper: float) -> float:
            value = data[key]
            if not _is_number(value) or not 0 <= value < upper:
                raise fail(key, f"must be a number in [0, {upper:g}), got {value!r}")
            return float(value)

        margin = fraction("baseline_margin", 10)
        tolerance = fraction("champion_tolerance", 1)

        def budget(key: str, integer: bool) -> Any:
            value = data[key]
            if value is None:
                return None
            if not _is_number(value) or value <= 0 or (integer and float(value) != int(value)):
                kind = "a positive integer" if integer else "a positive number"
                raise fail(key, f"must be {kind} or null, got {value!r}")
            return int(value) if integer else float(value)

        max_bytes = budget("max_model_bytes", True)
        max_p99 = budget("max_p99_ms", False)

        raw_slices = data["slices"]
        if raw_slices is None:
            raw_slices = {}
        if not isinstance(raw_slices, Mapping):
            raise fail("slices", f"must map slice -> {{metric: floor}}, got {type(raw_slices).__name__}")
        slices: dict[str, dict[str, float]] = {}
        for slice_name, floors in raw_slices.items():
            if not isinstance(floors, Mapping) or not floors:
                raise fail(f"slices.{slice_name}", "must map metric -> floor, e.g. {recall@10: 0.02}")
            slices[str(slice_name)] = {}
            for metric, floor in floors.items():
                if not _is_number(floor) or floor < 0:
                    raise fail(f"slices.{slice_name}.{metric}", f"must be a number >= 0, got {floor!r}")
                slices[str(slice_name)][str(metric)] = float(floor)

        higher = data.get("higher_is_better", _OPTIONAL_KEYS["higher_is_better"])
        if not isinstance(higher, bool):
            raise fail("higher_is_better", f"must be true or false, got {higher!r}")
        level = data.get("confidence_level", _OPTIONAL_KEYS["confidence_level"])
        if level is not None and (not _is_number(level) or not 0.5 <= level < 1):
            raise fail("confidence_level", f"must be a number in [0.5, 1) such as 0.95, or null, got {level!r}")
        resamples = data.get("bootstrap_resamples", _OPTIONAL_KEYS["bootstrap_resamples"])
        if not isinstance(resamples, int) or isinstance(resamples, bool) or not 100 <= resamples <= 100_000:
            raise fail("bootstrap_resamples", f"must be an integer in [100, 100000], got {resamples!r}")
        seed = data.get("bootstrap_seed", _OPTIONAL_KEYS["bootstrap_seed"])
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise fail("bootstrap_seed", f"must be an integer >= 0, got {seed!r}")
        ungated = data.get("ungated_baselines", _OPTIONAL_KEYS["ungated_baselines"])
        if not isinstance(ungated, list) or not all(isinstance(n, str) and n for n in ungated):
            raise fail("ungated_baselines", f"must be a list of baseline names (empty: all gated), got {ungated!r}")

        raw_bands = data.get("bands") or {}
        if not isinstance(raw_bands, Mapping):
            raise fail("bands", f"must map metric -> [low, high], got {type(raw_bands).__name__}")
        bands: dict[str, tuple[float, float]] = {}
        for metric, bounds in raw_bands.items():
            if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or not all(_is_number(b) for b in bounds)
                    or not bounds[0] <= bounds[1]):
                raise fail(f"bands.{metric}", f"must be [low, high] with low <= high, got {bounds!r}")
            bands[str(metric)] = (float(bounds[0]), float(bounds[1]))

        try:
            mode = check_mode(data.get("approval", _OPTIONAL_KEYS["approval"]), "approval")
        except ApprovalConfigError:
            raise fail("approval", f"must be one of {', '.join(MODES)}, got {data.get('approval')!r}") from None
        distance = data.get("approval_distance", _OPTIONAL_KEYS["approval_distance"])
        if not _is_number(distance) or not 0 <= distance < 1:
            raise fail("approval_distance", f"must be a number in [0, 1) such as 0.02, got {distance!r}")
        on_drift = data.get("approval_on_drift", _OPTIONAL_KEYS["approval_on_drift"])
        if not isinstance(on_drift, bool):
            raise fail("approval_on_drift", f"must be true or false, got {on_drift!r}")
        timeout = data.get("approval_timeout_hours", _OPTIONAL_KEYS["approval_timeout_hours"])
        if not _is_number(timeout) or not 0 < timeout <= 24 * 14:
            raise fail("approval_timeout_hours", f"must be a number of hours in (0, 336], got {timeout!r}")
        raw_also = data.get("also_gated") or {}
        if not isinstance(raw_also, Mapping):
            raise fail("also_gated", f"must map metric -> {{higher_is_better, baseline_margin, champion_tolerance}}, "
                                     f"got {type(raw_also).__name__}")
        also: dict[str, AlsoGated] = {}
        for metric, entry in raw_also.items():
            where = f"also_gated.{metric}"
            if str(metric) == primary:
                raise fail(where, "repeats the primary metric, which is gated already")
            if not isinstance(entry, Mapping):
                raise fail(where, f"must map higher_is_better, baseline_margin, champion_tolerance, got {entry!r}")
            extra = sorted(set(entry) - {"higher_is_better", "baseline_margin", "champion_tolerance"})
            if extra:
                raise fail(f"{where}.{extra[0]}", "is unknown (expected: higher_is_better, baseline_margin, "
                                                   "champion_tolerance)")
            for key in ("higher_is_better", "baseline_margin", "champion_tolerance"):
                if key not in entry:
                    raise fail(f"{where}.{key}", "is missing")
            if not isinstance(entry["higher_is_better"], bool):
                raise fail(f"{where}.higher_is_better", f"must be true or false, got {entry['higher_is_better']!r}")
            for key, upper in (("baseline_margin", 10), ("champion_tolerance", 1)):
                value = entry[key]
                if not _is_number(value) or not 0 <= value < upper:
                    raise fail(f"{where}.{key}", f"must be a number in [0, {upper:g}), got {value!r}")
            also[str(metric)] = AlsoGated(entry["higher_is_better"], float(entry["baseline_margin"]),
                                          float(entry["champion_tolerance"]))

        return cls(
            model=model,
            primary_metric=primary,
            baseline_margin=margin,
            champion_tolerance=tolerance,
            slices=slices,
            max_model_bytes=max_bytes,
            max_p99_ms=max_p99,
            higher_is_better=higher,
            confidence_level=None if level is None else float(level),
            bootstrap_resamples=resamples,
            bootstrap_seed=seed,
            ungated_baselines=tuple(ungated),
            bands=bands,
            approval=ApprovalPolicy(mode, float(distance), on_drift, float(timeout)),
            also_gated=also,
            source=source,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "primary_metric": self.primary_metric,
            "higher_is_better": self.higher_is_better,
            "baseline_margin": self.baseline_margin,
            "champion_tolerance": self.champion_tolerance,
            "slices": {s: dict(m) for s, m in self.slices.items()},
            "max_model_bytes": self.max_model_bytes,
            "max_p99_ms": self.max_p99_ms,
            "confidence_level": self.confidence_level,
            "bootstrap_resamples": self.bootstrap_resamples,
            "bootstrap_seed": self.bootstrap_seed,
            "ungated_baselines": list(self.ungated_baselines),
            "bands": {m: list(b) for m, b in self.bands.items()},
            **self.approval.to_dict(),
            "also_gated": {m: asdict(a) for m, a in self.also_gated.items()},
            "source": self.source,
        }


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One line of the gate: a value compared with a threshold.

    ``comparison`` is ``">="`` (candidate must reach the threshold) or ``"<="`` (must stay within it).
    ``applicable`` is False for a check that cannot apply (no champion yet, budget disabled); such a
    check passes and shows as "n/a". ``interval`` (bootstrap-based checks only) holds the estimate
    and interval of ``candidate - reference`` and the bound that decided the check against
    ``required`` (both in the metric's units, as differences).
    """

    name: str
    threshold: float | None
    candidate: float | None
    champion: float | None
    baseline: float | None
    passed: bool
    detail: str
    metric: str = ""
    comparison: str = ">="
    applicable: bool = True
    interval: dict[str, Any] | None = None

    @property
    def result(self) -> str:
        if not self.applicable:
            return "n/a"
        return "pass" if self.passed else "FAIL"


def format_number(value: Any) -> str:
    """Numbers for people: byte counts with separators, metrics with 4 decimals."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def _flatten(result: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """``{"slices": {"new": {"recall@10": x}}}`` -> ``{"slices.new.recall@10": x}``."""
    out: dict[str, Any] = {}
    for key, value in (result or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


#: Bookkeeping fields of an evaluation result, not metrics: kept in the JSON, left out of the table.
_NOT_METRICS = {"recommender", "ks", "cutoff", "test_end", "seconds", "history_len", "protocol", "version",
                "params", "per_unit", "tables", "undefined"}


def _is_metric_row(key: str, value: Any) -> bool:
    return key.split(".", 1)[0] not in _NOT_METRICS and (value is None or _is_number(value))


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


@dataclass
class GateReport:
    """The gate's verdict as a document (see :func:`evaluate_gate`)."""

    model: str
    primary_metric: str
    passed: bool
    checks: list[Check]
    candidate: dict[str, Any]
    champion: dict[str, Any] | None
    baselines: dict[str, dict[str, Any]]
    best_baseline: str | None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_checks(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    # ---- serialisation ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "primary_metric": self.primary_metric,
            "passed": self.passed,
            "summary": self.summary_line(),
            "best_baseline": self.best_baseline,
            "checks": [asdict(check) for check in self.checks],
            "candidate": self.candidate,
            "champion": self.champion,
            "baselines": self.baselines,
            "config": self.config,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateReport:
        """Rebuild a report from :meth:`to_dict` output (e.g. a ``gate_report.json`` or an XCom)."""
        try:
            return cls(
                model=data["model"],
                primary_metric=data["primary_metric"],
                passed=bool(data["passed"]),
                checks=[Check(**check) for check in data["checks"]],
                candidate=dict(data.get("candidate") or {}),
                champion=dict(data["champion"]) if data.get("champion") is not None else None,
                baselines={k: dict(v) for k, v in (data.get("baselines") or {}).items()},
                best_baseline=data.get("best_baseline"),
                config=dict(data.get("config") or {}),
            )
        except (KeyError, TypeError) as exc:
            raise GateInputError(f"not a gate report (as written by GateReport.to_json): {exc}") from None

    # ---- for people -------------------------------------------------------------------------------

    def summary_line(self) -> str:
        """One line: the verdict, and every failed check with its value against its threshold."""
        if self.passed:
            na = [c.name for c in self.checks if not c.applicable]
            extra = f"; n/a: {', '.join(na)}" if na else ""
            primary = next((c for c in self.checks if c.name == "beats_best_baseline"), None)
            value = f" ({self.primary_metric} {format_number(primary.candidate)})" if primary else ""
            return f"gate PASSED for {self.model}{value}: {len(self.checks)} checks{extra}"
        failed = self.failed_checks
        parts = []
        for check in failed:
            metric = f" {check.metric}" if check.metric and check.metric not in check.name else ""
            ci = check.interval
            if ci is not None:
                bad = "<" if ci["bound"] == "low" else ">"
                parts.append(f"{check.name}{metric}: {ci['bound']} end of the {ci['confidence']:.0%} interval of "
                             f"candidate - {ci['reference']} {ci[ci['bound']]:+.4f} {bad} required {ci['required']:+.4f}")
            elif check.candidate is None or check.threshold is None:
                parts.append(f"{check.name}{metric}: {check.detail}")
            else:
                bad = "<" if check.comparison == ">=" else ">"
                parts.append(f"{check.name}{metric} {format_number(check.candidate)} {bad} {format_number(check.threshold)}")
        return f"gate FAILED for {self.model} ({len(failed)} of {len(self.checks)} checks): " + "; ".join(parts)

    def to_markdown(self) -> str:
        """Every check (threshold, candidate, champion, best baseline, result), then all metrics."""
        verdict = "PASSED" if self.passed else "FAILED"
        best = f" (best baseline: `{self.best_baseline}`)" if self.best_baseline else ""
        lines = [
            f"## Gate {verdict}: `{self.model}`",
            "",
            self.summary_line(),
            "",
            f"Primary metric `{self.primary_metric}` "
            f"({'higher' if self.config.get('higher_is_better', True) else 'lower'} is better){best}; "
            f"thresholds from `{self.config.get('source', '?')}`.",
            "",
            "| Check | Metric | Threshold | Candidate | Champion | Best baseline | Difference [interval] | Result | Detail |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c in self.checks:
            threshold = "—" if c.threshold is None else f"{c.comparison} {format_number(c.threshold)}"
            ci = c.interval
            difference = "—" if ci is None else f"{ci['estimate']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}]"
            lines.append(
                f"| {_md(c.name)} | {_md(c.metric)} | {threshold} | {format_number(c.candidate)} | {format_number(c.champion)} | "
                f"{format_number(c.baseline)} | {difference} | **{c.result}** | {_md(c.detail)} |"
            )
        columns: list[tuple[str, Mapping[str, Any] | None]] = [("candidate", self.candidate)]
        columns.append(("champion", self.champion))
        columns.extend((f"baseline: {name}", result) for name, result in self.baselines.items())
        flat = [(title, _flatten(result)) for title, result in columns]
        rows: list[str] = []
        for _, values in flat:
            rows.extend(key for key in values if key not in rows and _is_metric_row(key, values[key]))
        # Headline metrics first, then slices, then cost: the order people read a model card in.
        first_seen = {key: index for index, key in enumerate(rows)}
        rows.sort(key=lambda key: (key.startswith("cost."), key.startswith("slices."), first_seen[key]))
        lines += [
            "",
            "### Metrics on the holdout",
            "",
            "| Metric | " + " | ".join(_md(title) for title, _ in flat) + " |",
            "|---|" + "---|" * len(flat),
        ]
        for key in rows:
            cells = []
            for title, values in flat:
                if title == "champion" and self.champion is None:
                    cells.append("n/a")
                else:
                    cells.append(format_number(values.get(key)))
            lines.append(f"| {_md(key)} | " + " | ".join(cells) + " |")
        level = self.config.get("confidence_level")
        if level:
            lines += ["", f"_Difference = candidate − reference on `{self.primary_metric}`, with its {level:.0%} paired "
                          f"bootstrap interval over the holdout's units ({self.config.get('bootstrap_resamples')} resamples, "
                          f"seed {self.config.get('bootstrap_seed')}); the check uses the interval's conservative end._"]
        if self.champion is None:
            note = next((c.detail for c in self.checks if c.name == "no_regression_vs_champion"), "")
            if note.startswith(NO_CHAMPION):
                lines += ["", "_No champion yet: this would be the first promoted version._"]
            else:
                lines += ["", f"_Champion not compared (n/a): {_md(note)}._"]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


def _lookup(result: Mapping[str, Any] | None, *path: str) -> tuple[float | None, str]:
    """(value, problem): value is a finite float or None, and problem says why it is None."""
    node: Any = result
    parent: Any = None
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None, _undefined(node, key) or "missing"
        parent, node = node, node[key]
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
        why = _undefined(parent, path[-1]) if path else None
        if why:
            return None, why
        if isinstance(node, bool) or not isinstance(node, (int, float)):
            return None, f"not a number ({node!r})"
        return None, f"not finite ({node})"
    return float(node), ""


def _undefined(node: Any, key: str) -> str | None:
    """``undefined: <reason>`` when the result beside ``key`` says why it has no value."""
    reasons = node.get("undefined") if isinstance(node, Mapping) else None
    if isinstance(reasons, Mapping) and reasons.get(key):
        return f"undefined: {reasons[key]}"
    return None


def _plain(value: Any) -> Any:
    """A JSON-safe deep copy: the report must not share (or be changed through) the caller's dicts,
    and strict JSON has no NaN/Infinity, so non-finite numbers become strings ("nan", "inf")."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


#: Where an evaluation result keeps its per-unit values (for the bootstrap); left out of the report.
_PER_UNIT = "per_unit"


def _summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The result as stored in the report: everything but the per-unit values (thousands of numbers
    per result, already in evaluation.json; the report keeps the interval computed from them)."""
    return _plain({key: value for key, value in result.items() if key != _PER_UNIT})


def _units(result: Mapping[str, Any] | None, metric: str, who: str) -> tuple[Any, str | None, str]:
    """(values, digest, problem) of ``result``'s per-unit ``metric``; values is None with a problem."""
    per_unit = result.get(_PER_UNIT) if isinstance(result, Mapping) else None
    values = per_unit.get("values") if isinstance(per_unit, Mapping) else None
    if not isinstance(values, Mapping) or metric not in values:
        return None, None, f"{who} has no per-unit values of {metric} (the evaluation's '{_PER_UNIT}')"
    raw = values[metric]

    def numbers(items: Any) -> list[float] | None:
        if not isinstance(items, (list, tuple)):
            return None
        out = []
        for item in items:
            if item is None:
                out.append(math.nan)
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                out.append(float(item))
            else:
                return None
        return out

    if isinstance(raw, Mapping):
        parts = (numbers(raw.get("numerator")), numbers(raw.get("denominator")))
        parsed: Any = parts if None not in parts else None
    else:
        parsed = numbers(raw)
    if parsed is None:
        return None, None, f"{who} per-unit {metric} is not a list of numbers (or numerator/denominator lists)"
    return parsed, per_unit.get("digest"), ""


def _interval(cfg: GateConfig, candidate: Mapping[str, Any], reference: Mapping[str, Any], reference_name: str,
              required: float) -> tuple[dict[str, Any] | None, str]:
    """Bootstrap interval of candidate - reference on the primary metric, and the decisive bound.

    Returns (interval, problem); the interval carries ``bound`` ("low" for higher-is-better metrics,
    "high" otherwise), ``required`` and ``passed``.
    """
    from ecom_ml.evaluation.bootstrap import BootstrapError, paired_bootstrap

    metric = cfg.primary_metric
    cand, cand_digest, problem = _units(candidate, metric, "candidate")
    if cand is None:
        return None, problem
    ref, ref_digest, problem = _units(reference, metric, reference_name)
    if ref is None:
        return None, problem
    if cand_digest and ref_digest and cand_digest != ref_digest:
        return None, f"candidate and {reference_name} were scored on different units (digest {cand_digest} vs {ref_digest})"
    try:
        found = paired_bootstrap(cand, ref, confidence=cfg.confidence_level, resamples=cfg.bootstrap_resamples,
                                 seed=cfg.bootstrap_seed)
    except BootstrapError as exc:
        return None, f"no interval for candidate - {reference_name}: {exc}"
    bound = "low" if cfg.higher_is_better else "high"
    value = getattr(found, bound)
    passed = value >= required if cfg.higher_is_better else value <= required
    unit = (candidate.get(_PER_UNIT) or {}).get("unit", "unit")
    return {**found.to_dict(), "reference": reference_name, "bound": bound, "required": required,
            "passed": bool(passed), "unit": unit}, ""


def _interval_detail(ci: dict[str, Any], margin_text: str) -> str:
    if ci["bound"] == "low":
        side = ">=" if ci["passed"] else "<"
    else:
        side = "<=" if ci["passed"] else ">"
    return (f"candidate - {ci['reference']} {ci['estimate']:+.4f}, {ci['confidence']:.0%} interval "
            f"[{ci['low']:+.4f}, {ci['high']:+.4f}] over {ci['n_units']:,} {ci['unit']}s ({ci['resamples']} paired "
            f"resamples); {ci['bound']} end {ci[ci['bound']]:+.4f} {side} required {ci['required']:+.4f} ({margin_text})")


def _check_mapping(name: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise GateInputError(f"gate input {name} must be an evaluation result (a mapping), got {type(value).__name__}")
    return value


def _also_gated_checks(metric: str, rule: AlsoGated, candidate: Mapping[str, Any], champion: Mapping[str, Any] | None,
                       gated: Mapping[str, Mapping[str, Any]], ungated: list[str],
                       champion_unusable: str | None) -> list[Check]:
    """``beats_best_baseline:<metric>`` and ``no_regression_vs_champion:<metric>`` on point estimates."""
    higher = rule.higher_is_better
    better = ">=" if higher else "<="
    value, problem = _lookup(candidate, metric)
    champ_value, champ_problem = _lookup(champion, metric) if champion is not None else (None, "")
    scored = [(name, *_lookup(result, metric)) for name, result in gated.items()]
    usable = [(name, v) for name, v, _ in scored if v is not None]
    ignored = [f"{name} ({why})" for name, v, why in scored if v is None]
    note = f"; ignored: {', '.join(ignored)}" if ignored else ""
    if ungated:
        note += f"; reported, not gated: {', '.join(ungated)}"
    out: list[Check] = []
    name = f"beats_best_baseline:{metric}"
    if not usable:
        why = "no baseline results given" if not gated else f"no baseline has a numeric {metric}"
        out.append(Check(name, None, value, champ_value, None, False,
                         f"{why}{note}; the gate needs at least one baseline", metric, better))
    else:
        best_name, best_value = (max if higher else min)(usable, key=lambda item: item[1])
        factor = (1 + rule.baseline_margin) if higher else (1 - rule.baseline_margin)
        threshold = best_value * factor
        if value is None:
            out.append(Check(name, threshold, None, champ_value, best_value, False,
                             f"candidate {metric} is {problem}{note}", metric, better))
        else:
            ok = value >= threshold if higher else value <= threshold
            out.append(Check(name, threshold, value, champ_value, best_value, ok,
                             f"best baseline {best_name} {format_number(best_value)} x {factor:g} "
                             f"(point estimate){note}", metric, better))
    name = f"no_regression_vs_champion:{metric}"
    if champion is None:
        out.append(Check(name, None, value, None, None, True, champion_unusable or f"{NO_CHAMPION}: not applicable",
                         metric, better, applicable=False))
    elif champ_value is None:
        out.append(Check(name, None, value, None, None, False, f"champion {metric} is {champ_problem}", metric, better))
    else:
        factor = (1 - rule.champion_tolerance) if higher else (1 + rule.champion_tolerance)
        threshold = champ_value * factor
        if value is None:
            out.append(Check(name, threshold, None, champ_value, None, False, f"candidate {metric} is {problem}",
                             metric, better))
        else:
            ok = value >= threshold if higher else value <= threshold
            out.append(Check(name, threshold, value, champ_value, None, ok,
                             f"champion {format_number(champ_value)} x {factor:g} (point estimate)", metric, better))
    return out


def evaluate_gate(
    config: GateConfig | str | Path,
    candidate: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    baselines: Mapping[str, Mapping[str, Any]],
    champion_unusable: str | None = None,
) -> GateReport:
    """Run every check of ``config`` on the candidate's evaluation result; see the module docstring.

    ``config`` may also be a model name (packaged YAML) or a path to a YAML file.
    ``champion_unusable`` says why there is a champion but no comparable result for it (e.g. it was
    trained on days of today's holdout): the regression check then reads "n/a" with that reason.
    """
    cfg = config if isinstance(config, GateConfig) else GateConfig.load(config)
    candidate = _check_mapping("candidate", candidate)
    if champion is not None:
        champion = _check_mapping("champion", champion)
    if not isinstance(baselines, Mapping):
        raise GateInputError(f"gate input baselines must map name -> evaluation result, got {type(baselines).__name__}")
    for name, result in baselines.items():
        _check_mapping(f"baselines[{name!r}]", result)

    primary = cfg.primary_metric
    higher = cfg.higher_is_better
    better = ">=" if higher else "<="
    checks: list[Check] = []

    cand_primary, cand_problem = _lookup(candidate, primary)
    champ_primary = _lookup(champion, primary)[0] if champion is not None else None

    # -- best baseline -------------------------------------------------------------------------------
    gated = {name: result for name, result in baselines.items() if name not in cfg.ungated_baselines}
    ungated = sorted(set(baselines) - set(gated))
    scored = [(name, _lookup(result, primary)[0]) for name, result in gated.items()]
    usable = [(name, value) for name, value in scored if value is not None]
    unusable = [name for name, value in scored if value is None]
    best_name: str | None = None
    best_value: float | None = None
    if usable:
        best_name, best_value = (max if higher else min)(usable, key=lambda item: item[1])
    if best_value is None:
        why = "no baseline results given" if not baselines else f"no baseline has a numeric {primary}"
        checks.append(Check("beats_best_baseline", None, cand_primary, champ_primary, None, False,
                            f"{why}; the gate needs at least one baseline", primary, better))
    else:
        factor = (1 + cfg.baseline_margin) if higher else (1 - cfg.baseline_margin)
        threshold = best_value * factor
        skipped = f"; ignored (no {primary}): {', '.join(unusable)}" if unusable else ""
        if ungated:
            skipped += f"; reported, not gated: {', '.join(ungated)}"
        if cand_primary is None:
            checks.append(Check("beats_best_baseline", threshold, None, champ_primary, best_value, False,
                                f"candidate {primary} is {cand_problem}{skipped}", primary, better))
        elif cfg.confidence_level is not None:
            required = best_value * cfg.baseline_margin * (1 if higher else -1)
            ci, problem = _interval(cfg, candidate, baselines[best_name], f"baseline {best_name}", required)
            detail = (f"{problem}{skipped}" if ci is None else
                      _interval_detail(ci, f"margin {cfg.baseline_margin:g} x best baseline {best_name} "
                                           f"{format_number(best_value)}") + skipped)
            checks.append(Check("beats_best_baseline", threshold, cand_primary, champ_primary, best_value,
                                ci is not None and ci["passed"], detail, primary, better, interval=ci))
        else:
            ok = cand_primary >= threshold if higher else cand_primary <= threshold
            checks.append(Check(
                "beats_best_baseline", threshold, cand_primary, champ_primary, best_value, ok,
                f"best baseline {best_name} {format_number(best_value)} x {factor:g}{skipped}", primary, better,
            ))

    # -- champion ------------------------------------------------------------------------------------
    if champion is None:
        why = champion_unusable or f"{NO_CHAMPION}: not applicable"
        checks.append(Check("no_regression_vs_champion", None, cand_primary, None, best_value, True,
                            why, primary, better, applicable=False))
    else:
        champ_value, champ_problem = _lookup(champion, primary)
        factor = (1 - cfg.champion_tolerance) if higher else (1 + cfg.champion_tolerance)
        if champ_value is None:
            checks.append(Check("no_regression_vs_champion", None, cand_primary, None, best_value, False,
                                f"champion {primary} is {champ_problem}", primary, better))
        elif cand_primary is None:
            checks.append(Check("no_regression_vs_champion", champ_value * factor, None, champ_value, best_value,
                                False, f"candidate {primary} is {cand_problem}", primary, better))
        elif cfg.confidence_level is not None:
            required = -champ_value * cfg.champion_tolerance * (1 if higher else -1)
            ci, problem = _interval(cfg, candidate, champion, "champion", required)
            detail = problem if ci is None else _interval_detail(
                ci, f"tolerance {cfg.champion_tolerance:g} x champion {format_number(champ_value)}")
            checks.append(Check("no_regression_vs_champion", champ_value * factor, cand_primary, champ_value,
                                best_value, ci is not None and ci["passed"], detail, primary, better, interval=ci))
        else:
            threshold = champ_value * factor
            ok = cand_primary >= threshold if higher else cand_primary <= threshold
            checks.append(Check(
                "no_regression_vs_champion", threshold, cand_primary, champ_value, best_value, ok,
                f"champion {format_number(champ_value)} x {factor:g}", primary, better,
            ))

    # -- further gated metrics (point estimates) ------------------------------------------------------
    for metric, rule in cfg.also_gated.items():
        checks.extend(_also_gated_checks(metric, rule, candidate, champion, gated, ungated, champion_unusable))

    # -- slice floors --------------------------------------------------------------------------------
    best_result = baselines.get(best_name) if best_name is not None else None
    for slice_name, floors in cfg.slices.items():
        for metric, floor in floors.items():
            value, problem = _lookup(candidate, "slices", slice_name, metric)
            champ_slice = _lookup(champion, "slices", slice_name, metric)[0] if champion is not None else None
            base_slice = _lookup(best_result, "slices", slice_name, metric)[0]
            name = f"slice:{slice_name}:{metric}"
            if value is None:
                checks.append(Check(name, floor, None, champ_slice, base_slice, False,
                                    f"candidate slices.{slice_name}.{metric} is {problem}", metric, ">="))
            else:
                checks.append(Check(name, floor, value, champ_slice, base_slice, value >= floor,
                                    f"floor for the {slice_name!r} slice", metric, ">="))

    # -- bands ---------------------------------------------------------------------------------------
    for metric, (low, high) in cfg.bands.items():
        path = metric.split(".")
        value, problem = _lookup(candidate, *path)
        champ_band = _lookup(champion, *path)[0] if champion is not None else None
        base_band = _lookup(best_result, *path)[0]
        for side, bound, comparison in (("min", low, ">="), ("max", high, "<=")):
            name = f"band:{metric}:{side}"
            if value is None:
                checks.append(Check(name, bound, None, champ_band, base_band, False,
                                    f"candidate {metric} is {problem}", metric, comparison))
            else:
                ok = value >= bound if comparison == ">=" else value <= bound
                checks.append(Check(name, bound, value, champ_band, base_band, ok,
                                    f"band [{format_number(low)}, {format_number(high)}]", metric, comparison))

    # -- cost budgets --------------------------------------------------------------------------------
    for check_name, key, limit in (("max_model_bytes", "model_bytes", cfg.max_model_bytes),
                                   ("max_p99_ms", "p99_ms", cfg.max_p99_ms)):
        value, problem = _lookup(candidate, "cost", key)
        champ_cost = _lookup(champion, "cost", key)[0] if champion is not None else None
        base_cost = _lookup(best_result, "cost", key)[0]
        if limit is None:
            checks.append(Check(check_name, None, value, champ_cost, base_cost, True,
                                "no budget configured", f"cost.{key}", "<=", applicable=False))
        elif value is None:
            checks.append(Check(check_name, float(limit), None, champ_cost, base_cost, False,
                                f"candidate cost.{key} is {problem}", f"cost.{key}", "<="))
        else:
            checks.append(Check(check_name, float(limit), value, champ_cost, base_cost, value <= limit,
                                "serving budget", f"cost.{key}", "<="))

    return GateReport(
        model=cfg.model,
        primary_metric=primary,
        passed=all(check.passed for check in checks),
        checks=checks,
        candidate=_summary(candidate),
        champion=_summary(champion) if champion is not None else None,
        baselines={str(name): _summary(result) for name, result in baselines.items()},
        best_baseline=best_name,
        config=cfg.to_dict(),
    )
