"""Model selection and early stopping over search epochs (SeaM's rule)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Selector:
    """Pick the epoch to keep from (accuracy, retention) pairs, one per epoch.

    Among epochs whose accuracy reaches ``target_acc`` (the original model's accuracy on
    the same split), keep the lowest retention, ties broken by higher accuracy. Once such
    an epoch exists, stop after ``early_stop`` further epochs without a new best
    (``early_stop <= 0`` never stops). If no epoch ever reaches ``target_acc``, keep the
    epoch with the highest ``accuracy - retention``.
    """

    target_acc: float
    early_stop: int
    best_epoch: int | None = None        # best epoch reaching target_acc
    fallback_epoch: int | None = None    # best accuracy - retention, used if none reaches it
    _best: tuple[float, float] | None = None
    _fallback_score: float = float("-inf")
    _since_best: int = 0

    def update(self, epoch: int, acc: float, retention: float) -> bool:
        """Record one epoch; True if it becomes the selected epoch."""
        score = acc - retention
        fallback_improved = score > self._fallback_score
        if fallback_improved:
            self._fallback_score, self.fallback_epoch = score, epoch
        if acc >= self.target_acc:
            if self._best is None or retention < self._best[1] or (
                retention == self._best[1] and acc > self._best[0]
            ):
                self._best, self.best_epoch, self._since_best = (acc, retention), epoch, 0
                return True
        if self.best_epoch is not None:
            self._since_best += 1
            return False
        return fallback_improved

    @property
    def selected_epoch(self) -> int | None:
        return self.best_epoch if self.best_epoch is not None else self.fallback_epoch

    @property
    def reached_target(self) -> bool:
        return self.best_epoch is not None

    @property
    def should_stop(self) -> bool:
        return self.best_epoch is not None and self.early_stop > 0 and self._since_best >= self.early_stop
