"""The promotion gate: may a candidate steer replace the champion? Pure (no MLflow), so it is testable in isolation.

``decide_doc(doc, gate)`` is the gate the pipeline uses. It works from paired evidence: candidate and champion are
sampled on the same prompts with the same per-(prompt, sample) random numbers, so it takes per-prompt differences
(candidate − champion) of the control metric, each at its own recommended strength, and promotes only when the
lower end of a paired bootstrap interval over prompts (``gate.confidence``, default 95 %) clears ``gate.min_margin``.
"Beats the unsteered base model" is the same test on the per-prompt gain over base against ``gate.min_gain``. The
per-prompt values are cross-fitted (each prompt read at the strength chosen on the other half of the prompts, see
``steer_core.evaluate.recommend``), so the recommended strength's winner's curse does not enter the decision. The
floors (fluency, distinct-2) are checked on those same reporting numbers, and fluency on evidence, symmetric with
control: the upper end of the fluency cost's interval must be within the budget. With ``gate.independent_judge``
the gain must also be shown by a judge other than the labeller. Every check is recorded, passed or not, with its
point estimate and, for a check on evidence, both ends of its interval, so the registry can show why a version was
(not) promoted; every reason is a sentence with numbers, e.g. "control +0.080 [+0.020, +0.140] over the champion".

``decide(candidate, champion, gate)`` is the older point-estimate comparison of two summaries
(``{"control", "ppl_increase", "distinct_2", "gain"}``); it is kept for callers that only hold summaries and for the
calibration bench's side-by-side. ``power_report`` sizes the protocol from a finished evaluation (``steer power``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

from steer_core.evaluate import metrics as M
from steer_core.config import GateConfig

REQUIRED = ("control", "ppl_increase", "distinct_2", "gain")


class Check(NamedTuple):
    """One gate check: the metric's value (its point estimate), the threshold it was held to, whether it held, and,
    for a check on evidence, the ends of the value's interval (``low``, ``high``)."""

    name: str
    value: float | None
    threshold: float | None
    ok: bool
    low: float | None = None
    high: float | None = None


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
) -> GateDecision:
    """Pass only when every floor holds, the candidate beats the unsteered base model (``gain`` above
    ``gate.min_gain``: the base model is the champion every steer must beat first) and, if a champion exists, the
    candidate's control beats it by the margin.

    ``control`` is oriented (higher is better, toxicity included). A champion whose control is unusable fails the gate rather than being replaced blindly: the registry stays as it
    was and the reason says so.
    """
    checks: list[Check] = []
    failures: list[str] = []
    vals: dict[str, float | None] = {k: _number(candidate, k) for k in REQUIRED}
    for key in REQUIRED:
        if vals[key] is None:
            checks.append(Check(f"{key}_present", None, None, False))
            failures.append(_why_unusable(candidate, key, "candidate"))

    ppl, d2 = vals["ppl_increase"], vals["distinct_2"]
    _floors(ppl, d2, gate, checks, failures)

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
            threshold = champ_ctrl + gate.min_margin
            ok = ctrl > threshold
            checks.append(Check("control_vs_champion", ctrl, threshold, ok))
            if ok:
                passes.append(
                    f"Control {ctrl:.4f} beats the champion's {champ_ctrl:.4f} by more than {gate.min_margin:g}."
                )
            else:
                failures.append(
                    f"Control {ctrl:.4f} does not beat the champion's {champ_ctrl:.4f}: it must be strictly above "
                    f"{threshold:.4f} (champion + gate.min_margin {gate.min_margin:g})."
                )
    if failures:
        return GateDecision(False, failures, checks)
    floors = (f"Gain over base {gain:+.4f} > {gate.min_gain:g}, perplexity +{ppl:.1%} ≤ {gate.max_ppl_increase:.1%}, "
              f"distinct-2 {d2:.3f} ≥ {gate.min_distinct_2:.3f}.")
    return GateDecision(True, [floors, *passes], checks)


def _per_prompt(rec: Mapping[str, Any], key: str) -> list[float] | None:
    vals = (rec.get("per_prompt") or {}).get(key)
    if not isinstance(vals, (list, tuple)) or not vals:
        return None
    out = []
    for v in vals:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


def _not_finite(vals: list[float]) -> list[int]:
    return [i for i, v in enumerate(vals) if not math.isfinite(v)]


