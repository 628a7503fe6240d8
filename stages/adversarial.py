"""DVC stage `adversarial`: the malicious inputs S^M, generated ONCE from the pretrained
feature extractor (advertorch LinfPGDAttack + the ReMos feature loss) on the defect
target's test split, so every fine-tuned model is attacked with the same inputs."""

from __future__ import annotations

from pathlib import Path

from seam.core.atomic import save_torch
from seam.core.device import resolve_device
from seam.core.stage import run_stage
from seam.core.params import load_params
from seam.data.problem import TargetProblem
from seam.models.pretrained import check_images, load_pretrained
from seam.reuse.attack import feature_extractor, generate_adversarial


def main(problem_file: Path, pretrained_dir: Path, out: Path) -> None:
    params = load_params()
    problem = TargetProblem.load(problem_file)
    info, pretrained = load_pretrained(pretrained_dir)
    check_images(info, problem, str(problem_file))
    attack = params.defects.attack.model_dump(exclude={"clip"})
    clip = tuple(params.defects.attack.clip)
    adv = generate_adversarial(feature_extractor(pretrained, info.final_layer()), problem.test_x, mean=info.mean,
                               std=info.std, clip=clip, seed=params.seed, device=resolve_device(params.device),
                               **attack)
    save_torch({"inputs": adv, "labels": problem.test_y, "attack": {**attack, "clip": list(clip)}}, out)
    print(f"{len(adv)} adversarial test inputs (eps {attack['eps']}, {attack['nb_iter']} PGD steps)")


if __name__ == "__main__":
    run_stage(main)
