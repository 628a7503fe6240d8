"""FLOPs and weight counts of a model for one input image (the paper's RQ2, Tables I and V).

FLOPs follow fvcore's convention (one multiply-add = one flop; BatchNorm in eval mode
counts 2 per element with an affine transform, 1 without; adaptive average pooling 1 per
input element; ops fvcore has no rule for count 0). With ``nonzero_only=True`` a
convolution or linear layer counts only the multiplications with non-zero weights, the
paper's rule for a re-engineered model.

fvcore counts a convolution as batch x weight entries x output positions (input positions
if transposed) and a linear layer as rows x weight entries; the bias is not counted. So a
Conv/Linear module's non-zero count is its dense count times its weight's density
(non-zero entries / entries), exactly. That is the rule applied, per module, to fvcore's
``by_module_and_operator()``; a module called twice is counted for both calls. Only the
layers SeaM masks (``seam.models.masks.MASKABLE`` modules) are scaled: a weight that is not a
Conv/Linear module's own (``F.conv2d``/``F.linear``/``matmul`` on a bare tensor) counts dense.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections import Counter
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from seam.models.masks import MASKABLE, maskable_tensors

with warnings.catch_warnings():
    # fvcore.nn scripts its focal losses at import time; torch >= 2.10 deprecates torch.jit.script.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script. is deprecated.*")
    from fvcore.nn import FlopCountAnalysis

__all__ = ["count_flops", "count_weights", "flop_breakdown", "plain_copy"]

log = logging.getLogger(__name__)


@torch.no_grad()
def plain_copy(model: nn.Module) -> nn.Module:
    """``model`` itself if no tensor is parametrized; otherwise a deep copy whose
    parametrizations (e.g. SeaM's score masks) are baked into plain tensors.

    Not ``parametrize.remove_parametrizations`` on the copy: a deep copy shares the
    injected ``Parametrized<Module>`` class with the original, and removing deletes the
    tensor's property from that class, which breaks the original model.
    """
    if not any(parametrize.is_parametrized(m) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        values = {}
        for name, plist in module.parametrizations.items():
            values[name] = (getattr(module, name).detach().clone(), isinstance(plist.original, nn.Parameter),
                            plist.original.requires_grad)
        module.__class__ = type(module).__bases__[0]  # the class it had before parametrization
        del module._modules["parametrizations"]
        for name, (value, is_param, requires_grad) in values.items():
            if is_param:
                module.register_parameter(name, nn.Parameter(value, requires_grad=requires_grad))
            else:
                module.register_buffer(name, value)
    return model


@torch.no_grad()
def count_weights(model: nn.Module) -> tuple[int, int]:
    """(non-zero entries, total entries) over every Conv/Linear weight and bias.

    A parametrized (masked) tensor counts as its masked value.
    """
    nonzero = total = 0
    seen: dict[int, torch.Tensor] = {}  # holds the tensors, so that no id is reused
    for _name, module, pname in maskable_tensors(model):
        tensor = getattr(module, pname)
        if id(tensor) in seen:  # a tensor shared by two layers counts once
            continue
        seen[id(tensor)] = tensor
        nonzero += int(torch.count_nonzero(tensor))
        total += tensor.numel()
    return nonzero, total


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode (inference FLOPs); restore each one's flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def _analyse(model: nn.Module, input_size: int, nonzero_only: bool) -> dict[str, Any]:
    if input_size < 1:
        raise ValueError(f"input_size must be positive, got {input_size}")
    model = plain_copy(model)
    try:
        device = next(iter(model.parameters())).device
    except StopIteration:
        device = torch.device("cpu")
    x = torch.zeros(1, 3, input_size, input_size, device=device)
    with _eval_mode(model), torch.no_grad():
        analysis = FlopCountAnalysis(model, (x,))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        by_operator = Counter(analysis.by_operator())
        if nonzero_only:
            by_module = analysis.by_module_and_operator()
            for name, module in model.named_modules():  # each module once, also if shared
                if isinstance(module, MASKABLE):
                    nnz, numel = int(torch.count_nonzero(module.weight)), module.weight.numel()
                    for op, dense in by_module[analysis.canonical_module_name(name)].items():
                        by_operator[op] -= dense - dense * nnz // numel  # dense is k * numel
        by_operator = {k: int(v) for k, v in by_operator.items()}
        skipped = dict(analysis.unsupported_ops())
    if skipped:
        log.debug("fvcore counts 0 flops for %s", skipped)
    return {"total": sum(by_operator.values()), "by_operator": by_operator, "skipped": skipped}


def count_flops(model: nn.Module, input_size: int, *, nonzero_only: bool = False) -> int:
    """FLOPs (fvcore: multiply-adds) of ``model`` on one image ``[1, 3, input_size, input_size]``.

    The model is counted in eval mode (its modes are restored afterwards). With
    ``nonzero_only``, conv/linear layers count only multiplications with non-zero weights.
    """
    return _analyse(model, input_size, nonzero_only)["total"]


def flop_breakdown(model: nn.Module, input_size: int, *, nonzero_only: bool = False) -> dict[str, Any]:
    """``{"total", "by_operator", "skipped"}``: the count, its split by operator, and the ops
    fvcore met but has no rule for (counted as 0, e.g. ``aten::add``, ``aten::mean``)."""
    return _analyse(model, input_size, nonzero_only)
