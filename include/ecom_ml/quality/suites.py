"""One Great Expectations suite per table, as code, and the run that turns GX results into RuleResults.

Every rule GX has an expectation for is a GX expectation here, carrying the rule name in ``meta`` and
its severity in GX's own ``severity`` field (error -> critical), so a suite exported from this code
says the same as the report. Thresholds that depend on the run (the interval, the learned
cancellation share) are plain values computed before the suites are built. Results come back in
GX's COMPLETE format: the position of every offending row, which row-level quarantine takes out.

GX is imported inside the functions only: importing it costs seconds and the DAG imports this package
at parse time.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ecom_ml.quality.config import QualityConfig, table_of
from ecom_ml.quality.frames import sample_rows
from ecom_ml.quality.report import DATASET, RuleResult
from ecom_ml.quality.rules import not_evaluated, rows_result

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

log = logging.getLogger(__name__)

_GX_SEVERITY = {"error": "critical", "warning": "warning"}


@dataclass(frozen=True)
class SuiteInputs:
    """The run-dependent values the expectations are built with."""

    interval_start: datetime
    interval_end: datetime
    #: The allowed cancelled share (configured or learned) and how it was derived.
    cancellation_share: tuple[float, str] | None = None


@dataclass(frozen=True)
class Check:
    """A rule checked by one GX expectation (or skipped, with the reason).

    Row rules report ``unexpected`` rows that have ``violation``; table rules (row counts) report the
    observed count followed by ``violation`` as its unit, against ``threshold``.
    """

    rule: str
    description: str
    violation: str
    columns: tuple[str, ...] = ()
    expectation: Any = None
    max_share: float | None = None
    threshold: str | None = None
    skip: str | None = None


class _Builder:
    """Builds the checks of one table; hides the GX boilerplate (meta, severity) of each expectation."""

    def __init__(self, table: str, config: QualityConfig) -> None:
        import great_expectations as gx

        self.gxe = gx.expectations
        self.table = table
        self.config = config
        self.checks: list[Check] = []

    def add(self, name: str, expectation_cls: Callable[..., Any], description: str, violation: str, *,
            columns: tuple[str, ...] = (), max_share: float | None = None, threshold: str | None = None,
            **kwargs: Any) -> None:
        rule = f"{self.table}.{name}"
        if max_share is not None and max_share > 0:
            kwargs["mostly"] = 1.0 - max_share
        expectation = expectation_cls(
            meta={"rule": rule}, severity=_GX_SEVERITY[self.config.severity(rule)], **kwargs
        )
        self.checks.append(Check(rule, description, violation, columns, expectation,
                                 max_share if max_share else None, threshold))

    def skip(self, name: str, description: str, reason: str, threshold: str = "") -> None:
        self.checks.append(Check(f"{self.table}.{name}", description, "", threshold=threshold, skip=reason))

    def not_null(self, column: str) -> None:
        self.add(f"{column}_not_null", self.gxe.ExpectColumnValuesToNotBeNull, f"{column} is never null",
                 f"null {column}", columns=(column,), column=column)

    def unique(self, column: str) -> None:
        self.add(f"{column}_unique", self.gxe.ExpectColumnValuesToBeUnique, f"{column} is unique",
                 f"a repeated {column}", columns=(column,), column=column)


def orders_checks(inputs: SuiteInputs, config: QualityConfig) -> list[Check]:
    from great_expectations.expectations.row_conditions import Column

    start, end = inputs.interval_start, inputs.interval_end
    b = _Builder("orders", config)
    # Counted on orders *created* in the interval: the partition also carries earlier orders updated
    # today (status changes, cancellations).
    created_today = (Column("created_at") >= start) & (Column("created_at") < end)
    b.not_null("order_id")
    b.unique("order_id")
    null_share = config.rule("orders.customer_id_not_null")["max_null_share"]
    b.add("customer_id_not_null", b.gxe.ExpectColumnValuesToNotBeNull,
          "customer_id is set" + (f" (guest share ≤ {null_share:.0%})" if null_share else ""),
          "null customer_id", columns=("customer_id",), max_share=null_share, column="customer_id")
    b.not_null("status")
    allowed = config.rule("orders.status_in_set")["allowed"]
    b.add("status_in_set", b.gxe.ExpectColumnValuesToBeInSet, f"status in {{{', '.join(allowed)}}}",
          "a status outside the set", columns=("status",), column="status", value_set=list(allowed))
    b.not_null("created_at")
    b.not_null("updated_at")
    b.add("in_interval", b.gxe.ExpectColumnValuesToBeBetween,
          f"created_at or updated_at in [{start.isoformat()}, {end.isoformat()})",
          "both timestamps outside the interval", columns=("created_at", "updated_at"),
          column="updated_at", min_value=start, max_value=end, strict_max=True,
          row_condition=(Column("created_at") < start) | (Column("created_at") >= end))
    b.add("updated_after_created", b.gxe.ExpectColumnPairValuesAToBeGreaterThanB, "updated_at ≥ created_at",
          "updated_at before created_at", columns=("updated_at", "created_at"),
          column_A="updated_at", column_B="created_at", or_equal=True)
    max_share, threshold = inputs.cancellation_share or (config.rule("orders.cancellation_share")["max_share"], None)
    b.add("cancellation_share", b.gxe.ExpectColumnValuesToNotBeInSet,
          "share of cancelled or refunded orders among those created in the interval",
          "status cancelled/refunded", columns=("status", "created_at"), max_share=max_share, threshold=threshold,
          column="status", value_set=["cancelled", "refunded"],
          row_condition=created_today)
    return b.checks


def order_items_checks(inputs: SuiteInputs, config: QualityConfig) -> list[Check]:
    b = _Builder("order_items", config)
    for column in ("order_item_id",):
        b.not_null(column)
        b.unique(column)
    for column in ("order_id", "line_no", "product_id", "quantity", "unit_price"):
        b.not_null(column)
    b.add("order_line_unique", b.gxe.ExpectCompoundColumnsToBeUnique, "(order_id, line_no) is unique",
          "a repeated (order_id, line_no)", columns=("order_id", "line_no"), column_list=["order_id", "line_no"])
    b.add("quantity_positive", b.gxe.ExpectColumnValuesToBeBetween, "quantity > 0", "quantity ≤ 0",
          columns=("quantity",), column="quantity", min_value=1)
    b.add("unit_price_non_negative", b.gxe.ExpectColumnValuesToBeBetween, "unit_price ≥ 0", "unit_price < 0",
          columns=("unit_price",), column="unit_price", min_value=0)
    max_share = config.rule("order_items.duplicate_lines")["max_share"]
    key = ["order_id", "product_id", "quantity", "unit_price"]
    b.add("duplicate_lines", b.gxe.ExpectCompoundColumnsToBeUnique,
          "share of lines repeating (order_id, product_id, quantity, unit_price) within their order",
          "a repeated line", columns=tuple(key), max_share=max_share, column_list=key)
    return b.checks


def refund_checks(config: QualityConfig) -> list[Check]:
    """refund_lines: a usable key and a time, and units taken back > 0 (the sum per line is in rules)."""
    b = _Builder("refund_lines", config)
    b.not_null("refund_line_id")
    b.unique("refund_line_id")
    b.not_null("refunded_at")
    b.add("quantity_positive", b.gxe.ExpectColumnValuesToBeBetween, "quantity > 0", "quantity ≤ 0",
          columns=("quantity",), column="quantity", min_value=1)
    return b.checks


def key_checks(table: str, key: str, config: QualityConfig) -> list[Check]:
    """customers and products: the day's referenced rows, checked for a usable key."""
    b = _Builder(table, config)
    b.not_null(key)
    b.unique(key)
    return b.checks


