"""DVC stage `export`: ONNX files of the original model and, per target, of the re-engineered
(masked) model and of its compact dense version, and the compact model as a torch.export
archive (`<target>.compact.pt2`) for the flops and benchmark stages. The compact model must
predict exactly what the masked one does on the target's test split."""

from __future__ import annotations

from pathlib import Path

import torch

from seam.accuracy import predict
from seam.atomic import write_json
from seam.augment import Normalize
from seam.compact import CompactError, compact
from seam.errors import run_stage
from seam.export import export_onnx
from seam.exported import save_compact
from seam.params import load_params
from seam.pretrained import load_pretrained, load_reengineered
from seam.problem import TargetProblem


def check_compact(masked, compacted, problem: TargetProblem, normalize, atol: float = 1e-4) -> dict:
    """Same argmax on every test image and logits within `atol`, or CompactError."""
    a = predict(masked, problem.test_x, normalize)
    b = predict(compacted, problem.test_x, normalize)
    max_diff = (a - b).abs().max().item()
    same = int((a.argmax(1) == b.argmax(1)).sum())
    if same != len(a) or max_diff > atol:
        raise CompactError(f"{problem.name}: compact model disagrees with the masked model on the test split "
                           f"({len(a) - same} of {len(a)} predictions differ, max logit difference {max_diff:.3g})")
    return {"test_images": len(a), "identical_predictions": same, "max_logit_diff": max_diff}


def main(prepared_dir: Path, pretrained_dir: Path, reengineered_dir: Path, out_dir: Path, report_file: Path) -> None:
    params = load_params()
    spec, original, info = load_pretrained(pretrained_dir)
    shape = dict(input_size=spec.input_size, batch=params.export.batch, opset=params.export.opset)
    report = {"original": export_onnx(original, out_dir / "original.onnx", **shape), "targets": {}}
    normalize = Normalize(spec.mean, spec.std)
    example = torch.zeros(1, 3, spec.input_size, spec.input_size)
    for name in params.targets:
        masked = load_reengineered(reengineered_dir / f"{name}.pt", original, info)
        compacted, summary = compact(masked, example)
        report["targets"][name] = {
            "masked": export_onnx(masked, out_dir / f"{name}.onnx", **shape),
            "compact": export_onnx(compacted, out_dir / f"{name}.compact.onnx", **shape),
            "compact_check": check_compact(masked, compacted, TargetProblem.load(prepared_dir / f"{name}.pt"),
                                           normalize),
            "compact_summary": summary,
        }
        save_compact(compacted, example, out_dir / f"{name}.compact.pt2")
        print(f"{name}: exported masked and compact models; compact predictions identical on "
              f"{report['targets'][name]['compact_check']['test_images']} test images")
    write_json(report, report_file)


if __name__ == "__main__":
    run_stage(main)