def _floors(ppl: float | None, d2: float | None, gate: GateConfig, checks: list[Check], failures: list[str],
            where: str = "") -> None:
    """The floors every candidate must hold: the judge perplexity increase ``ppl`` and distinct-2 ``d2`` (each
    checked when known), measured ``where``."""
    if ppl is not None:
        ok = ppl <= gate.max_ppl_increase
        checks.append(Check("ppl_increase", ppl, gate.max_ppl_increase, ok))
        if not ok:
            failures.append(f"Judge perplexity rose {ppl:.1%} over the base model{where}, above the "
                            f"{gate.max_ppl_increase:.1%} allowed (gate.max_ppl_increase).")
    if d2 is not None:
        ok = d2 >= gate.min_distinct_2
        checks.append(Check("distinct_2", d2, gate.min_distinct_2, ok))
        if not ok:
            failures.append(f"distinct-2 is {d2:.3f}, below the floor of {gate.min_distinct_2:.3f} "
                            f"(gate.min_distinct_2): the steered text is too repetitive.")


def _paired_check(values: list[float], floor: float, gate: GateConfig, name: str, finite_name: str,
                  checks: list[Check], failures: list[str], not_finite: str, consequence: str
                  ) -> tuple[bool, tuple[float, float, float] | None]:
    """The paired test: does the lower end of the paired bootstrap interval of ``values`` (per-prompt differences)
    clear ``floor``? Records the check ``name`` and returns (passed, (mean, low, high)); values that are not finite
    numbers record the failed check ``finite_name`` and the reason (``not_finite`` for n of m prompts
    (first: ...)``consequence``) instead, and return (False, None)."""
    bad = _not_finite(values)
    if bad:
        checks.append(Check(finite_name, None, None, False))
        failures.append(f"{not_finite} for {len(bad)} of {len(values)} prompts (first: prompt {bad[0]}){consequence}.")
        return False, None
    mean, low, high = M.paired_interval(values, gate.confidence, gate.bootstrap)
    ok = low > floor
    checks.append(Check(name, low, floor, ok))
    return ok, (mean, low, high)


def _fluency_check(rec: Mapping[str, Any], gate: GateConfig, checks: list[Check], failures: list[str]) -> str | None:
    """Fluency on evidence, as control is: pass only when the upper end of the fluency cost's interval (the worse
    side's, cross-fitted, ``recommended.fluency``) is within ``gate.max_ppl_increase``; a steer whose evidence cannot
    say it is within budget is refused like one shown over it. When the budget is held to the paired per-step cost,
    the judge perplexity of the text is checked too: its interval's lower end above the limit is evidence of harm.
    Returns the text for the pass reason (None when the document predates the fluency interval)."""
    fl = rec.get("fluency")
    if not isinstance(fl, Mapping):
        return None
    limit = gate.max_ppl_increase
    inc, low, high = (_number(fl, k) for k in ("increase", "low", "high"))
    what = "paired per-step cost" if fl.get("estimate") == "paired" else "judge perplexity"
    if high is None or inc is None:
        checks.append(Check("fluency_finite", None, limit, False))
        failures.append(f"The candidate's {what} has no finite interval over the reporting prompts: fluency cannot "
                        f"be shown within the {limit:.1%} allowed (gate.max_ppl_increase).")
        return ""
    ok = high <= limit
    checks.append(Check("fluency_increase", inc, limit, ok, low, high))
    conf = _number(fl, "confidence") or gate.confidence
    txt = (f"{what} {inc:+.1%} [{low:+.1%}, {high:+.1%}] over the base model ({conf:.0%} paired interval over "
           f"prompts, the worse side)")
    if not ok:
        failures.append(f"The {txt}: its upper end is above the {limit:.1%} allowed (gate.max_ppl_increase), so the "
                        f"evidence does not show the steer within budget.")
    if fl.get("estimate") == "paired":
        txt += _text_overshoot(rec, gate, checks, failures)
    return txt


