import copy
import dataclasses

import pytest
import torch
from conftest import TinyNet, tiny_target
from torch import nn

from seam.core.errors import SeamError
from seam.data.augment import Normalize
from seam.models.masks import maskable_tensors
from seam.reengineer.accuracy import accuracy, predict
from seam.reengineer.loop import TrainingError
from seam.reuse.finetune import FinetuneConfig, FinetuneError, finetune, masked_start, replace_classifier

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def pretrained() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet(num_classes=4)


DEFAULTS = dict(lr_hidden=0.005, lr_output=0.05, momentum=0.9, weight_decay=1e-4, batch_size=16, max_epochs=4,
                early_stop=0, select_on="val", seed=0)


def run(model, data=None, classifier="fc", **overrides):
    config = FinetuneConfig(**{**DEFAULTS, **overrides})
    return finetune(model, classifier, data or tiny_target(), mean=MEAN, std=STD, config=config, progress=False)


def snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_replace_classifier_makes_a_seeded_k_class_copy():
    model = pretrained()
    before = snapshot(model)
    new = replace_classifier(model, "fc", 3, seed=1)
    assert isinstance(new.fc, nn.Linear) and new.fc.weight.shape == (3, 8) and new.fc.bias.shape == (3,)
    assert new(torch.zeros(2, 3, 8, 8)).shape == (2, 3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # original untouched
    assert model.fc.out_features == 4
    assert torch.equal(new.conv.weight, model.conv.weight) and new.conv.weight is not model.conv.weight
    assert torch.equal(replace_classifier(model, "fc", 3, seed=1).fc.weight, new.fc.weight)
    assert not torch.equal(replace_classifier(model, "fc", 3, seed=2).fc.weight, new.fc.weight)


def test_replace_classifier_in_a_sequential_and_with_dropout():
    model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 10)))
    new = replace_classifier(model, "1.2", 2, dropout=0.5)
    head = new[1][2]
    assert isinstance(head, nn.Sequential) and isinstance(head[0], nn.Dropout) and head[0].p == 0.5
    assert isinstance(head[1], nn.Linear) and head[1].weight.shape == (2, 6)
    assert new(torch.zeros(3, 12)).shape == (3, 2)
    assert isinstance(model[1][2], nn.Linear) and model[1][2].out_features == 10


@pytest.mark.parametrize(
    "path, kwargs, match",
    [
        ("head", {}, "TinyNet has no module 'head'"),
        ("bn", {}, "TinyNet.bn must be an nn.Linear.*found BatchNorm2d"),
        ("fc", {"dropout": 1.0}, "dropout"),
        ("fc", {"dropout": -0.1}, "dropout"),
        ("fc", {"num_classes": 1}, "num_classes"),
    ],
)
def test_replace_classifier_errors(path, kwargs, match):
    kwargs = {"num_classes": 2, **kwargs}
    with pytest.raises(FinetuneError, match=match) as info:
        replace_classifier(pretrained(), path, **kwargs)
    assert isinstance(info.value, SeamError) and isinstance(info.value, ValueError)


