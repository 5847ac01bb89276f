"""People's decisions on candidates: who approved or rejected which version, when, and why.

The promotion history (``Registry.history``) records moves of the ``champion`` alias and nothing
else, because ``verify_champion`` reads its last entry as "the move that made today's champion". A
decision is a different fact: a person (or the approval timeout) said yes or no to a version that
passed its gate, and a "no" moves nothing. So decisions are kept beside the moves, as tags of the
same registered model in MLflow (``ecom.decision.*``, one JSON document each) and of the version
(``ecom.approval.*``), where the MLflow UI shows them next to the gate verdict.

Recording is idempotent per ``key`` (the Airflow run and task that asked): a retried task that
records its decision again writes nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ecom_ml.errors import EcomError

if TYPE_CHECKING:
    from ecom_ml.registry import Registry

log = logging.getLogger(__name__)

DECISION_TAG_PREFIX = "ecom.decision."
TAG_DECISION = "ecom.approval.decision"
TAG_DECIDED_BY = "ecom.approval.by"
TAG_DECIDED_AT = "ecom.approval.at"
#: What a decision can be: a person's answer, the timeout's, or the refusal of a stale approval.
DECISIONS = ("approved", "rejected", "timed_out", "refused")
_MAX_TEXT = 1000


def record(reg: Registry, model: str, version: int, decision: str, actor: str, reason: str, *, key: str) -> dict[str, Any]:
    """Record ``decision`` on ``model`` v``version`` (once per ``key``); returns the stored event."""
    if decision not in DECISIONS:
        raise EcomError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
    for event in decisions(reg, model):
        if event.get("key") == key and event.get("decision") == decision and event["version"] == version:
            return event
    now = datetime.now(timezone.utc)
    event = {"at": now.isoformat(timespec="seconds"), "model": model, "version": int(version), "decision": decision,
             "actor": str(actor)[:200], "reason": str(reason)[:_MAX_TEXT], "key": str(key)[:500]}
    digest = hashlib.sha256(f"{key}|{decision}|{version}".encode()).hexdigest()[:10]
    tag = f"{DECISION_TAG_PREFIX}{now.strftime('%Y%m%dT%H%M%S.%fZ')}.{digest}"
    with reg._mlflow(f"recording the {decision} of {model} v{version}"):  # noqa: SLF001 - same client, same errors
        reg.client.set_registered_model_tag(model, tag, json.dumps(event, sort_keys=True))
        for name, value in ((TAG_DECISION, decision), (TAG_DECIDED_BY, event["actor"]), (TAG_DECIDED_AT, event["at"])):
            reg.client.set_model_version_tag(model, str(version), name, value)
    log.info("%s v%s: %s by %s: %s", model, version, decision, actor, reason)
    return event


def decisions(reg: Registry, model: str) -> list[dict[str, Any]]:
    """Every recorded decision on ``model``'s versions, oldest first."""
    return reg.tagged_events(model, DECISION_TAG_PREFIX)


def superseded(reg: Registry, model: str, version: int, champion_at_gate: int | None) -> str | None:
    """Why an approval of ``version`` must be refused now, or None when it still stands.

    The gate compared the candidate with the champion of that moment; if the champion has changed
    since (a rollback, another promotion) or a newer candidate has been registered, the report the
    person read no longer describes what promoting would do.
    """
    current = reg.champion_version(model)
    if current != champion_at_gate:
        was = f"v{champion_at_gate}" if champion_at_gate is not None else "no champion"
        now = f"v{current}" if current is not None else "no champion"
        return f"the champion changed since the gate compared against it ({was} then, {now} now)"
    newer = [n for n in reg._version_numbers(model) if n > version]  # noqa: SLF001
    if newer:
        return f"a newer candidate was registered since (v{max(newer)})"
    return None