def _text_overshoot(rec: Mapping[str, Any], gate: GateConfig, checks: list[Check], failures: list[str]) -> str:
    """The judge perplexity of the text beside a paired-cost budget: refuse when its interval's lower end (the
    worse side) is above the limit. Returns the text for the pass reason."""
    limit = gate.max_ppl_increase
    worst: tuple[float, float, float] | None = None
    for key in ("log_ppl_ratio_plus", "log_ppl_ratio_minus"):
        finite = [v for v in _per_prompt(rec, key) or [] if math.isfinite(v)]
        if len(finite) >= 2:
            iv = M.paired_interval(finite, gate.confidence, gate.bootstrap)
            if worst is None or iv[1] > worst[1]:
                worst = iv
    if worst is None:
        return ""
    inc, low, high = (math.expm1(x) for x in worst)
    ok = low <= limit
    checks.append(Check("text_perplexity_increase", inc, limit, ok, low, high))
    txt = f"; judge perplexity of the text {inc:+.1%} [{low:+.1%}, {high:+.1%}]"
    if not ok:
        failures.append(f"The judge perplexity of the steered text rose {inc:+.1%} [{low:+.1%}, {high:+.1%}]: even "
                        f"its lower end is above the {limit:.1%} allowed (gate.max_ppl_increase).")
    return txt


def _judge_checks(doc: Mapping[str, Any], cand: Mapping[str, Any], gate: GateConfig, checks: list[Check],
                  failures: list[str]) -> list[str]:
    """Control as read by someone other than the labeller: each independent judge's per-prompt gain over the base
    model (cross-fitted, at the labeller's strengths) must have the lower end of its paired interval above
    ``gate.min_gain``. Returns the pass texts."""
    judges = list(doc.get("judges") or [])
    if not judges:
        checks.append(Check("independent_judge_present", None, None, False))
        failures.append("gate.independent_judge is on, but no independent judge read this evaluation "
                        "(evaluate.judges is empty): control is only the labeller's word.")
        return []
    out = []
    per = (cand.get("per_prompt") or {}).get("judges") or {}
    for name in judges:
        gains = _per_prompt({"per_prompt": per.get(name) or {}}, "gain")
        if gains is None:
            checks.append(Check(f"gain_by_{name}_present", None, None, False))
            failures.append(f"The independent judge {name!r} has no per-prompt gain in the candidate's evaluation.")
            continue
        ok, iv = _paired_check(gains, gate.min_gain, gate, f"gain_by_{name}", f"gain_by_{name}_finite", checks,
                               failures, f"The per-prompt gain read by {name!r} is not a finite number",
                               "; it cannot be judged")
        if iv is None:
            continue
        txt = f"gain {_interval_text(*iv)} by the independent judge {name} ({gate.confidence:.0%} paired interval)"
        if ok:
            out.append(f"The steer's {txt} clears {gate.min_gain:g}.")
        else:
            failures.append(f"The steer's {txt}: the lower bound must be above {gate.min_gain:g} (gate.min_gain "
                            f"under gate.independent_judge).")
    return out


