"""`ecom-ml import`: load a shop's order export into the orders schema through a declarative mapping.

The pipeline, one module per step:

1. ``mapping``       read and validate the YAML mapping (which column is what, the shop's rules);
2. ``read``          decode and split the file, every record tagged with its source line;
3. ``rules``         parse values and give each unloadable row one reason, by priority;
4. ``cancellations`` link cancellation lines to the orders they cancel (status, updated_at, and the
                     refund of each linked line);
5. ``derive``        derive customers, products, orders and order lines from accepted lines;
6. ``load``          COPY into staging tables and INSERT ... ON CONFLICT DO NOTHING, one transaction;
7. ``rejects``       the reject file, published only after the commit.

Accounting: every row read is exactly one of an order line (accepted), a cancellation line linked
to an order, or a rejected row, and the result checks that this holds before anything is written.
A file that cannot be imported as a whole (missing, empty, truncated, wrong header, bad encoding, a
column mostly unparseable) raises an ``EcomError`` naming the file and the line or column, and writes
nothing. The default mapping reads Online Retail II (Chen, 2019, UCI ML Repository,
doi:10.24432/C5CG6D, CC BY 4.0).
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
from tqdm import tqdm

from ecom_ml.importer.cancellations import link_cancellations
from ecom_ml.importer.derive import Tables, build_tables
from ecom_ml.importer.load import DatabaseError, ImportConflict, LoadCounts, connect, load_tables
from ecom_ml.importer.mapping import Mapping, MappingError, load_mapping
from ecom_ml.importer.read import Source, SourceError, read_source
from ecom_ml.importer.rejects import RejectFileError, default_rejects_path, discard, publish, write_rejects
from ecom_ml.importer.rules import REASONS, Classified, classify

__all__ = [
    "REASONS",
    "DatabaseError",
    "ImportConflict",
    "ImportResult",
    "Mapping",
    "MappingError",
    "RejectFileError",
    "SourceError",
    "default_rejects_path",
    "import_file",
    "load_mapping",
]

_STEPS = (
    "read",
    "check rows",
    "link cancellations",
    "derive tables",
    "staging",
    "customers",
    "products",
    "orders",
    "order lines",
    "refund lines",
    "reject file",
    "commit",
)


@dataclass(frozen=True)
class ImportResult:
    """What one import did; ``describe()`` is the summary the CLI prints."""

    source: Path
    mapping: Path
    database: str  # URL without password
    rejects_path: Path
    seconds: float
    rows_read: int
    order_lines: int  # accepted order-line rows (new or already present)
    cancellation_lines: int  # cancellation rows linked to an order
    rejected: int
    rejects_by_reason: dict[str, int]  # REASONS order, reasons that occurred
    orders: int  # orders derived from the file
    orders_by_status: dict[str, int]  # of the orders derived from the file
    customers: int
    products: int
    load: LoadCounts

    def describe(self) -> str:
        load = self.load
        out = [
            f"imported {self.source} into {self.database} in {self.seconds:.1f} s (mapping {self.mapping.name})",
            f"rows read: {self.rows_read:,} = {self.order_lines:,} order lines + "
            f"{self.cancellation_lines:,} cancellation lines linked to an order + {self.rejected:,} rejected",
        ]
        if self.rejects_by_reason:
            width = max(len(reason) for reason in self.rejects_by_reason)
            out.append("rejected rows by reason:")
            out += [f"  {reason:<{width}}  {count:>9,}" for reason, count in self.rejects_by_reason.items()]
        out.append(f"reject file: {self.rejects_path}")
        by_status = ", ".join(f"{status} {count:,}" for status, count in load.orders_new_by_status.items())
        out.append(
            f"orders:      {load.orders_new:,} new"
            + (f" ({by_status})" if by_status else "")
            + _present(load.orders_present, load.present_examples)
        )
        out.append(
            f"order lines: {load.items_new:,} new"
            + (" (lines of orders already present are not re-imported)" if load.orders_present else "")
        )
        if load.conflicts:
            shown = ", ".join(c.describe() for c in load.conflicts[:3])
            out.append(f"conflicts:   {len(load.conflicts):,} invoice(s) already present with other lines, left as "
                       f"they are (--skip-conflicts): {shown}" + (" ..." if len(load.conflicts) > 3 else ""))
        out.append(f"refund lines: {load.refunds_new:,} new" + _present(load.refunds_present))
        out.append(f"customers:   {load.customers_new:,} new" + _present(load.customers_present))
        out.append(f"products:    {load.products_new:,} new" + _present(load.products_present))
        return "\n".join(out)


def _present(count: int, examples: list[str] | None = None) -> str:
    if not count:
        return ""
    sample = f", e.g. {', '.join(examples)}" if examples else ""
    return f"; {count:,} already present, skipped{sample}"


class _Progress:
    """A step-level tqdm bar on stderr: the slow parts are single vectorised calls, not loops."""

    def __init__(self, enabled: bool, source: Path) -> None:
        self.bar = tqdm(
            total=len(_STEPS),
            desc=f"import {source.name}",
            unit="step",
            disable=not enabled,
            file=sys.stderr,
            leave=False,
        )
        self.started = False

    def step(self, name: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(name)

    def close(self) -> None:
        if self.started:
            self.bar.update(1)
        self.bar.close()


def import_file(
    url: str,
    source: Path,
    mapping: Path | None = None,
    rejects: Path | None = None,
    progress: bool = True,
    on_conflict: str = "refuse",
) -> ImportResult:
    """Import ``source`` into the orders database at ``url``, all or nothing.

    ``mapping`` defaults to the packaged Online Retail II mapping, ``rejects`` to
    ``default_rejects_path(source)``. Raises an ``EcomError`` subclass for anything the user can fix;
    an invoice already present with other lines raises ``ImportConflict`` unless ``on_conflict="skip"``.
    """
    from ecom_ml.db import redact_url as _safe  # the one place that hides passwords in URLs

    started = time.monotonic()
    source = Path(source)
    spec = load_mapping(Path(mapping) if mapping else None)
    rejects_path = Path(rejects) if rejects else default_rejects_path(source)
    safe_url = _safe(url)
    bar = _Progress(progress, source)
    try:
        plan = _plan(source, spec, bar)
        load = _write(url, safe_url, plan, rejects_path, bar, on_conflict)
    finally:
        bar.close()
    return ImportResult(
        source=source,
        mapping=spec.path,
        database=safe_url,
        rejects_path=rejects_path,
        seconds=time.monotonic() - started,
        rows_read=len(plan.source),
        order_lines=plan.order_lines,
        cancellation_lines=plan.cancellation_lines,
        rejected=sum(plan.rejects_by_reason.values()),
        rejects_by_reason=plan.rejects_by_reason,
        orders=len(plan.tables.orders),
        orders_by_status=plan.tables.orders["status"].value_counts().to_dict(),
        customers=len(plan.tables.customers),
        products=len(plan.tables.products),
        load=load,
    )


@dataclass(frozen=True)
class _Plan:
    """Everything decided before the database is touched."""

    source: Source
    verdicts: Classified
    tables: Tables
    order_lines: int
    cancellation_lines: int
    rejects_by_reason: dict[str, int]


def _plan(source: Path, spec: Mapping, bar: _Progress) -> _Plan:
    """Read, judge and link every row and derive the tables; checks the row accounting."""
    bar.step("read")
    raw = read_source(source, spec)
    bar.step("check rows")
    verdicts = classify(raw, spec)
    bar.step("link cancellations")
    links = link_cancellations(verdicts.rows, verdicts.open_mask())
    unlinked = np.zeros(len(raw), dtype=bool)
    unlinked[links.unlinked.index.to_numpy()] = True
    verdicts.reject(unlinked, "unlinked_cancellation", lambda hit: links.unlinked.loc[hit].tolist())
    bar.step("derive tables")
    accepted = verdicts.open_mask()
    is_cancel = verdicts.rows["is_cancellation"].to_numpy(dtype=bool)
    plan = _Plan(
        source=raw,
        verdicts=verdicts,
        tables=build_tables(verdicts.rows[accepted & ~is_cancel], links, spec),
        order_lines=int((accepted & ~is_cancel).sum()),
        cancellation_lines=int((accepted & is_cancel).sum()),
        rejects_by_reason=_reason_counts(verdicts.reason),
    )
    rejected = sum(plan.rejects_by_reason.values())
    if plan.order_lines + plan.cancellation_lines + rejected != len(raw) or plan.cancellation_lines != len(
        links.linked
    ):
        raise RuntimeError(
            f"row accounting broken: {len(raw)} read != {plan.order_lines} order lines "
            f"+ {plan.cancellation_lines} cancellations + {rejected} rejected"
        )
    return plan


def _write(url: str, safe_url: str, plan: _Plan, rejects_path: Path, bar: _Progress, on_conflict: str) -> LoadCounts:
    """Load and write the reject file in one transaction; the reject file appears only after the commit."""
    with connect(url, safe_url) as conn:
        temporary = None
        try:
            load = load_tables(conn, plan.tables, safe_url, bar.step, on_conflict)
            bar.step("reject file")
            temporary = write_rejects(rejects_path, plan.source, plan.verdicts.reason, plan.verdicts.detail)
            bar.step("commit")
            conn.commit()
        except BaseException:
            with contextlib.suppress(psycopg2.Error):
                conn.rollback()  # closing would roll back too; explicit, and a dead connection is no new error
            if temporary is not None:
                discard(temporary)
            raise
    publish(temporary, rejects_path)
    return load


def _reason_counts(reason: np.ndarray) -> dict[str, int]:
    """Rejected rows per reason, in priority order, only the reasons that occurred."""
    present = pd.Series(reason).dropna().value_counts()
    return {name: int(present[name]) for name in REASONS if name in present.index}
