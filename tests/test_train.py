"""Training pieces: augmentation, class balancing, schedule, case split, resume, initialisation."""

import json

import cv2
import numpy as np
import pytest

from edge_thyroid.dataset import read_samples, split_by_case

from .conftest import DATA_DIR, needs_data, needs_torch, ultrasound_like
from .test_evaluate import synthetic_csv

pytestmark = needs_torch


def test_augment_keeps_dtype_and_shape_and_never_flips_vertically():
    from edge_thyroid.export.train import augment

    image = ultrasound_like(96, 120, seed=1)
    image[:20] = 255  # a bright band at the top (the skin line): must stay at the top
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = augment(image, rng)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert out[:15].mean() > 2 * out[-15:].mean()
    # Strength 0 leaves only the horizontal flip: every output is the image or its mirror, never upside down.
    seen = set()
    for _ in range(20):
        out = augment(image, rng, strength=0.0)
        if np.array_equal(out, image):
            seen.add("same")
        elif np.array_equal(out, image[:, ::-1]):
            seen.add("mirror")
        else:
            pytest.fail("strength-0 augmentation changed more than left/right")
    assert seen == {"same", "mirror"}


def test_balanced_sampler_draws_both_classes_equally():
    from edge_thyroid.export.train import balanced_sampler

    labels = [1] * 90 + [0] * 10
    draws = np.array([labels[i] for i in balanced_sampler(labels, seed=0)] +
                     [labels[i] for i in balanced_sampler(labels, seed=1)])
    assert draws.size == 200
    assert 0.38 < draws.mean() < 0.62