def _interval_text(mean: float, low: float, high: float) -> str:
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def decide_doc(doc: Mapping[str, Any], gate: GateConfig) -> GateDecision:
    """The gate on an evaluation document (schema in ``steer_core.evaluate``), from paired per-prompt evidence.

    ``doc["systems"]`` has ``"candidate"`` and, when a champion exists, ``"champion"``: both were sampled on the
    same prompts with the same per-(prompt, sample) random numbers and share ``doc["base"]``. Returns the gate
    decision (reasons are sentences with numbers).

    Reads, per system, ``["recommended"]``: ``per_prompt.control`` and ``per_prompt.gain`` (one cross-fitted value
    per prompt, in prompt order), ``ppl_increase`` and ``distinct_2``; and ``["prompt_ids"]`` to check that the
    champion's prompt i is the candidate's prompt i. The candidate passes when

    - its fluency and distinct-2 (cross-fitted, i.e. on the reporting prompts) hold the floors: the upper end of the
      fluency cost's interval (``recommended.fluency``, the worse side) must be within ``gate.max_ppl_increase``
      (with a paired-cost budget, the text's judge perplexity must also not lie wholly above it); a document
      without the fluency interval is held to the point estimate of ``ppl_increase``;
    - with ``gate.independent_judge``: the same gain test on each independent judge's per-prompt gain
      (``per_prompt.judges``);
    - the lower end of the central ``gate.confidence`` paired-bootstrap interval (over prompts) of its per-prompt
      gain over the unsteered base model is above ``gate.min_gain``;
    - with a champion: the lower end of the same interval on the per-prompt differences of control (candidate −
      champion, each at its own recommended strength) is above ``gate.min_margin``;
    - when ``gate.min_margin_over_baseline`` is set: the same on candidate − ActAdd baseline (``doc["systems"]
      ["actadd"]``) against that margin.

    Anything missing or not finite (NaN) refuses promotion and says where. Identical steers give differences of
    exactly 0 and are never promoted over each other.
    """
    checks: list[Check] = []
    failures: list[str] = []
    passes: list[str] = []
    systems = doc.get("systems") or {}
    conf = f"{gate.confidence:.0%}"
    if "candidate" not in systems:
        return GateDecision(False, ["The evaluation document has no 'candidate' system to judge."],
                            [Check("candidate_present", None, None, False)])
    cand_sys = systems["candidate"]
    cand = cand_sys.get("recommended") or {}
    cand_ctrl, cand_gain = _per_prompt(cand, "control"), _per_prompt(cand, "gain")
    if cand_ctrl is None or cand_gain is None:
        return GateDecision(False, ["The candidate's evaluation has no per-prompt results (recommended.per_prompt): "
                                    "it predates the paired gate; re-run the evaluate stage."],
                            [Check("per_prompt_present", None, None, False)])

    # floors, on the reporting prompts (the numbers in `recommended` are cross-fitted)
    ppl, d2 = _number(cand, "ppl_increase"), _number(cand, "distinct_2")
    for key, val in (("ppl_increase", ppl), ("distinct_2", d2)):
        if val is None:
            checks.append(Check(f"{key}_present", None, None, False))
            failures.append(_why_unusable(cand, key, "candidate"))
    ppl_txt = f"perplexity +{ppl:.1%}" if ppl is not None else ""
    fluency_txt = _fluency_check(cand, gate, checks, failures)
    if fluency_txt is not None:
        ppl_txt, ppl = fluency_txt, None  # checked on its interval; the point check is for documents without it
    _floors(ppl, d2, gate, checks, failures, " on the reporting prompts")

    # beats the unsteered base model: paired per-prompt gain
    gain_txt = ""
    ok, interval = _paired_check(cand_gain, gate.min_gain, gate, "gain_over_base", "gain_finite", checks, failures,
                                 "The candidate's per-prompt gain over the base model is not a finite number",
                                 "; it cannot be judged")
    if interval is not None:
        mean, low, high = interval
        gain_txt = (f"gain {_interval_text(mean, low, high)} over the unsteered base model ({conf} paired bootstrap "
                    f"interval over {len(cand_gain)} prompts)")
        if not ok:
            failures.append(f"At its recommended strength the steer's {gain_txt}: the lower bound must be above "
                            f"{gate.min_gain:g} (gate.min_gain).")

    if gate.independent_judge:
        passes += _judge_checks(doc, cand, gate, checks, failures)
    if "champion" not in systems:
        checks.append(Check("first_model", None, None, True))
        passes.append("No champion yet, so the candidate only had to beat the base model and hold the floors.")
    else:
        _control_versus(_CHAMPION, systems["champion"], cand_sys, cand_ctrl, gate.min_margin, gate, checks, failures,
                        passes)
    if gate.min_margin_over_baseline is not None:
        _control_versus(_BASELINE, systems.get("actadd"), cand_sys, cand_ctrl, gate.min_margin_over_baseline, gate,
                        checks, failures, passes)
    if failures:
        return GateDecision(False, failures, checks)
    floors = (f"The steer's {gain_txt} clears {gate.min_gain:g}; {ppl_txt} (allowed: {gate.max_ppl_increase:.1%}) "
              f"and distinct-2 {d2:.3f} ≥ {gate.min_distinct_2:.3f} on the reporting prompts.")
    return GateDecision(True, [floors, *passes], checks)


class _Rival(NamedTuple):
    """Whom the candidate's per-prompt control is compared with, and how the checks and reasons name it."""

    who: str  # "the champion"
    setting: str  # the margin's params key
    missing: str  # the reason when its per-prompt control is absent ({margin} is filled in)
    checks: tuple[str, str, str, str]  # names: control present, same prompts, the comparison, finite values
    strength: str  # at which strength each side is read
    consequence: str = ""  # appended to the refusal


_CHAMPION = _Rival("the champion", "gate.min_margin",
                   "The champion's evaluation has no per-prompt control (recommended.per_prompt.control): the two "
                   "cannot be compared.",
                   ("champion_control_present", "same_prompts", "control_vs_champion", "control_finite"),
                   "recommended", ", so the champion stays")
