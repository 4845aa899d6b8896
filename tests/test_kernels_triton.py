"""The Triton kernel against the reference through kernels.check.check_kernel, on this CPU machine in
Triton's interpreter (TRITON_INTERPRET=1). The interpreter must be chosen before triton is first
imported, so the kernel runs in a fresh interpreter process; the frames are kept small (the
interpreter executes every program in NumPy)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or importlib.util.find_spec("torch") is None,
    reason="triton/torch not installed (pip install -e '.[export,gpu]')",
)

SCRIPT = r"""
import json, os
assert os.environ["TRITON_INTERPRET"] == "1"
import numpy as np, torch
from edge_thyroid.kernels.check import FLOAT32, check_kernel, kernel_cases
from edge_thyroid.kernels.reference import PreprocessSpec
from edge_thyroid.kernels.triton_kernel import _kernel, numpy_adapter, preprocess_triton

cases = kernel_cases(11, count=8, max_frame=40, sizes=(8, 13, 16))
report = check_kernel(numpy_adapter("cpu", block=64), FLOAT32, name="triton", dtypes=(np.float32, np.float16), cases=cases)

# Strided input: a BGR view with a negative channel stride is read in place, not copied.
frame = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8))
spec = PreprocessSpec(image_size=8)
out = torch.empty((1, 3, 8, 8))
flipped = frame.flip(2)  # RGB view of the same bytes
preprocess_triton(flipped, [(3, 4, 20, 17)], spec, out, block=64)
from edge_thyroid.kernels.reference import preprocess_reference
expected = preprocess_reference(np.ascontiguousarray(flipped.numpy()), [(3, 4, 20, 17)], spec, dtype=np.float64)
strided_error = float(np.abs(out.numpy() - expected).max())

errors = []
for bad in (dict(out=torch.empty((2, 3, 8, 8))), dict(out=torch.empty((1, 3, 8, 8), dtype=torch.float64)),
            dict(rois=[(45, 0, 10, 10)]), dict(frame=frame.float())):
    args = dict(frame=frame, rois=[(0, 0, 10, 10)], spec=spec, out=torch.empty((1, 3, 8, 8)))
    args.update(bad)
    try:
        preprocess_triton(**args)
        errors.append(None)
    except ValueError as exc:
        errors.append(str(exc))
triton, kernel = _kernel()
print(json.dumps({"report": report.to_dict(), "strided_error": strided_error, "errors": errors,
                  "interpreted": type(kernel).__name__}))
"""


def test_triton_kernel_matches_reference_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["interpreted"] == "InterpretedFunction", "the kernel did not run in Triton's interpreter"
    report = data["report"]
    assert report["cases"] >= 12 and report["panes"] >= 20
    assert report["max_abs"]["float32"] < 1e-5  # exact taps + float32 blend; FLOAT32 (1e-4) was enforced
    assert report["max_abs"]["float16"] < 3e-3  # fp16 rounding of |values| <= 2.7
    assert data["strided_error"] < 1e-5
    assert all(data["errors"]), f"a bad argument was accepted: {data['errors']}"
    assert "out must be a contiguous" in data["errors"][0] and "outside the 50x30 frame" in data["errors"][2]


def test_importing_the_module_needs_neither_torch_nor_triton():
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'triton'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "from edge_thyroid.kernels import triton_kernel\n"
        "from edge_thyroid.kernels.reference import PreprocessSpec\n"
        "try:\n"
        "    triton_kernel.preprocess_triton(None, [(0, 0, 1, 1)], PreprocessSpec(), None)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "MissingDependencyError torch is not installed" in result.stdout
    assert "pip install 'edge-thyroid[gpu]'" in result.stdout
