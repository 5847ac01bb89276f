"""Thresholds and severities of the quality rules, from the packaged ``quality.yaml`` plus overrides.

The packaged file is the catalogue: it names every rule and parameter with its default. A user file is
merged over it and may only change values that exist there, with a value of the same kind, so a typo
(``max_shar: 0.1``) or a wrong type fails loudly in one line instead of silently disabling a check.
Only stdlib and PyYAML are imported here: the DAG may load the config at parse time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from ecom_ml.errors import EcomError

Severity = Literal["error", "warning"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning")

#: Rule whose severity is the top-level ``empty_day`` setting rather than an entry under ``rules``.
EMPTY_DAY_RULE = "orders.not_empty"

_PACKAGED = "quality.yaml"


def table_of(rule: str) -> str:
    """The table a rule belongs to: ``order_items.quantity_positive`` -> ``order_items``."""
    return rule.split(".", 1)[0]


class QualityConfigError(EcomError):
    """The quality configuration cannot be used; the message names the file and the offending key."""


@dataclass(frozen=True)
class RuleSettings:
    """Severity and parameters of one rule, e.g. ``orders.volume_band``."""

    severity: Severity
    params: Mapping[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.params[name]


@dataclass(frozen=True)
class DriftSettings:
    """How the drift reference is chosen and binned (the per-input statistics are rules ``drift.*``)."""

    window_days: int = 28
    reference_days: int = 14
    min_reference_days: int = 5
    bins: int = 10
    top_categories: int = 20
    #: An input drifts only if its test's p-value is below this (a few dozen orders vary by chance).
    significance: float = 0.001


@dataclass(frozen=True)
class QualityConfig:
    """Resolved configuration of one validation run."""

    lookback_days: int
    empty_day: Severity
    sample_rows: int
    #: Every rule by full name (``table.rule``), in the order the report lists them.
    rules: Mapping[str, RuleSettings]
    #: Where the values came from, for messages.
    source: str = "packaged defaults"
    #: Above this share of quarantined orders or lines the whole day is quarantined.
    max_bad_row_share: float = 0.05
    #: A published day with more than this share of its lines quarantined sends an alert.
    alert_bad_row_share: float = 0.01
    #: Known closure days: an empty day there is expected.
    closed_dates: frozenset[date] = frozenset()
    drift: DriftSettings = DriftSettings()

    @classmethod
    def load(cls, path: Path | str | None = None) -> QualityConfig:
        """The packaged defaults, with the file at ``path`` (if any) merged over them.

        Raises QualityConfigError with a one-line message for a missing, unparsable or invalid file.
        """
        defaults = _read_yaml(resources.files(__package__).joinpath(_PACKAGED).read_text("utf-8"), _PACKAGED)
        if path is None:
            return _build(defaults, "packaged defaults")
        path = Path(path)
        try:
            text = path.read_text("utf-8")
        except FileNotFoundError:
            raise QualityConfigError(f"quality config {path}: no such file") from None
        except OSError as exc:
            raise QualityConfigError(f"quality config {path}: cannot be read ({exc.strerror})") from None
        overrides = _read_yaml(text, str(path))
        if overrides is None:
            overrides = {}
        merged = _merge(defaults, overrides, where=str(path), trail="")
        return _build(merged, str(path))

    def rule(self, name: str) -> RuleSettings:
        return self.rules[name]

    def severity(self, name: str) -> Severity:
        return self.rules[name].severity


def _read_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise QualityConfigError(f"quality config {where}: not valid YAML{at} ({problem})") from None


def _merge(default: Any, override: Any, *, where: str, trail: str) -> Any:
    """``override`` laid over ``default``; keys and value kinds must exist in ``default``."""
    if isinstance(default, dict):
        if not isinstance(override, dict):
            raise _invalid(where, trail or "top level", "a mapping", override)
        merged = copy.deepcopy(default)
        for key, value in override.items():
            path = f"{trail}.{key}" if trail else str(key)
            if key not in default:
                known = ", ".join(str(k) for k in default)
                raise QualityConfigError(f"quality config {where}: unknown key {path!r} (known here: {known})")
            merged[key] = _merge(default[key], value, where=where, trail=path)
        return merged
    if isinstance(default, bool) or default is None:
        return override
    if isinstance(default, int) and not isinstance(override, bool) and isinstance(override, int):
        return override
    if isinstance(default, float) and not isinstance(override, bool) and isinstance(override, int | float):
        return float(override)
    if isinstance(default, str) and isinstance(override, str):
        return override
    if isinstance(default, list) and isinstance(override, list):
        return override
    kind = {int: "an integer", float: "a number", str: "a string", list: "a list"}.get(type(default), "a value")
    raise _invalid(where, trail, kind, override)


def _invalid(where: str, key: str, expected: str, got: Any) -> QualityConfigError:
    return QualityConfigError(f"quality config {where}: {key}: expected {expected}, got {got!r}")


def _between(low: float, high: float, *, low_open: bool = False) -> Callable[[Any], bool]:
    return lambda v: (low < v if low_open else low <= v) and v <= high


#: Range checks by parameter name (the kind is already checked against the packaged default).
_PARAM_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_share": (_between(0.0, 1.0), "a share in [0, 1]"),
    "max_null_share": (_between(0.0, 1.0), "a share in [0, 1]"),
    "quantile": (_between(0.0, 1.0, low_open=True), "a quantile in (0, 1]"),
    "multiplier": (lambda v: v > 0, "a number > 0"),
    "low": (lambda v: v >= 0, "a number >= 0"),
    "high": (lambda v: v > 0, "a number > 0"),
    "window_days": (lambda v: v >= 1, "an integer >= 1"),
    "weeks": (lambda v: v >= 1, "an integer >= 1"),
    "min_reference_days": (lambda v: v >= 1, "an integer >= 1"),
    "closed_share": (_between(0.0, 1.0, low_open=True), "a share in (0, 1]"),
    "min_sales": (lambda v: v >= 1, "an integer >= 1"),
    "max_deviation": (lambda v: v > 0, "a number > 0"),
    "scale_floor": (lambda v: v > 0, "a number > 0"),
    "max_change": (lambda v: v > 1, "a factor > 1"),
    "min_count": (lambda v: v >= 0, "an integer >= 0"),
    "threshold": (lambda v: v > 0, "a number > 0"),
    "statistic": (lambda v: v in ("psi", "js"), "'psi' or 'js'"),
    "min_history_days": (lambda v: v >= 0, "an integer >= 0"),
    "allowed": (lambda v: bool(v) and all(isinstance(s, str) for s in v), "a non-empty list of strings"),
}


def _severity(value: Any, where: str, key: str) -> Severity:
    if value not in SEVERITIES:
        raise _invalid(where, key, "'error' or 'warning'", value)
    return cast(Severity, value)


def _build(raw: Any, where: str) -> QualityConfig:
    """Check ranges and cross-field constraints, and flatten ``rules`` to ``table.rule`` names."""
    if not isinstance(raw, dict) or not isinstance(raw.get("rules"), dict):
        raise QualityConfigError(f"quality config {where}: expected a mapping with a 'rules' section")
    lookback = raw["lookback_days"]
    if not isinstance(lookback, int) or lookback < 0:
        raise _invalid(where, "lookback_days", "an integer >= 0", lookback)
    sample_rows = raw["sample_rows"]
    if not isinstance(sample_rows, int) or not 1 <= sample_rows <= 1000:
        raise _invalid(where, "sample_rows", "an integer in [1, 1000]", sample_rows)
    empty_day = _severity(raw["empty_day"], where, "empty_day")
    shares = {}
    for name in ("max_bad_row_share", "alert_bad_row_share"):
        value = raw[name]
        if not 0.0 <= value <= 1.0:
            raise _invalid(where, name, "a share in [0, 1]", value)
        shares[name] = float(value)
    closed = set()
    for i, value in enumerate(raw["closed_dates"]):
        try:
            closed.add(value if isinstance(value, date) else date.fromisoformat(str(value)))
        except ValueError:
            raise _invalid(where, f"closed_dates[{i}]", "a date YYYY-MM-DD", value) from None
    drift_raw = raw["drift"]
    for name, low in (("window_days", 1), ("reference_days", 1), ("min_reference_days", 1), ("bins", 2),
                      ("top_categories", 1)):
        if drift_raw[name] < low:
            raise _invalid(where, f"drift.{name}", f"an integer >= {low}", drift_raw[name])
    if drift_raw["min_reference_days"] > drift_raw["reference_days"]:
        raise QualityConfigError(f"quality config {where}: drift: min_reference_days "
                                 f"({drift_raw['min_reference_days']}) > reference_days "
                                 f"({drift_raw['reference_days']}), so drift could never be evaluated")
    if not 0.0 < drift_raw["significance"] <= 1.0:
        raise _invalid(where, "drift.significance", "a p-value in (0, 1]", drift_raw["significance"])
    drift = DriftSettings(**{k: (float(v) if k == "significance" else int(v)) for k, v in drift_raw.items()})

    rules: dict[str, RuleSettings] = {EMPTY_DAY_RULE: RuleSettings(empty_day, {})}
    for table, table_rules in raw["rules"].items():
        for rule, settings in table_rules.items():
            key = f"rules.{table}.{rule}"
            if not isinstance(settings, dict) or "severity" not in settings:
                raise _invalid(where, key, "a mapping with a severity", settings)
            severity = _severity(settings["severity"], where, f"{key}.severity")
            params = {name: value for name, value in settings.items() if name != "severity"}
            for name, value in params.items():
                check, expected = _PARAM_CHECKS.get(name, (lambda _v: True, ""))
                if not check(value):
                    raise _invalid(where, f"{key}.{name}", expected, value)
            if "low" in params and params["low"] > params["high"]:
                raise QualityConfigError(
                    f"quality config {where}: {key}: low ({params['low']}) > high ({params['high']})"
                )
            if "min_history_days" in params and params["min_history_days"] > params["window_days"]:
                raise QualityConfigError(
                    f"quality config {where}: {key}: min_history_days ({params['min_history_days']}) "
                    f"> window_days ({params['window_days']}), so the rule could never run"
                )
            rules[f"{table}.{rule}"] = RuleSettings(severity, params)
    return QualityConfig(
        lookback_days=lookback, empty_day=empty_day, sample_rows=sample_rows, rules=rules, source=where,
        closed_dates=frozenset(closed), drift=drift, **shares,
    )
