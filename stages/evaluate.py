"""DVC stage `evaluate`: original vs re-engineered accuracy and weight retention, per target."""

from __future__ import annotations

from pathlib import Path

from seam.core.atomic import write_json
from seam.core.stage import run_stage
from seam.core.params import load_params
from seam.data.augment import Normalize
from seam.data.problem import TargetProblem
from seam.models.masks import count_kept
from seam.models.pretrained import PretrainedModel, load_pretrained
from seam.reengineer.accuracy import accuracy, original_accuracy, predict
from seam.reengineer.artifact import build_reengineered, load_artifact


def evaluate_target(problem: TargetProblem, artifact: dict, original, info: PretrainedModel) -> dict:
    model = build_reengineered(original, artifact, model_sha256=info.sha256)
    normalize = Normalize(info.mean, info.std)
    x, y = problem.test_x, problem.test_y
    logits_original = predict(original, x, normalize)
    rule = {"kind": problem.kind, "source_classes": info.source_outputs(problem)}
    kept, total = count_kept(artifact["masks"])
    meta = artifact["meta"]
    return {
        "kind": problem.kind,
        "granularity": meta["search"]["granularity"],
        "n_test": len(y),
        "acc_original": original_accuracy(logits_original, y, **rule),
        "acc_original_fair": original_accuracy(logits_original, y, **rule, fair=True),
        "acc_reengineered": accuracy(predict(model, x, normalize), y),
        "weights_kept": kept,
        "weights_total": total,
        "weight_retention": kept / total,
        "selected_epoch": meta["selected_epoch"],
        "epochs_run": meta["epochs_run"],
        "reached_original_acc": meta["reached_target"],
    }


def main(prepared_dir: Path, pretrained_dir: Path, reengineered_dir: Path, out: Path) -> None:
    params = load_params()
    info, original = load_pretrained(pretrained_dir)
    per_target = {
        name: evaluate_target(TargetProblem.load(prepared_dir / f"{name}.pt"),
                              load_artifact(reengineered_dir / f"{name}.pt"), original, info)
        for name in params.targets
    }

    headline = params.headline_targets()

    def mean(key: str) -> float:
        return sum(per_target[n][key] for n in headline) / len(headline)

    metrics = {
        "acc_original": mean("acc_original"),
        "acc_original_fair": mean("acc_original_fair"),
        "acc_reengineered": mean("acc_reengineered"),
        "weight_retention": mean("weight_retention"),
        "n_targets": len(headline),
        "model": info.name,
        "targets": per_target,
    }
    write_json(metrics, out)
    for name, t in per_target.items():
        print(f"{name}: original {t['acc_original']:.4f} -> re-engineered {t['acc_reengineered']:.4f}, "
              f"weights kept {t['weights_kept']}/{t['weights_total']} ({t['weight_retention']:.2%})")


if __name__ == "__main__":
    run_stage(main)
