"""DVC stage `reengineer@<target>`: search the mask and head for one target problem."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from seam.core.atomic import write_csv, write_json
from seam.core.device import resolve_device
from seam.core.stage import STATE_DIR, run_stage
from seam.core.params import ParamsError, load_params
from seam.core.resume import ResumeFile
from seam.data.problem import TargetProblem
from seam.models.pretrained import load_pretrained
from seam.reengineer.artifact import save_artifact
from seam.reengineer.search import SearchConfig, search
from seam.reengineer.stopping import AccuracyTarget


def main(target: str, problem_file: Path, pretrained_dir: Path, out: Path, log: Path, timing: Path,
         state_dir: Path = STATE_DIR
         ) -> None:
    params = load_params()
    if target not in params.targets:
        raise ParamsError(f"params.yaml: no target {target!r} under 'targets' (have {sorted(params.targets)})")
    alpha, p = params.search_settings(target)  # the target's own `reengineer:` keys over the section's
    config = SearchConfig(**p.model_dump(), alpha=alpha, select_on=params.select_on, seed=params.seed)
    device = resolve_device(params.device)
    problem = TargetProblem.load(problem_file)
    info, original = load_pretrained(pretrained_dir)
    torch.set_float32_matmul_precision("high")  # TF32 on GPUs that have it; no effect on the CPU

    rows: list[dict] = []

    def on_epoch(row: dict) -> None:
        rows.append(row)
        write_csv(rows, log)  # rewritten each epoch, so a long run can be watched

    # Several targets in parallel (`dvc queue start -j N`) share the cores: OMP_NUM_THREADS sets each one's share.
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"re-engineering {info.name} for {target} ({problem.class_names}) on {device}{threads}", file=sys.stderr)
    # Saved after every epoch; a rerun of this very run (same effective settings, inputs, code) continues
    # it, or, once it has finished, restores its outputs: DVC re-runs every search when a param of the
    # section changes, also where a target's own settings override that param.
    resume = ResumeFile.for_stage(state_dir, f"reengineer-{target}", device=device, inputs=(problem_file,),
                                  config=config.model_dump(), model=info.sha256)
    if resume.restore_outputs(out, log, timing):
        print(f"{target}: the last search had the same settings, inputs and code: its outputs restored",
              file=sys.stderr)
        return
    start = time.perf_counter()
    result = search(original, problem, mean=info.mean, std=info.std, config=config,
                    stop=AccuracyTarget.factory(config.early_stop), device=device, on_epoch=on_epoch,
                    source_outputs=info.source_outputs(problem), resume=resume)
    seconds = time.perf_counter() - start
    save_artifact(
        out,
        masks=result.masks,
        head=result.head,
        weights=result.weights,
        meta={
            "model": info.name,
            "model_sha256": info.sha256,
            "num_outputs": info.num_classes,
            "target": {"name": problem.name, "kind": problem.kind, "source_classes": problem.source_classes,
                       "class_names": problem.class_names, "dataset": problem.dataset},
            "search": config.model_dump(),
            "selected_epoch": result.selected_epoch,
            "epochs_run": len(result.history),
            "reached_target": result.reached_target,
            "acc_original": result.acc_original,
        },
    )
    # How long it took lives beside the artifact, not in it: an unchanged result keeps its
    # bytes, so DVC re-runs nothing downstream of a forced re-run.
    write_json({"seconds": round(seconds, 1), "epochs_run": len(result.history), "device": str(device),
                "threads": torch.get_num_threads()}, timing)
    resume.clear()
    resume.keep_outputs(out, log, timing)
    sel = result.history[result.selected_epoch]
    print(f"{target}: kept epoch {result.selected_epoch} of {len(result.history)} "
          f"(retention {sel['retention']:.4f}, {config.select_on} acc {sel[config.select_on + '_acc']:.4f} "
          f"vs original {result.acc_original[config.select_on]:.4f}) in {seconds:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
