"""Screen layouts: presets and their scaling rule, layout files, and every validation error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from edge_thyroid.errors import InputError
from edge_thyroid.frames import Pane
from edge_thyroid.layout import (MAX_LAYOUT_BYTES, PRESETS, Layout, Modality, load_layout, parse_layout,
                                 preset)


def test_presets_fit_1080p_exactly_and_do_not_overlap():
    for name in ("single", "dual", "triple"):
        layout = preset(name).resolve(1920, 1080)
        assert layout.panes == preset(name).panes  # no scaling at the preset's own size
    assert preset("dual").modalities == ("bmode", "swe")
    assert preset("triple").modalities == ("bmode", "smi", "swe")


def test_presets_scale_to_other_sizes_of_the_same_aspect():
    half = preset("dual").resolve(960, 540)
    assert half.panes[0].roi == (20, 60, 450, 420)
    assert half.panes[1].roi == (490, 60, 450, 420)
    assert half.screen == (960, 540)
    uhd = preset("triple").resolve(3840, 2160)
    assert [p.roi for p in uhd.panes] == [(40, 320, 1240, 1400), (1300, 320, 1240, 1400), (2560, 320, 1240, 1400)]
    # Rounding corners (not sizes) keeps neighbours apart at awkward scales.
    odd = preset("triple").resolve(1366, 768)
    odd.validate(1366, 768)


def test_a_preset_refuses_another_aspect_ratio():
    with pytest.raises(InputError, match=r"1920x1080 screen; the source gives 1024x768 \(another aspect ratio\)"):
        preset("dual").resolve(1024, 768)


def test_full_preset_is_the_whole_frame():
    layout = preset("full").resolve(300, 200)
    assert layout.engine_panes() == [Pane("bmode", (0, 0, 300, 200))]


def test_yaml_file_with_nodule_roi(tmp_path):
    path = tmp_path / "station.yaml"
    path.write_text("name: station\nscreen: {width: 1280, height: 720}\npanes:\n"
                    "  - {modality: bmode, roi: [10, 60, 600, 600]}\n"
                    "  - {modality: SWE, roi: '640, 60, 600, 600'}\n"
                    "nodule: [200, 200, 128, 96]\n")
    layout = load_layout(path)
    assert layout.name == "station"
    assert layout.pane(Modality.SWE).roi == (640, 60, 600, 600)
    # The model sees the nodule box in place of the B-mode pane; the other panes whole.
    assert layout.engine_panes() == [Pane("bmode", (200, 200, 128, 96)), Pane("swe", (640, 60, 600, 600))]
    scaled = layout.resolve(2560, 1440)
    assert scaled.nodule == (400, 400, 256, 192)


def test_json_file_round_trips(tmp_path):
    layout = preset("triple")
    path = tmp_path / "triple.json"
    path.write_text(json.dumps(layout.to_dict()))
    loaded = load_layout(path)
    assert loaded.panes == layout.panes and loaded.screen == layout.screen


def test_absolute_layout_is_checked_against_the_frame(tmp_path):
    layout = parse_layout({"panes": [{"modality": "bmode", "roi": [0, 0, 500, 400]}]})
    assert layout.resolve(640, 480).panes[0].roi == (0, 0, 500, 400)
    with pytest.raises(InputError, match=r"bmode pane x=0,y=0,w=500,h=400 is outside the 320x240 frame"):
        layout.resolve(320, 240)


BAD_LAYOUTS = [
    ({"panes": [{"modality": "doppler", "roi": [0, 0, 10, 10]}]}, r"unknown modality 'doppler'"),
    ({"panes": [{"modality": "bmode", "roi": [0, 0, 10, 10]}, {"modality": "bmode", "roi": [20, 0, 10, 10]}]},
     r"modality 'bmode' appears twice"),
    ({"panes": [{"modality": "bmode", "roi": [0, 0, 100, 100]}, {"modality": "swe", "roi": [50, 50, 100, 100]}]},
     r"the bmode pane \[0, 0, 100, 100\] overlaps the swe pane"),
    ({"screen": {"width": 640, "height": 480}, "panes": [{"modality": "bmode", "roi": [600, 0, 100, 100]}]},
     r"outside the 640x480 frame"),
    ({"panes": [{"modality": "bmode", "roi": [0, 0, 10]}]}, r"expected 4 numbers \[x, y, w, h\], got 3"),
    ({"panes": [{"modality": "bmode", "roi": [0, 0, 10.5, 10]}]}, r"10.5 is not an integer pixel coordinate"),
    ({"panes": [{"modality": "bmode", "roi": [-1, 0, 10, 10]}]}, r"is not a rectangle on a screen"),
    ({"panes": [{"modality": "bmode", "roi": [0, 0, 0, 10]}]}, r"is not a rectangle on a screen"),
    ({"panes": [{"modality": "bmode", "roi": [0, 0, True, 10]}]}, r"True is not an integer"),
    ({"panes": [{"modality": "bmode", "roi": "a,b,c,d"}]}, r"'a' is not an integer"),
    ({"panes": [{"modality": "bmode", "roi": [0, 0, 100, 100]}], "nodule": [90, 90, 20, 20]},
     r"nodule ROI \[90, 90, 20, 20\] is not inside the bmode pane"),
    ({"panes": [{"modality": "swe", "roi": [0, 0, 100, 100]}], "nodule": [10, 10, 20, 20]},
     r"has a nodule ROI but no bmode pane"),
    ({"panes": [{"modality": "bmode", "roi": [0, 0, 10, 10]}], "colour": "red"}, r"unknown key\(s\) \['colour'\]"),
    ({"panes": [{"modality": "bmode", "roi": [0, 0, 10, 10], "zoom": 2}]}, r"unknown key\(s\) \['zoom'\]"),
    ({"panes": [{"modality": m, "roi": [i * 20, 0, 10, 10]} for i, m in enumerate(["bmode", "smi", "swe", "bmode"])]},
     r"4 panes; expected 1 to 3"),
    ({"panes": []}, r"'panes' must be a non-empty list"),
    ({"panes": "bmode"}, r"'panes' must be a non-empty list"),
    ({"panes": [["bmode"]]}, r"pane 0 must be a mapping"),
    ({"screen": {"width": 0, "height": 10}, "panes": [{"modality": "bmode", "roi": [0, 0, 1, 1]}]},
     r"screen size 0x10 must be integers"),
    ({"screen": [1920, 1080], "panes": [{"modality": "bmode", "roi": [0, 0, 1, 1]}]}, r"'screen' must be"),
    ({"name": "", "panes": [{"modality": "bmode", "roi": [0, 0, 1, 1]}]}, r"name must be a non-empty string"),
    ([1, 2, 3], r"expected a mapping with 'panes'"),
]


@pytest.mark.parametrize("document, message", BAD_LAYOUTS, ids=[m[:30] for _, m in BAD_LAYOUTS])
def test_bad_layouts_say_what_is_wrong(document, message):
    with pytest.raises(InputError, match=message):
        parse_layout(document, origin="test.yaml")


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match=r"unknown layout preset|neither a preset"):
        load_layout("quad")
    with pytest.raises(InputError, match=r"must end in .yaml, .yml or .json"):
        (tmp_path / "layout.txt").write_text("panes: []")
        load_layout(tmp_path / "layout.txt")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_LAYOUT_BYTES)
    with pytest.raises(InputError, match=rf"is {MAX_LAYOUT_BYTES + 2} bytes; a layout is expected to be under"):
        load_layout(big)
    broken = tmp_path / "broken.yaml"
    broken.write_text("panes: [ {modality: bmode, roi: [0, 0")
    with pytest.raises(InputError, match=r"is not valid YAML"):
        load_layout(broken)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match=r"expected UTF-8 YAML or JSON"):
        load_layout(binary)
    with pytest.raises(InputError, match=r"is not valid JSON"):
        (tmp_path / "bad.json").write_text("{'panes': 1}")
        load_layout(tmp_path / "bad.json")
    with pytest.raises(InputError, match=r"cannot read layout file"):
        load_layout(tmp_path / "missing.yaml")
    # YAML that would build Python objects is refused by the safe loader, as YAML.
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(InputError, match=r"is not valid YAML"):
        load_layout(unsafe)


def test_a_layout_object_passes_through():
    layout = Layout("x", (Pane(Modality.BMODE, (0, 0, 5, 5)),))
    assert load_layout(layout) is layout
    assert set(PRESETS) == {"single", "dual", "triple", "full"}


documents = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 3000) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "screen", "panes", "nodule", "modality", "roi", "width", "height", "x"]),
        children, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_any_document_is_a_layout_or_an_input_error(document):
    try:
        layout = parse_layout(document)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    assert 1 <= len(layout.panes) <= 3
