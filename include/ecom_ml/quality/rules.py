"""Checks Great Expectations has no expectation for, and the result constructors every rule shares.

GX validates one batch (one table) at a time and sees pandas dtypes, so three kinds of rule live here,
vectorised on Arrow: the schema against the lake's Arrow contract (``decimal128(12, 2)`` and
``timestamp[us, UTC]`` are invisible once converted to pandas), referential integrity between the
day's tables. Rules that compare with the lake's history live in ``calendar`` (volume, empty day,
late changes), ``prices`` (unit and list prices) and ``drift``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ecom_ml.ingest.schema import COLUMNS, arrow_schema
from ecom_ml.quality.config import QualityConfig, table_of
from ecom_ml.quality.frames import first_true, sample_rows
from ecom_ml.quality.report import RuleResult

#: The partition's tables, in report order.
TABLES: tuple[str, ...] = tuple(COLUMNS)
#: Tables a partition extracted by an older version lacks (``refund_lines``: migration 0003). Absent,
#: their rules are not evaluated rather than failed; present, they are checked like any other.
OPTIONAL_TABLES: frozenset[str] = frozenset({"refund_lines"})


# -- result constructors ----------------------------------------------------------------------


def not_evaluated(rule: str, config: QualityConfig, description: str, reason: str, threshold: str = "") -> RuleResult:
    """A rule that could not run for a known reason (warm-up, columns the schema rule reports missing)."""
    return RuleResult(
        rule=rule,
        table=table_of(rule),
        severity=config.severity(rule),
        success=None,
        observed=None,
        threshold=threshold,
        description=description,
        detail=f"not evaluated: {reason}",
    )


def rows_result(
    rule: str,
    config: QualityConfig,
    description: str,
    *,
    violation: str,
    unexpected: int,
    total: int,
    sample: list[dict[str, Any]],
    max_share: float | None = None,
    success: bool | None = None,
) -> RuleResult:
    """A row-level rule: ``unexpected`` of ``total`` rows have ``violation``.

    With ``max_share`` None no offending row is allowed and ``observed`` is the row count; otherwise
    ``observed`` is the offending share. ``success`` comes from GX when GX evaluated the rule.
    """
    if max_share is None:
        ok = unexpected == 0 if success is None else success
        return RuleResult(
            rule=rule,
            table=table_of(rule),
            severity=config.severity(rule),
            success=ok,
            observed=unexpected,
            threshold="0",
            description=description,
            sample=sample,
            detail=f"{unexpected:,} row(s) with {violation}",
        )
    share = unexpected / total if total else 0.0
    ok = share <= max_share if success is None else success
    return RuleResult(
        rule=rule,
        table=table_of(rule),
        severity=config.severity(rule),
        success=ok,
        observed=round(share, 6),
        threshold=f"≤ {max_share:.2%}",
        description=description,
        sample=sample,
        detail=f"{share:.2%} with {violation} ({unexpected:,} of {total:,} rows)",
    )


# -- schema -----------------------------------------------------------------------------------


def check_schema(name: str, table: pa.Table | None, config: QualityConfig) -> RuleResult:
    """Column set and Arrow types of one table against the lake contract; names every difference."""
    rule = f"{name}.schema"
    expected = arrow_schema(name)
    description = f"columns and Arrow types of {name} match the lake schema ({len(expected)} columns)"
    if table is None and name in OPTIONAL_TABLES:
        return not_evaluated(rule, config, description, "table absent (a partition extracted before it existed)",
                             "no differences")
    if table is None:
        return RuleResult(
            rule=rule, table=name, severity=config.severity(rule), success=False, observed=len(expected),
            threshold="no differences", description=description, detail="table missing from the partition",
            sample=[{"column": f.name, "problem": "missing", "expected": str(f.type), "actual": None}
                    for f in expected],
        )
    actual = table.schema
    problems: list[dict[str, Any]] = []
    for field in expected:
        index = actual.get_field_index(field.name)
        if index < 0:
            problems.append({"column": field.name, "problem": "missing", "expected": str(field.type), "actual": None})
        elif not actual.field(index).type.equals(field.type):
            problems.append({"column": field.name, "problem": "type", "expected": str(field.type),
                             "actual": str(actual.field(index).type)})
    problems += [
        {"column": f.name, "problem": "unexpected", "expected": None, "actual": str(f.type)}
        for f in actual if expected.get_field_index(f.name) < 0
    ]
    return RuleResult(
        rule=rule, table=name, severity=config.severity(rule), success=not problems, observed=len(problems),
        threshold="no differences", description=description, sample=problems[: config.sample_rows],
        detail=_describe_schema_problems(problems) if problems else "matches",
    )


def _describe_schema_problems(problems: Sequence[Mapping[str, Any]]) -> str:
    def names(kind: str, fmt: str = "{column}") -> str:
        return ", ".join(fmt.format(**p) for p in problems if p["problem"] == kind)

    parts = []
    if missing := names("missing"):
        parts.append(f"missing column(s): {missing}")
    if unexpected := names("unexpected"):
        parts.append(f"unexpected column(s): {unexpected}")
    if mistyped := names("type", "{column} is {actual}, expected {expected}"):
        parts.append(f"type mismatch: {mistyped}")
    return "; ".join(parts)


def usable_columns(name: str, table: pa.Table | None) -> frozenset[str]:
    """Columns present with the contract's type: the ones value rules can be evaluated on."""
    if table is None:
        return frozenset()
    expected = arrow_schema(name)
    return frozenset(
        f.name for f in expected
        if (i := table.schema.get_field_index(f.name)) >= 0 and table.schema.field(i).type.equals(f.type)
    )