def test_lr_schedule_warms_up_then_decays():
    from edge_thyroid.export.train import lr_lambda

    f = lr_lambda(100, 10)
    values = [f(s) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(b <= a + 1e-12 for a, b in zip(values[9:], values[10:]))
    assert values[-1] == pytest.approx(0.01, abs=0.01)


def test_split_is_by_case_and_folds_cover_everything(tmp_path):
    samples = read_samples(synthetic_csv(tmp_path, n_cases=12, crops_per_case=3))
    seen_val = []
    for fold in range(4):
        train, val = split_by_case(samples, folds=4, fold=fold, seed=0)
        assert not {s.case_id for s in train} & {s.case_id for s in val}
        assert len(train) + len(val) == len(samples)
        seen_val += [s.image for s in val]
    assert sorted(seen_val) == sorted(s.image for s in samples)


def test_fit_resumes_epoch_optimizer_and_history(tmp_path):
    import torch

    from edge_thyroid.export.checkpoint import load_checkpoint
    from edge_thyroid.export.train import Balance, TrainConfig, fit

    samples = read_samples(synthetic_csv(tmp_path / "data", n_cases=6))
    train, val = samples[:8], samples[8:]
    config = TrainConfig(backbone="googlenet", modalities=("bmode",), image_size=32, epochs=1, batch_size=4,
                         balance=Balance.BOTH, mixup=0.4, patience=5)
    out = tmp_path / "run"
    first = fit(config, train, val, out, log=lambda _: None)
    assert first.best_epoch == 1 and len(first.history) == 1
    _, _, payload = load_checkpoint(out / "last.pt")
    assert payload["train_state"]["epoch"] == 1 and payload["train_state"]["step"] == 2
    steps_before = {k: v["step"].item() for k, v in payload["optimizer"]["state"].items()}
    assert set(steps_before.values()) == {2.0}

    config.epochs = 2
    messages = []
    second = fit(config, train, val, out, log=messages.append)
    assert any("resumed" in m and "epoch 1" in m for m in messages)
    assert [h["epoch"] for h in second.history] == [1, 2]
    _, _, payload = load_checkpoint(out / "last.pt")
    assert {v["step"].item() for v in payload["optimizer"]["state"].values()} == {4.0}
    assert payload["scheduler"]["last_epoch"] == 4
    assert json.loads((out / "history.json").read_text())[1]["epoch"] == 2
    model, info, best = load_checkpoint(out / "best.pt")
    assert info.image_size == 32 and info.threshold["method"] == "youden"
    assert info.training["recipe"]["balance"] == "both"
    assert torch.isfinite(model.head.weight).all()


def test_init_from_copies_the_backbone(tmp_path):
    import torch

    from edge_thyroid.export.checkpoint import CheckpointInfo, save_checkpoint
    from edge_thyroid.export.models import MultimodalClassifier
    from edge_thyroid.export.train import init_from

    torch.manual_seed(0)
    source = MultimodalClassifier("googlenet", ("bmode",))
    save_checkpoint(tmp_path / "pre.pt", source, CheckpointInfo(backbone="googlenet", modalities=("bmode",)))
    target = MultimodalClassifier("googlenet", ("bmode", "smi", "swe"))
    copied = init_from(target, tmp_path / "pre.pt")
    assert copied > 100
    assert torch.equal(target.backbone.conv1.conv.weight, source.backbone.conv1.conv.weight)
    with pytest.raises(ValueError, match="no backbone tensor"):
        init_from(MultimodalClassifier("vgg16", ("bmode",)), tmp_path / "pre.pt")


def test_ema_tracks_the_weights():
    import torch

    from edge_thyroid.export.train import Ema

    model = torch.nn.Linear(3, 1)
    ema = Ema(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, step=100)
    first = ema.model.weight.detach().clone()
    assert not torch.equal(first, model.weight) or torch.equal(first, torch.ones_like(first))
    for step in range(101, 140):
        ema.update(model, step)
    torch.testing.assert_close(ema.model.weight, model.weight, atol=1e-6, rtol=0)


def test_ema_decay_ramps_up_and_is_capped():
    from edge_thyroid.export.train import ema_decay_at

    assert ema_decay_at(0, 0.99) == 0.1 and ema_decay_at(8, 0.99) == 0.5
    # The recipe's ~510 steps stay under the 0.99 cap (reached at step 890) with the default ramp.
    assert ema_decay_at(509, 0.99) == 510 / 519 < 0.99 and ema_decay_at(889, 0.99) < 0.99 <= ema_decay_at(890, 0.99)
    assert ema_decay_at(50, 0.9, ramp=4.0) == 0.9 and ema_decay_at(1, 0.9, ramp=4.0) == 0.4


def test_an_ema_ramp_of_two_is_the_plain_mean_of_the_start_and_every_step():
    """Against a float64 NumPy reference: with the ramp (1 + s) / (2 + s) and a cap that never acts, the
    average after steps 0..S is (start + w_0 + ... + w_S) / (S + 2)."""
    import torch

    from edge_thyroid.export.train import Ema

    model = torch.nn.Linear(4, 2).double()
    start = model.weight.detach().numpy().copy()
    ema = Ema(model, decay=0.999999, ramp=2.0)
    rng = np.random.default_rng(0)
    seen = [start]
    for step in range(40):
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(rng.normal(size=(2, 4))))
        seen.append(model.weight.detach().numpy().copy())
        ema.update(model, step)
    np.testing.assert_allclose(ema.model.weight.numpy(), np.mean(seen, axis=0), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="EMA ramp must be >= 2 .*got 1.5"):
        Ema(model, decay=0.99, ramp=1.5)


@needs_data
def test_busi_samples_drop_the_cross_labelled_duplicate():
    from edge_thyroid.export.pretrain import busi_samples

    samples = busi_samples(DATA_DIR / "busi" / "labels.csv")
    names = {s.image.name for s in samples}
    assert "benign (433).png" not in names and "malignant (145).png" not in names
    assert len(samples) == 778
    assert sum(s.label for s in samples) == 209
    image = cv2.imread(str(samples[0].image), cv2.IMREAD_GRAYSCALE)
    assert image is not None
