import builtins
import os

import numpy as np
import pytest

from seam.deploy.latency import EngineUnavailable, PairedTiming, deepsparse_runner, engine_versions, interleaved


def test_interleaved_runs_a_and_b_in_turn():
    calls = []
    x = np.zeros((1, 3, 4, 4), np.float32)
    timing = interleaved(lambda _: calls.append("a"), lambda _: calls.append("b"), x, pairs=3, iterations=2, warmup=1)
    assert "".join(calls) == "aaabbb" * 3  # per turn: 1 warm-up + 2 timed calls
    assert len(timing.a_ms) == len(timing.b_ms) == 3


def test_summary_uses_the_median_of_per_pair_ratios():
    # A drifts (noisy machine) while B stays at half of A within each pair.
    t = PairedTiming(a_ms=[10.0, 20.0, 40.0], b_ms=[5.0, 10.0, 30.0])
    s = t.summary()
    assert s["ratio_median"] == pytest.approx(0.5)
    assert s["reduction"] == pytest.approx(0.5)
    assert s["ms_a"] == pytest.approx(70 / 3) and s["ms_b"] == pytest.approx(15.0)
    assert s["ms_a_std"] > 0 and s["pairs"] == 3


def test_bad_counts_are_rejected():
    with pytest.raises(ValueError, match="pairs"):
        interleaved(print, print, np.zeros(1), pairs=0, iterations=1, warmup=0)


def test_deepsparse_missing_is_reported_not_faked(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "deepsparse":
            raise ImportError("no module named deepsparse (test)")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(EngineUnavailable, match="not importable"):
        deepsparse_runner("model.onnx", 16)
    assert engine_versions()["deepsparse"].startswith("unavailable:")


def test_deepsparse_compile_failure_is_engine_unavailable(tmp_path):
    pytest.importorskip("deepsparse")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(EngineUnavailable, match="could not compile"):
        deepsparse_runner(bad, 16)


def test_an_engine_run_apart_gives_its_value_its_error_or_unavailable_if_it_dies():
    from seam.deploy.latency import in_subprocess

    assert in_subprocess(max, 1, 2) == 2
    with pytest.raises(ValueError, match="invalid literal"):
        in_subprocess(int, "x")
    with pytest.raises(EngineUnavailable, match=r"abort crashed \(exit code -6\)"):  # as DeepSparse 1.8 may
        in_subprocess(os.abort)
