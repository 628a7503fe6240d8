"""DVC stage `defects`: ACC and DIR of the standard and the SeaM fine-tuned models
(metrics/defect_inheritance.json)."""

from __future__ import annotations

from pathlib import Path

import torch

from seam.accuracy import predict
from seam.adversarial import defect_metrics
from seam.atomic import write_json
from seam.augment import Normalize
from seam.errors import run_stage
from seam.params import load_params
from seam.pretrained import load_pretrained
from seam.problem import TargetProblem
from seam.reuse import load_finetuned

FLOWS = ("standard", "seam")


def main(problem_file: Path, adversarial_file: Path, pretrained_dir: Path, finetuned_dir: Path, out: Path) -> None:
    params = load_params()
    problem = TargetProblem.load(problem_file)
    adv = torch.load(adversarial_file, map_location="cpu", weights_only=True)
    info, pretrained = load_pretrained(pretrained_dir)
    normalize = Normalize(info.mean, info.std)
    result = {}
    for flow in FLOWS:
        model, meta = load_finetuned(finetuned_dir / f"{flow}.pt", pretrained)
        clean = predict(model, problem.test_x, normalize)
        attacked = predict(model, adv["inputs"], lambda x: x)  # already normalised
        result[flow] = {**defect_metrics(clean, attacked, problem.test_y), **meta}
    metrics = {
        "acc_standard": result["standard"]["acc"],
        "dir_standard": result["standard"]["dir"],
        "acc_seam": result["seam"]["acc"],
        "dir_seam": result["seam"]["dir"],
        "dir_reduction": result["standard"]["dir"] - result["seam"]["dir"],
        "removed_rate_seam": result["seam"]["removed_rate"],
        "settings": {"model": info.name, "classes": problem.class_names, "test_images": len(problem.test_y),
                     "attack": adv["attack"], "dropout": params.defects.dropout,
                     "threshold": params.defects.seam.reengineer.threshold},
        "standard": result["standard"],
        "seam": result["seam"],
    }
    write_json(metrics, out)
    print(f"standard: ACC {metrics['acc_standard']:.4f} DIR {metrics['dir_standard']:.4f}; "
          f"SeaM: ACC {metrics['acc_seam']:.4f} DIR {metrics['dir_seam']:.4f} "
          f"(removed {metrics['removed_rate_seam']:.1%})")


if __name__ == "__main__":
    run_stage(main)
