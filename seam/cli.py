"""`seam` command line: inspect the model registry and re-engineering artifacts, classify images.

The pipeline itself runs through DVC (`dvc repro`); these commands help around it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import typer

from seam.core.errors import SeamError, one_line_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def command(fn: Callable[..., None]) -> Callable[..., None]:
    """Register a `seam` command whose bad input (a SeamError) ends it with one line."""
    return app.command()(one_line_errors(fn))


@command
def models() -> None:
    """List the pretrained models the registry knows."""
    from seam.models.registry import REGISTRY

    for spec in REGISTRY.values():
        digest = spec.sha256[:16] if spec.sha256 else f"{spec.sha256_prefix}… (prefix)"
        typer.echo(f"{spec.name:<18} {spec.num_classes:>4} classes {spec.input_size:>4}px  sha256 {digest:<17}  {spec.url}")


@command
def fetch(
    name: str = typer.Argument(..., help="registry name, e.g. resnet20"),
    dest: Path = typer.Argument(..., help="file to write"),
    mirror: Optional[str] = typer.Option(None, help="directory or file holding the upstream file (offline)"),
) -> None:
    """Download (or copy from a mirror) a pretrained checkpoint, verifying its hash."""
    from seam.models.fetch import fetch_model

    typer.echo(fetch_model(name, dest, mirror=mirror))


@command
def info(
    artifact: Path = typer.Argument(..., help="models/reengineered/<target>.pt"),
    pretrained: Path = typer.Option(Path("models/pretrained"), help="the original model, to verify it too"),
) -> None:
    """Summarise a re-engineering artifact (model, target, weights kept, selected epoch) after
    verifying its content, and the checkpoint it needs where that folder exists."""
    import json

    from seam.core.download import cached_sha256
    from seam.models.masks import count_kept
    from seam.models.pretrained import PretrainedModel
    from seam.reengineer.artifact import load_artifact

    art = load_artifact(artifact)  # refuses an altered file
    meta = art["meta"]
    kept, total = count_kept(art["masks"])
    target = meta["target"]
    typer.echo(f"model     {meta['model']} (sha256 {meta['model_sha256'][:12]})")
    typer.echo(f"target    {target['name']}: {target['kind']} {target['class_names']}")
    typer.echo(f"kept      {kept} / {total} weights ({kept / total:.2%})")
    typer.echo(f"selected  epoch {meta['selected_epoch']} of {meta['epochs_run']} "
               f"(reached the original's accuracy: {meta['reached_target']})")
    typer.echo(f"search    {meta['search']}")
    typer.echo(f"verified  content (sha256 {art['digest'][:12]})")
    record = pretrained / "model.json"
    if record.is_file():
        checkpoint = pretrained / PretrainedModel(**json.loads(record.read_text())).file
        actual = cached_sha256(checkpoint) if checkpoint.is_file() else "missing"
        if actual != meta["model_sha256"]:
            raise SeamError(f"{checkpoint}: sha256 {actual[:12]}, but {artifact} was searched on "
                            f"{meta['model_sha256'][:12]} (a different or altered checkpoint)")
        typer.echo(f"verified  checkpoint {checkpoint}")
    else:
        typer.echo(f"          checkpoint not checked ({record} not found; --pretrained names it)")


def _names(option: str | None) -> list[str] | None:
    return None if option == "all" else [n.strip() for n in option.split(",") if n.strip()]


@command
def targets(
    binary: Optional[str] = typer.Option(None, help="'all' or class names (comma-separated): one class-vs-rest target each"),
    superclass: Optional[str] = typer.Option(None, help="'all' or CIFAR-100 superclass names: one target each"),
    only: bool = typer.Option(False, "--only", help="replace the existing targets instead of adding to them"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the targets, write nothing"),
    names: bool = typer.Option(False, "--names", help="print only the names, one per line (for shell loops)"),
    params: Path = typer.Option(Path("params.yaml"), help="the params file to update"),
    raw: Path = typer.Option(Path("data/raw"), help="the downloaded dataset, for its class names"),
) -> None:
    """Write a grid of target problems into params.yaml, one entry (and one DVC stage) per target.

    DVC expands `foreach` from the literal params, so a grid is written out here rather than
    computed at run time: `seam targets --binary all` adds `airplane: binary`, ... for every
    class of the downloaded dataset. Without options: list the targets.
    """
    import yaml

    from seam.core.params import load_params
    from seam.core.paramsfile import update_params
    from seam.data.sources import dataset_classes
    from seam.data.targets import expand_short, target_grid

    current = load_params(params)
    grid: dict[str, str] = {}
    if binary is not None or superclass is not None:
        classes, coarse = dataset_classes(current.dataset, raw)
        if binary is not None:
            grid |= target_grid("binary", _names(binary), classes)
        if superclass is not None:
            if coarse is None:
                raise SeamError(f"--superclass: dataset {current.dataset.name!r} has no superclasses (CIFAR-100 only)")
            grid |= target_grid("superclass", _names(superclass), coarse)
    added = {k: v for k, v in grid.items() if only or k not in current.targets}
    if dry_run or not grid:
        for name, spec in (added if only else current.targets | added).items():
            if names:
                typer.echo(name)
                continue
            typer.echo(yaml.safe_dump({name: expand_short(name, spec)}, default_flow_style=None, width=4096).strip())
        return
    # adding merges key by key, so existing entries keep their layout and comments
    result = update_params(params, {"targets": added}, replace={"targets"} if only else set())
    typer.echo(f"{params}: {len(result.targets)} targets ({len(added)} written): {', '.join(result.targets)}")


@command
def profile(
    name: Optional[str] = typer.Argument(None, help="a file name in the profiles folder, without .yaml"),
    params: Path = typer.Option(Path("params.yaml"), help="the params file to update"),
    folder: Path = typer.Option(Path("profiles"), help="where the profiles live"),
) -> None:
    """Apply a paper profile (one row of Tables I/II/V/VI) to params.yaml; without a name, list them.

    A profile is an overlay: it names only the keys whose values differ from
    the committed params.yaml. Applying it writes those keys into params.yaml
    (mappings merged key by key, `targets` replaced whole); every key it does
    not name keeps the value params.yaml has now, so values left by another
    profile or your own edits stay. Start from the committed file
    (`git checkout params.yaml`) to get exactly the paper's row.
    """
    from seam.core.paramsfile import read_yaml, update_params

    files = sorted(folder.glob("*.yaml"))
    if name is None:
        for f in files:
            head = f.read_text().splitlines()[0].lstrip("# ")
            typer.echo(f"{f.stem:<32} {head}")
        return
    path = folder / f"{name}.yaml"
    if not path.exists():
        raise SeamError(f"{path}: no such profile; known: {[f.stem for f in files]}")
    overlay = read_yaml(path)
    result = update_params(params, overlay, replace={"targets"})
    typer.echo(f"{params}: profile {name} applied ({len(result.targets)} targets, model {result.model.name}, "
               f"dataset {result.dataset.name}); run `dvc exp run` or `dvc status` to see the stages")
    kept = _off_default(result.model_dump(), type(result)().model_dump(), overlay)
    if kept:
        typer.echo(f"note: keys {name} does not set keep values other than the defaults: {', '.join(kept)} "
                   "(`git checkout params.yaml` first for the profile alone)", err=True)


def _off_default(values: dict, defaults: dict, overlay: dict, prefix: str = "") -> list[str]:
    """Key paths outside ``overlay`` whose value differs from the schema's default."""
    out = []
    for key, value in values.items():
        if key in overlay and not isinstance(overlay[key], dict) or key == "targets" and key in overlay:
            continue
        if isinstance(value, dict) and isinstance(defaults.get(key), dict) and key != "targets":
            out += _off_default(value, defaults[key], overlay.get(key) or {}, f"{prefix}{key}.")
        elif value != defaults.get(key):
            out.append(f"{prefix}{key}")
    return out


