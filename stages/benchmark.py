"""DVC stage `benchmark`: latency (ms per batch) of the original vs the re-engineered models on
DeepSparse and onnxruntime, and of the compact export on onnxruntime and PyTorch, at the
export's batch (16, the paper's) and, with `benchmark.batch1`, for single images too.

Each comparison runs the two models in turn (A B A B ...) and reports the median of the
per-pair ratios; see `seam.deploy.latency`. The batch-1 ONNX files are exported here, into a
temporary directory, from the same models (and the same compaction) as the export stage's.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from seam.compact import compact
from seam.core.atomic import write_json
from seam.core.stage import run_stage
from seam.core.params import load_params
from seam.deploy.latency import EngineUnavailable, deepsparse_pair, engine_versions, interleaved, onnxruntime_runner
from seam.deploy.onnx import export_onnx
from seam.models.archive import load_exported
from seam.models.pretrained import load_pretrained
from seam.reengineer.artifact import load_reengineered


def torch_runner(model: torch.nn.Module):
    model.eval()

    def run(x: np.ndarray):
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run


def main(pretrained_dir: Path, reengineered_dir: Path, export_dir: Path, out: Path) -> None:
    params = load_params()
    batch = params.export.batch
    cfg = params.benchmark.model_dump(exclude={"num_cores", "batch1"})
    cores = params.benchmark.num_cores
    cores_used = cores or os.cpu_count()
    torch.set_num_threads(cores_used)
    info, original = load_pretrained(pretrained_dir)
    x = np.random.default_rng(params.seed).standard_normal(
        (batch, len(info.mean), info.input_size, info.input_size)).astype(np.float32)  # the same input for every model

    result = {"batch": batch, "cores": cores_used, **cfg, "engines": {**engine_versions(), "torch": torch.__version__},
              "targets": {}}
    single = params.benchmark.batch1 and batch != 1
    with tempfile.TemporaryDirectory() as tmp:
        one = dict(input_size=info.input_size, batch=1, opset=params.export.opset)
        if single:
            export_onnx(original, Path(tmp) / "original.onnx", **one)
        example = torch.zeros(1, len(info.mean), info.input_size, info.input_size)
        for name in params.targets:
            masked = load_reengineered(reengineered_dir / f"{name}.pt", original, info)
            compacted = load_exported(export_dir / f"{name}.compact.pt2")
            entry = engines(export_dir, name, masked, compacted, x, batch, cores, cfg)
            report(name, batch, entry)
            if single:
                export_onnx(masked, Path(tmp) / f"{name}.onnx", **one)
                export_onnx(compact(masked, example)[0], Path(tmp) / f"{name}.compact.onnx", **one)
                entry["batch1"] = engines(Path(tmp), name, masked, compacted, x[:1], 1, cores, cfg)
                report(name, 1, entry["batch1"])
            result["targets"][name] = entry
    write_json(result, out)


def engines(onnx_dir: Path, name: str, masked, compacted, x: np.ndarray, batch: int, cores: int | None,
            cfg: dict) -> dict:
    """Each engine's interleaved comparison for one target at one batch size."""
    original_onnx = onnx_dir / "original.onnx"
    masked_onnx, compact_onnx = onnx_dir / f"{name}.onnx", onnx_dir / f"{name}.compact.onnx"
    entry = {}
    try:
        entry["deepsparse"] = deepsparse_pair(original_onnx, masked_onnx, x, batch=batch, num_cores=cores, **cfg)
    except EngineUnavailable as exc:
        entry["deepsparse"] = f"unavailable: {exc}"
    ort_original = onnxruntime_runner(original_onnx, batch, cores)
    entry["onnxruntime"] = interleaved(ort_original, onnxruntime_runner(masked_onnx, batch, cores), x, **cfg).summary()
    entry["compact_onnxruntime"] = interleaved(ort_original, onnxruntime_runner(compact_onnx, batch, cores), x,
                                               **cfg).summary()
    entry["compact_torch"] = interleaved(torch_runner(masked), torch_runner(compacted), x, **cfg).summary()
    return entry


def report(name: str, batch: int, entry: dict) -> None:
    for engine, summary in entry.items():
        if isinstance(summary, str):
            print(f"{name} {engine}, batch {batch}: {summary}")
        else:
            print(f"{name} {engine}, batch {batch}: {summary['ms_a']:.2f} -> {summary['ms_b']:.2f} ms/batch "
                  f"(median pair ratio {summary['ratio_median']:.3f}, reduction {summary['reduction']:.1%})")


if __name__ == "__main__":
    run_stage(main)
