"""DVC stage `adversarial`: the malicious inputs S^M, generated ONCE from the pretrained
feature extractor (advertorch LinfPGDAttack + the ReMos feature loss) on the defect
target's test split, so every fine-tuned model is attacked with the same inputs."""

from __future__ import annotations

from pathlib import Path

from seam.adversarial import feature_extractor, generate_adversarial
from seam.atomic import save_torch
from seam.device import resolve_device
from seam.errors import run_stage
from seam.params import get, load_params
from seam.pretrained import check_images, load_pretrained
from seam.targets import load_target

DATA = Path("data/defects/target.pt")
OUT = Path("data/defects/adversarial.pt")
NUMBER = (int, float)


def main() -> None:
    params = load_params()
    data = load_target(DATA)
    spec, pretrained, _ = load_pretrained()
    check_images(spec, data, str(DATA))
    attack = {k: get(params, f"defects.attack.{k}", t)
              for k, t in {"eps": NUMBER, "nb_iter": int, "eps_iter": NUMBER, "batch_size": int}.items()}
    clip = tuple(get(params, "defects.attack.clip", list))
    adv = generate_adversarial(feature_extractor(pretrained, spec.classifier), data["test_x"], mean=spec.mean,
                               std=spec.std, clip=clip, seed=get(params, "seed", int),
                               device=resolve_device(get(params, "reengineer.device", str)), **attack)
    save_torch({"inputs": adv, "labels": data["test_y"], "attack": {**attack, "clip": list(clip)}}, OUT)
    print(f"{len(adv)} adversarial test inputs (eps {attack['eps']}, {attack['nb_iter']} PGD steps)")


if __name__ == "__main__":
    run_stage(main)
