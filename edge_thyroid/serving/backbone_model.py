"""The Triton Python-backend model that runs a bundle's backbone (pixels [N,3,S,S] -> feature maps)
with ONNX Runtime. ``edge-thyroid export-triton`` copies this file as ``<model>/<version>/model.py``.

It runs inside Triton's Python stub, with the interpreter of the environment named by the model's
``EXECUTION_ENV_PATH`` parameter, so it imports only NumPy and ONNX Runtime (never edge_thyroid).
With dynamic batching Triton hands ``execute`` several requests at once, possibly from different
workstations: their panes are stacked into one ONNX Runtime call and split back, so concurrent
streams share one backbone pass.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

INPUT = "pixels"
OUTPUT = "feature_maps"


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        threads = int(parameters.get("intra_op_threads", "0") or 0)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        model_file = os.path.join(args["model_repository"], args["model_version"], parameters.get("onnx_file", "model.onnx"))
        self.session = ort.InferenceSession(model_file, sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        # Tensors cross the stub through DLPack, not as_numpy()/Tensor(name, array): the stub's
        # NumPy bridge was compiled against NumPy 1's array layout and, under NumPy 2, reads an item
        # size of 0 (responses arrive with 0 bytes of data).
        batches = [np.from_dlpack(pb_utils.get_input_tensor_by_name(request, INPUT)) for request in requests]
        stacked = batches[0] if len(batches) == 1 else np.concatenate(batches, axis=0)
        maps = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(stacked, dtype=np.float32)})[0]
        responses, start = [], 0
        for batch in batches:
            part = maps[start : start + len(batch)]
            start += len(batch)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor.from_dlpack(OUTPUT, np.ascontiguousarray(part))]))
        return responses

    def finalize(self) -> None:
        self.session = None
