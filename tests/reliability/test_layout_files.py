"""Huge, malicious and malformed layout files: a one-line InputError naming the problem, quickly and
in bounded memory; the layout parser fuzzed with hypothesis (only InputError may escape)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_thyroid.errors import InputError
from edge_thyroid.layout import MAX_LAYOUT_BYTES, Layout, load_layout, parse_layout

from ..conftest import needs_torch
from .helpers import REPO, assert_refused, run_cli

GOOD = "name: ws\nscreen: {width: 1920, height: 1080}\npanes:\n  - {modality: bmode, roi: [40, 120, 900, 840]}\n" \
       "  - {modality: swe, roi: [980, 120, 900, 840]}\nnodule: [300, 400, 320, 280]\n"


def billion_laughs(levels: int) -> str:
    """A YAML alias bomb: a few hundred bytes that expand to 9**levels strings when walked."""
    items = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


BOMB = billion_laughs(9)  # 387 M leaves: walking or printing it takes minutes and gigabytes

MALICIOUS = {
    "alias bomb as the name": f"name: {BOMB}\npanes: [{{modality: bmode, roi: [0, 0, 10, 10]}}]\n",
    "alias bomb as a modality": f"panes: [{{modality: {BOMB}, roi: [0, 0, 10, 10]}}]\n",
    "alias bomb inside a roi": f"panes: [{{modality: bmode, roi: [{BOMB}, 0, 10, 10]}}]\n",
    "alias bomb as the screen": f"screen: {BOMB}\npanes: [{{modality: bmode, roi: [0, 0, 10, 10]}}]\n",
    "python object tag": "panes: !!python/object/apply:os.system ['echo owned > /tmp/owned']\n",
    "deep nesting": "panes: " + "[" * 20_000 + "]" * 20_000 + "\n",
}


def load_in_subprocess(path: Path, seconds: float = 30, memory_mb: int = 1500) -> subprocess.CompletedProcess:
    """load_layout in a child capped in time and address space, so a bomb fails the test, not the machine."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))

    code = ("import sys\nfrom edge_thyroid.layout import load_layout\nfrom edge_thyroid.errors import InputError\n"
            "try:\n    load_layout(sys.argv[1])\nexcept InputError as exc:\n    print('refused:', exc)\n    sys.exit(3)\n"
            "print('accepted')\n")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=seconds,
                          preexec_fn=limit, cwd=REPO)


@pytest.mark.parametrize("kind", MALICIOUS)
def test_malicious_layout_is_refused_quickly_in_bounded_memory(tmp_path, kind):
    path = tmp_path / "layout.yaml"
    path.write_text(MALICIOUS[kind])
    assert path.stat().st_size < MAX_LAYOUT_BYTES
    result = load_in_subprocess(path)
    assert result.returncode == 3, (result.returncode, result.stdout[-500:], result.stderr[-1500:])
    assert "Traceback" not in result.stderr
    message = result.stdout.strip()
    assert message.startswith("refused: ") and "\n" not in message and len(message) < 400, message[:500]
    assert not Path("/tmp/owned").exists() or Path("/tmp/owned").read_text() != "owned\n"


def write(tmp_path: Path, text: str | bytes, suffix: str = ".yaml") -> Path:
    path = tmp_path / f"layout{suffix}"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


BAD = [
    ("huge file", lambda: "# " + "x" * MAX_LAYOUT_BYTES + "\n" + GOOD, ".yaml", f"under {MAX_LAYOUT_BYTES} bytes"),
    ("not UTF-8", lambda: b"\xff\xfe" + GOOD.encode("utf-16-le"), ".yaml", "UTF-8"),
    ("not YAML", lambda: "panes: [unclosed\n", ".yaml", "not valid YAML"),
    ("not JSON", lambda: "{'panes': 1}", ".json", "not valid JSON"),
    ("deep JSON", lambda: '{"panes": ' + "[" * 30_000 + "]" * 30_000 + "}", ".json", "not valid JSON"),
    ("a list at the top", lambda: "- bmode\n", ".yaml", "expected a mapping"),
    ("panes a string", lambda: "panes: bmode\n", ".yaml", "'panes' must be a non-empty list"),
    ("four panes", lambda: "panes: [" + ", ".join(["{modality: bmode, roi: [0,0,1,1]}"] * 4) + "]\n", ".yaml", "4 panes"),
    ("unknown modality", lambda: "panes: [{modality: ct, roi: [0,0,10,10]}]\n", ".yaml", "unknown modality 'ct'"),
    ("roi of floats", lambda: "panes: [{modality: bmode, roi: [0.5,0,10,10]}]\n", ".yaml", "0.5 is not an integer"),
    ("roi of booleans", lambda: "panes: [{modality: bmode, roi: [true,0,10,10]}]\n", ".yaml", "True is not an integer"),
    ("roi too big", lambda: "panes: [{modality: bmode, roi: [0,0,99999999999999999999,10]}]\n", ".yaml",
     "is not a rectangle on a screen"),
    ("roi NaN", lambda: "panes: [{modality: bmode, roi: [.nan,0,10,10]}]\n", ".yaml", "nan is not an integer"),
    ("screen of strings", lambda: "screen: {width: '1920', height: 1080}\npanes: [{modality: bmode, roi: [0,0,10,10]}]\n",
     ".yaml", "screen size '1920'x1080"),
    ("overlapping panes", lambda: "panes: [{modality: bmode, roi: [0,0,100,100]}, {modality: swe, roi: [50,50,100,100]}]\n",
     ".yaml", "overlaps"),
    ("nodule outside the bmode pane", lambda: GOOD.replace("[300, 400, 320, 280]", "[1000, 400, 320, 280]"), ".yaml",
     "is not inside the bmode pane"),
    ("pane outside the screen", lambda: GOOD.replace("[980, 120, 900, 840]", "[1500, 120, 900, 840]"), ".yaml",
     "is outside the 1920x1080 frame"),
    ("unknown key", lambda: GOOD + "colour: red\n", ".yaml", "unknown key(s) ['colour']"),
    ("wrong suffix", lambda: GOOD, ".txt", "must end in .yaml"),
]


