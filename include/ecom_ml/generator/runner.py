"""A generator run: decide what the database needs, simulate those days, and load them in one transaction.

The database always shows every generated order as of the end of its generated range
(``generated_end``). A run for ``[start, end)``

1. checks that it continues the same shop (seed, volume, anchor) without leaving a gap;
2. writes the customers and products that arrive on days not generated before;
3. replaces its days (deleting their id blocks first when they were generated before) with orders in
   their state as of ``max(end, generated_end)``;
4. re-derives the ``LIFECYCLE_DAYS`` days before ``start`` and UPDATEs the orders whose status changed
   between the old and the new end (late cancellations, refunds, deliveries), inserting the
   line-level refunds (``refund_lines``) that happened in between;

so ``[a, b)`` then ``[b, c)`` leaves the same tables as ``[a, c)``, and re-running a range changes nothing.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
from tqdm import tqdm

from ecom_ml.generator.config import (
    FORMAT_VERSION,
    GeneratorConfig,
    GeneratorError,
    ShopParams,
    default_customers,
    default_products,
)
from ecom_ml.generator.days import (
    NO_CUSTOMER,
    STATUSES,
    DayLines,
    DayOrders,
    DayRefunds,
    order_states,
    plan_lines,
    plan_orders,
    plan_refunds,
)
from ecom_ml.generator.faults import FaultCounts, inject
from ecom_ml.generator.load import StoredState, encode_lines, encode_orders, encode_refunds, transaction
from ecom_ml.generator.timeline import LIFECYCLE_DAYS, ORDER_ID_BLOCK, DayHeader, Promo, day_start_us
from ecom_ml.generator.world import World, build_world


@dataclass
class GenerationSummary:
    """What a run wrote, for the CLI, logs and tests."""

    url: str
    start: date
    end: date
    seed: int
    orders: int = 0
    lines: int = 0
    statuses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    new_customers: int = 0
    new_products: int = 0
    replaced_orders: int = 0
    late_updates: int = 0
    refunds: int = 0  # line-level refunds written on this run's days
    late_refunds: int = 0  # line-level refunds of earlier days' orders that happened since the last run
    promotions: list[tuple[date, Promo]] = field(default_factory=list)
    faults: FaultCounts = field(default_factory=FaultCounts)
    row_triggers_skipped: bool = False  # see OrdersDb.unchecked_inserts
    seconds: float = 0.0

    def add_day(self, orders: int, lines: int, statuses: np.ndarray, faults: FaultCounts) -> None:
        self.orders += orders
        self.lines += lines
        for name, count in zip(STATUSES, statuses.tolist()):
            self.statuses[name] += count
        self.faults.add(faults)

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        days = (self.end - self.start).days
        last = self.end - timedelta(days=1)
        status = ", ".join(f"{name} {count:,}" for name, count in self.statuses.items() if count)
        promos = ", ".join(f"{d.isoformat()} x{p.multiplier:.2f} -{p.discount:.0%}"
                           for d, p in self.promotions) or "none"
        faults = ", ".join(f"{name} {count:,}" for name, count in self.faults.as_dict().items() if count) or "none"
        lines = [
            f"generated {self.start.isoformat()}..{last.isoformat()} ({days} day{'s' if days != 1 else ''}, "
            f"seed {self.seed}) into {self.url}",
            f"  orders {self.orders:,} with {self.lines:,} lines ({status or 'no orders'})",
            f"  new rows: {self.new_customers:,} customers, {self.new_products:,} products",
            f"  promotion days: {promos}",
            f"  line-level refunds: {self.refunds:,} on these days' orders, {self.late_refunds:,} late",
            f"  late status changes applied to earlier orders: {self.late_updates:,}",
            f"  injected faults: {faults}",
            f"  took {self.seconds:.1f} s ({self.lines_per_second:,.0f} lines/s; binary COPY, "
            + ("row triggers off, references checked per run)" if self.row_triggers_skipped
               else "foreign keys checked per row)"),
        ]
        if self.replaced_orders:
            lines.insert(2, f"  replaced {self.replaced_orders:,} orders generated before for these days")
        return "\n".join(lines)


def _lifecycle_text(lifecycle: object) -> str:
    return "off" if lifecycle is None else f"on {lifecycle}"


def resolve(config: GeneratorConfig, stored: StoredState | None, url: str) -> tuple[ShopParams, date | None]:
    """The shop's parameters for this run, and how far the database was generated before (None: never)."""
    if stored is None:
        customers = config.customers if config.customers is not None else default_customers(config.orders_per_day)
        products = config.products if config.products is not None else default_products(config.orders_per_day)
        return ShopParams(config.seed, config.orders_per_day, customers, products, config.start, config.lifecycle), None
    if stored.format_version != FORMAT_VERSION:
        raise GeneratorError(
            f"{url} was generated by generator format {stored.format_version}, this is format {FORMAT_VERSION}: "
            f"its days cannot be continued; generate into a fresh database"
        )
    have = stored.params
    wanted = {"seed": config.seed, "orders_per_day": config.orders_per_day,
              "customers": config.customers if config.customers is not None else have.customers,
              "products": config.products if config.products is not None else have.products}
    clashes = [f"{name.replace('_', '-')} {getattr(have, name)} (asked: {value})"
               for name, value in wanted.items() if getattr(have, name) != value]
    if config.lifecycle != have.lifecycle:
        clashes.append(f"customer lifecycle {_lifecycle_text(have.lifecycle)} (asked: {_lifecycle_text(config.lifecycle)})")
    if clashes:
        raise GeneratorError(
            f"{url} was generated with {', '.join(clashes)}: continue it with the same values, or use a fresh database"
        )
    if config.start < have.anchor:
        raise GeneratorError(
            f"--start {config.start}: {url} was generated from {have.anchor}, and runs can only replace or "
            f"continue from that day on"
        )
    if config.start > stored.generated_end:
        raise GeneratorError(
            f"--start {config.start} would leave a gap: {url} is generated up to "
            f"{stored.generated_end - timedelta(days=1)}; start at {stored.generated_end} or earlier"
        )
    return have, stored.generated_end


