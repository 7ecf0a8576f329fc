"""Each analyzer x method's QC state, for `labmw status` (the daemon answers it from its store)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from labmw.config import Settings
from labmw.qc.intake import gate_state
from labmw.store import Store


def qc_states(settings: Settings, store: Store, now: datetime) -> list[dict[str, Any]]:
    """One entry per analyzer x method that has a control material or has had a QC run."""
    pairs = set(store.qc.pairs())
    for material in settings.qc.materials.values():
        for configured in settings.analyzers.values():
            if material.applies_to(configured.name) and material.method in configured.map.values():
                pairs.add((configured.name, material.method))
    out = []
    for analyzer, method in sorted(pairs):
        latest, accepted = store.qc.latest(analyzer, method)
        gate = gate_state(analyzer, method, latest_id=latest.id if latest else 0,
                          latest_accepted=latest.accepted if latest else False,
                          latest_rules=latest.violated if latest else (),
                          accepted_at=accepted.received_at if accepted else "",
                          interval_hours=settings.qc.interval_hours, now=now)
        out.append({"analyzer": analyzer, "method": method, "state": gate.state, "run_id": gate.run_id,
                    "rules": list(gate.rules), "last_accepted_at": gate.last_accepted_at,
                    "interval_hours": str(gate.interval_hours)})
    return out
