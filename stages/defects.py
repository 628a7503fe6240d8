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
from seam.params import get, load_params
from seam.pretrained import load_pretrained
from seam.reuse import load_finetuned
from seam.targets import load_target

OUT = Path("metrics/defect_inheritance.json")


def main() -> None:
    params = load_params()
    data = load_target(Path("data/defects/target.pt"))
    adv = torch.load("data/defects/adversarial.pt", map_location="cpu", weights_only=True)
    spec, pretrained, _ = load_pretrained()
    normalize = Normalize(spec.mean, spec.std)
    out = {}
    for flow in ("standard", "seam"):
        model, meta = load_finetuned(Path(f"models/defects/{flow}.pt"), pretrained)
        clean = predict(model, data["test_x"], normalize)
        attacked = predict(model, adv["inputs"], lambda x: x)  # already normalised
        out[flow] = {**defect_metrics(clean, attacked, data["test_y"]), **meta}
    metrics = {
        "acc_standard": out["standard"]["acc"],
        "dir_standard": out["standard"]["dir"],
        "acc_seam": out["seam"]["acc"],
        "dir_seam": out["seam"]["dir"],
        "dir_reduction": out["standard"]["dir"] - out["seam"]["dir"],
        "removed_rate_seam": out["seam"]["removed_rate"],
        "settings": {"model": spec.name, "classes": data["class_names"], "test_images": len(data["test_y"]),
                     "attack": adv["attack"], "dropout": get(params, "defects.dropout", (int, float)),
                     "threshold": get(params, "defects.seam.threshold", (int, float))},
        "standard": out["standard"],
        "seam": out["seam"],
    }
    write_json(metrics, OUT)
    print(f"standard: ACC {metrics['acc_standard']:.4f} DIR {metrics['dir_standard']:.4f}; "
          f"SeaM: ACC {metrics['acc_seam']:.4f} DIR {metrics['dir_seam']:.4f} "
          f"(removed {metrics['removed_rate_seam']:.1%})")


if __name__ == "__main__":
    run_stage(main)
