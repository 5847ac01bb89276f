"""What every kind's trainer parameters share: whole-number limits, fractions, and the overrides the
CLI and the DAG pass, each refused in one line naming the flag (``--epochs 0: must be …``).

A kind declares its parameters as a frozen dataclass deriving from :class:`TrainerParams`, with
``KIND`` (for the messages), ``ERROR`` (its error class) and ``_LIMITS``; its ``__post_init__``
calls :meth:`TrainerParams.check_limits` and :meth:`TrainerParams.check_fraction` for what it has.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

from ecom_ml.errors import EcomError

P = TypeVar("P", bound="TrainerParams")


class TrainerParams:
    KIND: ClassVar[str]
    ERROR: ClassVar[type[EcomError]]
    #: Whole-number parameters and their inclusive bounds.
    _LIMITS: ClassVar[dict[str, tuple[int, int]]] = {}
    #: Of those, the ones that may be None (the features' own value is used then).
    _OPTIONAL: ClassVar[tuple[str, ...]] = ("history_len", "holdout_days")

    def check_limits(self) -> None:
        for name, (low, high) in self._LIMITS.items():
            value = getattr(self, name)
            if value is None and name in self._OPTIONAL:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise self.ERROR(f"--{name.replace('_', '-')} {value!r}: must be a whole number from {low} to {high:,}")

    def check_fraction(self, name: str, *, zero_allowed: bool) -> None:
        """``name`` in (0, 1), or in [0, 1) with ``zero_allowed`` (a dropout rate may be 0)."""
        value = getattr(self, name)
        ok = isinstance(value, float | int) and not isinstance(value, bool) and value < 1 \
            and (value >= 0 if zero_allowed else value > 0)
        if not ok:
            bounds = "from 0 to below 1" if zero_allowed else "between 0 and 1"
            raise self.ERROR(f"--{name.replace('_', '-')} {value!r}: must be {bounds}")

    @classmethod
    def from_overrides(cls: type[P], overrides: dict[str, Any]) -> P:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise cls.ERROR(f"the {cls.KIND} model takes no parameter(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")
        return cls(**overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]