@dataclass(frozen=True)
class _Day:
    """One simulated day, encoded and ready to load."""

    header: DayHeader
    orders: int
    lines: int
    statuses: np.ndarray  # count per status
    faults: FaultCounts
    orders_payload: bytes
    lines_payload: bytes
    order_ids: np.ndarray
    refunds_payload: bytes
    refund_ids: np.ndarray


def _simulate(world: World, config: GeneratorConfig, header: DayHeader, as_of_us: int) -> _Day:
    orders = plan_orders(world, header)
    lines = plan_lines(world, orders)
    orders, lines, faults = inject(config.injections, world.params.seed, orders, lines)
    _check_references(world, orders, lines)
    status, updated = order_states(orders, as_of_us)
    refunds = plan_refunds(world, orders, lines)
    refunds = refunds.subset(refunds.refunded_us < as_of_us)  # the state as of the run's end, like statuses
    return _Day(header, len(orders), len(lines), np.bincount(status, minlength=len(STATUSES)), faults,
                encode_orders(orders, status, updated), encode_lines(lines), orders.order_id.copy(),
                encode_refunds(refunds), refunds.refund_line_id.copy())


def _check_references(world: World, orders: DayOrders, lines: DayLines) -> None:
    """Rows may be loaded with FK triggers off (see ``OrdersDb.unchecked_inserts``): make sure they need none."""
    customers = orders.customer_id[orders.customer_id != NO_CUSTOMER]
    problems = [
        what for what, bad in (
            ("a line without its order", not np.isin(lines.order_id, orders.order_id).all()),
            ("an unknown customer", len(customers) and not 1 <= customers.min() <= customers.max()
             <= world.timeline.customers_total),
            ("an unknown product", len(lines) and not 1 <= lines.product_id.min() <= lines.product_id.max()
             <= world.timeline.products_total),
        ) if bad
    ]
    if problems:  # a bug, not a user error: keep the traceback
        raise RuntimeError(f"generator bug: {orders.header.day} has {' and '.join(problems)}")


