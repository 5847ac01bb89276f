"""The declarative column mapping: which source column feeds which target field, and the shop's rules.

A shop brings its own export by writing a small YAML file rather than code, so the mapping is
validated strictly: an unknown key is far more often a typo than an intention, and a typo that
silently falls back to a default would load wrong data. Every problem is one line naming the file
and the dotted key, e.g. ``shop.yaml: rules.max_bad_shre: unknown key (known: ...)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping as AnyMapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from ecom_ml.errors import EcomError

DEFAULT_MAPPING = "online_retail_ii.yaml"

#: Order statuses the orders schema accepts (its CHECK constraint).
ORDER_STATUSES = ("placed", "paid", "shipped", "delivered", "cancelled", "refunded")

#: Target fields every mapping must feed; the others may be left out (loaded as NULL).
REQUIRED_FIELDS = ("order_ref", "sku", "quantity", "timestamp", "unit_price")
OPTIONAL_FIELDS = ("description", "customer_ref", "country")


class MappingError(EcomError):
    """The mapping file is unreadable or invalid; the message names the file and the key."""


@dataclass(frozen=True)
class SourceFormat:
    """How to decode and split the file."""

    format: str
    encoding: str
    delimiter: str
    quotechar: str
    compression: str  # "auto" (gzip when named .gz or starting with gzip magic bytes), "gzip" or "none"
    require_final_newline: bool = True  # a file that stops mid-line is refused as truncated


@dataclass(frozen=True)
class Columns:
    """Source column name for each target field (None: the export has no such column)."""

    order_ref: str
    sku: str
    quantity: str
    timestamp: str
    unit_price: str
    description: str | None
    customer_ref: str | None
    country: str | None

    def mapped(self) -> dict[str, str]:
        """Target field -> source column, for the fields this export provides."""
        return {
            field: column
            for field in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)
            if (column := getattr(self, field)) is not None
        }


@dataclass(frozen=True)
class Rules:
    """Which rows are not order lines, and how strict the importer is."""

    cancellation_prefix: str | None
    adjustment_prefix: str | None
    non_product_codes: frozenset[str]  # normalised like SKUs (stripped, upper case)
    non_product_pattern: re.Pattern[str] | None  # full-match on the normalised SKU
    require_customer: bool
    reject_duplicate_rows: bool
    max_bad_share: float


@dataclass(frozen=True)
class CategoryRule:
    category: str
    words: tuple[str, ...]


@dataclass(frozen=True)
class Categories:
    """Keyword table deriving a product category from its name: first matching rule wins."""

    rules: tuple[CategoryRule, ...]
    fallback: str


@dataclass(frozen=True)
class Mapping:
    """A validated mapping; ``path`` is kept so later errors can name the file it came from."""

    path: Path
    source: SourceFormat
    columns: Columns
    timestamp_format: str
    timezone: str
    order_status: str
    currency: str
    rules: Rules
    categories: Categories


def default_mapping_path() -> Path:
    """The Online Retail II mapping shipped inside the package."""
    return Path(str(resources.files("ecom_ml.importer") / DEFAULT_MAPPING))


def normalise_sku(value: str) -> str:
    """SKUs compare stripped and upper-cased: the source writes both ``85123a`` and ``85123A``."""
    return value.strip().upper()


def load_mapping(path: Path | None = None) -> Mapping:
    """Read and validate a mapping file (the packaged Online Retail II one when ``path`` is None)."""
    path = path or default_mapping_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MappingError(f"{path}: mapping file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"{path}: cannot read the mapping file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MappingError(f"{path}:{where} not valid YAML: {problem}") from None
    return _Parser(path).mapping(data)


class _Parser:
    """Walks the YAML document section by section; every error names the file and the dotted key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> MappingError:
        return MappingError(f"{self.path}: {key}: {problem}" if key else f"{self.path}: {problem}")

    def section(self, data: Any, key: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(data, AnyMapping):
            raise self.fail(key, f"must be a mapping of keys to values, got {type(data).__name__}")
        known = (*required, *optional)
        for name in data:
            if name not in known:
                raise self.fail(_join(key, str(name)), f"unknown key (known: {', '.join(known)})")
        for name in required:
            if name not in data or data[name] is None:
                raise self.fail(_join(key, name), "missing required key")
        return dict(data)

    def optional_text(self, data: dict[str, Any], key: str, name: str) -> str | None:
        value = data.get(name)
        if value is None:
            return None
        # YAML reads 1.5 as a number and yes/no as booleans: accept numbers as their text, refuse the rest.
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.fail(_join(key, name), f"must be text, got {value!r}")
        if str(value) == "":
            raise self.fail(_join(key, name), "must not be empty")
        return str(value)

    def text(self, data: dict[str, Any], key: str, name: str, default: str | None = None) -> str:
        value = self.optional_text(data, key, name)
        if value is None:
            if default is None:
                raise self.fail(_join(key, name), "missing required key")
            return default
        return value

    def choice(self, data: dict[str, Any], key: str, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.text(data, key, name, default)
        if value not in options:
            raise self.fail(_join(key, name), f"must be one of {', '.join(options)}, got {value!r}")
        return value

    def flag(self, data: dict[str, Any], key: str, name: str, default: bool) -> bool:
        value = data.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(_join(key, name), f"must be true or false, got {value!r}")
        return value

    def text_list(self, data: dict[str, Any], key: str, name: str) -> list[str]:
        value = data.get(name, [])
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            raise self.fail(_join(key, name), "must be a list of text values (quote values YAML would read otherwise)")
        return [str(v) for v in value]

    def mapping(self, data: Any) -> Mapping:
        if data is None:
            raise self.fail("", "the mapping file is empty")
        top = self.section(data, "", ("columns", "timestamp"), ("version", "source", "orders", "rules", "categories"))
        if top.get("version", 1) != 1:
            raise self.fail("version", f"unsupported mapping version {top['version']!r} (this importer reads 1)")
        timestamp = self.section(top["timestamp"], "timestamp", ("format",), ("timezone",))
        status, currency = self.orders(top.get("orders") or {})
        return Mapping(
            path=self.path,
            source=self.source(top.get("source") or {}),
            columns=self.columns(top["columns"]),
            timestamp_format=self.timestamp_format(timestamp),
            timezone=self.timezone(timestamp),
            order_status=status,
            currency=currency,
            rules=self.rules(top.get("rules") or {}),
            categories=self.categories(top.get("categories") or {}),
        )

    def source(self, data: Any) -> SourceFormat:
        key = "source"
        src = self.section(data, key, (), ("format", "encoding", "delimiter", "quotechar", "compression",
                                          "require_final_newline"))
        encoding = self.text(src, key, "encoding", "utf-8")
        try:
            "".encode(encoding)
        except LookupError:
            raise self.fail(f"{key}.encoding", f"unknown text encoding {encoding!r}") from None
        delimiter = self.text(src, key, "delimiter", ",")
        quotechar = self.text(src, key, "quotechar", '"')
        for name, value in (("delimiter", delimiter), ("quotechar", quotechar)):
            if len(value) != 1:
                raise self.fail(f"{key}.{name}", f"must be a single character, got {value!r}")
        return SourceFormat(
            format=self.choice(src, key, "format", ("csv",), "csv"),
            encoding=encoding,
            delimiter=delimiter,
            quotechar=quotechar,
            compression=self.choice(src, key, "compression", ("auto", "gzip", "none"), "auto"),
            require_final_newline=self.flag(src, key, "require_final_newline", True),
        )

    def columns(self, data: Any) -> Columns:
        key = "columns"
        cols = self.section(data, key, REQUIRED_FIELDS, OPTIONAL_FIELDS)
        values = {field: self.optional_text(cols, key, field) for field in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)}
        used: dict[str, str] = {}
        for field, column in values.items():
            if column is not None and column in used:
                raise self.fail(f"{key}.{field}", f"column {column!r} is already mapped to {used[column]}")
            if column is not None:
                used[column] = field
        return Columns(**values)  # type: ignore[arg-type]  # required ones were checked by section()

    def timestamp_format(self, data: dict[str, Any]) -> str:
        fmt = self.text(data, "timestamp", "format")
        if "%" not in fmt:
            raise self.fail("timestamp.format", f"must be a strptime format such as '%Y-%m-%d %H:%M:%S', got {fmt!r}")
        return fmt

    def timezone(self, data: dict[str, Any]) -> str:
        name = self.text(data, "timestamp", "timezone", "UTC")
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise self.fail(
                "timestamp.timezone", f"unknown time zone {name!r} (use an IANA name such as Europe/London)"
            ) from None
        return name

    def orders(self, data: Any) -> tuple[str, str]:
        key = "orders"
        orders = self.section(data, key, (), ("status", "currency"))
        status = self.choice(orders, key, "status", ORDER_STATUSES, "delivered")
        currency = self.text(orders, key, "currency", "GBP")
        if not re.fullmatch(r"[A-Z]{3}", currency):
            raise self.fail(f"{key}.currency", f"must be a three-letter ISO 4217 code such as GBP, got {currency!r}")
        return status, currency

    def rules(self, data: Any) -> Rules:
        key = "rules"
        rules = self.section(
            data,
            key,
            (),
            (
                "cancellation_prefix",
                "adjustment_prefix",
                "non_product_codes",
                "non_product_patterns",
                "require_customer",
                "reject_duplicate_rows",
                "max_bad_share",
            ),
        )
        patterns = self.text_list(rules, key, "non_product_patterns")
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise self.fail(
                    f"{key}.non_product_patterns", f"{pattern!r} is not a regular expression: {exc}"
                ) from None
        share = rules.get("max_bad_share", 0.05)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise self.fail(f"{key}.max_bad_share", f"must be a number between 0 and 1, got {share!r}")
        return Rules(
            cancellation_prefix=self.optional_text(rules, key, "cancellation_prefix"),
            adjustment_prefix=self.optional_text(rules, key, "adjustment_prefix"),
            non_product_codes=frozenset(normalise_sku(c) for c in self.text_list(rules, key, "non_product_codes")),
            non_product_pattern=re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None,
            require_customer=self.flag(rules, key, "require_customer", True),
            reject_duplicate_rows=self.flag(rules, key, "reject_duplicate_rows", True),
            max_bad_share=float(share),
        )

    def categories(self, data: Any) -> Categories:
        key = "categories"
        cats = self.section(data, key, (), ("fallback", "keywords"))
        entries = cats.get("keywords") or []
        if not isinstance(entries, list):
            raise self.fail(f"{key}.keywords", "must be a list of {category: ..., words: [...]} entries")
        rules = []
        for number, entry in enumerate(entries):
            where = f"{key}.keywords[{number}]"
            item = self.section(entry, where, ("category", "words"), ())
            words = self.text_list(item, where, "words")
            if not words:
                raise self.fail(f"{where}.words", "must list at least one word")
            rules.append(CategoryRule(self.text(item, where, "category"), tuple(w.upper() for w in words)))
        return Categories(tuple(rules), self.text(cats, key, "fallback", "other"))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
