"""Latency of ONNX models on DeepSparse and onnxruntime, measured in interleaved pairs.

Shared machines drift: two means measured minutes apart compare the machine's moods, not
the models. Here model A and model B run in turn (A B A B ...), each turn the mean over
`iterations` batches after a warm-up, and what is reported is the median of the per-pair
ratios B/A next to the mean and spread of each side.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

Runner = Callable[[np.ndarray], object]


class EngineUnavailable(RuntimeError):
    """The engine cannot run here (not installed, unsupported CPU, compile failure)."""


def deepsparse_runner(path: str | os.PathLike, batch: int, num_cores: int | None = None) -> Runner:
    """A callable running the ONNX file on DeepSparse (the paper's engine)."""
    try:
        import deepsparse
    except Exception as exc:  # ImportError, or the engine's own CPU checks
        raise EngineUnavailable(f"deepsparse not importable: {exc}") from exc
    try:
        engine = deepsparse.compile_model(str(path), batch_size=batch, num_cores=num_cores)
    except Exception as exc:
        raise EngineUnavailable(f"deepsparse could not compile {path}: {exc}") from exc
    return lambda x: engine.run([x])


def onnxruntime_runner(path: str | os.PathLike, batch: int, num_cores: int | None = None) -> Runner:
    """A callable running the ONNX file on onnxruntime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if num_cores:
        options.intra_op_num_threads = num_cores
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def engine_versions() -> dict[str, str]:
    """Versions of the engines (or why one is unavailable)."""
    versions = {}
    try:
        import deepsparse

        versions["deepsparse"] = deepsparse.__version__
    except Exception as exc:
        versions["deepsparse"] = f"unavailable: {exc}"
    import onnxruntime

    versions["onnxruntime"] = onnxruntime.__version__
    return versions


def mean_ms(run: Runner, x: np.ndarray, iterations: int, warmup: int) -> float:
    """Mean milliseconds per call over `iterations` calls after `warmup` calls."""
    for _ in range(warmup):
        run(x)
    start = time.perf_counter()
    for _ in range(iterations):
        run(x)
    return (time.perf_counter() - start) / iterations * 1e3


@dataclass
class PairedTiming:
    a_ms: list[float]
    b_ms: list[float]

    @property
    def ratios(self) -> list[float]:
        return [b / a for a, b in zip(self.a_ms, self.b_ms)]

    def summary(self) -> dict:
        """Means, spreads and the median per-pair ratio; reduction = 1 - median(B/A)."""
        ratio = statistics.median(self.ratios)
        return {
            "ms_a": statistics.mean(self.a_ms),
            "ms_a_std": statistics.stdev(self.a_ms) if len(self.a_ms) > 1 else 0.0,
            "ms_b": statistics.mean(self.b_ms),
            "ms_b_std": statistics.stdev(self.b_ms) if len(self.b_ms) > 1 else 0.0,
            "ratio_median": ratio,
            "reduction": 1.0 - ratio,
            "pairs": len(self.a_ms),
        }


def interleaved(run_a: Runner, run_b: Runner, x: np.ndarray, *, pairs: int, iterations: int,
                warmup: int) -> PairedTiming:
    """Time A and B in turn, `pairs` times; each turn is a mean over `iterations` calls."""
    if pairs < 1 or iterations < 1:
        raise ValueError(f"pairs and iterations must be >= 1, got {pairs}, {iterations}")
    timing = PairedTiming([], [])
    for _ in range(pairs):
        timing.a_ms.append(mean_ms(run_a, x, iterations, warmup))
        timing.b_ms.append(mean_ms(run_b, x, iterations, warmup))
    return timing


def deepsparse_pair(path_a: str | os.PathLike, path_b: str | os.PathLike, x: np.ndarray, *, batch: int,
                    num_cores: int | None, **timing) -> dict:
    """DeepSparse's interleaved comparison of two ONNX files, in a process of its own.

    DeepSparse 1.8 (end of life) crashes with a segmentation fault on some graphs, e.g. a
    channel-masked ResNet20 compiled at batch 1; in a child process the crash costs only this
    figure, which comes back as :class:`EngineUnavailable`.
    """
    return in_subprocess(_deepsparse_pair, path_a, path_b, x, batch, num_cores, timing)


def _deepsparse_pair(path_a, path_b, x, batch, num_cores, timing) -> dict:
    # DeepSparse refused the array as it arrives through the pipe ('unsupported type float32'); a fresh copy runs
    x = np.ascontiguousarray(x).astype(np.float32)
    return interleaved(deepsparse_runner(path_a, batch, num_cores), deepsparse_runner(path_b, batch, num_cores), x,
                       **timing).summary()


def in_subprocess(fn: Callable, *args):
    """``fn(*args)`` in a spawned process: its value, its exception, or EngineUnavailable if it died."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(send, fn, args), daemon=True)
    process.start()
    send.close()
    try:
        ok, value = receive.recv()
    except EOFError:  # the child died without an answer
        ok, value = None, None
    process.join()
    if ok is None:
        raise EngineUnavailable(f"{fn.__name__} crashed (exit code {process.exitcode})")
    if not ok:
        raise value
    return value


def _child(send, fn: Callable, args: tuple) -> None:
    try:
        send.send((True, fn(*args)))
    except BaseException as exc:  # handed to the parent, which raises it
        send.send((False, exc))
