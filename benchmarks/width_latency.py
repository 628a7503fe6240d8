"""What a channel result must remove to be 40% faster: ResNet20-shaped networks of given widths,
onnxruntime and torch latency at batch 16, interleaved rounds, against the full widths.

    uv run python benchmarks/width_latency.py [--threads 2]

A width pattern gives each stage's residual stream and each block's inner width (0: the block
is its shortcut alone, as when a search removes a block's inner conv). Weights are random:
only the shapes matter for latency. The second row has the widths a channel search kept
(ResNet20, airplane vs rest, `cost: macs`).
"""

from __future__ import annotations

import argparse
import collections
import io
import time

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

# name -> (stream width per stage, inner width of each block per stage)
PATTERNS = {
    "full widths (ResNet20)": ([16, 32, 64], [[16] * 3, [32] * 3, [64] * 3]),
    "a search's widths": ([16, 32, 48], [[16] * 3, [32, 16, 16], [48, 48, 32]]),
    "stage 3 at 32": ([16, 32, 32], [[16] * 3, [32, 16, 16], [32, 32, 16]]),
    "one stage-1 block gone": ([16, 32, 48], [[16, 16, 0], [32, 16, 16], [48, 48, 32]]),
    "two stage-1 blocks gone": ([16, 32, 32], [[16, 0, 0], [32, 16, 16], [32, 32, 16]]),
    "inner widths halved": ([16, 32, 64], [[8] * 3, [16] * 3, [32] * 3]),
    "halved, stage 3 at 32": ([16, 32, 32], [[8] * 3, [16] * 3, [32] * 3]),
    "stages 2-3 at 16 and 32": ([16, 16, 32], [[16] * 3, [16] * 3, [32] * 3]),
}


class Block(nn.Module):
    """A basic block with an option-A shortcut (stride-2 subsampling, zero channel padding)."""

    def __init__(self, cin: int, inner: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.pad, self.inner = stride, cout - cin, inner
        if inner:
            self.conv1, self.bn1 = nn.Conv2d(cin, inner, 3, stride, 1, bias=False), nn.BatchNorm2d(inner)
            self.conv2, self.bn2 = nn.Conv2d(inner, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x):
        shortcut = x[:, :, ::2, ::2] if self.stride == 2 else x
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        if not self.inner:
            return F.relu(shortcut)
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + shortcut)


class Net(nn.Module):
    def __init__(self, streams: list[int], inners: list[list[int]]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, streams[0], 3, 1, 1, bias=False), nn.BatchNorm2d(streams[0]), nn.ReLU())
        blocks, cin = [], streams[0]
        for stage, (width, stage_inners) in enumerate(zip(streams, inners)):
            for i, inner in enumerate(stage_inners):
                blocks.append(Block(cin, inner, width, 2 if stage and i == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


def conv_macs(net: nn.Module) -> int:
    total = 0

    def count(module, _inputs, out):
        nonlocal total
        total += module.weight.numel() * out[0, 0].numel()

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is printed")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    x = torch.randn(16, 3, 32, 32)
    nets, sessions, macs = {}, {}, {}
    for name, (streams, inners) in PATTERNS.items():
        nets[name] = Net(streams, inners).eval()
        macs[name] = conv_macs(nets[name])
        buf = io.BytesIO()
        torch.onnx.export(nets[name], x, buf, opset_version=13, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        sessions[name] = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])

    ms = collections.defaultdict(list)
    feed = x.numpy()
    for _ in range(args.rounds):
        for name in PATTERNS:
            sess = sessions[name]
            inputs = {sess.get_inputs()[0].name: feed}
            for _ in range(20):
                sess.run(None, inputs)
            start = time.perf_counter()
            for _ in range(100):
                sess.run(None, inputs)
            ms["onnxruntime", name].append((time.perf_counter() - start) * 10)
            with torch.no_grad():
                for _ in range(10):
                    nets[name](x)
                start = time.perf_counter()
                for _ in range(50):
                    nets[name](x)
            ms["torch", name].append((time.perf_counter() - start) * 20)

    first = next(iter(PATTERNS))
    base = {engine: np.median(ms[engine, first]) for engine in ("onnxruntime", "torch")}
    print(f"batch 16, {args.threads} threads, median of {args.rounds} interleaved rounds")
    print(f"{'widths':<26} {'conv MACs':>9} {'onnxruntime ms':>15} {'torch ms':>15}")
    for name in PATTERNS:
        cells = [f"{np.median(ms[e, name]):6.2f} ({np.median(ms[e, name]) / base[e] - 1:+4.0%})"
                 for e in ("onnxruntime", "torch")]
        print(f"{name:<26} {macs[name] / macs[first]:>9.2f} {cells[0]:>15} {cells[1]:>15}")


if __name__ == "__main__":
    main()
