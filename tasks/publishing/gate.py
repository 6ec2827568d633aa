"""The quality gate: whether a model may replace the published one (a floor, or beating it)."""

from __future__ import annotations

from pydantic import BaseModel


class GateDecision(BaseModel):
    passed: bool
    reason: str
    new_f1: float
    min_f1: float | None
    published_f1: float | None
    published_at: str | None


def quality_gate(
    new_f1: float,
    min_f1: float | None,
    published_f1: float | None,
    require_improvement: bool,
    published_at: str | None = None,
) -> GateDecision:
    def decide(passed: bool, reason: str) -> GateDecision:
        return GateDecision(
            passed=passed,
            reason=reason,
            new_f1=new_f1,
            min_f1=min_f1,
            published_f1=published_f1,
            published_at=published_at,
        )

    if min_f1 is not None and new_f1 < min_f1:
        return decide(False, f"test F1 {new_f1:.4f} is below the floor publish.min_f1={min_f1:.4f}")
    if require_improvement and published_f1 is not None and new_f1 <= published_f1:
        return decide(
            False, f"test F1 {new_f1:.4f} does not beat the published model's {published_f1:.4f} ({published_at})"
        )
    if require_improvement and published_f1 is not None:
        return decide(True, f"test F1 {new_f1:.4f} beats the published model's {published_f1:.4f} ({published_at})")
    return decide(
        True, f"test F1 {new_f1:.4f} passes" + (f" the floor {min_f1:.4f}" if min_f1 is not None else " (no floor set)")
    )
