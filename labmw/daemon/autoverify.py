"""The daemon's side of autoverification: the inputs the pure gates need, and what is kept after.

:func:`evaluate_inputs` gives :func:`labmw.rules.engine.evaluate` the analyzer's gate policy (its
gate actions, unmapped-code policy and instrument-flag table), the kill switches active *now*
(read from the store in the judging transaction, so ``labmw autoverify suspend`` holds the very
next result) and the rule-set version (stored with each result by ``Tx.add_result``).
:func:`after_store` opens a critical-value notification for HH/LL. Kept apart from the pipeline so that the
pipeline stays one call each.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from labmw.config import AnalyzerSettings, Settings
from labmw.config import rules_version as settings_rules_version
from labmw.model import Evaluation, Flag, Method, Result
from labmw.rules.gates import GatePolicy
from labmw.store import Tx

_VERSIONS: dict[int, tuple[Settings, str]] = {}


def rules_version(settings: Settings) -> str:
    """The content hash of the rules in ``settings`` (computed once per loaded configuration)."""
    cached = _VERSIONS.get(id(settings))
    if cached is not None and cached[0] is settings:
        return cached[1]
    version = settings_rules_version(settings)
    _VERSIONS.clear()  # one configuration is in force at a time
    _VERSIONS[id(settings)] = (settings, version)
    return version


def policy_for(settings: Settings, analyzer: AnalyzerSettings | None, tx: Tx | None) -> GatePolicy:
    """The gate policy of ``analyzer`` with the suspensions active in ``tx`` (none without a store)."""
    suspensions = tx.active_suspensions() if tx is not None else ()
    if analyzer is None:
        return GatePolicy(suspensions=suspensions, texts=settings.autoverify.texts)
    return GatePolicy(actions=analyzer.gates, unmapped=analyzer.unmapped, flags=analyzer.flags,
                      suspensions=suspensions, texts=settings.autoverify.texts)


#: How often judging results also looks for overdue critical values (seconds).
OVERDUE_CHECK_SECONDS = 5.0
# What this process last recorded: the configuration whose version it noted, when it last looked
# for overdue criticals. The suspensions are read for every result: the kill switch must not wait.
_NOTED: dict[str, object] = {}


def evaluate_inputs(settings: Settings, analyzer: AnalyzerSettings, tx: Tx) -> dict[str, Any]:
    """Keyword arguments of :func:`labmw.rules.engine.evaluate` beyond the result and its method.

    The first judgement under a rule set the store has not recorded yet records it (one indexed
    read otherwise): a hand edit loaded at start or by SIGHUP is an audited
    ``rules_version_changed`` too, not only a CLI edit.
    """
    version = rules_version(settings)
    if _NOTED.get("settings") is not settings:
        # Once per loaded configuration (the store keeps the version it last recorded).
        tx.note_rules_version(version, actor="labmw", how="configuration loaded by the daemon")
        _NOTED["settings"] = settings
    # A critical value nobody logged as notified in time raises its alert while results flow too, not
    # only when someone runs `labmw status` or `labmw critical list`; looked at most every few seconds.
    last = _NOTED.get("overdue_at")
    if not isinstance(last, datetime) or abs((tx.now - last).total_seconds()) >= OVERDUE_CHECK_SECONDS:
        tx.alert_overdue_criticals(before=tx.now - timedelta(minutes=settings.autoverify.critical_notify_minutes))
        _NOTED["overdue_at"] = tx.now
    return {"policy": policy_for(settings, analyzer, tx), "rules_version": version}


def static_inputs(settings: Settings, analyzer: AnalyzerSettings) -> dict[str, Any]:
    """The inputs for judging off the store thread: the analyzer's policy without the store's state.

    The caller re-judges on the store thread when a suspension turns out to cover the result.
    """
    return {"policy": policy_for(settings, analyzer, None), "rules_version": rules_version(settings)}


def suspended(inputs: dict[str, Any], result: Result, method: Method | None) -> bool:
    """Whether a kill switch in ``inputs`` (from :func:`evaluate_inputs`) covers this result."""
    policy: GatePolicy = inputs["policy"]
    name = method.name if method is not None else None
    return any(s.covers(result.analyzer, name) for s in policy.suspensions)


def after_store(tx: Tx, result_id: int, evaluation: Evaluation) -> None:
    """A critical flag opens a notification to be logged (the gates were stored with the result)."""
    for flag in evaluation.flags:
        if flag in (Flag.CRITICAL_HIGH.value, Flag.CRITICAL_LOW.value):
            tx.add_critical(result_id, flag)
