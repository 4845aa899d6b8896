"""The fusion head and its class activation maps."""

import numpy as np
import pytest

from edge_thyroid.errors import InputError
from edge_thyroid.head import FusionHead, pool


def make_head(seed=0, channels=16):
    rng = np.random.default_rng(seed)
    return FusionHead(("bmode", "smi", "swe"), rng.normal(size=(3, channels)), rng.normal(size=3), float(rng.normal()))


def test_cam_is_the_gradient_free_formula_and_averages_to_the_logit_term():
    rng = np.random.default_rng(1)
    head = make_head()
    maps = rng.normal(size=(16, 5, 7))
    cam = head.cam("smi", maps)
    expected = np.einsum("k,kyx->yx", head.weight[1], maps)
    np.testing.assert_allclose(cam, expected, rtol=1e-12)
    out = head.predict({"smi": pool(maps)})
    assert cam.mean() + head.presence_bias[1] == pytest.approx(out.contributions["smi"], rel=1e-12)


def test_logit_is_bias_plus_present_contributions_in_float64():
    rng = np.random.default_rng(2)
    head = make_head()
    feats = {"bmode": rng.normal(size=16), "swe": rng.normal(size=16)}
    out = head.predict(feats)
    expected = head.bias + head.weight[0] @ feats["bmode"] + head.presence_bias[0] + head.weight[2] @ feats["swe"] + head.presence_bias[2]
    assert out.logit == pytest.approx(expected, rel=1e-12)
    assert out.probability == pytest.approx(1 / (1 + np.exp(-expected)), rel=1e-12)


def test_unknown_modality_and_wrong_width_are_named():
    head = make_head()
    with pytest.raises(InputError, match="unknown modality 'doppler'"):
        head.predict({"doppler": np.zeros(16)})
    with pytest.raises(InputError, match="8 channels; expected 16"):
        head.predict({"bmode": np.zeros(8)})


def test_head_round_trip(tmp_path):
    head = make_head(3)
    head.save(tmp_path / "head.npz")
    loaded = FusionHead.load(tmp_path / "head.npz", head.modalities)
    np.testing.assert_array_equal(loaded.weight, head.weight)
    assert loaded.bias == head.bias


def make_class_head(seed=0, channels=12, classes=5, malignant=(1, 3)):
    from edge_thyroid.head import CAM_GRADIENT, ClassMap

    rng = np.random.default_rng(seed)
    mask = np.zeros(classes, dtype=bool)
    mask[list(malignant)] = True
    return FusionHead(("bmode",), np.zeros((1, channels)), np.zeros(1), 0.0,
                      classes=ClassMap(rng.normal(size=(classes, channels)), rng.normal(size=classes), mask),
                      cam_mode=CAM_GRADIENT)


def test_n_class_head_is_the_softmax_mass_of_the_malignant_classes():
    head = make_class_head()
    features = np.random.default_rng(5).normal(size=12) * 3
    scores = head.classes.weight @ features + head.classes.bias
    softmax = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    out = head.predict({"bmode": features})
    assert out.probability == pytest.approx(softmax[[1, 3]].sum(), rel=1e-12)
    assert out.logit == pytest.approx(np.log(softmax[[1, 3]].sum() / softmax[[0, 2, 4]].sum()), rel=1e-9)


def test_n_class_cam_is_the_log_odds_gradient_map():
    """The CAM weights are d(log-odds)/d(pooled features), checked by central differences."""
    head = make_class_head(seed=2)
    maps = np.random.default_rng(6).normal(size=(12, 4, 5))
    features = pool(maps)
    step = 1e-6
    numeric = np.array([(head.predict({"bmode": features + step * e}).logit
                         - head.predict({"bmode": features - step * e}).logit) / (2 * step) for e in np.eye(12)])
    np.testing.assert_allclose(head.cam("bmode", maps), np.tensordot(numeric, maps, axes=(0, 0)), rtol=1e-5, atol=1e-8)


def test_class_head_and_cam_mode_round_trip(tmp_path):
    head = make_class_head(seed=4)
    head.save(tmp_path / "head.npz")
    loaded = FusionHead.load(tmp_path / "head.npz", ("bmode",))
    assert loaded.cam_mode == "gradient"
    np.testing.assert_array_equal(loaded.classes.malignant, head.classes.malignant)
    features = np.random.default_rng(7).normal(size=12)
    assert loaded.predict({"bmode": features}).logit == head.predict({"bmode": features}).logit


def test_head_without_cam_refuses_to_draw_one(tmp_path):
    from edge_thyroid.errors import BundleError

    head = FusionHead(("bmode",), np.array([[-1.0, 1.0]]), np.zeros(1), 0.0, cam_mode="none")
    assert not head.has_cam
    with pytest.raises(InputError, match="no class activation map"):
        head.cam("bmode", np.zeros((2, 1, 1)))
    head.save(tmp_path / "head.npz")
    assert not FusionHead.load(tmp_path / "head.npz", ("bmode",)).has_cam
    all_malignant = make_class_head(malignant=(0, 1, 2, 3, 4))
    all_malignant.save(tmp_path / "bad.npz")
    with pytest.raises(BundleError, match="5 of 5 classes malignant"):
        FusionHead.load(tmp_path / "bad.npz", ("bmode",))
