"""DVC stage `export`: ONNX files of the original model and, per target, of the re-engineered
(masked) model and of its compact dense version; each re-engineered model as a standalone
torch.export archive (`<target>.pt2`, class names and normalisation inside), and the compact
model as one (`<target>.compact.pt2`) for the flops and benchmark stages. Both archives and
the compact model must predict what the masked model does on the target's whole test split."""

from __future__ import annotations

from pathlib import Path

import torch

from seam.compact import CompactError, compact
from seam.core.atomic import write_json
from seam.core.stage import run_stage
from seam.core.params import load_params
from seam.data.augment import Normalize
from seam.data.problem import TargetProblem
from seam.deploy.onnx import export_onnx
from seam.models.archive import load_exported, save_exported
from seam.models.pretrained import load_pretrained
from seam.reengineer.accuracy import predict
from seam.reengineer.artifact import load_reengineered


def check_same(masked, other, problem: TargetProblem, normalize, what: str, atol: float = 1e-4) -> dict:
    """Same argmax on every test image and logits within `atol`, or CompactError."""
    a = predict(masked, problem.test_x, normalize)
    b = predict(other, problem.test_x, normalize)
    max_diff = (a - b).abs().max().item()
    same = int((a.argmax(1) == b.argmax(1)).sum())
    if same != len(a) or max_diff > atol:
        raise CompactError(f"{problem.name}: the {what} disagrees with the masked model on the test split "
                           f"({len(a) - same} of {len(a)} predictions differ, max logit difference {max_diff:.3g})")
    return {"test_images": len(a), "identical_predictions": same, "max_logit_diff": max_diff}


def main(prepared_dir: Path, pretrained_dir: Path, reengineered_dir: Path, out_dir: Path, report_file: Path) -> None:
    params = load_params()
    info, original = load_pretrained(pretrained_dir)
    shape = dict(input_size=info.input_size, batch=params.export.batch, opset=params.export.opset)
    report = {"original": export_onnx(original, out_dir / "original.onnx", **shape), "targets": {}}
    normalize = Normalize(info.mean, info.std)
    example = torch.zeros(1, len(info.mean), info.input_size, info.input_size)
    for name in params.targets:
        problem = TargetProblem.load(prepared_dir / f"{name}.pt")
        masked = load_reengineered(reengineered_dir / f"{name}.pt", original, info)
        meta = {"model": info.name, "target": name, "class_names": problem.class_names, "mean": list(info.mean),
                "std": list(info.std), "input_size": info.input_size, "input": "(x - mean) / std, x in [0, 1], NCHW"}
        save_exported(masked, example, out_dir / f"{name}.pt2", meta)
        compacted, summary = compact(masked, example)
        save_exported(compacted, example, out_dir / f"{name}.compact.pt2")
        report["targets"][name] = {
            "masked": export_onnx(masked, out_dir / f"{name}.onnx", meta=meta, **shape),
            "compact": export_onnx(compacted, out_dir / f"{name}.compact.onnx", meta=meta, **shape),
            "standalone_check": check_same(masked, load_exported(out_dir / f"{name}.pt2"), problem, normalize,
                                           "standalone archive"),
            "compact_check": check_same(masked, load_exported(out_dir / f"{name}.compact.pt2"), problem, normalize,
                                        "compact model"),
            "compact_summary": summary,
        }
        print(f"{name}: exported the masked model (ONNX, standalone .pt2) and its compact version; predictions "
              f"identical on {report['targets'][name]['compact_check']['test_images']} test images")
    write_json(report, report_file)


if __name__ == "__main__":
    run_stage(main)
