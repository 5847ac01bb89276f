"""The quality report of one day: rule results, status, and its JSON and Markdown renderings.

The report is a document (design: "gates are data"): it is stored beside the partition, attached to
alerts and read back by the next runs (row counts feed the volume rule), so it round-trips through
JSON exactly and holds only JSON-safe values. Nothing heavy is imported here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

from ecom_ml.errors import EcomError
from ecom_ml.quality.config import Severity

Status = Literal["pass", "warning", "error"]
Outcome = Literal["pass", "fail", "not evaluated"]
JSONScalar = int | float | str | None

REPORT_FORMAT = 1
DATASET = "orders"


class QualityReportError(EcomError):
    """A stored report cannot be read back (not JSON, or not a report of this format)."""


@dataclass(frozen=True)
class DayHistory:
    """What the volume and late-change rules know of a previously validated day.

    ``orders`` and ``order_lines`` count what was *created* that day (a closed day has 0 even when
    refunds of older orders arrived), ``late_changes`` the older orders changed that day.
    """

    day: date
    orders: int
    order_lines: int
    late_changes: int = 0
    #: Of the orders created that day, those cancelled or refunded (as of the check).
    cancelled: int = 0


@dataclass(frozen=True)
class Quarantine:
    """What a day's check took out of it: offending rows (``decision`` "rows") or the whole day ("day")."""

    decision: Literal["rows", "day"]
    orders: int
    lines: int
    products: int
    share: float
    max_share: float
    reason: str

    def describe(self) -> str:
        what = f"{self.orders:,} order(s) with {self.lines:,} line(s)"
        if self.products:
            what += f" and {self.products:,} product(s)"
        if self.decision == "rows":
            return f"{what} quarantined ({self.share:.2%} ≤ max_bad_row_share {self.max_share:.2%}), rest published"
        return f"whole day quarantined: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "orders": self.orders, "lines": self.lines, "products": self.products,
                "share": self.share, "max_share": self.max_share, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Quarantine:
        return cls(data["decision"], int(data["orders"]), int(data["lines"]), int(data["products"]),
                   float(data["share"]), float(data["max_share"]), str(data["reason"]))


@dataclass(frozen=True)
class RuleResult:
    """Outcome of one rule on one day.

    ``success`` is None when the rule was not evaluated (warm-up, or the columns it reads are missing,
    which the schema rule already reports). ``observed`` is the measured value (offending row count,
    share or row count), ``detail`` says it in words, ``threshold`` is the bound in words, and
    ``sample`` holds up to ``sample_rows`` offending rows with their original values.
    """

    rule: str
    table: str
    severity: Severity
    success: bool | None
    observed: JSONScalar
    threshold: str
    description: str
    sample: list[dict[str, Any]] = field(default_factory=list)
    detail: str = ""
    #: Positions of *every* offending row in its table, for row-level quarantine. Not part of the
    #: stored report (the quarantined rows themselves are stored), so it is empty after a round trip.
    rows: tuple[int, ...] = field(default=(), repr=False, compare=False)

    @property
    def outcome(self) -> Outcome:
        return "not evaluated" if self.success is None else ("pass" if self.success else "fail")

    @property
    def failed(self) -> bool:
        return self.success is False

    def brief(self) -> str:
        """``rule (observed, allowed threshold)``: one failed rule inside the summary line."""
        return f"{self.rule} ({self.detail or self.observed}, allowed {self.threshold})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "table": self.table,
            "severity": self.severity,
            "outcome": self.outcome,
            "success": self.success,
            "observed": self.observed,
            "detail": self.detail,
            "threshold": self.threshold,
            "description": self.description,
            "sample": self.sample,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuleResult:
        return cls(
            rule=data["rule"],
            table=data["table"],
            severity=data["severity"],
            success=data["success"],
            observed=data["observed"],
            threshold=data["threshold"],
            description=data["description"],
            sample=list(data.get("sample", [])),
            detail=data.get("detail", ""),
        )


