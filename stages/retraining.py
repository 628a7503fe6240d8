"""DVC stage `retraining`: retrained-from-scratch vs re-engineered test accuracy per target
(the paper's Table IV; metrics/retraining.json)."""

from __future__ import annotations

import json
from pathlib import Path

from seam.core.atomic import write_json
from seam.core.errors import SeamError
from seam.core.stage import run_stage
from seam.core.params import load_params
from seam.data.augment import Normalize
from seam.data.problem import TargetProblem
from seam.models.pretrained import load_pretrained
from seam.reengineer.accuracy import accuracy, predict
from seam.reuse.flows import load_finetuned


def _seconds(path: Path) -> float:
    if not path.is_file():
        raise SeamError(f"{path}: not found (run the stage that writes it)")
    return json.loads(path.read_text())["seconds"]


def main(prepared_dir: Path, pretrained_dir: Path, retrained_dir: Path, reengineering: Path,
         reengineer_timing: Path, retrain_timing: Path, out: Path) -> None:
    params = load_params()
    if not reengineering.is_file():
        raise SeamError(f"{reengineering}: not found (run the evaluate stage first)")
    rq1 = json.loads(reengineering.read_text())["targets"]
    info, pretrained = load_pretrained(pretrained_dir)
    normalize = Normalize(info.mean, info.std)
    per_target = {}
    for name in params.retrain.targets:
        if name not in rq1:
            raise SeamError(f"{reengineering}: no re-engineered result for retrain target {name!r} "
                            "(run the evaluate stage)")
        problem = TargetProblem.load(prepared_dir / f"{name}.pt")
        model, meta = load_finetuned(retrained_dir / f"{name}.pt", pretrained)
        retrained = accuracy(predict(model, problem.test_x, normalize), problem.test_y)
        reengineered = rq1[name]
        per_target[name] = {
            "kind": problem.kind,
            "classes": problem.class_names,
            "n_train": len(problem.train_y),
            "n_test": len(problem.test_y),
            "acc_retrained": retrained,
            "acc_reengineered": reengineered["acc_reengineered"],
            "increase": reengineered["acc_reengineered"] - retrained,
            "retrain_epochs": meta["epochs_run"],
            "retrain_best_epoch": meta["best_epoch"],
            "retrain_seconds": _seconds(retrain_timing / f"{name}.json"),
            "reengineer_epochs": reengineered["epochs_run"],
            "reengineer_seconds": _seconds(reengineer_timing / f"{name}.json"),
        }

    def mean(key: str) -> float:
        return sum(t[key] for t in per_target.values()) / len(per_target)

    write_json({"acc_retrained": mean("acc_retrained"), "acc_reengineered": mean("acc_reengineered"),
                "increase": mean("increase"), "n_targets": len(per_target), "model": info.name,
                "targets": per_target}, out)
    for name, t in per_target.items():
        print(f"{name}: retrained {t['acc_retrained']:.4f} ({t['retrain_epochs']} epochs, {t['retrain_seconds']:.0f} s) "
              f"vs re-engineered {t['acc_reengineered']:.4f} ({t['reengineer_epochs']} epochs, "
              f"{t['reengineer_seconds']:.0f} s)")


if __name__ == "__main__":
    run_stage(main)