@command
def params() -> None:
    """Print the params.yaml reference (Markdown), rendered from the schema.

    Every key's type, default and meaning, as seam/core/params.py declares them:
    `seam params > docs/params.md` regenerates the committed copy.
    """
    from seam.core.paramsdoc import params_reference

    typer.echo(params_reference(), nl=False)


@command
def predict(
    model: Path = typer.Argument(..., help="<target>.pt2, <target>.onnx (models/export/) or an artifact "
                                           "(models/reengineered/<target>.pt)"),
    images: Path = typer.Argument(..., help="an image file or a folder of images"),
    pretrained: Path = typer.Option(Path("models/pretrained"), help="the original model, for an artifact"),
    top: int = typer.Option(1, min=1, help="classes to print per image"),
    batch_size: int = typer.Option(64, min=1),
) -> None:
    """Classify images with a re-engineered model: one line per image, its top classes and scores."""
    import sys

    from tqdm.auto import tqdm

    from seam.deploy.predict import image_files, load_classifier, predict_files

    clf = load_classifier(model, pretrained)
    files = image_files(images)
    skipped = []

    def on_error(path: Path, exc: Exception) -> None:
        skipped.append(path)
        tqdm.write(f"skipped {path}: {exc}", file=sys.stderr)

    bar = lambda it: tqdm(it, total=len(files), unit="image", disable=len(files) < 2, file=sys.stderr)  # noqa: E731
    k = min(top, len(clf.class_names))
    for path, probs in predict_files(clf, files, batch_size=batch_size, on_error=on_error, progress=bar):
        scores, idx = probs.topk(k)
        typer.echo(f"{path}\t" + "\t".join(f"{clf.class_names[i]} {s:.4f}" for s, i in zip(scores.tolist(), idx.tolist())))
    if skipped:
        typer.echo(f"{len(skipped)} of {len(files)} images unreadable, skipped", err=True)


if __name__ == "__main__":
    app()
