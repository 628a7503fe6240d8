"""DVC stage `export`: ONNX files of the original model and, per target, of the re-engineered
(masked) model and of its compact dense version; the compact model must predict exactly
what the masked one does on the target's test split."""

from __future__ import annotations

from pathlib import Path

import torch

from seam.accuracy import predict
from seam.atomic import write_json
from seam.augment import Normalize
from seam.compact import CompactError, compact
from seam.errors import run_stage
from seam.export import export_onnx
from seam.params import get, load_params
from seam.pretrained import load_pretrained, load_reengineered
from seam.targets import load_target

OUT = Path("models/onnx")
REPORT = Path("results/export.json")


def check_compact(masked, compacted, data: dict, normalize, name: str, atol: float = 1e-4) -> dict:
    """Same argmax on every test image and logits within `atol`, or CompactError."""
    a = predict(masked, data["test_x"], normalize)
    b = predict(compacted, data["test_x"], normalize)
    max_diff = (a - b).abs().max().item()
    same = int((a.argmax(1) == b.argmax(1)).sum())
    if same != len(a) or max_diff > atol:
        raise CompactError(f"{name}: compact model disagrees with the masked model on the test split "
                           f"({len(a) - same} of {len(a)} predictions differ, max logit difference {max_diff:.3g})")
    return {"test_images": len(a), "identical_predictions": same, "max_logit_diff": max_diff}


def main() -> None:
    params = load_params()
    batch = get(params, "export.batch", int)
    opset = get(params, "export.opset", int)
    spec, original, info = load_pretrained()
    shape = dict(input_size=spec.input_size, batch=batch, opset=opset)
    report = {"original": export_onnx(original, OUT / "original.onnx", **shape), "targets": {}}
    normalize = Normalize(spec.mean, spec.std)
    for name in get(params, "targets", dict):
        masked = load_reengineered(name, original, info)
        compacted, summary = compact(masked, torch.zeros(1, 3, spec.input_size, spec.input_size))
        report["targets"][name] = {
            "masked": export_onnx(masked, OUT / f"{name}.onnx", **shape),
            "compact": export_onnx(compacted, OUT / f"{name}.compact.onnx", **shape),
            "compact_check": check_compact(masked, compacted, load_target(Path("data/prepared") / f"{name}.pt"),
                                           normalize, name),
            "compact_summary": summary,
        }
        print(f"{name}: exported masked and compact models; compact predictions identical on "
              f"{report['targets'][name]['compact_check']['test_images']} test images")
    write_json(report, REPORT)


if __name__ == "__main__":
    run_stage(main)
