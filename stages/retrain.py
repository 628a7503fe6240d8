"""DVC stage `retrain@<target>`: the pretrained model's architecture, randomly initialised,
trained from scratch on one target problem (the paper's Table IV baseline)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from seam.core.atomic import write_csv, write_json
from seam.core.device import resolve_device
from seam.core.stage import STATE_DIR, run_stage
from seam.core.params import load_params
from seam.core.resume import ResumeFile
from seam.data.problem import TargetProblem
from seam.models.pretrained import check_images, load_pretrained
from seam.reuse.finetune import FinetuneConfig
from seam.reuse.flows import save_finetuned, standard


def main(target: str, problem_file: Path, pretrained_dir: Path, out: Path, log: Path, timing: Path,
         state_dir: Path = STATE_DIR
         ) -> None:
    params = load_params()
    # One learning rate for every layer: nothing is pretrained, so the output layer gets no boost.
    # (Keys read one by one: adding a target to retrain.targets must not re-run the others.)
    config = FinetuneConfig(lr_hidden=params.retrain.lr, lr_output=params.retrain.lr,
                            momentum=params.retrain.momentum, weight_decay=params.retrain.weight_decay,
                            batch_size=params.retrain.batch_size, max_epochs=params.retrain.max_epochs,
                            early_stop=params.retrain.early_stop, select_on=params.select_on, seed=params.seed)
    device = resolve_device(params.device)
    problem = TargetProblem.load(problem_file)
    info, _ = load_pretrained(pretrained_dir)
    check_images(info, problem, str(problem_file))
    untrained = info.untrained(params.seed)
    rows: list[dict] = []

    def on_epoch(row: dict) -> None:
        rows.append(row)
        write_csv(rows, log)

    print(f"retraining {info.name} from scratch for {target} ({problem.class_names}, {len(problem.train_y)} "
          f"images) on {device}", file=sys.stderr)
    resume = ResumeFile.for_stage(state_dir, f"retrain-{target}", device=device, inputs=(problem_file,),
                                  config=config.model_dump(), model=info.sha256)
    start = time.perf_counter()
    model, summary = standard(untrained, info.final_layer(), problem, mean=info.mean, std=info.std, config=config,
                              dropout=0.0, device=device, on_epoch=on_epoch, resume=resume)
    seconds = time.perf_counter() - start
    save_finetuned(out, model, {
        "flow": "retrain", "target": target, "model": info.name, "model_sha256": info.sha256,
        "classifier": info.final_layer(), "num_classes": problem.num_classes, "dropout": 0.0, **summary})
    write_json({"seconds": round(seconds, 1), "epochs_run": summary["epochs_run"], "device": str(device)}, timing)
    resume.clear()
    best = rows[summary["best_epoch"]]
    print(f"{target}: kept epoch {summary['best_epoch']} of {summary['epochs_run']} "
          f"({config.select_on} acc {best[config.select_on + '_acc']:.4f}) in {seconds:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