def build_checks(inputs: SuiteInputs, config: QualityConfig) -> dict[str, list[Check]]:
    """Every GX-backed rule, by table."""
    return {
        "orders": orders_checks(inputs, config),
        "order_items": order_items_checks(inputs, config),
        "refund_lines": refund_checks(config),
        "customers": key_checks("customers", "customer_id", config),
        "products": key_checks("products", "product_id", config),
    }


def run_checks(
    checks: Mapping[str, list[Check]],
    tables: Mapping[str, pa.Table],
    frames: Mapping[str, pd.DataFrame],
    usable: Mapping[str, frozenset[str]],
    config: QualityConfig,
) -> list[RuleResult]:
    """Validate each table's suite on its frame in one ephemeral GX context; one result per check.

    Checks whose columns are missing or mistyped are not sent to GX (the schema rule already failed
    and names them); they come back as not evaluated.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(name=DATASET)
    # COMPLETE: the index of *every* offending row, which row-level quarantine takes out of the day.
    result_format = {"result_format": "COMPLETE", "partial_unexpected_count": config.sample_rows}

    results: list[RuleResult] = []
    for table, table_checks in checks.items():
        runnable: list[Check] = []
        for check in table_checks:
            missing = [c for c in check.columns if c not in usable.get(table, frozenset())]
            if check.skip is not None:
                results.append(not_evaluated(check.rule, config, check.description, check.skip, check.threshold or ""))
            elif table not in frames:
                results.append(not_evaluated(check.rule, config, check.description, f"table {table} missing"))
            elif missing:
                reason = f"column(s) {', '.join(missing)} missing or mistyped (see {table}.schema)"
                results.append(not_evaluated(check.rule, config, check.description, reason))
            else:
                runnable.append(check)
        if not runnable:
            continue
        suite = gx.ExpectationSuite(name=f"{DATASET}.{table}")
        for check in runnable:
            suite.add_expectation(check.expectation)
        batch = (
            source.add_dataframe_asset(name=table)
            .add_batch_definition_whole_dataframe("partition")
            .get_batch(batch_parameters={"dataframe": frames[table]})
        )
        with warnings.catch_warnings():
            # GX's column-pair metrics read tz-aware columns through Series.values; pandas 3.1 warns that
            # this will change. The updated_after_created tests pin the behaviour we rely on.
            warnings.filterwarnings("ignore", message="Series.values returning an ndarray that drops timezone")
            validation = batch.validate(suite, result_format=result_format)
        # GX orders results its own way; the rule name in meta maps them back.
        by_rule = {r.expectation_config.meta["rule"]: r for r in validation.results}
        results += [_to_result(check, by_rule[check.rule], tables[table], config) for check in runnable]
    return results


def _to_result(check: Check, validation: Any, table: pa.Table, config: QualityConfig) -> RuleResult:
    """One GX ExpectationValidationResult as a RuleResult, with samples from the Arrow table."""
    error = _exception_message(validation.exception_info)
    if error is not None:
        # A check that crashed fails closed: a bug must not let a bad day through.
        log.warning("%s could not be evaluated: %s", check.rule, error)
        return RuleResult(rule=check.rule, table=table_of(check.rule), severity=config.severity(check.rule),
                          success=False, observed=None, threshold=check.threshold or "0",
                          description=check.description, detail=f"could not be evaluated: {error}")
    result = validation.result
    if "observed_value" in result:  # table-level: a row count
        observed = int(result["observed_value"])
        return RuleResult(rule=check.rule, table=table_of(check.rule), severity=config.severity(check.rule),
                          success=bool(validation.success), observed=observed, threshold=check.threshold or "",
                          description=check.description, detail=f"{observed:,} {check.violation}")
    # The frames keep Arrow's RangeIndex, so GX's index labels are row positions.
    every = [int(i) for i in (result.get("unexpected_index_list") or [])]
    return replace(rows_result(
        check.rule, config, check.description,
        violation=check.violation,
        unexpected=int(result.get("unexpected_count") or 0),
        total=int(result.get("element_count") or 0),
        sample=sample_rows(table, every[: config.sample_rows], config.sample_rows),
        max_share=check.max_share,
        success=bool(validation.success),
    ), rows=tuple(every), **({"threshold": check.threshold} if check.threshold and check.max_share else {}))


def _exception_message(info: Any) -> str | None:
    """GX reports exceptions either flat or keyed by metric; the first message, if any was raised."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "unknown error")
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message") or "unknown error")
    return None
