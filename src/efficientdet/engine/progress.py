"""Training's progress bar (tqdm): over an epoch's batches, or over a time budget's minutes."""

from __future__ import annotations

from typing import Any


def epoch_bar(epoch: int, epochs: int, batches: int, budget_minutes: float | None, elapsed_minutes: float) -> Any:
    """A tqdm bar for epoch ``epoch`` (0-based): over its ``batches``, or, with a time budget
    (which, not the epoch count, ends such a run), over the budget's minutes, starting at the
    minutes already spent."""
    from tqdm import tqdm

    if budget_minutes:
        return tqdm(
            total=float(budget_minutes), initial=min(elapsed_minutes, budget_minutes), desc=f"epoch {epoch + 1}",
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:g} min of the time budget{postfix}",
            dynamic_ncols=True, leave=False,
        )  # fmt: skip
    return tqdm(total=batches, desc=f"epoch {epoch + 1}/{epochs}", dynamic_ncols=True, leave=False)


def show_minutes(bar: Any, elapsed_minutes: float, budget_minutes: float) -> None:
    """Move a time-budget bar to the minutes spent."""
    bar.n = min(elapsed_minutes, float(budget_minutes))
    bar.refresh()
