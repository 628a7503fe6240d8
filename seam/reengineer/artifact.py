"""The re-engineering artifact: packed mask bits + head + metadata (+ the tuned weights of a
search that trained them), and the loader that rebuilds the re-engineered model from the
original checkpoint and this artifact."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from seam.core.atomic import save_torch
from seam.core.errors import SeamError
from seam.models.masks import apply_searched
from seam.reengineer.candidate import ReengineeredModel

if TYPE_CHECKING:
    from seam.models.pretrained import PretrainedModel

FORMAT = "seam-artifact"
VERSION = 2  # 2: a digest of the content


class ArtifactError(SeamError, ValueError):
    """An artifact file is missing, malformed, or does not fit the model it is applied to."""


def pack_masks(masks: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Bool masks -> one bit per entry (``np.packbits`` order), with names and shapes."""
    names = list(masks)
    flat = np.concatenate([masks[n].reshape(-1).numpy().astype(bool) for n in names]) if names else np.zeros(0, bool)
    return {
        "names": names,
        "shapes": [list(masks[n].shape) for n in names],
        "bits": torch.from_numpy(np.packbits(flat)),
        "count": int(flat.size),
    }


def unpack_masks(packed: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_masks`."""
    flat = np.unpackbits(packed["bits"].numpy(), count=packed["count"]).astype(bool)
    masks, offset = {}, 0
    for name, shape in zip(packed["names"], packed["shapes"]):
        size = int(np.prod(shape)) if shape else 1
        masks[name] = torch.from_numpy(flat[offset : offset + size].copy()).reshape(shape)
        offset += size
    if offset != flat.size:
        raise ArtifactError(f"mask bits hold {flat.size} entries but the shapes need {offset}")
    return masks


def save_artifact(path: str | os.PathLike, *, masks: dict[str, torch.Tensor], head: dict[str, torch.Tensor],
                  meta: dict[str, Any], weights: dict[str, torch.Tensor] | None = None) -> None:
    """Write an artifact atomically. ``meta`` must name the model (``model``, ``model_sha256``),
    the target (``target``: name, kind, source_classes, class_names) and ``num_outputs``.
    ``weights``: the model's own parameters by name, where the search trained them
    (``reengineer.lr_weights``); without them the original checkpoint's are reused."""
    for key in ("model", "model_sha256", "target", "num_outputs"):
        if key not in meta:
            raise ArtifactError(f"artifact metadata lacks {key!r}")
    content = {"meta": meta, "masks": pack_masks(masks), "head": {k: v.detach().cpu() for k, v in head.items()}}
    if weights is not None:
        content["weights"] = {k: v.detach().cpu() for k, v in weights.items()}
    save_torch({"format": FORMAT, "version": VERSION, **content, "digest": content_digest(content)}, path)


def content_digest(content: dict[str, Any]) -> str:
    """sha256 of an artifact's meta, mask bits, head and tuned weights, independent of how torch
    lays them out."""
    h = hashlib.sha256(json.dumps(content["meta"], sort_keys=True, default=str).encode())
    masks = content["masks"]
    h.update(json.dumps([masks["names"], masks["shapes"], masks["count"]]).encode())
    h.update(masks["bits"].numpy().tobytes())
    # head entries hash as they always did, so an artifact of frozen weights keeps its digest
    for part, prefix in (("head", ""), ("weights", "weights/")):
        for name in sorted(content.get(part, {})):
            t = content[part][name].contiguous()
            h.update(f"{prefix}{name}:{t.dtype}:{list(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_artifact(path: str | os.PathLike) -> dict[str, Any]:
    """Read an artifact (``weights_only=True``) and check its content against its digest; masks
    come back unpacked as bool tensors."""
    if not os.path.exists(path):
        raise ArtifactError(f"{path}: no such artifact (run the reengineer stage first)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise ArtifactError(f"{path}: not a readable artifact ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a {FORMAT} file")
    if raw.get("version") != VERSION:
        raise ArtifactError(f"{path}: artifact version {raw.get('version')}, this code reads {VERSION} "
                            "(run the reengineer stage again)")
    try:
        intact = raw["digest"] == content_digest(raw)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{path}: malformed artifact ({exc!r})") from exc
    if not intact:
        raise ArtifactError(f"{path}: content does not match its digest (the file was altered or damaged)")
    return {"meta": raw["meta"], "masks": unpack_masks(raw["masks"]), "head": raw["head"],
            "weights": raw.get("weights"), "digest": raw["digest"]}


def build_reengineered(original: nn.Module, artifact: dict[str, Any], *, model_sha256: str | None = None) -> nn.Module:
    """The re-engineered model: a copy of ``original`` (with the artifact's tuned weights, if
    it has them) with masked weights zeroed (after a channel search, also the BatchNorm
    channels it gated), plus the head.

    ``original`` is left unchanged. With ``model_sha256``, refuse an artifact that was
    searched on a different checkpoint.
    """
    meta = artifact["meta"]
    if model_sha256 is not None and meta["model_sha256"] != model_sha256:
        raise ArtifactError(
            f"artifact was built from {meta['model']} with sha256 {meta['model_sha256'][:12]}…, "
            f"but the checkpoint given has sha256 {model_sha256[:12]}…"
        )
    base = copy.deepcopy(original).eval()
    if artifact.get("weights") is not None:
        _load_weights(base, artifact["weights"], meta["model"])
    try:
        apply_searched(base, artifact["masks"], meta.get("search", {}).get("granularity", "weight"))
    except ValueError as exc:
        raise ArtifactError(f"artifact for {meta['model']} does not fit this model: {exc}") from exc
    model = ReengineeredModel(base, meta["num_outputs"], len(meta["target"]["class_names"]))
    model.head.load_state_dict(artifact["head"])
    return model.eval()


def _load_weights(model: nn.Module, weights: dict[str, torch.Tensor], name: str) -> None:
    """Put an artifact's tuned parameters into ``model``: every parameter, nothing else."""
    expected = dict(model.named_parameters())
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = [k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape]
    if missing or extra or wrong:
        raise ArtifactError(f"artifact's tuned weights do not fit {name}: missing {missing[:3]}, "
                            f"unexpected {extra[:3]}, wrong shape {sorted(wrong)[:3]}")
    with torch.no_grad():
        for k, p in expected.items():
            p.copy_(weights[k])


def load_reengineered(path: str | os.PathLike, original: nn.Module, record: PretrainedModel) -> nn.Module:
    """The re-engineered model in the artifact at `path`, checked against the checkpoint's hash."""
    return build_reengineered(original, load_artifact(path), model_sha256=record.sha256)
