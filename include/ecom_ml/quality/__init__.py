"""Data quality of one day of extracted orders: rules as code, one report as JSON and Markdown.

    from ecom_ml.quality import QualityConfig, DayHistory, validate_day, QualityReport
    cfg = QualityConfig.load()            # packaged quality.yaml, or a file merged over it
    report = validate_day(tables, day=day, interval_start=start, interval_end=end,
                          history=[DayHistory(d, orders, lines), ...], config=cfg)
    report.status                         # "pass" | "warning" | "error"
    report.to_json(), report.to_markdown(), report.summary_line()

    # In the pipeline: the validated history as the reference, and the rows to quarantine.
    from ecom_ml.quality.history import load_reference
    from ecom_ml.quality.validate import check_day
    ref = load_reference(lake, day, cfg)
    checked = check_day(tables, day=day, interval_start=start, interval_end=end, history=ref.history,
                        config=cfg, reference=ref)
    checked.report.quarantine, checked.bad    # what was taken out (rows) or why the day went whole

Importing this package is cheap (stdlib and PyYAML): ``validate_day`` is loaded on first use, and
Great Expectations (seconds to import) only when a day is actually validated, so DAG files can import
it at parse time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ecom_ml.quality.config import QualityConfig, QualityConfigError, RuleSettings, Severity
from ecom_ml.quality.report import DayHistory, Quarantine, QualityReport, QualityReportError, RuleResult

if TYPE_CHECKING:
    from ecom_ml.quality.validate import QualityInputError, validate_day

__all__ = [
    "DayHistory",
    "QualityConfig",
    "QualityConfigError",
    "QualityInputError",
    "QualityReport",
    "QualityReportError",
    "Quarantine",
    "RuleResult",
    "RuleSettings",
    "Severity",
    "validate_day",
]

_LAZY = {"validate_day", "check_day", "QualityInputError"}


def __getattr__(name: str) -> Any:
    """Load the validation (pandas, pyarrow; GX later still) only when it is asked for."""
    if name in _LAZY:
        from ecom_ml.quality import validate

        return getattr(validate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