@dataclass(frozen=True)
class QualityReport:
    """All rule results of one day's partition; ``status`` is the worst severity among failed rules."""

    day: date
    interval_start: datetime
    interval_end: datetime
    results: list[RuleResult]
    row_counts: dict[str, int]
    dataset: str = DATASET
    #: What the check took out of the day; None when nothing (no error rule failed).
    quarantine: Quarantine | None = None
    #: Day metrics later days compare with (created orders and lines, late changes).
    metrics: dict[str, int] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        """The worst severity among failed rules (an error rule that only quarantined rows is still an error)."""
        failed = {r.severity for r in self.results if r.failed}
        return "error" if "error" in failed else "warning" if "warning" in failed else "pass"

    @property
    def published_quality(self) -> Status:
        """The quality of what is published: a day whose bad rows were taken out is published as a warning."""
        if self.status == "error" and self.quarantine is not None and self.quarantine.decision == "rows":
            return "warning"
        return self.status

    @property
    def day_quarantined(self) -> bool:
        return self.status == "error" and not (self.quarantine is not None and self.quarantine.decision == "rows")

    def failures(self, severity: Severity | None = None) -> list[RuleResult]:
        return [r for r in self.results if r.failed and (severity is None or r.severity == severity)]

    def result(self, rule: str) -> RuleResult:
        """The result of one rule by full name, e.g. ``order_items.quantity_positive``."""
        for r in self.results:
            if r.rule == rule:
                return r
        raise KeyError(rule)

    def history_entry(self) -> DayHistory:
        """This day as the baseline of later days' volume and late-change rules."""
        m = self.metrics
        return DayHistory(self.day, m.get("created_orders", self.row_counts.get("orders", 0)),
                          m.get("created_lines", self.row_counts.get("order_items", 0)), m.get("late_changes", 0),
                          m.get("cancelled", 0))

    def summary_line(self) -> str:
        """One line for logs, task failure reasons and alert titles: what failed, observed vs allowed."""
        head = f"{self.dataset} {self.day.isoformat()}"
        errors, warnings = self.failures("error"), self.failures("warning")
        parts = []
        if errors:
            parts.append(f"{len(errors)} error rule(s) failed: " + "; ".join(r.brief() for r in errors))
        if warnings:
            parts.append(f"{len(warnings)} warning rule(s) failed: " + "; ".join(r.brief() for r in warnings))
        if self.quarantine is not None and self.quarantine.decision == "rows":
            parts.append(self.quarantine.describe())
        if parts:
            return f"{head}: " + " | ".join(parts)
        skipped = sum(r.success is None for r in self.results)
        evaluated = len(self.results) - skipped
        note = f" ({skipped} not evaluated)" if skipped else ""
        return f"{head}: all {evaluated} evaluated rules passed{note}"

    # -- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "dataset": self.dataset,
            "day": self.day.isoformat(),
            "interval_start": self.interval_start.isoformat(),
            "interval_end": self.interval_end.isoformat(),
            "status": self.status,
            "summary": self.summary_line(),
            "row_counts": dict(self.row_counts),
            "metrics": dict(self.metrics),
            "quarantine": self.quarantine.to_dict() if self.quarantine is not None else None,
            "results": [r.to_dict() for r in self.results],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityReport:
        if data.get("format") != REPORT_FORMAT:
            raise QualityReportError(f"quality report: format {data.get('format')!r} is not {REPORT_FORMAT}")
        return cls(
            day=date.fromisoformat(data["day"]),
            interval_start=datetime.fromisoformat(data["interval_start"]),
            interval_end=datetime.fromisoformat(data["interval_end"]),
            results=[RuleResult.from_dict(r) for r in data["results"]],
            row_counts={str(k): int(v) for k, v in data["row_counts"].items()},
            dataset=data.get("dataset", DATASET),
            quarantine=Quarantine.from_dict(data["quarantine"]) if data.get("quarantine") else None,
            metrics={str(k): int(v) for k, v in (data.get("metrics") or {}).items()},
        )

    @classmethod
    def from_json(cls, text: str) -> QualityReport:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QualityReportError(f"quality report: not JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise QualityReportError("quality report: expected a JSON object")
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise QualityReportError(f"quality report: missing or malformed field ({exc})") from None

    # -- Markdown -----------------------------------------------------------------------------

    def to_markdown(self) -> str:
        """Summary line, a table of every rule, then the offending samples of each failed rule."""
        counts = ", ".join(f"{name} {n:,}" for name, n in self.row_counts.items())
        lines = [
            f"# Data quality: {self.dataset} {self.day.isoformat()}",
            "",
            f"**Status: {self.status.upper()}** - {self.summary_line()}",
            "",
            f"Interval: [{self.interval_start.isoformat()}, {self.interval_end.isoformat()}) - rows: {counts}",
            "",
            "| Rule | Severity | Result | Observed | Threshold | Description |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in self.results:
            result = "**FAIL**" if r.failed else r.outcome
            observed = r.detail or ("" if r.observed is None else str(r.observed))
            cells = [f"`{r.rule}`", r.severity, result, observed, r.threshold, r.description]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        if self.quarantine is not None:
            q = self.quarantine
            lines += ["", "## Quarantine", "", q.describe() + ".",
                      "" if q.decision == "day" else
                      "The offending orders (every line of them) are in `lake/quarantine/orders/` for this day; "
                      "training never reads them."]
        drift = [r for r in self.results if r.table == "drift"]
        if drift:
            lines += ["", "## Drift against the trailing reference", "",
                      "| Input | Result | Statistic | Value | Threshold | Detail |", "| --- | --- | --- | --- | --- | --- |"]
            for r in drift:
                cells = [r.rule.split(".", 1)[1], "**FAIL**" if r.failed else r.outcome,
                         r.description.split(":", 1)[0], "" if r.observed is None else r.observed, r.threshold, r.detail]
                lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        failed = self.failures()
        if failed:
            lines += ["", "## Failed rules"]
            for r in failed:
                lines += ["", f"### `{r.rule}` ({r.severity}): {_cell(r.detail)}", "", r.description]
                if r.sample:
                    lines += ["", f"Offending rows ({len(r.sample)} shown):", "", *_sample_table(r.sample)]
        return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    """A value made safe for one Markdown table cell."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _sample_table(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    out = ["| " + " | ".join(_cell(c) for c in columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for row in rows:
        out.append("| " + " | ".join(_cell("NULL" if row.get(c) is None else row.get(c)) for c in columns) + " |")
    return out
