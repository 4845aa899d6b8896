"""The runtime imports and classifies with torch made unimportable."""

import json
import subprocess
import sys

from .conftest import needs_torch

BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision'):
            raise ImportError(f'{name} is blocked for this test')
sys.meta_path.insert(0, _Block())
"""


@needs_torch
def test_runtime_classifies_without_torch(random_bundle, tmp_path):
    script = BLOCK_TORCH + f"""
import importlib, pkgutil, numpy as np
import edge_thyroid
for m in pkgutil.walk_packages(edge_thyroid.__path__, 'edge_thyroid.'):
    if m.name.startswith(('edge_thyroid.export', 'edge_thyroid.kernels.triton')):
        continue
    importlib.import_module(m.name)
from edge_thyroid.cli import main
main(['classify', {str(random_bundle)!r}, {str(tmp_path / 'img.png')!r}, '--json'])
"""
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "img.png"), np.random.default_rng(0).integers(0, 255, (100, 120), dtype=np.uint8))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 0 <= json.loads(result.stdout.strip().splitlines()[-1])["p_malignant"] <= 1


def test_export_without_torch_says_how_to_install(tmp_path):
    script = BLOCK_TORCH + f"""
from edge_thyroid.cli import main
main(['export', '--random-init', '-o', {str(tmp_path / 'b')!r}])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0
    assert "pip install 'edge-thyroid[export]'" in result.stderr
