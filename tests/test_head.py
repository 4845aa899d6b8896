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