# -- referential integrity --------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """``child.column`` must exist in ``parent.parent_column`` (NULLs are the not-null rules' business)."""

    rule: str
    child: str
    column: str
    parent: str
    parent_column: str

    @property
    def description(self) -> str:
        return f"every non-null {self.child}.{self.column} exists in {self.parent}.{self.parent_column}"


REFERENCES: tuple[Reference, ...] = (
    Reference("order_items.order_exists", "order_items", "order_id", "orders", "order_id"),
    Reference("order_items.product_exists", "order_items", "product_id", "products", "product_id"),
    Reference("orders.customer_exists", "orders", "customer_id", "customers", "customer_id"),
    Reference("refund_lines.order_item_exists", "refund_lines", "order_item_id", "order_items", "order_item_id"),
)


def check_reference(
    ref: Reference, tables: Mapping[str, pa.Table], usable: Mapping[str, frozenset[str]], config: QualityConfig
) -> RuleResult:
    for table, column in ((ref.child, ref.column), (ref.parent, ref.parent_column)):
        if column not in usable.get(table, frozenset()):
            return not_evaluated(ref.rule, config, ref.description, f"{table}.{column} missing or mistyped "
                                 f"(see {table}.schema)", threshold="0")
    child = tables[ref.child]
    keys = child.column(ref.column)
    known = pc.is_in(keys, value_set=tables[ref.parent].column(ref.parent_column))
    orphan = pc.and_(pc.is_valid(keys), pc.invert(known))
    count, positions = first_true(orphan, config.sample_rows)
    return rows_result(
        ref.rule, config, ref.description,
        violation=f"{ref.column} not in {ref.parent}", unexpected=count, total=child.num_rows,
        sample=sample_rows(child, positions, config.sample_rows),
    )


WITHIN_ORDERED = "refund_lines.within_ordered"


def refunds_within_ordered(tables: Mapping[str, pa.Table], usable: Mapping[str, frozenset[str]],
                           config: QualityConfig) -> RuleResult:
    """Every refund row whose line's refunds add up to more than the line ordered (all of them are named)."""
    description = "refunds of a line add up to at most its ordered quantity"
    needs = {"refund_lines": {"order_item_id", "quantity"}, "order_items": {"order_item_id", "quantity"}}
    for table, columns in needs.items():
        if not columns <= usable.get(table, frozenset()):
            return not_evaluated(WITHIN_ORDERED, config, description,
                                 f"{table} missing or its ids/quantities mistyped (see {table}.schema)", "0")
    refunds, items = tables["refund_lines"], tables["order_items"]
    totals = refunds.group_by("order_item_id").aggregate([("quantity", "sum")])
    joined = totals.join(items.select(["order_item_id", "quantity"]), "order_item_id", join_type="inner")
    # Lines with quantity <= 0 are order_items.quantity_positive's finding, not a second one here.
    ordered = joined.column("quantity").cast(pa.int64())
    over = joined.filter(pc.and_(pc.greater(ordered, 0), pc.greater(joined.column("quantity_sum"), ordered)))
    offending = pc.is_in(refunds.column("order_item_id"), value_set=over.column("order_item_id"))
    count, positions = first_true(offending, refunds.num_rows)
    result = rows_result(WITHIN_ORDERED, config, description, violation="more refunded than the line ordered",
                         unexpected=count, total=refunds.num_rows,
                         sample=sample_rows(refunds, positions[: config.sample_rows], config.sample_rows))
    return replace(result, rows=tuple(positions))
