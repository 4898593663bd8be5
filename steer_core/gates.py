"""The promotion gate: may a candidate steer replace the champion? Pure (no MLflow), so it is testable in isolation.

Inputs are evaluation summaries at each steer's recommended strength, e.g.
``{"control": 0.41, "ppl_increase": 0.12, "distinct_2": 0.83, "gain": 0.2}`` (``gain``: how much the steer improves
control over the unsteered base model on the same samples' prompts: the ±s swing for sentiment); both come from the same run on the same prompts
(design.md), so the numbers are comparable. Every check is recorded, passed or not, so the registry can show why
a version was (not) promoted; every failure reason is a sentence that carries the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, NamedTuple

from steer_core.config import GateConfig

Direction = Literal["higher", "lower"]
REQUIRED = ("control", "ppl_increase", "distinct_2", "gain")


class Check(NamedTuple):
    """One gate check: the metric's value, the threshold it was held to, and whether it held."""

    name: str
    value: float | None
    threshold: float | None
    ok: bool


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs, tags and version descriptions."""
        if self.passed:
            return "gate passed: " + " ".join(self.reasons)
        return "gate failed: " + " ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "checks": [c._asdict() for c in self.checks]}


def _number(metrics: Mapping[str, Any], key: str) -> float | None:
    """The metric as a finite float, or None when it is missing, not a number, NaN or infinite."""
    raw = metrics.get(key)
    try:
        val = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return val if math.isfinite(val) else None


def _why_unusable(metrics: Mapping[str, Any], key: str, who: str) -> str:
    if key not in metrics or metrics[key] is None:
        return f"The {who}'s metric '{key}' is missing from its evaluation summary."
    return f"The {who}'s metric '{key}' is {metrics[key]!r}, not a finite number."


def decide(
    candidate: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    gate: GateConfig,
    direction: Direction = "higher",
) -> GateDecision:
    """Pass only when every floor holds, the candidate beats the unsteered base model (``gain`` above
    ``gate.min_gain``: the base model is the champion every steer must beat first) and, if a champion exists, the
    candidate's control beats it by the margin.

    ``direction`` says which way ``control`` improves; summaries are normally already oriented ("higher"). A
    champion whose control is unusable fails the gate rather than being replaced blindly: the registry stays as it
    was and the reason says so.
    """
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")
    checks: list[Check] = []
    failures: list[str] = []
    vals: dict[str, float | None] = {k: _number(candidate, k) for k in REQUIRED}
    for key in REQUIRED:
        if vals[key] is None:
            checks.append(Check(f"{key}_present", None, None, False))
            failures.append(_why_unusable(candidate, key, "candidate"))

    ppl, d2 = vals["ppl_increase"], vals["distinct_2"]
    if ppl is not None:
        ok = ppl <= gate.max_ppl_increase
        checks.append(Check("ppl_increase", ppl, gate.max_ppl_increase, ok))
        if not ok:
            failures.append(
                f"Judge perplexity rose {ppl:.1%} over the base model, above the {gate.max_ppl_increase:.1%} "
                f"allowed (gate.max_ppl_increase)."
            )
    if d2 is not None:
        ok = d2 >= gate.min_distinct_2
        checks.append(Check("distinct_2", d2, gate.min_distinct_2, ok))
        if not ok:
            failures.append(
                f"distinct-2 is {d2:.3f}, below the floor of {gate.min_distinct_2:.3f} (gate.min_distinct_2): "
                f"the steered text is too repetitive."
            )

    gain = vals["gain"]
    if gain is not None:
        ok = gain > gate.min_gain
        checks.append(Check("gain_over_base", gain, gate.min_gain, ok))
        if not ok:
            failures.append(
                f"At its recommended strength the steer changes control by {gain:+.4f} against the unsteered base "
                f"model; it must gain more than {gate.min_gain:g} (gate.min_gain)."
            )

    passes: list[str] = []
    ctrl = vals["control"]
    if champion is None:
        checks.append(Check("first_model", None, None, True))
        passes.append("No champion yet, so the candidate only had to beat the base model and hold the floors.")
    else:
        champ_ctrl = _number(champion, "control")
        if champ_ctrl is None:
            checks.append(Check("champion_control_present", None, None, False))
            failures.append(_why_unusable(champion, "control", "champion") + " The two cannot be compared.")
        elif ctrl is not None:
            if direction == "higher":
                threshold = champ_ctrl + gate.min_margin
                ok = ctrl > threshold
            else:
                threshold = champ_ctrl - gate.min_margin
                ok = ctrl < threshold
            checks.append(Check("control_vs_champion", ctrl, threshold, ok))
            word = "above" if direction == "higher" else "below"
            if ok:
                passes.append(
                    f"Control {ctrl:.4f} beats the champion's {champ_ctrl:.4f} by more than {gate.min_margin:g}."
                )
            else:
                failures.append(
                    f"Control {ctrl:.4f} does not beat the champion's {champ_ctrl:.4f}: it must be strictly {word} "
                    f"{threshold:.4f} (champion {'+' if direction == 'higher' else '-'} gate.min_margin "
                    f"{gate.min_margin:g})."
                )
    if failures:
        return GateDecision(False, failures, checks)
    floors = (f"Gain over base {gain:+.4f} > {gate.min_gain:g}, perplexity +{ppl:.1%} ≤ {gate.max_ppl_increase:.1%}, "
              f"distinct-2 {d2:.3f} ≥ {gate.min_distinct_2:.3f}.")
    return GateDecision(True, [floors, *passes], checks)


def decide_doc(doc: Mapping[str, Any], gate: GateConfig) -> GateDecision:
    """The gate on an evaluation document (schema in ``steer_core.evaluate``).

    ``doc["systems"]`` has ``"candidate"`` and, when a champion exists, ``"champion"``: both were sampled on the
    same prompts with the same per-(prompt, sample) random numbers and share ``doc["base"]``. Returns the gate
    decision (reasons are sentences with numbers).
    """
    systems = doc.get("systems") or {}
    if "candidate" not in systems:
        return GateDecision(False, ["The evaluation document has no 'candidate' system to judge."],
                            [Check("candidate_present", None, None, False)])
    cand = systems["candidate"].get("recommended") or {}
    champ = systems["champion"].get("recommended") or {} if "champion" in systems else None
    return decide(cand, champ, gate)