@pytest.mark.parametrize("name, make, suffix, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_layout_is_one_line_naming_the_problem(tmp_path, name, make, suffix, fragment):
    path = write(tmp_path, make(), suffix)
    with pytest.raises(InputError) as info:
        load_layout(path)
    message = str(info.value)
    assert fragment in message and "\n" not in message and len(message) < 400, message[:500]


def test_the_good_layout_loads(tmp_path):
    layout = load_layout(write(tmp_path, GOOD))
    assert layout.modalities == ("bmode", "swe") and layout.nodule == (300, 400, 320, 280)
    assert load_layout(write(tmp_path, json.dumps(layout.to_dict()), ".json")) == layout


# --- fuzzing ---------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=10) | st.sampled_from(["bmode", "smi", "swe", "BMODE ", "0,0,10,10", "1,2,3"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
    st.sampled_from(["name", "screen", "panes", "nodule", "modality", "roi", "width", "height", "x"]) | st.text(max_size=5),
    inner, max_size=5), max_leaves=20)
panes = st.lists(st.fixed_dictionaries({"modality": st.sampled_from(["bmode", "smi", "swe"]) | values,
                                        "roi": st.lists(st.integers(-5, 3000) | values, min_size=3, max_size=5) | values}),
                 max_size=4)
layouts = st.fixed_dictionaries({"panes": panes}, optional={
    "name": st.text(max_size=120) | values, "nodule": st.lists(st.integers(-5, 3000), min_size=4, max_size=4) | values,
    "screen": st.fixed_dictionaries({"width": st.integers(-5, 20000) | values, "height": st.integers(-5, 20000) | values})
    | values})

FUZZ = settings(max_examples=400, deadline=None, derandomize=True)


def parse_or_input_error(document) -> Layout | None:
    try:
        return parse_layout(document)
    except InputError as exc:
        assert "\n" not in str(exc)
        return None


@FUZZ
@given(document=layouts | values)
def test_parse_layout_accepts_or_raises_input_error(document):
    layout = parse_or_input_error(document)
    if layout is not None:  # accepted layouts keep their promises
        assert 1 <= len(layout.panes) <= 3 and len(set(layout.modalities)) == len(layout.modalities)
        for pane in layout.panes:
            x, y, w, h = pane.roi
            assert all(isinstance(v, int) for v in pane.roi) and x >= 0 and y >= 0 and w >= 1 and h >= 1


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_layout_text_loads_or_raises_input_error(tmp_path_factory, data):
    text = bytearray(GOOD.encode())
    for _ in range(data.draw(st.integers(1, 5))):
        position = data.draw(st.integers(0, len(text) - 1))
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if kind == "flip":
            text[position] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            del text[position:position + data.draw(st.integers(1, 20))]
        else:
            text[position:position] = data.draw(st.sampled_from([b"&a ", b"*a", b"!!binary ", b"[", b"{", b"- ", b"\t",
                                                                 b"\x00", b"? ", b": ", b"'", b"!!set ", b"<<: "]))
        if not text:
            break
    path = tmp_path_factory.mktemp("mutated") / "layout.yaml"
    path.write_bytes(bytes(text))
    try:
        load_layout(path)
    except InputError as exc:
        assert "\n" not in str(exc)


@needs_torch
@pytest.mark.parametrize("kind, fragment", [("alias bomb as a modality", "aliases (*name) are not allowed"),
                                            ("python object tag", "not valid YAML"),
                                            ("deep nesting", "not valid YAML")])
def test_malicious_layout_is_refused_by_stream(random_bundle, tmp_path, kind, fragment):
    path = write(tmp_path, MALICIOUS[kind])
    assert_refused(run_cli("stream", random_bundle, "--source", "synthetic", "--layout", path, "--max-frames", 1,
                           timeout=60), str(path), fragment)
