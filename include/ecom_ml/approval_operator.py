"""The training DAG's ``approve`` task: a person approves a passed candidate before it is promoted.

An ``ApprovalOperator`` (Airflow's human-in-the-loop, standard provider) that asks only when the
gate said so (``gated["approval"]``, see ``ecom_ml.approval``); otherwise it returns at once and the
night goes on as before. When it asks, the request appears in the UI's *Required Actions* with the
gate report as its body. Then:

* **Approve** -- refused (task failed, one line, alert) if the candidate has been superseded since
  the gate (``ecom_ml.decisions.superseded``), otherwise recorded and ``promote`` runs;
* **Reject** -- recorded with the person's name; ``promote`` and what follows are skipped;
* **no answer** within the gate's ``approval_timeout_hours`` -- recorded as ``timed_out``; the task
  fails (so the failure alert goes out) and nothing is promoted.

Every outcome is in the model's decision record (``ecom-ml history --model …``, the MLflow UI).
Imported by the DAG factory at parse time: only Airflow and the standard library at module level.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.exceptions import HITLTimeoutError
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk.exceptions import AirflowFailException

#: The largest gate report put into the request's body (the full report stays in the registry).
MAX_BODY_CHARS = 60_000


class PromotionApproval(ApprovalOperator):
    """Ask a person to approve the gated candidate of ``model`` when its gate says so."""

    def __init__(self, *, model: str, gate_task_id: str = "gate", **kwargs: Any) -> None:
        super().__init__(subject=f"Promote the {model} candidate?", **kwargs)
        self.model = model
        self.gate_task_id = gate_task_id

    def _gated(self, context: Any) -> dict[str, Any]:
        return context["ti"].xcom_pull(task_ids=self.gate_task_id)

    def execute(self, context: Any) -> Any:
        gated = self._gated(context)
        approval = gated.get("approval") or {}
        if not approval.get("required"):
            self.log.info("%s v%s: no approval needed (approval: %s); promoting", self.model, gated["version"],
                          approval.get("mode", "never"))
            return {"approved": True, "by": "gate", "version": gated["version"]}
        self.subject = f"Promote {self.model} v{gated['version']} (trained for {gated['day']})?"
        self.body = _body(self.model, gated, approval)
        self.response_timeout = timedelta(hours=float(approval.get("timeout_hours") or 24))
        self.log.info("%s v%s waits for a person: %s", self.model, gated["version"], "; ".join(approval["reasons"]))
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        """Record the answer, then let ``ApprovalOperator`` act on it.

        Recorded *before* the parent's handling: on "Reject" it skips the downstream tasks by raising
        (Airflow 3's ``SkipMixin.skip``), so nothing after it would run.
        """
        from ecom_ml import decisions, registry

        gated = self._gated(context)
        version = int(gated["version"])
        ti = context["ti"]
        key = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}"
        reg = registry.get_registry()
        if "error" in event:
            hours = float((gated.get("approval") or {}).get("timeout_hours") or 24)
            try:
                super().execute_complete(context, event)
            except HITLTimeoutError:
                decisions.record(reg, self.model, version, "timed_out", "airflow",
                                 f"nobody answered within {hours:g} h", key=key)
                raise AirflowFailException(f"{self.model} v{version}: nobody approved it within {hours:g} h; "
                                           f"not promoted (trigger the day again to ask again)") from None
        self.validate_chosen_options(event["chosen_options"])
        user = event.get("responded_by_user") or {}
        who = str(user.get("name") or user.get("id") or "unknown")
        if event["chosen_options"][0] != self.APPROVE:
            decisions.record(reg, self.model, version, "rejected", who, f"rejected in Airflow ({key})", key=key)
            super().execute_complete(context, event)  # skips promote and publish (by raising)
            return {"approved": False, "by": who, "version": version}
        stale = decisions.superseded(reg, self.model, version, gated.get("champion_at_gate"))
        if stale:
            decisions.record(reg, self.model, version, "refused", who, f"approval refused: {stale}", key=key)
            raise AirflowFailException(f"{self.model} v{version}: the approval by {who} is refused: {stale}; "
                                       f"not promoted")
        decisions.record(reg, self.model, version, "approved", who, f"approved in Airflow ({key})", key=key)
        super().execute_complete(context, event)
        return {"approved": True, "by": who, "version": version}


def _body(model: str, gated: dict[str, Any], approval: dict[str, Any]) -> str:
    """Why a person is asked, then the gate report (Markdown, as stored with the version)."""
    from ecom_ml import storage

    why = "\n".join(f"* {reason}" for reason in approval.get("reasons", []))
    try:
        report = storage.path(gated["report"]).read_text()
    except OSError as exc:
        report = f"(the gate report at {gated['report']} could not be read: {exc})"
    if len(report) > MAX_BODY_CHARS:
        report = report[:MAX_BODY_CHARS] + f"\n\n… (truncated; the whole report: {gated['report']})"
    return (f"**{model} v{gated['version']}** passed its gate ({gated['summary']}) and waits for a person "
            f"because:\n\n{why}\n\nApprove to promote it to champion and publish its predictions; reject to "
            f"keep the current champion. The decision is recorded with your name.\n\n---\n\n{report}")
