"""The ``edge-thyroid`` command line. Subcommands import lazily, so ``--help`` is instant and never
touches torch, ONNX Runtime or OpenCV."""

from __future__ import annotations

import importlib
import sys

import click

from . import __version__

# name -> "module:attribute"; each module imports its heavy dependencies inside the command.
COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("edge_thyroid.commands.export:export", "Export a checkpoint to a model bundle (ONNX, fused preprocessing)."),
    "classify": ("edge_thyroid.commands.classify:classify", "Classify still images with a bundle; optional CAM heatmaps."),
    "info": ("edge_thyroid.commands.info:info", "Show and verify a bundle's manifest, its sha256 and signer."),
    "keygen": ("edge_thyroid.commands.sign:keygen", "Make an Ed25519 key pair for signing bundles."),
    "sign": ("edge_thyroid.commands.sign:sign", "Sign a bundle's manifest (Ed25519) so workstations can --trust it."),
    "bench": ("edge_thyroid.commands.bench:bench", "Latency of our engine vs PyTorch, ONNX Runtime, OpenVINO, interleaved."),
    "evaluate": ("edge_thyroid.commands.evaluate:evaluate", "Evaluate a bundle or checkpoint on labelled images: AUC [95% CI], operating point, plots."),
    "compare": ("edge_thyroid.commands.compare:compare", "DeLong's paired test of two models' ROC AUCs on the same images."),
    "familiarize": ("edge_thyroid.commands.familiarize:familiarize", "Give a bundle its training crops' features: results then say when an image is unlike them."),
    "verify": ("edge_thyroid.commands.verify:verify", "Accuracy gate: a quantized/compiled model vs its FP32 reference on labelled images."),
    "stream": ("edge_thyroid.commands.stream:stream", "Classify a live screen in real time: device, file, URL, DICOM, folder; JSONL/overlay."),
    "export-triton": ("edge_thyroid.commands.serve:export_triton", "Write a bundle's backbone as a Triton model repository (CPU here, stock GPU containers)."),
    "serve": ("edge_thyroid.commands.serve:serve", "Serve bundles with a real Triton Inference Server for many workstations (--backend triton)."),
    "demo": ("edge_thyroid.commands.stream:demo", "Stream the bundled demo clip through the bundled model; live results and a browser view."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, _, attribute = COMMANDS[name][0].partition(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the table above: listing commands must not import them.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edge-thyroid")
def cli() -> None:
    """Edge inference for multimodal thyroid ultrasound: benign vs malignant nodules, in real time.

    \b
    Typical use:
      edge-thyroid demo                                   stream the bundled demo clip
      edge-thyroid export ckpt.pt -o bundle/              checkpoint -> ONNX bundle
      edge-thyroid classify bundle/ image.png --cam cam.png
    Run 'edge-thyroid COMMAND --help' for each command's options.
    """


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user-fixable errors print one line and exit non-zero (no traceback)."""
    import signal

    from .errors import EdgeThyroidError

    # A service manager stops us with SIGTERM: unwind exactly like Ctrl-C, so atomic writers remove
    # their staging directories and streams close (and fsync) their outputs.
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        cli.main(args=argv, prog_name="edge-thyroid", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        # One line like every other refusal (click's own form is four: usage, hint, blank, error).
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"error: {exc.format_message()}{where}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except EdgeThyroidError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
