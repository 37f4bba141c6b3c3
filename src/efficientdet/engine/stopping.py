"""When a training run stops early: its time budget and SIGINT/SIGTERM, as all DDP ranks agree.

A signal reaches ranks at different moments (another node, a scheduler), and each rank's clock
reads differently: a rank that stopped alone left the others failing in the next step's
all-reduce, rank 0 unsaved. So the ranks agree on both after every optimiser step, in one
all-reduce of two numbers.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .distributed import DistInfo, all_reduce_sum


class StopSignals:
    """The run's budget share and signal state, agreed over the ranks by :meth:`agree`.

    ``budget_minutes``: the run's time budget (None or 0: none). ``budget_used``: the share of
    it spent, the mean over ranks (so that all take the same LR and stop at the same step).
    ``requested``: the signal's name once this rank got one (or "a signal to another rank").
    """

    def __init__(
        self, dist: DistInfo, device: torch.device, budget_minutes: float | None, log: Callable[[str], None]
    ) -> None:
        self.dist = dist
        self.device = device
        self.budget_minutes = budget_minutes
        self.log = log
        self.budget_used = 0.0
        self.requested: str | None = None
        self._agreed_signal = False  # some rank had a signal at the last agree() (DDP)

    def agree(self, elapsed_s: float) -> None:
        """Agree on the budget share (from this rank's ``elapsed_s``) and on any rank's signal."""
        used = elapsed_s / (self.budget_minutes * 60) if self.budget_minutes else 0.0
        if not self.dist.enabled:
            self.budget_used = used
            return
        values = torch.tensor([used, float(self.requested is not None)], device=self.device)
        total = all_reduce_sum(values, self.dist)
        self.budget_used = float(total[0]) / self.dist.world_size
        self._agreed_signal = float(total[1]) > 0
        if self._agreed_signal and self.requested is None:
            self.requested = "a signal to another rank"

    @property
    def out_of_time(self) -> bool:
        return bool(self.budget_minutes) and self.budget_used >= 1.0

    @property
    def signalled(self) -> bool:
        """Whether to stop for a signal: as the ranks last agreed under DDP (a signal that came
        after it is seen at the next step, on every rank alike), at once in one process."""
        return self._agreed_signal if self.dist.enabled else self.requested is not None

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.requested = signal.Signals(signum).name
        self.log(f"{self.requested} received: finishing this step, saving a checkpoint")

    @contextlib.contextmanager
    def handled(self) -> Iterator[None]:
        """SIGINT and SIGTERM set :attr:`requested` inside the block (the previous handlers come
        back after it); off the main thread the caller keeps handling signals."""
        old: dict[signal.Signals, Any] = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, self._on_signal)
        except ValueError:  # not the main thread
            pass
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
