"""DVC stage `flops`: FLOPs for one image (fvcore) and weights kept, original vs re-engineered
(only multiplications with non-zero weights count, the paper's Table V rule) vs compact."""

from __future__ import annotations

from pathlib import Path

import torch

from seam.core.atomic import write_json
from seam.core.stage import run_stage
from seam.core.params import load_params
from seam.deploy.flops import count_flops, count_weights
from seam.models.archive import ExportedModelError, InferenceModule, load_exported
from seam.models.masks import maskable_tensors
from seam.models.pretrained import load_pretrained
from seam.reengineer.artifact import load_reengineered

# ReengineeredModel's new head: torch.export keeps module paths as tensor names (original.*, head.*).
HEAD = "head."


def compact_weights(compacted: InferenceModule, path: Path) -> int:
    """Entries of the compact model's conv/linear weights and biases, its new head left out:
    ``weights_total``'s rule (Table I) applied to the model a user deploys.

    Counted as ``count_weights`` counts: every tensor the graph uses as a conv/linear weight
    or bias, shared ones once. That includes a folded conv's ``const_kernel`` (what removed
    constant channels contribute): the compact model stores it and multiplies with it.
    """
    network: dict[int, torch.Tensor] = {}  # by id: a tensor two layers share counts once
    head: dict[int, torch.Tensor] = {}
    for name, module, pname in maskable_tensors(compacted.module):
        tensor = getattr(module, pname)
        (head if name.startswith(HEAD) else network)[id(tensor)] = tensor
    if not head:
        # Without the names the head would be counted silently; fail instead.
        raise ExportedModelError(f"{path}: no conv/linear tensor named {HEAD}* (the new head), so weights_compact "
                                 "cannot leave it out; was this archive exported from a re-engineered model?")
    return sum(t.numel() for t in network.values())


def main(pretrained_dir: Path, reengineered_dir: Path, export_dir: Path, out: Path) -> None:
    params = load_params()
    info, original = load_pretrained(pretrained_dir)
    size = info.input_size
    flops_original = count_flops(original, size)
    _, weights_original = count_weights(original)
    per_target = {}
    for name in params.targets:
        masked = load_reengineered(reengineered_dir / f"{name}.pt", original, info)
        compacted = load_exported(export_dir / f"{name}.compact.pt2")
        kept, total = count_weights(masked.original)  # Table I: the head is not counted
        flops_re = count_flops(masked, size, nonzero_only=True)
        flops_compact = count_flops(compacted, size)
        per_target[name] = {
            "flops_original": flops_original,
            "flops_reengineered": flops_re,
            "flops_reduction": 1 - flops_re / flops_original,
            "flops_compact": flops_compact,
            "flops_compact_reduction": 1 - flops_compact / flops_original,
            "weights_original": weights_original,
            "weights_kept": kept,
            "weights_total": total,
            "params_compact": sum(p.numel() for p in compacted.parameters()),
            "weights_compact": compact_weights(compacted, export_dir / f"{name}.compact.pt2"),
        }
        t = per_target[name]
        print(f"{name}: FLOPs {flops_original / 1e6:.2f}M -> {flops_re / 1e6:.2f}M masked "
              f"({t['flops_reduction']:.1%} less), {flops_compact / 1e6:.2f}M compact; weights kept {kept}/{total}, "
              f"compact {t['weights_compact']}")
    write_json({"model": info.name, "input_size": size, "targets": per_target}, out)


if __name__ == "__main__":
    run_stage(main)
