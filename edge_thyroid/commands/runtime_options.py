"""The options every command that runs a model shares: which runtime executes the bundle's ONNX."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

# ONNX Runtime is the default: the accuracy gate of every shipped bundle was measured with it.
RUNTIMES = ("onnxruntime", "openvino")


def runtime_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Adds --backend and --execution-precision (passed on as ``backend`` and ``execution_precision``)."""
    function = click.option(
        "--execution-precision", type=click.Choice(["f32", "bf16"]), default=None,
        help="openvino only: precision of the graph's float parts (default f32, the numbers the gate approved; "
             "bf16 is faster on CPUs with AVX-512 BF16/AMX and must pass 'edge-thyroid verify' first).")(function)
    return click.option(
        "--backend", type=click.Choice(RUNTIMES), default="onnxruntime", show_default=True,
        help="Runtime that executes the bundle's ONNX model (openvino: pip install 'edge-thyroid[openvino]'). "
             "TensorRT engines in a bundle are picked by --model.")(function)


def engine_backend(backend: str, execution_precision: str | None) -> dict[str, Any]:
    """Engine keyword arguments for the chosen runtime; a precision for a runtime without one is an error."""
    if execution_precision is not None and backend != "openvino":
        raise click.UsageError(f"--execution-precision {execution_precision} applies to --backend openvino; "
                               f"the {backend} backend runs the model at the precision it was exported in")
    options: dict[str, Any] = {"backend": backend}
    if execution_precision is not None:
        options["execution_precision"] = execution_precision
    return options