# gate.min_margin_over_baseline. Why a gate option: a steer that a one-vector baseline beats at the same perplexity
# budget is one a user may not want in production; the comparison is in every evaluation either way
# (``headline.candidate_vs_actadd``).
_BASELINE = _Rival("the actadd baseline", "gate.min_margin_over_baseline",
                   "gate.min_margin_over_baseline is {margin:g} but the evaluation has no per-prompt control of the "
                   "'actadd' baseline (evaluate.activation_addition off, or an older evaluation).",
                   ("baseline_control_present", "baseline_same_prompts", "control_vs_baseline",
                    "baseline_control_finite"), "budget")


def _control_versus(rival: _Rival, other_sys: Mapping[str, Any] | None, cand_sys: Mapping[str, Any],
                    cand_ctrl: list[float], margin: float, gate: GateConfig, checks: list[Check], failures: list[str],
                    passes: list[str]) -> None:
    """The paired test of the candidate's per-prompt control minus ``rival``'s (each cross-fitted at its own
    strength, on the same prompts with the same random numbers): the lower end of its interval must be above
    ``margin``. Refuses, saying why, when the rival has no per-prompt control or was read on other prompts."""
    present, same, name, finite = rival.checks
    other_ctrl = _per_prompt((other_sys or {}).get("recommended") or {}, "control")
    if other_sys is None or other_ctrl is None:
        checks.append(Check(present, None, None, False))
        failures.append(rival.missing.format(margin=margin))
        return
    cand_ids, other_ids = cand_sys.get("prompt_ids"), other_sys.get("prompt_ids")
    if len(other_ctrl) != len(cand_ctrl) or (cand_ids is not None and other_ids is not None
                                             and list(cand_ids) != list(other_ids)):
        checks.append(Check(same, None, None, False))
        failures.append(f"{rival.who[0].upper()}{rival.who[1:]} was evaluated on other prompts ({len(other_ctrl)}) "
                        f"than the candidate ({len(cand_ctrl)}, or not in the same order): the comparison would not "
                        f"be paired.")
        return
    diffs = [a - b for a, b in zip(cand_ctrl, other_ctrl)]
    ok, interval = _paired_check(diffs, margin, gate, name, finite, checks, failures,
                                 "Per-prompt control is not a finite number",
                                 f" in the candidate or {rival.who}; they cannot be compared")
    if interval is None:
        return
    txt = (f"control {_interval_text(*interval)} over {rival.who} ({gate.confidence:.0%} paired bootstrap interval "
           f"over {len(diffs)} prompts, each at its own {rival.strength} strength)")
    if ok:
        passes.append(f"Candidate {txt}: the lower bound clears {rival.setting} {margin:g}.")
    else:
        failures.append(f"Candidate {txt}: the lower bound must be above {margin:g} ({rival.setting})"
                        f"{rival.consequence}.")


