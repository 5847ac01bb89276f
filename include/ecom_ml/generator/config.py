"""What a user asks the generator for: the run's range and volume, and the faults to inject.

All user input is validated here, once, so every mistake ends in one line that names the flag and
the value (the CLI prints it as ``ecom-ml: error: ...``) before any database work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from ecom_ml.errors import EcomError
from ecom_ml.generator.catalogue import CATEGORIES
from ecom_ml.generator.lifecycle import CustomerLifecycle

#: Bumped whenever a change to the simulation would make an existing database's days differ from a
#: re-derivation; a database written by another format is refused instead of silently continued.
FORMAT_VERSION = 1

#: Per-day id blocks (see ``timeline``) hold at most 10M orders and 100M lines a day; with promotion
#: spikes of up to 3x and 8 lines an order this bound keeps a day inside its block.
MAX_ORDERS_PER_DAY = 1_000_000
MAX_PRODUCTS = 1_000_000
MAX_CUSTOMERS = 5_000_000  # the world keeps ~100 bytes per customer in memory
MAX_DAYS = 3_660


class GeneratorError(EcomError):
    """A generator run that cannot go ahead as asked; the message says what to change."""


@dataclass(frozen=True)
class Injections:
    """Faults to write into the generated days, as rates per order (null_customer) or per line.

    Rates are probabilities in [0, 1]; each fault draws from its own random stream, so adding or
    changing one fault leaves the clean data and the other faults exactly as they were.
    """

    null_customer: float = 0.0
    negative_quantity: float = 0.0
    duplicate_items: float = 0.0
    price_outlier: float = 0.0
    empty_days: tuple[date, ...] = ()

    @property
    def rates(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in RATE_FAULTS}

    def describe(self) -> str:
        parts = [f"{name}={rate:g}" for name, rate in self.rates.items() if rate > 0]
        parts += [f"empty_day={day.isoformat()}" for day in self.empty_days]
        return ",".join(parts)


RATE_FAULTS = ("null_customer", "negative_quantity", "duplicate_items", "price_outlier")
KNOWN_FAULTS = tuple(sorted((*RATE_FAULTS, "empty_day")))


def parse_injections(text: str) -> Injections:
    """Parse ``name=value`` pairs separated by commas, e.g. ``null_customer=0.01,empty_day=2024-01-15``.

    ``empty_day`` takes one date or several separated by ``;`` and may be repeated; every other
    fault takes a rate in [0, 1] and may be given once.
    """
    rates: dict[str, float] = {}
    empty: set[date] = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, value = (part.strip() for part in item.partition("="))
        if name not in KNOWN_FAULTS:
            raise GeneratorError(f"--inject: unknown fault {name!r} (known: {', '.join(KNOWN_FAULTS)})")
        if not sep or not value:
            raise GeneratorError(f"--inject: {name!r} needs a value, e.g. {name}={_example(name)}")
        if name == "empty_day":
            for piece in value.split(";"):
                try:
                    empty.add(date.fromisoformat(piece.strip()))
                except ValueError:
                    raise GeneratorError(f"--inject: empty_day {piece.strip()!r} is not a date (YYYY-MM-DD)") from None
            continue
        if name in rates:
            raise GeneratorError(f"--inject: {name} is given twice")
        try:
            rate = float(value)
        except ValueError:
            raise GeneratorError(f"--inject: {name}={value!r} is not a number") from None
        if not 0.0 <= rate <= 1.0:  # also rejects nan
            raise GeneratorError(f"--inject: {name}={value} is outside [0, 1]")
        rates[name] = rate
    return Injections(**rates, empty_days=tuple(sorted(empty)))


def _example(name: str) -> str:
    return "2024-01-15" if name == "empty_day" else "0.01"


def default_customers(orders_per_day: int) -> int:
    """Initial customer base: about five times a day's orders, so most orders come from returning customers."""
    return max(100, orders_per_day * 5)


def default_products(orders_per_day: int) -> int:
    """Initial catalogue: a gift/home shop's 2,000-5,000 products, larger for larger shops."""
    return min(5_000, max(2_000, orders_per_day // 4))


@dataclass(frozen=True)
class GeneratorConfig:
    """One generator run: days ``[start, start + days)`` of a shop defined by seed and volume.

    ``customers`` and ``products`` are the initial customer base and catalogue; ``None`` means the
    value the database was first generated with, or a default that scales with ``orders_per_day``.
    ``lifecycle``: customers lapse, fade and have seasons (``ecom_ml.generator.lifecycle``); off
    (None) by default, so every database and test generated before it keeps its data; a database's
    setting is fixed by its first run.
    """

    start: date
    days: int
    orders_per_day: int
    seed: int
    customers: int | None = None
    products: int | None = None
    injections: Injections = field(default_factory=Injections)
    #: Generate into days that hold orders the generator did not write (imported ones); they are kept.
    alongside_imported: bool = False
    lifecycle: CustomerLifecycle | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.start, date) or isinstance(self.start, datetime):
            raise GeneratorError(f"--start {self.start!r}: must be a date (YYYY-MM-DD)")
        _check_range("--days", self.days, 1, MAX_DAYS)
        if self.start.year < 1971 or self.start.year + MAX_DAYS // 365 + 1 > 9999:
            raise GeneratorError(f"--start {self.start}: must be between 1971 and {9998 - MAX_DAYS // 365}")
        _check_range("--orders-per-day", self.orders_per_day, 1, MAX_ORDERS_PER_DAY)
        _check_range("--seed", self.seed, 0, 2**63 - 1)
        if self.customers is not None:
            _check_range("--customers", self.customers, 1, MAX_CUSTOMERS)
        if self.products is not None:
            _check_range("--products", self.products, len(CATEGORIES), MAX_PRODUCTS,
                         why=f" (at least one per category: {len(CATEGORIES)})")
        if not isinstance(self.injections, Injections):
            raise GeneratorError(f"injections must come from parse_injections, not {type(self.injections).__name__}")
        if self.lifecycle is not None and not isinstance(self.lifecycle, CustomerLifecycle):
            raise GeneratorError(f"lifecycle must be a CustomerLifecycle or None, not {type(self.lifecycle).__name__}")

    @property
    def end(self) -> date:
        """First day after the run (exclusive end)."""
        return self.start + timedelta(days=self.days)


def _check_range(flag: str, value: object, low: int, high: int, why: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise GeneratorError(f"{flag} {value!r}: must be a whole number")
    if not low <= value <= high:
        raise GeneratorError(f"{flag} {value}: must be between {low:,} and {high:,}{why}")


@dataclass(frozen=True)
class ShopParams:
    """The parameters that define a simulated shop's whole history, as stored with the database.

    ``anchor`` is the first day ever generated: ids and the arrival of customers and products count
    from it, so every later run must share it (and the rest) to continue the same history.
    ``lifecycle`` None: customers order at their rate for ever (databases from before it existed).
    """

    seed: int
    orders_per_day: int
    customers: int
    products: int
    anchor: date
    lifecycle: CustomerLifecycle | None = None
