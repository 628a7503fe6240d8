"""Which epoch to keep, and when to stop: one interface, three rules.

A rule sees one ``update(epoch, acc, retention)`` per epoch (accuracy on the selection
split, share of weights kept) and answers whether that epoch becomes the selected one;
``selected_epoch``, ``should_stop`` and ``reached_target`` say where it stands.

* :class:`AccuracyTarget`: SeaM's rule for the search (RQ1).
* :class:`RemovalThreshold`: the defect-inheritance flow's search (RQ3): run until a share
  of the weights is removed and keep where it stopped.
* :class:`BestAccuracy`: fine-tuning: the most accurate epoch, with patience.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol


class StopRule(Protocol):
    def update(self, epoch: int, acc: float, retention: float) -> bool: ...

    @property
    def selected_epoch(self) -> int | None: ...

    @property
    def should_stop(self) -> bool: ...

    @property
    def reached_target(self) -> bool: ...


# A search knows the accuracy to match only once it has evaluated the original model.
RuleFactory = Callable[[float], StopRule]


@dataclass
class AccuracyTarget:
    """Among epochs whose accuracy reaches ``target_acc`` (the original model's accuracy on
    the same split), keep the lowest retention, ties broken by higher accuracy. Once such an
    epoch exists, stop after ``early_stop`` further epochs without a new best
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

    @classmethod
    def factory(cls, early_stop: int) -> RuleFactory:
        return lambda target_acc: cls(target_acc, early_stop)

    def update(self, epoch: int, acc: float, retention: float) -> bool:
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


@dataclass
class RemovalThreshold:
    """Every epoch is the selected one; stop once ``threshold`` of the weights are removed.

    Accuracy does not select (the release's ``reengineering_finetune``); ``reached_target``
    says whether the threshold was reached within the epochs run.
    """

    threshold: float
    selected_epoch: int | None = None
    reached_target: bool = False

    @classmethod
    def factory(cls, threshold: float) -> RuleFactory:
        return lambda _target_acc: cls(threshold)

    def update(self, epoch: int, acc: float, retention: float) -> bool:
        self.selected_epoch = epoch
        self.reached_target = 1 - retention >= self.threshold
        return True

    @property
    def should_stop(self) -> bool:
        return self.reached_target


@dataclass
class BestAccuracy:
    """The epoch with the highest accuracy (the first on ties); stop after ``early_stop``
    epochs without a better one (``early_stop <= 0`` never stops)."""

    early_stop: int
    selected_epoch: int | None = None
    best_acc: float = -1.0
    _since_best: int = 0

    def update(self, epoch: int, acc: float, retention: float = 1.0) -> bool:
        if acc > self.best_acc:
            self.best_acc, self.selected_epoch, self._since_best = acc, epoch, 0
            return True
        self._since_best += 1
        return False

    @property
    def reached_target(self) -> bool:
        return self.selected_epoch is not None

    @property
    def should_stop(self) -> bool:
        return 0 < self.early_stop <= self._since_best