def power_report(doc: Mapping[str, Any], effect: float, power: float = 0.8, confidence: float = 0.95,
                 margin: float = 0.0) -> dict[str, Any]:
    """Protocol sizing from a finished evaluation: how many prompts (× samples per prompt) the paired gate needs to
    promote, with probability ``power``, a candidate whose control truly beats the champion's by ``effect`` (the
    lower end of the central ``confidence`` interval must clear ``margin``); and the smallest improvement the
    evaluated protocol itself detects with that power.

    The spread comes from the document's cross-fitted per-prompt values: candidate − champion differences when the
    champion is in the document, else (no champion) twice the variance of the candidate's per-prompt control, i.e.
    no credit for the pairing (cautious). For sentiment the per-prompt variance is split into a between-prompt part
    and a sampling part (binomial, from the per-prompt positive rates at ±s), which shrinks with more samples per
    prompt; toxicity's control (a maximum over samples) is sized at the evaluated samples per prompt only.
    ``perplexity`` (when the document has per-prompt perplexity ratios) says how well the protocol pins the
    perplexity the gate checks, and the prompts it would take for ±5 / ±10 points.
    """
    import numpy as np

    if not (isinstance(effect, (int, float)) and math.isfinite(effect)) or effect - margin <= 0:
        raise ValueError(f"the effect to detect ({effect}) must be a number above the margin ({margin:g})")
    systems = doc.get("systems") or {}
    cand = (systems.get("candidate") or {}).get("recommended") or {}
    ctrl = _per_prompt(cand, "control")
    if ctrl is None:
        raise ValueError("the evaluation has no per-prompt results for 'candidate' (recommended.per_prompt): "
                         "re-run the evaluate stage")
    champ_ctrl = _per_prompt((systems.get("champion") or {}).get("recommended") or {}, "control")
    n = len(ctrl)
    if n < 3:
        raise ValueError(f"the evaluation has {n} prompts; at least 3 are needed to estimate a spread")
    m = int((doc.get("protocol") or {}).get("samples") or 0)
    c = np.asarray(ctrl, dtype=float)
    if champ_ctrl is not None and len(champ_ctrl) == n:
        d = c - np.asarray(champ_ctrl, dtype=float)
        basis = "measured candidate − champion per-prompt differences"
        var_d, systems_n = float(np.var(d, ddof=1)), 2
    else:
        d = c
        basis = "no champion in this evaluation: 2 × the variance of the candidate's per-prompt control (no credit for pairing)"
        var_d, systems_n = 2 * float(np.var(c, ddof=1)), 2
    if not math.isfinite(var_d):
        raise ValueError("the per-prompt control has NaN values; the spread cannot be estimated")
    sd = math.sqrt(var_d)
    target = effect - margin
    out: dict[str, Any] = {
        "prompts": n, "samples": m, "basis": basis, "sd_per_prompt": sd, "effect": effect, "margin": margin,
        "power": power, "confidence": confidence,
        "prompts_needed": M.prompts_for_power(sd, target, confidence, power),
        "detectable_now": M.detectable_effect(sd, n, confidence, power) + margin,
    }
    gain = _per_prompt(cand, "gain")
    if gain is not None and all(math.isfinite(g) for g in gain):
        gsd = float(np.std(np.asarray(gain), ddof=1))
        out["gain_over_base"] = {"mean": float(np.mean(gain)), "sd_per_prompt": gsd,
                                 "detectable_now": M.detectable_effect(gsd, n, confidence, power)}
    ppl = _perplexity_precision(cand, confidence)
    if ppl is not None:
        out["perplexity"] = ppl
    plus, minus = _per_prompt(cand, "positive_rate_plus"), _per_prompt(cand, "positive_rate_minus")
    if doc.get("control") == "sentiment" and plus and minus and m >= 2:
        p, q = np.asarray(plus, dtype=float), np.asarray(minus, dtype=float)
        within = float(np.nanmean(p * (1 - p) + q * (1 - q))) / (m - 1) * systems_n  # sampling variance at m
        within = min(within, var_d)  # the binomial estimate can exceed the measured spread: then it is all sampling
        between = var_d - within
        table = []
        for mult in (0.5, 1, 2, 4):
            mm = max(1, int(round(m * mult)))
            sd_m = math.sqrt(between + within * m / mm)
            k = M.prompts_for_power(sd_m, target, confidence, power)
            table.append({"samples": mm, "prompts_needed": k, "generations": k * mm,
                          "detectable_at_current_prompts": M.detectable_effect(sd_m, n, confidence, power) + margin})
        out["by_samples"] = table
        out["variance_split"] = {"between_prompts": between, "sampling": within}
    return out


def _perplexity_precision(rec: Mapping[str, Any], confidence: float) -> dict[str, Any] | None:
    """How well the protocol pins the judge-perplexity increase the gate checks: from the worse side's cross-fitted
    per-prompt log(ppl / base's), the increase, the ± points of its central ``confidence`` interval now, and the
    prompts (at this many samples) for ±5 and ±10 points (normal approximation). None without the ratios."""
    import numpy as np

    sides = []
    for key in ("log_ppl_ratio_plus", "log_ppl_ratio_minus"):
        vals = [v for v in _per_prompt(rec, key) or [] if math.isfinite(v)]
        if len(vals) >= 3:
            sides.append(np.asarray(vals, dtype=float))
    if not sides:
        return None
    worse = max(sides, key=lambda v: float(v.mean()))
    mean, sd, n = float(worse.mean()), float(worse.std(ddof=1)), worse.size
    scale = math.exp(mean)  # d(increase) / d(log ratio) at the estimate: points of increase per log unit
    return {"increase": math.expm1(mean), "sd_log_per_prompt": sd, "prompts": n,
            "half_width_now": M.half_width(sd, n, confidence) * scale,
            "prompts_for_half_width": {f"{h:g}": M.prompts_for_precision(sd * scale, h, confidence)
                                       for h in (0.05, 0.10)}}
