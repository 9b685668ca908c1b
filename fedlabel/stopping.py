"""When a run stops early: the rule behind stop.patience and stop.target_accuracy."""

from __future__ import annotations

from typing import Any


def stop_reason(
    rounds: list[dict[str, Any]], *, patience: int, target_accuracy: float
) -> str | None:
    """Why a run whose round records are ``rounds`` stops after the last one, or None. Judged at
    evaluated rounds only, on the validation accuracy where the run has a validation set
    (data.val_fraction > 0) and on the test accuracy otherwise: ``target_accuracy`` reached, or
    no higher accuracy than the best for ``patience`` rounds; 0 turns either off."""
    if not rounds or rounds[-1].get("accuracy") is None:
        return None
    key, name = (
        ("val_accuracy", "validation accuracy")
        if rounds[-1].get("val_accuracy") is not None
        else ("accuracy", "accuracy")
    )
    evaluated = [(r["round"], r[key]) for r in rounds if r.get(key) is not None]
    last, accuracy = evaluated[-1]
    if target_accuracy and accuracy >= target_accuracy:
        target = f"stop.target_accuracy={target_accuracy:g}"
        return f"{name} {accuracy:.4f} at round {last} reached {target}"
    best_round, best = max(evaluated, key=lambda e: (e[1], -e[0]))  # the first round of the best
    if patience and last - best_round >= patience:
        since = last - best_round
        return (
            f"no {name} above {best:.4f} (round {best_round}) in {since} rounds "
            f"(stop.patience={patience})"
        )
    return None
