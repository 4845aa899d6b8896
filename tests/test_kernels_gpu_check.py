"""benchmarks/gpu_check.py is run once on a lent GPU machine, where a crash costs the loan: its
--dry-run mode runs the same logic here (kernel in TRITON_INTERPRET=1 on CPU tensors, tiny sizes),
with the package made unimportable, as it is there (kernels/ and export/ are imported by path)."""

import importlib.util
import json
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("triton", "torch", "torchvision")),
    reason="triton/torch/torchvision not installed (pip install -e '.[export,gpu]')",
)

RUN_WITHOUT_PACKAGE = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'edge_thyroid':
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
sys.argv = ['gpu_check.py', '--dry-run', '--out', sys.argv[1]]
runpy.run_path({script!r}, run_name='__main__')
"""


def test_gpu_check_dry_run(tmp_path):
    script = RUN_WITHOUT_PACKAGE.format(script=str(REPO / "benchmarks" / "gpu_check.py"))
    # Run from outside the repo so nothing is found through the working directory either.
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["dry_run"] and data["environment"]["triton_interpret"] == "1" and not data["errors"]
    assert data["correctness"]["passed"]
    assert data["correctness"]["random_cases"]["max_abs"]["float32"] < 1e-5
    kernel = data["kernel"]
    assert {(r["S"], r["dtype"]) for r in kernel} >= {(16, "float16"), (16, "float32"), (24, "float16"), (24, "float32")}
    assert all(r["launch_ms"] > 0 and r["read_sector_bytes"] >= r["read_unique_bytes"] > 0 and r["x_floor_unique"] > 0 for r in kernel)
    backbone = [r for r in data["model"]["backbone"] if "ms" in r]
    assert {r["variant"] for r in backbone} == {"fp32", "fp16", "fp16+channels_last"}
    assert data["model"]["preprocessing"][0]["torch_interpolate_max_abs"] < 1e-4  # the same function as ours
    assert "ResNet50 backbone" in result.stdout and "Triton preprocessing kernel" in result.stdout
