"""DVC stages `finetune_standard`, `finetune_remos` and `finetune_seam`: reuse the pretrained
model on the defect-inheritance target by standard fine-tuning, by ReMoS (slice, then
fine-tune) or by SeaM's three-step flow."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

from seam.core.atomic import write_csv
from seam.core.device import resolve_device
from seam.core.stage import STATE_DIR, run_stage
from seam.core.params import load_params
from seam.core.resume import ResumeFile
from seam.data.problem import TargetProblem
from seam.models.pretrained import check_images, load_pretrained
from seam.reengineer.search import SearchConfig
from seam.reuse.finetune import FinetuneConfig
from seam.reuse.flows import save_finetuned, seam_flow, standard
from seam.reuse.remos import remos_flow


class Flow(str, Enum):
    standard = "standard"
    remos = "remos"
    seam = "seam"


def main(flow: Flow, problem_file: Path, pretrained_dir: Path, out: Path, log: Path,
         state_dir: Path = STATE_DIR
         ) -> None:
    params = load_params()
    dropout = params.defects.dropout
    config = FinetuneConfig(**params.defects.finetune.model_dump(), select_on=params.select_on, seed=params.seed)
    device = resolve_device(params.device)
    problem = TargetProblem.load(problem_file)
    info, pretrained = load_pretrained(pretrained_dir)
    check_images(info, problem, str(problem_file))
    classifier = info.final_layer()
    rows: list[dict] = []

    def on_epoch(step: str, row: dict) -> None:
        rows.append({"step": step, **row})
        write_csv(rows, log)

    # Saved after every epoch; a rerun of this very run (same params, inputs, code) continues it.
    own = {Flow.standard: None, Flow.remos: params.defects.remos, Flow.seam: params.defects.seam}[flow]
    resume = ResumeFile.for_stage(state_dir, f"finetune-{flow.value}", device=device, inputs=(problem_file,),
                                  config=config.model_dump(), dropout=dropout, flow=own and own.model_dump(),
                                  model=info.sha256)
    common = dict(mean=info.mean, std=info.std, config=config, dropout=dropout, device=device, resume=resume)
    print(f"fine-tuning ({flow.value}) {info.name} on {problem.class_names} ({len(problem.train_y)} images) "
          f"on {device}", file=sys.stderr)
    if flow is Flow.standard:
        model, summary = standard(pretrained, classifier, problem, on_epoch=lambda r: on_epoch("finetune", r),
                                  **common)
    elif flow is Flow.remos:
        model, summary = remos_flow(pretrained, classifier, problem, **params.defects.remos.model_dump(),
                                    on_epoch=on_epoch, **common)
    else:
        step1, step2 = params.defects.seam.output_layer, params.defects.seam.reengineer
        head_config = config.model_copy(update={"train_only_output": True, **step1.model_dump()})
        search_config = SearchConfig(**step2.model_dump(exclude={"threshold"}), select_on=params.select_on,
                                     seed=params.seed)
        model, summary = seam_flow(pretrained, classifier, problem, head_config=head_config,
                                   search_config=search_config, threshold=step2.threshold, on_epoch=on_epoch, **common)
    save_finetuned(out, model, {
        "flow": flow.value, "model": info.name, "model_sha256": info.sha256, "classifier": classifier,
        "num_classes": problem.num_classes, "dropout": dropout, **summary})
    resume.clear()
    per_layer = summary.pop("removed_per_layer", {})
    for name, share in per_layer.items():
        print(f"  removed {share:6.1%} of {name}", file=sys.stderr)
    print(f"{flow.value}: " + ", ".join(f"{k} {v}" for k, v in summary.items()), file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
