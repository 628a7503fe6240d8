"""DVC stage `benchmark`: latency (ms per batch) of the original vs the re-engineered models on
DeepSparse and onnxruntime, and of the compact export on onnxruntime and PyTorch.

Each comparison runs the two models in turn (A B A B ...) and reports the median of the
per-pair ratios; see `seam.latency`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from seam.atomic import write_json
from seam.errors import run_stage
from seam.exported import load_exported
from seam.latency import EngineUnavailable, deepsparse_runner, engine_versions, interleaved, onnxruntime_runner
from seam.params import load_params
from seam.pretrained import load_pretrained, load_reengineered


def torch_runner(model: torch.nn.Module):
    model.eval()

    def run(x: np.ndarray):
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run


def main(pretrained_dir: Path, reengineered_dir: Path, export_dir: Path, out: Path) -> None:
    params = load_params()
    batch = params.export.batch
    cfg = params.benchmark.model_dump(exclude={"num_cores"})
    cores = params.benchmark.num_cores
    cores_used = cores or os.cpu_count()
    torch.set_num_threads(cores_used)
    info, original = load_pretrained(pretrained_dir)
    x = np.random.default_rng(params.seed).standard_normal(
        (batch, len(info.mean), info.input_size, info.input_size)).astype(np.float32)  # the same input for every model

    result = {"batch": batch, "cores": cores_used, **cfg, "engines": {**engine_versions(), "torch": torch.__version__},
              "targets": {}}
    for name in params.targets:
        original_onnx = export_dir / "original.onnx"
        masked_onnx, compact_onnx = export_dir / f"{name}.onnx", export_dir / f"{name}.compact.onnx"
        entry = {}
        try:
            entry["deepsparse"] = interleaved(deepsparse_runner(original_onnx, batch, cores),
                                              deepsparse_runner(masked_onnx, batch, cores), x, **cfg).summary()
        except EngineUnavailable as exc:
            entry["deepsparse"] = f"unavailable: {exc}"
        ort_original = onnxruntime_runner(original_onnx, batch, cores)
        entry["onnxruntime"] = interleaved(ort_original, onnxruntime_runner(masked_onnx, batch, cores), x, **cfg).summary()
        entry["compact_onnxruntime"] = interleaved(ort_original, onnxruntime_runner(compact_onnx, batch, cores), x,
                                                   **cfg).summary()
        masked = load_reengineered(reengineered_dir / f"{name}.pt", original, info)
        compacted = load_exported(export_dir / f"{name}.compact.pt2")
        entry["compact_torch"] = interleaved(torch_runner(masked), torch_runner(compacted), x, **cfg).summary()
        result["targets"][name] = entry
        for engine, summary in entry.items():
            if isinstance(summary, str):
                print(f"{name} {engine}: {summary}")
            else:
                print(f"{name} {engine}: {summary['ms_a']:.2f} -> {summary['ms_b']:.2f} ms/batch "
                      f"(median pair ratio {summary['ratio_median']:.3f}, reduction {summary['reduction']:.1%})")
    write_json(result, out)


if __name__ == "__main__":
    run_stage(main)
