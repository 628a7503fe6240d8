import copy

import pytest
import torch
from conftest import TinyNet, tiny_target

from seam.models.masks import attach_masks, retention
from seam.reengineer.candidate import ReengineeredModel
from seam.reengineer.loop import TrainingError
from seam.reengineer.search import SearchConfig, search
from seam.reengineer.stopping import AccuracyTarget, RemovalThreshold

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
DEFAULTS = dict(alpha=1.0, lr_mask=0.05, lr_head=0.1, batch_size=16, max_epochs=6, select_on="val", seed=0)


def run(model, data, output_layer=None, early_stop=0, threshold=None, **overrides):
    config = SearchConfig(**{**DEFAULTS, **overrides})
    stop = AccuracyTarget.factory(early_stop) if threshold is None else RemovalThreshold.factory(threshold)
    return search(model, data, mean=MEAN, std=STD, config=config, stop=stop, progress=False,
                  output_layer=output_layer)


def test_search_leaves_the_given_model_untouched_and_returns_a_head():
    torch.manual_seed(0)
    model = TinyNet(num_classes=4).eval()
    before = copy.deepcopy(model.state_dict())
    result = run(model, tiny_target())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert result.head["1.weight"].shape == (2, 4) and result.head["1.bias"].shape == (2,)
    assert set(result.masks) == {"conv.weight", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias"}
    assert all(m.dtype == torch.bool for m in result.masks.values())
    assert len(result.history) == 6 and 0 <= result.selected_epoch < 6
    assert sum(r["selected"] for r in result.history) >= 1


def test_original_weights_never_change_during_optimisation():
    torch.manual_seed(0)
    model = ReengineeredModel(TinyNet(), 4, 2)
    masks = attach_masks(model.original)
    frozen = {n: p.detach().clone() for n, p in model.original.named_parameters() if "scores" not in n}
    buffers = {n: b.detach().clone() for n, b in model.original.named_buffers()}
    optim = torch.optim.Adam([m.scores for m in masks.values()] + list(model.head.parameters()), lr=0.1)
    model.train()
    for _ in range(5):
        x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 2, (8,))
        loss = torch.nn.functional.cross_entropy(model(x), y) + retention(masks)
        optim.zero_grad()
        loss.backward()
        optim.step()
    assert not model.original.training  # BatchNorm stays in eval mode while the head trains
    for n, p in model.original.named_parameters():
        if "scores" not in n:
            assert torch.equal(p, frozen[n]), n
    for n, b in model.original.named_buffers():
        assert torch.equal(b, buffers[n]), n  # BN running statistics untouched


def test_head_only_epochs_do_not_move_the_masks():
    torch.manual_seed(0)
    result = run(TinyNet().eval(), tiny_target(), max_epochs=2, lr_mask=1.0, alpha=100.0)
    assert result.history[0]["phase"] == "head" and result.history[0]["retention"] == 1.0
    assert result.history[1]["phase"] == "head+mask" and result.history[1]["retention"] < 1.0


@pytest.mark.parametrize("every, head_epochs", [(3, [0, 3]), (0, [])])
def test_head_only_every_sets_the_head_only_cadence(every, head_epochs):
    result = run(TinyNet().eval(), tiny_target(), max_epochs=5, lr_mask=1.0, alpha=100.0, head_only_every=every)
    assert [r["epoch"] for r in result.history if r["phase"] == "head"] == head_epochs
    assert result.history[0]["retention"] < 1.0 if every == 0 else result.history[0]["retention"] == 1.0


def test_search_is_deterministic_on_cpu():
    data = tiny_target()
    torch.manual_seed(1)
    model = TinyNet().eval()
    a = run(model, data, seed=3)
    b = run(model, data, seed=3)
    assert a.history == b.history
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)


def test_high_alpha_drops_retention_and_selection_uses_the_val_split():
    torch.manual_seed(0)
    result = run(TinyNet().eval(), tiny_target(), max_epochs=5, alpha=5.0, lr_mask=0.2)
    assert result.history[-1]["retention"] < 0.9
    assert set(result.acc_original) == {"val", "test"}


def test_alpha_warmup_ramps_the_retention_term_linearly_then_holds_it():
    torch.manual_seed(0)
    result = run(TinyNet().eval(), tiny_target(), max_epochs=6, alpha=2.0, alpha_warmup=4)
    # each batch's loss is CE + alpha x kept, so the epoch's alpha is (loss - CE) / kept
    alphas = [(r["loss"] - r["ce"]) / r["train_retention"] for r in result.history]
    assert alphas == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0], abs=1e-5)
    constant = run(TinyNet().eval(), tiny_target(), max_epochs=2, alpha=2.0)
    assert [(r["loss"] - r["ce"]) / r["train_retention"] for r in constant.history] == pytest.approx([2.0, 2.0])


