"""FLOPs and weight counts of a model for one input image (the paper's RQ2, Tables I and V).

FLOPs follow fvcore's convention (one multiply-add = one flop; BatchNorm in eval mode
counts 2 per element with an affine transform, 1 without; adaptive average pooling 1 per
input element; ops fvcore has no rule for count 0). With ``nonzero_only=True`` a
convolution or linear layer counts only the multiplications with non-zero weights, the
paper's rule for a re-engineered model:

* convolution: non-zero weight entries x output positions (input positions for a
  transposed convolution) x batch;
* linear / addmm / matmul / mm with a weight operand: non-zero weight entries x the rows
  it is applied to (a product of two activations is counted as fvcore does).

Everything else is counted as fvcore does. fvcore's op handles see JIT values, not
tensors: a weight is found as the trace's graph input it comes from. fvcore traces with
``torch.jit._get_trace_graph``, whose graph inputs are the model's inputs followed by its
de-duplicated state (``state_dict(keep_vars=True)``, first occurrence of each tensor). The
mapping is checked against every graph input's recorded shape, so a change in that order
raises instead of counting the wrong tensor.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections import Counter
from math import prod
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from seam.masking import maskable_tensors

with warnings.catch_warnings():
    # fvcore.nn scripts its focal losses at import time; torch >= 2.10 deprecates torch.jit.script.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script. is deprecated.*")
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import addmm_flop_jit, get_shape, matmul_flop_jit

__all__ = ["count_flops", "count_weights", "flop_breakdown", "plain_copy"]

log = logging.getLogger(__name__)

# Ops a weight may pass through on its way to a matmul without changing its zero count.
_PASS_THROUGH = {
    "aten::t", "aten::transpose", "aten::permute", "aten::numpy_T", "aten::contiguous",
    "aten::detach", "aten::clone", "aten::view", "aten::reshape", "aten::flatten",
}


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


class _WeightResolver:
    """Maps a JIT value of fvcore's trace to the tensor it holds (graph input or constant)."""

    def __init__(self, model: nn.Module, inputs: tuple[torch.Tensor, ...]):
        # torch.jit._trace.ONNXTracedModule: in_vars + list(_unique_state_dict(...).values())
        state, seen = [], set()
        for tensor in model.state_dict(keep_vars=True).values():
            if id(tensor) not in seen:
                seen.add(id(tensor))
                state.append(tensor)
        self.tensors = list(inputs) + state
        self.n_inputs = len(inputs)
        self._checked = False
        self._nnz: dict[int, tuple[torch.Tensor, int]] = {}  # the tensor is kept so that no id is reused

    def _check_graph_inputs(self, value: torch._C.Value) -> None:
        block_inputs = list(value.node().owningBlock().inputs())
        problem = None
        if len(block_inputs) != len(self.tensors):
            problem = f"the trace has {len(block_inputs)} inputs, the model has {len(self.tensors)} tensors"
        else:
            for i, (v, t) in enumerate(zip(block_inputs, self.tensors)):
                sizes = v.type().sizes() if isinstance(v.type(), torch._C.TensorType) else None
                if sizes is not None and list(sizes) != list(t.shape):
                    problem = f"graph input {i} has shape {list(sizes)}, tensor {i} {list(t.shape)}"
                    break
        if problem:
            raise RuntimeError(f"cannot map fvcore's trace inputs to the model's tensors ({problem}); "
                               "has torch changed the tracer's input order?")
        self._checked = True

    def resolve(self, value: torch._C.Value) -> torch.Tensor | None:
        """The tensor behind ``value`` (through transposes/views), or None if it is computed."""
        node = value.node()
        while node.kind() in _PASS_THROUGH:
            value = next(iter(node.inputs()))
            node = value.node()
        if node.kind() == "prim::Param":
            if not self._checked:
                self._check_graph_inputs(value)
            if value.offset() < self.n_inputs:
                return None  # the input image, not a weight
            return self.tensors[value.offset()]
        if node.kind() == "prim::Constant":
            ivalue = value.toIValue()
            return ivalue if isinstance(ivalue, torch.Tensor) else None
        return None

    def nnz(self, tensor: torch.Tensor) -> int:
        key = id(tensor)
        if key not in self._nnz:
            self._nnz[key] = (tensor, int(torch.count_nonzero(tensor.detach())))
        return self._nnz[key][1]


def _scope(outputs: list) -> str:
    return outputs[0].node().scopeName() or "<root>"


def _nonzero_handles(resolver: _WeightResolver) -> dict[str, Callable[[list, list], Any]]:
    def weight_of(value, op: str, outputs) -> torch.Tensor:
        tensor = resolver.resolve(value)
        if tensor is None:
            raise ValueError(
                f"{op} in {_scope(outputs)}: its weight is computed in the forward pass "
                f"({value.node().kind()}), not a parameter; bake masks into the weights first")
        return tensor

    def conv(inputs, outputs):
        x_shape, out_shape = get_shape(inputs[0]), get_shape(outputs[0])
        transposed = inputs[6].toIValue()
        w = weight_of(inputs[1], "convolution", outputs)
        positions = prod((x_shape if transposed else out_shape)[2:])
        return Counter({"conv": x_shape[0] * resolver.nnz(w) * positions})

    def linear(inputs, outputs):
        x_shape = get_shape(inputs[0])
        w = weight_of(inputs[1], "linear", outputs)
        return prod(x_shape[:-1]) * resolver.nnz(w)

    def matmul_like(dense: Callable, first: int) -> Callable:
        # a @ b where one side may be a weight. Right weight W [m, p]: every row of a meets
        # each non-zero of W once. Left weight W [n, m]: every column of b meets it once.
        def handle(inputs, outputs):
            a, b = inputs[first], inputs[first + 1]
            # The operand's traced shape, not the tensor's: a weight may be used through a view.
            wb, wa = resolver.resolve(b), resolver.resolve(a)
            if wb is not None and len(get_shape(b)) == 2:
                return prod(get_shape(a)[:-1]) * resolver.nnz(wb)
            if wa is not None and len(get_shape(a)) == 2:
                b_shape = get_shape(b)
                return resolver.nnz(wa) * (prod(b_shape) // b_shape[-2] if len(b_shape) > 1 else 1)
            return dense(inputs, outputs)
        return handle

    return {
        "aten::_convolution": conv,
        "aten::linear": linear,
        "aten::addmm": matmul_like(addmm_flop_jit, 1),  # addmm(bias, a, b, beta, alpha)
        "aten::matmul": matmul_like(matmul_flop_jit, 0),
        "aten::mm": matmul_like(matmul_flop_jit, 0),
    }


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
        if nonzero_only:
            resolver = _WeightResolver(model, (x,))
            for op, handle in _nonzero_handles(resolver).items():
                analysis.set_op_handle(op, handle)
        total = int(analysis.total())
        by_operator = {k: int(v) for k, v in analysis.by_operator().items()}
        skipped = dict(analysis.unsupported_ops())
    if skipped:
        log.debug("fvcore counts 0 flops for %s", skipped)
    return {"total": total, "by_operator": by_operator, "skipped": skipped}


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
