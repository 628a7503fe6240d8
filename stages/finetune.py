"""DVC stages `finetune_standard` and `finetune_seam`: reuse the pretrained model on the
defect-inheritance target by standard fine-tuning, or by SeaM's three-step flow."""

from __future__ import annotations

import sys
from pathlib import Path

from seam.atomic import write_csv
from seam.device import resolve_device
from seam.errors import run_stage
from seam.finetune import FinetuneConfig
from seam.params import ParamsError, get, load_params
from seam.pretrained import check_images, load_pretrained
from seam.reuse import save_finetuned, seam_flow, standard
from seam.search import SearchConfig
from seam.targets import load_target

DATA = Path("data/defects/target.pt")
NUMBER = (int, float)
FINETUNE_KEYS = {"lr_hidden": NUMBER, "lr_output": NUMBER, "momentum": NUMBER, "weight_decay": NUMBER,
                 "batch_size": int, "max_epochs": int, "early_stop": int}


def main(flow: str) -> None:
    if flow not in ("standard", "seam"):
        raise ParamsError(f"unknown fine-tuning flow {flow!r} (standard or seam)")
    params = load_params()
    seed = get(params, "seed", int)
    select_on = get(params, "reengineer.select_on", str)
    try:
        config = FinetuneConfig(**{k: get(params, f"defects.finetune.{k}", t) for k, t in FINETUNE_KEYS.items()},
                                select_on=select_on, seed=seed)
        dropout = float(get(params, "defects.dropout", NUMBER))
        device = resolve_device(get(params, "reengineer.device", str))
        if flow == "seam":
            head_config = FinetuneConfig(**{**config.__dict__, "train_only_output": True,
                                            "lr_output": get(params, "defects.seam.lr_step1", NUMBER),
                                            "max_epochs": get(params, "defects.seam.head_epochs", int)})
            search_config = SearchConfig(
                alpha=float(get(params, "defects.seam.alpha", NUMBER)),
                lr_mask=get(params, "defects.seam.lr_mask", NUMBER),
                lr_head=get(params, "defects.seam.lr_output", NUMBER),
                batch_size=config.batch_size, max_epochs=get(params, "defects.seam.max_epochs", int),
                early_stop=0, select_on=select_on,
                stop_at_removed=get(params, "defects.seam.threshold", NUMBER), seed=seed)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ParamsError):
            raise
        raise ParamsError(f"params.yaml: defects: {exc}") from exc
    data = load_target(DATA)
    spec, pretrained, info = load_pretrained()
    check_images(spec, data, str(DATA))
    rows: list[dict] = []
    log = Path(f"plots/defects/{flow}.csv")

    def on_epoch(step: str, row: dict) -> None:
        rows.append({"step": step, **row})
        write_csv(rows, log)

    common = dict(mean=spec.mean, std=spec.std, config=config, dropout=dropout, device=device)
    print(f"fine-tuning ({flow}) {spec.name} on {data['class_names']} ({len(data['train_y'])} images) on {device}",
          file=sys.stderr)
    if flow == "standard":
        model, summary = standard(pretrained, spec.classifier, data, on_epoch=lambda r: on_epoch("finetune", r),
                                  **common)
    else:
        model, summary = seam_flow(pretrained, spec.classifier, data, head_config=head_config,
                                   search_config=search_config, on_epoch=on_epoch, **common)
    save_finetuned(Path(f"models/defects/{flow}.pt"), model, {
        "flow": flow, "model": spec.name, "model_sha256": info["sha256"], "classifier": spec.classifier,
        "num_classes": len(data["class_names"]), "dropout": dropout, **summary})
    print(f"{flow}: {summary}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python stages/finetune.py standard|seam")
    run_stage(main, sys.argv[1])