@pytest.mark.parametrize("precision, train_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_sets_the_training_passes_dtype_and_evaluation_stays_fp32(precision, train_dtype):
    torch.manual_seed(0)
    model = TinyNet().eval()
    seen = []
    model.conv2.register_forward_hook(lambda m, i, out: seen.append((torch.is_grad_enabled(), out.dtype)))
    a = run(model, tiny_target(), max_epochs=3, precision=precision, alpha=5.0, lr_mask=0.2)
    assert {dtype for grad, dtype in seen if grad} == {train_dtype}        # training passes
    assert {dtype for grad, dtype in seen if not grad} == {torch.float32}  # evaluation, selection
    assert a.history[-1]["retention"] < 1.0  # the scores (fp32) moved
    b = run(model, tiny_target(), max_epochs=3, precision=precision, alpha=5.0, lr_mask=0.2)
    assert a.history == b.history  # deterministic on the CPU in either precision


def test_auto_precision_is_bf16_only_where_the_hardware_computes_it(monkeypatch):
    import seam.core.device as device

    assert device.resolve_precision("fp32", torch.device("cpu")) is None
    assert device.resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    monkeypatch.setattr(device, "_cpu_has_bf16", lambda: True)
    assert device.resolve_precision("auto", torch.device("cpu")) is torch.bfloat16
    monkeypatch.setattr(device, "_cpu_has_bf16", lambda: False)
    assert device.resolve_precision("auto", torch.device("cpu")) is None


def test_select_on_val_without_a_val_split_is_a_clear_error():
    data = tiny_target(n_val=0)
    with pytest.raises(TrainingError, match="no val images.*val_fraction > 0 or select_on: test"):
        run(TinyNet().eval(), data)


def test_output_layer_mode_trains_the_models_own_classifier_unmasked():
    torch.manual_seed(0)
    model = TinyNet(num_classes=2).eval()
    result = run(model, tiny_target(), max_epochs=3, output_layer="fc")
    assert set(result.masks) == {"conv.weight", "conv2.weight", "conv2.bias"}  # the classifier is not masked
    assert set(result.head) == {"weight", "bias"} and result.head["weight"].shape == (2, 8)
    assert not torch.equal(result.head["weight"], model.fc.weight)  # it was trained
    with pytest.raises(ValueError, match="outputs"):
        run(TinyNet(num_classes=4).eval(), tiny_target(), output_layer="fc")


def test_removal_threshold_keeps_the_first_epoch_past_the_threshold():
    torch.manual_seed(0)
    result = run(TinyNet().eval(), tiny_target(), max_epochs=20, alpha=5.0, lr_mask=0.2, threshold=0.3)
    last = result.history[-1]
    assert 1 - last["retention"] >= 0.3 and len(result.history) < 20
    assert all(1 - r["retention"] < 0.3 for r in result.history[:-1])
    assert result.selected_epoch == last["epoch"] and result.reached_target
    # Not reached within max_epochs: the last epoch is kept, whatever its accuracy.
    result = run(TinyNet().eval(), tiny_target(), max_epochs=3, threshold=0.99, early_stop=1)
    assert len(result.history) == 3 and result.selected_epoch == 2 and not result.reached_target


class Killed(Exception):
    """Stands in for a crash right after an epoch's state was saved."""


@pytest.mark.parametrize("threshold, lr_weights", [(None, 0.0), (0.3, 0.0), (None, 0.01)])
def test_an_interrupted_search_resumes_to_the_uninterrupted_result(tmp_path, threshold, lr_weights):
    from seam.core.resume import ResumeFile

    data, key = tiny_target(), {"run": "a"}
    torch.manual_seed(1)
    model = TinyNet().eval()
    config = SearchConfig(**{**DEFAULTS, "max_epochs": 9, "lr_mask": 0.2, "lr_weights": lr_weights})
    stop = AccuracyTarget.factory(4) if threshold is None else RemovalThreshold.factory(threshold)

    def go(resume, on_epoch=None):
        return search(model, data, mean=MEAN, std=STD, config=config, stop=stop, progress=False,
                      on_epoch=on_epoch, resume=resume)

    whole = go(None)
    path = tmp_path / "state.pt"
    crash_at = len(whole.history) // 2
    assert crash_at >= 1

    def crash(row):
        if row["epoch"] == crash_at:
            raise Killed

    with pytest.raises(Killed):
        go(ResumeFile(path, key), crash)
    assert path.exists()
    rows = []
    resumed = go(ResumeFile(path, key), rows.append)
    assert rows == whole.history == resumed.history  # epochs up to the crash replayed, the rest run
    assert resumed.selected_epoch == whole.selected_epoch and resumed.reached_target == whole.reached_target
    assert all(torch.equal(whole.masks[k], resumed.masks[k]) for k in whole.masks)
    assert all(torch.equal(whole.head[k], resumed.head[k]) for k in whole.head)
    assert (whole.weights is None) == (lr_weights == 0) == (resumed.weights is None)
    assert all(torch.equal(whole.weights[k], resumed.weights[k]) for k in whole.weights or {})


def test_a_foreign_or_torn_state_is_ignored_with_a_note(tmp_path, capsys):
    from seam.core.resume import ResumeFile

    data, path = tiny_target(), tmp_path / "state.pt"
    config = SearchConfig(**{**DEFAULTS, "max_epochs": 3})

    def go(key):
        torch.manual_seed(1)
        return search(TinyNet().eval(), data, mean=MEAN, std=STD, config=config,
                      stop=AccuracyTarget.factory(0), progress=False, resume=ResumeFile(path, key))

    first = go({"alpha": 1.0})
    other = go({"alpha": 2.0})  # same file, another run's key: starts afresh
    assert "saved by a different run" in capsys.readouterr().err and other.history == first.history
    path.write_bytes(path.read_bytes()[:100])
    torn = go({"alpha": 2.0})
    assert "unreadable resume state ignored" in capsys.readouterr().err and torn.history == first.history


def test_score_init_is_not_a_lever_of_its_own(monkeypatch):
    """The forward pass sees only each score's sign and Adam's step scales with the learning
    rate, so scores initialised at 0.5 with lr_mask 0.05 take exactly the path of init 1.0 with
    lr_mask 0.1: the convergence study varies lr_mask alone (README, "Search cost")."""
    import functools

    import seam.reengineer.granularity
    from seam.models.masks import attach_masks as attach

    def history(lr_mask, init):
        monkeypatch.setattr(seam.reengineer.granularity, "attach_masks", functools.partial(attach, init=init))
        torch.manual_seed(0)
        result = run(TinyNet().eval(), tiny_target(), max_epochs=8, lr_mask=lr_mask)
        return [(r["retention"], r["val_acc"], r["loss"]) for r in result.history]

    halved = history(0.05, 0.5)
    assert halved == history(0.1, 1.0)
    assert halved != history(0.05, 1.0)


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_lr_weights_trains_the_own_weights_and_the_artifact_rebuilds_the_kept_epoch(tmp_path, granularity):
    from seam.data.augment import Normalize
    from seam.reengineer.artifact import build_reengineered, load_artifact, save_artifact
    from seam.reengineer.loop import evaluate

    torch.manual_seed(0)
    model = TinyNet(width=16).eval()
    before = copy.deepcopy(model.state_dict())
    data = tiny_target()
    frozen = run(model, data, granularity=granularity, round_to=1)
    assert frozen.weights is None  # lr_weights 0: the paper's frozen weights, nothing to store
    tuned = run(model, data, granularity=granularity, round_to=1, lr_weights=0.01)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the given model untouched
    assert set(tuned.weights) == {n for n, _ in model.named_parameters()}
    assert any(not torch.equal(tuned.weights[n], p) for n, p in model.named_parameters())
    assert [r["test_acc"] for r in tuned.history] != [r["test_acc"] for r in frozen.history]

    meta = {"model": "tiny", "model_sha256": "ab" * 32, "num_outputs": 4, "search": {"granularity": granularity},
            "target": {"name": "t", "kind": data.kind, "source_classes": [0], "class_names": data.class_names}}
    path = tmp_path / "a.pt"
    save_artifact(path, masks=tuned.masks, head=tuned.head, meta=meta, weights=tuned.weights)
    rebuilt = build_reengineered(model, load_artifact(path))
    accs = evaluate(rebuilt, data.eval_splits(), Normalize(MEAN, STD), torch.device("cpu"))
    kept = tuned.history[tuned.selected_epoch]
    assert accs == {"val_acc": kept["val_acc"], "test_acc": kept["test_acc"]}
    for name, bits in tuned.masks.items():
        assert torch.equal(rebuilt.original.get_parameter(name), tuned.weights[name] * bits)