@contextmanager
def _prefetch(items: Iterator[_Day], depth: int = 2) -> Iterator[Iterator[_Day]]:
    """Compute ``items`` in a worker thread from now on, so simulating day N+1 overlaps loading day N.

    numpy and psycopg2 (waiting on the server during COPY) release the GIL, so on two cores the
    simulation and the server run side by side. Days are pure functions: the result is unchanged.
    Leaving the block stops the worker, also when the consumer fails half-way.
    """
    box: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                box.put(("item", item))
            box.put(("done", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            box.put(("error", exc))

    def consume() -> Iterator[_Day]:
        while True:
            kind, value = box.get()
            if kind == "done":
                return
            if kind == "error":
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]

    worker = threading.Thread(target=work, name="generator-simulate", daemon=True)
    worker.start()
    try:
        yield consume()
    finally:
        stop.set()
        while worker.is_alive():  # unblock a worker waiting on a full queue
            try:
                box.get_nowait()
            except queue.Empty:
                pass
            worker.join(timeout=0.05)


def generate(url: str, config: GeneratorConfig, progress: bool = True) -> GenerationSummary:
    """Generate days ``[config.start, config.end)`` into the orders database at ``url``; see the module doc."""
    started = time.perf_counter()
    with transaction(url) as db:
        stored = db.prepare()
        params, previous_end = resolve(config, stored, db.url)
        if stored is None:
            db.require_empty_shop()
        summary = GenerationSummary(db.url, config.start, config.end, params.seed)
        as_of = max(config.end, previous_end or config.end)
        as_of_us = day_start_us(as_of)
        world = build_world(params, config.end)
        timeline = world.timeline
        headers = timeline.headers(config.start, config.end)
        summary.promotions = [(h.day, h.promo) for h in headers if h.promo is not None]

        if stored is not None and not config.alongside_imported:
            foreign, example = db.foreign_orders(config.start, config.end)
            if foreign:
                raise GeneratorError(
                    f"{db.url} holds {foreign:,} order(s) the generator did not write between {config.start} and "
                    f"{config.end} (e.g. {example!r}), imported or the shop's own: refusing to mix generated orders "
                    "into those days; pass --alongside-imported to generate anyway (those orders are kept)"
                )

        if previous_end is not None and config.start < previous_end:
            replaced = [h for h in headers if h.day < previous_end]
            summary.replaced_orders = db.delete_orders(replaced[0].order_id_base,
                                                       replaced[-1].order_id_base + ORDER_ID_BLOCK)

        lookback = _lookback(world, config.start, previous_end, as_of)
        simulated = (_simulate(world, config, h, as_of_us) for h in headers)
        with _prefetch(simulated) as days, db.unchecked_inserts() as unchecked, \
                tqdm(total=len(headers), unit="day", desc="generate", file=sys.stderr,
                     disable=not progress, dynamic_ncols=True) as bar:
            # Customers and products that arrive on days the database has not seen yet (all of them at first).
            fresh = _first_fresh_ids(world, config, previous_end)
            if fresh is not None:
                summary.new_customers = db.copy_customers(world, fresh[0], timeline.customers_total)
                summary.new_products = db.copy_products(world, fresh[1], timeline.products_total)
            for day in days:
                db.copy_orders(day.orders_payload)
                db.copy_lines(day.lines_payload)
                db.record_generated(day.order_ids)
                db.copy_refunds(day.refunds_payload, day.refund_ids)
                summary.refunds += len(day.refund_ids)
                summary.add_day(day.orders, day.lines, day.statuses, day.faults)
                bar.update(1)
                bar.set_postfix_str(f"{summary.lines / (time.perf_counter() - started):,.0f} lines/s")
        summary.row_triggers_skipped = unchecked
        if unchecked:
            db.check_references(timeline.customers_total, timeline.products_total)
        if lookback:
            assert previous_end is not None
            summary.late_updates = db.update_states(*_late_changes(world, lookback, day_start_us(previous_end),
                                                                   as_of_us))
            summary.late_refunds = db.insert_late_refunds(_late_refunds(world, config, lookback,
                                                                        day_start_us(previous_end), as_of_us))

        db.bump_sequences()
        db.save_state(params, as_of)
        db.log_run(config.start, config.end, config.injections.describe(), _log_record(summary))
    summary.seconds = time.perf_counter() - started  # after the commit: the figure includes it
    return summary


def _lookback(world: World, start: date, previous_end: date | None, as_of: date) -> list[DayHeader]:
    """Days before ``start`` whose orders may have changed status between the old and the new end."""
    if previous_end is None or as_of <= previous_end:
        return []
    first = max(world.params.anchor, start - timedelta(days=LIFECYCLE_DAYS))
    return world.timeline.headers(first, start)


def _late_changes(world: World, headers: list[DayHeader], old_us: int, new_us: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order ids, new status codes, new updated_at) of orders whose state differs between the two moments."""
    ids, statuses, updated = [], [], []
    for header in headers:
        orders = plan_orders(world, header)
        old_status, old_updated = order_states(orders, old_us)
        new_status, new_updated = order_states(orders, new_us)
        changed = (old_status != new_status) | (old_updated != new_updated)
        ids.append(orders.order_id[changed])
        statuses.append(new_status[changed])
        updated.append(new_updated[changed])
    return np.concatenate(ids), np.concatenate(statuses), np.concatenate(updated)


def _late_refunds(world: World, config: GeneratorConfig, headers: list[DayHeader], old_us: int, new_us: int
                  ) -> DayRefunds:
    """Refunds of the lookback days' orders that happened in ``[old_us, new_us)``: their lines are
    re-derived with the run's injections, as they were written."""
    found: DayRefunds | None = None
    for header in headers:
        orders = plan_orders(world, header)
        orders, lines, _ = inject(config.injections, world.params.seed, orders, plan_lines(world, orders))
        refunds = plan_refunds(world, orders, lines)
        refunds = refunds.subset((refunds.refunded_us >= old_us) & (refunds.refunded_us < new_us))
        found = refunds if found is None else found.concat(refunds)
    assert found is not None  # headers is not empty
    return found


def _log_record(summary: GenerationSummary) -> dict[str, object]:
    return {"orders": summary.orders, "lines": summary.lines, "statuses": summary.statuses,
            "new_customers": summary.new_customers, "new_products": summary.new_products,
            "replaced_orders": summary.replaced_orders, "late_updates": summary.late_updates,
            "refunds": summary.refunds, "late_refunds": summary.late_refunds,
            "faults": summary.faults.as_dict(),
            "promotions": [d.isoformat() for d, _ in summary.promotions]}


def _first_fresh_ids(world: World, config: GeneratorConfig, previous_end: date | None) -> tuple[int, int] | None:
    """First customer and product id not yet in the database, or None when the run adds no days."""
    if previous_end is None:
        return 1, 1
    if previous_end >= config.end:
        return None
    header = world.timeline.header(max(config.start, previous_end))
    return header.customers_before + 1, header.products_before + 1
