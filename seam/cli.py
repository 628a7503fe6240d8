"""`seam` command line: inspect the model registry and re-engineering artifacts.

The pipeline itself runs through DVC (`dvc repro`); these commands help around it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def models() -> None:
    """List the pretrained models the registry knows."""
    from seam.registry import REGISTRY

    for spec in REGISTRY.values():
        digest = spec.sha256[:16] if spec.sha256 else f"{spec.sha256_prefix}… (prefix)"
        typer.echo(f"{spec.name:<18} {spec.num_classes:>4} classes {spec.input_size:>4}px  sha256 {digest:<17}  {spec.url}")


@app.command()
def fetch(
    name: str = typer.Argument(..., help="registry name, e.g. resnet20"),
    dest: Path = typer.Argument(..., help="file to write"),
    mirror: Optional[str] = typer.Option(None, help="directory or file holding the upstream file (offline)"),
) -> None:
    """Download (or copy from a mirror) a pretrained checkpoint, verifying its hash."""
    from seam.fetch import fetch_model

    typer.echo(fetch_model(name, dest, mirror=mirror))


@app.command()
def info(artifact: Path = typer.Argument(..., help="models/reengineered/<target>.pt")) -> None:
    """Summarise a re-engineering artifact: model, target, weights kept, selected epoch."""
    from seam.artifact import load_artifact
    from seam.masking import count_kept

    art = load_artifact(artifact)
    meta = art["meta"]
    kept, total = count_kept(art["masks"])
    target = meta["target"]
    typer.echo(f"model     {meta['model']} (sha256 {meta['model_sha256'][:12]})")
    typer.echo(f"target    {target['name']}: {target['kind']} {target['class_names']}")
    typer.echo(f"kept      {kept} / {total} weights ({kept / total:.2%})")
    typer.echo(f"selected  epoch {meta['selected_epoch']} of {meta['epochs_run']} "
               f"(reached the original's accuracy: {meta['reached_target']})")
    typer.echo(f"search    {meta['search']}")


if __name__ == "__main__":
    app()