def test_finetune_learns_keeps_the_best_epoch_and_leaves_the_model_untouched():
    model = replace_classifier(pretrained(), "fc", 2)
    before = snapshot(model)
    rows = []
    # Larger rates than the release's so that 4 epochs of 64 images suffice.
    config = FinetuneConfig(**{**DEFAULTS, "lr_hidden": 0.05, "lr_output": 0.1})
    result = finetune(model, "fc", tiny_target(), mean=MEAN, std=STD, config=config, progress=False,
                      on_epoch=rows.append)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert rows == result.history and [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert set(rows[0]) >= {"epoch", "loss", "train_acc", "val_acc", "test_acc"}
    best = max(r["val_acc"] for r in rows)
    assert result.best_acc == best > 0.75  # chance is 0.5
    assert rows[0]["val_acc"] < best  # it learned something
    assert rows[result.best_epoch]["val_acc"] == best
    assert all(r["val_acc"] < best for r in rows[: result.best_epoch])  # first epoch on ties
    assert set(result.state_dict) == set(model.state_dict())
    assert all(v.device.type == "cpu" for v in result.state_dict.values())
    # The returned weights are the best epoch's: they reproduce its val accuracy.
    model.load_state_dict(result.state_dict)
    data = tiny_target()
    assert accuracy(predict(model, data.val_x, Normalize(MEAN, STD)), data.val_y) == result.best_acc


def test_early_stopping_stops():
    # A frozen backbone (BN statistics fixed) and a negligible lr: accuracy never improves
    # after epoch 0, so it stops early_stop epochs later.
    result = run(replace_classifier(pretrained(), "fc", 2), max_epochs=10, early_stop=2, lr_output=1e-12,
                 train_only_output=True)
    assert result.best_epoch == 0 and len(result.history) == 3


def test_train_only_output_changes_only_the_output_layer():
    model = replace_classifier(pretrained(), "fc", 2, dropout=0.2)
    result = run(model, classifier="fc", train_only_output=True, max_epochs=2)
    before, after = model.state_dict(), result.state_dict
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.1.weight", "fc.1.bias"}  # BN running stats and batch count included


def test_full_finetuning_moves_batchnorm_statistics():
    model = replace_classifier(pretrained(), "fc", 2)
    result = run(model, max_epochs=1)
    assert not torch.equal(model.bn.running_mean, result.state_dict["bn.running_mean"])
    assert not torch.equal(model.conv.weight, result.state_dict["conv.weight"])


def test_masked_start_zeroes_exactly_the_masked_entries():
    model = pretrained()
    before = snapshot(model)
    g = torch.Generator().manual_seed(0)
    masks = {name: torch.rand(getattr(m, p).shape, generator=g) < 0.5 for name, m, p in maskable_tensors(model)}
    start = masked_start(model, masks)
    for name, module, pname in maskable_tensors(start):
        tensor, orig = getattr(module, pname), before[name]
        assert torch.equal(tensor[~masks[name]], torch.zeros_like(tensor[~masks[name]]))
        assert torch.equal(tensor[masks[name]], orig[masks[name]])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(start.bn.running_var, model.bn.running_var)


def test_masked_start_rejects_masks_of_another_model():
    model = pretrained()
    masks = {name: torch.ones_like(getattr(m, p), dtype=torch.bool) for name, m, p in maskable_tensors(model)}
    with pytest.raises(FinetuneError, match="missing"):
        masked_start(model, {k: v for k, v in masks.items() if k != "fc.bias"})
    with pytest.raises(FinetuneError, match="shape"):
        masked_start(replace_classifier(model, "fc", 2), masks)


def test_same_seed_same_history():
    model = replace_classifier(pretrained(), "fc", 2, dropout=0.3)
    a, b = run(model, max_epochs=2), run(model, max_epochs=2)
    assert a.history == b.history
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert run(model, max_epochs=2, seed=1).history != a.history


def test_select_on_val_without_val_images():
    full = tiny_target()
    data = dataclasses.replace(full, val_x=full.val_x[:0], val_y=full.val_y[:0])
    with pytest.raises(TrainingError, match="no val images"):
        run(replace_classifier(pretrained(), "fc", 2), data=data)
    result = run(replace_classifier(pretrained(), "fc", 2), data=data, select_on="test", max_epochs=1)
    assert "val_acc" not in result.history[0] and result.best_acc == result.history[0]["test_acc"]


def test_classifier_errors():
    with pytest.raises(FinetuneError, match="no module 'head'"):
        run(pretrained(), classifier="head")
    untouched = pretrained()
    before = copy.deepcopy(untouched.state_dict())
    run(untouched, max_epochs=1)  # a 4-class head on binary labels is fine: labels < 4
    assert all(torch.equal(before[k], v) for k, v in untouched.state_dict().items())


class Killed(Exception):
    """Stands in for a crash right after an epoch's state was saved."""


def crash_at(epoch: int, step: str | None = None):
    def on_epoch(*args):
        row = args[-1]
        if row["epoch"] == epoch and (step is None or args[0] == step):
            raise Killed
    return on_epoch


def test_an_interrupted_finetuning_resumes_to_the_uninterrupted_result(tmp_path):
    """Dropout draws from the global RNG, batches from the generator: both come back."""
    from seam.core.resume import ResumeFile

    model = replace_classifier(pretrained(), "fc", 2, dropout=0.5, seed=0)
    config = FinetuneConfig(**{**DEFAULTS, "max_epochs": 6})

    def go(resume=None, on_epoch=None):
        return finetune(model, "fc", tiny_target(), mean=MEAN, std=STD, config=config, progress=False,
                        on_epoch=on_epoch, resume=resume)

    whole = go()
    path = tmp_path / "state.pt"
    with pytest.raises(Killed):
        go(ResumeFile(path, {"run": 1}), crash_at(2))
    rows = []
    resumed = go(ResumeFile(path, {"run": 1}), rows.append)
    assert rows == whole.history == resumed.history
    assert resumed.best_epoch == whole.best_epoch
    assert all(torch.equal(whole.state_dict[k], resumed.state_dict[k]) for k in whole.state_dict)


def test_seams_flow_resumes_inside_its_last_step_and_replays_the_finished_ones(tmp_path):
    from seam.core.resume import ResumeFile
    from seam.reengineer.search import SearchConfig
    from seam.reuse.flows import seam_flow

    config = FinetuneConfig(**{**DEFAULTS, "max_epochs": 4})
    kwargs = dict(mean=MEAN, std=STD, config=config, dropout=0.0, device="cpu", threshold=0.2,
                  head_config=config.model_copy(update={"train_only_output": True, "max_epochs": 2}),
                  search_config=SearchConfig(alpha=0.5, lr_mask=0.2, lr_head=0.01, batch_size=16, max_epochs=6,
                                             select_on="val", seed=0))
    rows_whole: list = []
    whole, summary = seam_flow(pretrained(), "fc", tiny_target(), on_epoch=lambda s, r: rows_whole.append((s, r)),
                               **kwargs)
    resume = ResumeFile(tmp_path / "finetune-seam.pt", {"run": 1})
    with pytest.raises(Killed):
        seam_flow(pretrained(), "fc", tiny_target(), on_epoch=crash_at(1, "finetune"), resume=resume, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "finetune-seam.finetune.pt", "finetune-seam.output_layer.pt", "finetune-seam.reengineer.pt"]
    rows: list = []
    resumed, again = seam_flow(pretrained(), "fc", tiny_target(), on_epoch=lambda s, r: rows.append((s, r)),
                               resume=resume, **kwargs)
    assert rows == rows_whole and again == summary
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())
    resume.clear()
    assert not list(tmp_path.iterdir())
