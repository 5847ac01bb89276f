"""When a passed gate still needs a person: the approval policy of a gate, and its decision.

A gate YAML says ``approval: never | borderline | always`` (default ``never``). ``borderline`` asks
for a person when the candidate passed but only just, or when its inputs moved:

* a decisive comparison (``beats_best_baseline``, ``no_regression_vs_champion``) cleared its
  requirement by less than ``approval_distance`` of the reference value -- with a bootstrap
  interval, the interval's conservative end is what must clear it; without one, the point estimate;
* or, with ``approval_on_drift: true``, an input of the training window drifted against the
  champion's (``evaluation.json`` ``drift.drifted``, see ``ecom_ml.quality.drift``).

Why these: a lucky holdout or a shifted shop (a new wholesale customer, a sale) is exactly when the
numbers that passed the gate are least trustworthy, and when a person who knows the shop's week
should look before the shop's recommendations change. The rest of the time nobody should have to.

The deployment may override the YAML's mode with the Airflow Variable ``ecom_<model>_approval``
(the training DAG reads it, not this module), e.g. ``always`` for a first week in production.

Only the standard library is imported here: the gate task and the approval operator share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ecom_ml.errors import EcomError

MODES = ("never", "borderline", "always")
#: The checks whose slack decides "borderline" (the comparisons that say "better").
DECISIVE_CHECKS = ("beats_best_baseline", "no_regression_vs_champion")


class ApprovalConfigError(EcomError):
    """An approval setting (gate YAML key or Variable) that is not valid."""


def check_mode(value: Any, where: str) -> str:
    """``value`` as an approval mode, or one line naming ``where`` it came from."""
    mode = str(value).strip().lower() if value is not None else ""
    if mode not in MODES:
        raise ApprovalConfigError(f"{where}={value!r} is not an approval mode (one of: {', '.join(MODES)})")
    return mode


@dataclass(frozen=True)
class ApprovalPolicy:
    """The approval keys of a gate YAML (``GateConfig`` parses and validates them)."""

    mode: str = "never"
    #: Relative slack under which a passed comparison counts as borderline (0.02 = 2% of the reference).
    distance: float = 0.02
    #: Whether a drifted input of the training window makes a pass borderline.
    on_drift: bool = True
    #: How long a person has to answer; no answer means no promotion (and an alert).
    timeout_hours: float = 24.0

    def to_dict(self) -> dict[str, Any]:
        return {"approval": self.mode, "approval_distance": self.distance, "approval_on_drift": self.on_drift,
                "approval_timeout_hours": self.timeout_hours}


def _slack(check: Mapping[str, Any]) -> tuple[float, float, str] | None:
    """(slack, reference, what) of a passed, applicable comparison; None when it has no numbers."""
    ci = check.get("interval")
    if ci:
        value, required = ci.get(ci.get("bound")), ci.get("required")
        if value is None or required is None:
            return None
        slack = value - required if ci["bound"] == "low" else required - value
        reference = check.get("baseline") if check["name"] == "beats_best_baseline" else check.get("champion")
        what = f"the {ci['bound']} end of the interval of candidate - {ci.get('reference')} ({value:+.4f})"
    else:
        candidate, threshold = check.get("candidate"), check.get("threshold")
        if candidate is None or threshold is None:
            return None
        slack = candidate - threshold if check.get("comparison", ">=") == ">=" else threshold - candidate
        reference, what = threshold, f"{check.get('metric') or 'the metric'} {candidate:.4f}"
    if reference is None or reference == 0:
        return None
    return float(slack), abs(float(reference)), what


def decide(report: Mapping[str, Any], policy: ApprovalPolicy, drift: Mapping[str, Any] | None,
           mode: str | None = None) -> dict[str, Any]:
    """Does this *passed* gate report need a person? ``{"mode", "required", "reasons", "timeout_hours"}``.

    ``report`` is ``GateReport.to_dict()``; ``mode`` overrides the policy's (the Variable). A failed
    gate never reaches approval, so this is only asked of passed reports.
    """
    mode = mode or policy.mode
    reasons: list[str] = []
    if mode == "always":
        reasons.append("this model's promotions are approved by a person (approval: always)")
    elif mode == "borderline":
        for check in report.get("checks", []):
            if check.get("name") not in DECISIVE_CHECKS or not check.get("applicable", True) or not check.get("passed"):
                continue
            found = _slack(check)
            if found is None:
                continue
            slack, reference, what = found
            if slack / reference < policy.distance:
                reasons.append(f"{check['name']}: {what} clears its requirement by {slack:.4f}, "
                               f"{slack / reference:.1%} of {reference:.4f} (approval_distance {policy.distance:.0%})")
        drifted = list((drift or {}).get("drifted") or [])
        if policy.on_drift and drifted:
            reasons.append(f"inputs drifted against the champion's training window: {', '.join(drifted)}")
    return {"mode": mode, "required": bool(reasons), "reasons": reasons, "timeout_hours": policy.timeout_hours}
