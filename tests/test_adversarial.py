import importlib

import pytest
import torch
from torch import nn

from seam.core.errors import SeamError
from seam.data.augment import Normalize
from seam.reuse.attack import (
    AttackError,
    defect_metrics,
    feature_extractor,
    generate_adversarial,
    install_advertorch_shim,
    make_target,
    remos_feature_loss,
)
from tests.conftest import TinyNet, tiny_target

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # normalised pixels span [-2, 2]
FAST = dict(mean=MEAN, std=STD, nb_iter=8, batch_size=8, progress=False)


def _net(seed: int = 0, **kw) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(**kw)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return tiny_target(n_train=4, n_val=2, n_test=12).test_x


def _graded(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of one brightness in [96, 160] plus noise; label 0 = bright (>= 128).

    Brightness is spread evenly, so some inputs lie within the attack radius of the boundary.
    """
    g = torch.Generator().manual_seed(seed)
    level = torch.randint(96, 161, (n, 1, 1, 1), generator=g)
    x = (level + torch.randint(-8, 9, (n, 3, 8, 8), generator=g)).to(torch.uint8)
    return x, (level.flatten() < 128).long()


@pytest.fixture(scope="module")
def trained() -> tuple[TinyNet, torch.Tensor, torch.Tensor]:
    """A TinyNet that learned the brightness threshold, and its test images and labels."""
    train_x, train_y = _graded(128, 0)
    model = _net(1, num_classes=2)
    x = Normalize(MEAN, STD)(train_x)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), train_y).backward()
        opt.step()
    return (model.eval(), *_graded(32, 1))


def test_shim_lets_advertorch_import_and_is_idempotent():
    install_advertorch_shim()
    gradcheck = importlib.import_module("torch.autograd.gradcheck")
    first = gradcheck.zero_gradients
    install_advertorch_shim()
    assert gradcheck.zero_gradients is first
    import advertorch.attacks  # noqa: F401  (fails without the shim)

    a, b = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    (a.sum() * 2 + b.sum()).backward()
    gradcheck.zero_gradients(a)
    assert torch.equal(a.grad, torch.zeros(3)) and torch.equal(b.grad, torch.ones(2))
    gradcheck.zero_gradients([b, torch.zeros(1)])  # an iterable; a tensor without grad is fine
    assert torch.equal(b.grad, torch.zeros(2))


def test_shim_keeps_an_existing_zero_gradients(monkeypatch):
    gradcheck = importlib.import_module("torch.autograd.gradcheck")
    sentinel = object()
    monkeypatch.setattr(gradcheck, "zero_gradients", sentinel, raising=False)
    install_advertorch_shim()
    assert gradcheck.zero_gradients is sentinel


def test_feature_extractor_returns_penultimate_features(images):
    model = _net(width=6).train()
    extractor = feature_extractor(model, "fc")
    x = Normalize(MEAN, STD)(images)
    assert extractor(x).shape == (len(images), 6)
    assert not extractor.training and isinstance(extractor.fc, nn.Identity)
    assert isinstance(model.fc, nn.Linear) and model.training  # the original is untouched
    # The features are exactly what the classifier reads.
    model.eval()
    assert torch.allclose(model.fc(extractor(x)), model(x), atol=1e-6)

    seq = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2)))
    assert feature_extractor(seq, "1.2")(torch.zeros(3, 3, 2, 2)).shape == (3, 5)


@pytest.mark.parametrize("path, words", [("head", ["head", "TinyNet"]), ("fc.weight", ["fc.weight"]),
                                         ("conv", ["conv", "Conv2d", "TinyNet"]), ("", ["TinyNet"])])
def test_feature_extractor_rejects_bad_paths(path, words):
    with pytest.raises(AttackError) as info:
        feature_extractor(_net(), path)
    assert all(w in str(info.value) for w in words)
    assert issubclass(AttackError, SeamError)


def test_remos_loss_formula():
    f = torch.tensor([[998.0, 1.0, 3.0], [1000.0, 0.0, 0.0]])
    y = make_target(f)
    assert torch.equal(y, torch.tensor([[1000.0, 0, 0], [1000.0, 0, 0]]))
    # Input 0: (998-1000)^2 + 0.1 * mean(1, 9) = 4.5; input 1: 0; mean 2.25, negated.
    assert remos_feature_loss(f, y).item() == pytest.approx(-2.25)
    with pytest.raises(AttackError):
        remos_feature_loss(torch.zeros(2, 1), torch.zeros(2, 1))  # needs a feature besides the first


def test_defect_metrics_on_hand_made_logits():
    labels = torch.tensor([0, 1, 1, 0, 1])
    clean = torch.tensor([[2.0, 1], [0, 1], [3, 1], [5, 0], [0, 4]])  # preds 0 1 0 0 1: 4 correct
    adv = torch.tensor([[0.0, 1], [0, 1], [3, 1], [5, 0], [4, 0]])  # preds 1 1 0 0 0: 0 and 4 flip
    assert defect_metrics(clean, adv, labels) == {"acc": 0.8, "dir": 0.5, "n": 5, "n_clean_correct": 4}
    with pytest.raises(AttackError, match="undefined"):
        defect_metrics(clean, adv, 1 - torch.tensor([0, 1, 0, 0, 1]))
    with pytest.raises(AttackError):
        defect_metrics(clean, adv[:4], labels)


def test_attack_pulls_features_to_the_target_within_eps(images):
    """The loss is the negative distance to y; the untargeted attack maximises it, so it rises."""
    model = _net()
    extractor = feature_extractor(model, "fc")
    flags = [p.requires_grad for p in extractor.parameters()]
    state = torch.get_rng_state()
    adv = generate_adversarial(extractor, images, eps=0.1, eps_iter=0.02, **FAST)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert [p.requires_grad for p in extractor.parameters()] == flags
    assert all(p.grad is None for p in extractor.parameters())

    assert adv.dtype == torch.float32 and adv.shape == images.shape and adv.device.type == "cpu"
    clean = Normalize(MEAN, STD)(images)
    assert adv.min() >= -2.2 and adv.max() <= 2.2
    assert (adv - clean.clamp(-2.2, 2.2)).abs().max() <= 0.1 + 1e-5
    assert not torch.equal(adv, clean)
    with torch.no_grad():
        f_clean, f_adv = extractor(clean), extractor(adv)
    assert remos_feature_loss(f_adv, make_target(f_adv)) > remos_feature_loss(f_clean, make_target(f_clean))
    assert f_adv[:, 0].mean() > f_clean[:, 0].mean()


def test_attack_is_deterministic_per_seed(images):
    extractor = feature_extractor(_net(), "fc")
    a = generate_adversarial(extractor, images, seed=3, **FAST)
    b = generate_adversarial(extractor, images, seed=3, **FAST)
    c = generate_adversarial(extractor, images, seed=4, **FAST)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_attack_changes_predictions_of_a_trained_classifier(trained):
    """With the paper's eps the attack on the features flips near-boundary predictions."""
    model, images, labels = trained
    with torch.no_grad():
        clean_logits = model(Normalize(MEAN, STD)(images))
    assert (clean_logits.argmax(1) == labels).float().mean() >= 0.9  # it did learn the task
    adv = generate_adversarial(feature_extractor(model, "fc"), images, eps=0.1, eps_iter=0.025, **FAST)
    with torch.no_grad():
        adv_logits = model(adv)
    assert (adv_logits.argmax(1) != clean_logits.argmax(1)).any()
    assert defect_metrics(clean_logits, adv_logits, labels)["dir"] > 0


def test_attack_rejects_bad_input(images):
    extractor = feature_extractor(_net(), "fc")
    with pytest.raises(AttackError, match="uint8"):
        generate_adversarial(extractor, images.float(), **FAST)
    with pytest.raises(AttackError, match="clip"):
        generate_adversarial(extractor, images, clip=(1.0, -1.0), **FAST)
