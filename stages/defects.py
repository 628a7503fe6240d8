"""DVC stage `defects`: ACC, DIR and removed share of the standard, ReMoS and SeaM
fine-tuned models, on the same malicious inputs (metrics/defect_inheritance.json)."""

from __future__ import annotations

from pathlib import Path

import torch

from seam.core.atomic import write_json
from seam.core.stage import run_stage
from seam.core.params import load_params
from seam.data.augment import Normalize
from seam.data.problem import TargetProblem
from seam.models.pretrained import load_pretrained
from seam.reengineer.accuracy import predict
from seam.reuse.attack import defect_metrics
from seam.reuse.flows import load_finetuned

FLOWS = ("standard", "remos", "seam")


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
        meta.pop("removed_per_layer", None)  # in the model file; too long for `dvc metrics show`
        result[flow] = {**defect_metrics(clean, attacked, problem.test_y), "removed_rate": 0.0, **meta}
    metrics = {}
    for flow in FLOWS:
        metrics |= {f"acc_{flow}": result[flow]["acc"], f"dir_{flow}": result[flow]["dir"],
                    f"removed_rate_{flow}": result[flow]["removed_rate"]}
    metrics |= {
        "dir_reduction": result["standard"]["dir"] - result["seam"]["dir"],
        "settings": {"model": info.name, "classes": problem.class_names, "test_images": len(problem.test_y),
                     "attack": adv["attack"], "dropout": params.defects.dropout,
                     "threshold": params.defects.seam.reengineer.threshold, "remos_ratio": params.defects.remos.ratio,
                     "remos_keep_mask": params.defects.remos.keep_mask},
        **result,
    }
    write_json(metrics, out)
    for flow in FLOWS:
        print(f"{flow:>8}: ACC {result[flow]['acc']:.4f}  DIR {result[flow]['dir']:.4f}  "
              f"removed {result[flow]['removed_rate']:.1%}")


if __name__ == "__main__":
    run_stage(main)
