"""INT8 vs FP32 on this CPU: engine latency for 1 and 3 panes at 128 and 224 px, model file sizes,
peak RSS, and (with a trained checkpoint) the accuracy gate per calibration method on the DDTI
validation split.

    .venv/bin/python benchmarks/quant_bench.py [--checkpoint best.pt] [--sizes 128,224] [--runs 50]

Latency: ``Engine.classify`` on a 1920x1080 screen holding three real DDTI panes (600x600 each), in
the same process, configurations interleaved in blocks (order reversed every other round; each
block starts with one unmeasured run). Blocks, not strict one-by-one alternation: every ONNX Runtime
session owns a thread pool whose workers spin after each run, and on 2 cores a just-used session's
spinning threads steal the CPU from the next one (measured: 1:1 alternation inflates both FP32 and
INT8 by ~30 ms at 224 px). The first run of each block absorbs that.

Writes benchmarks/results/quant_cpu.json, quant_gate.json (with a trained checkpoint) and the
fragment quantization.md. The INT8 models are the ones `edge-thyroid export --precision int8` writes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DDTI_CSV = REPO.parent / "shared" / "data" / "ddti" / "labels.csv"
TRAINING_RECORD = RESULTS / "training_resnet50.json"
MODALITIES = ("bmode", "smi", "swe")
PANE = 600
ROIS = [(40, 240, PANE, PANE), (660, 240, PANE, PANE), (1280, 240, PANE, PANE)]


def screen(csv: Path) -> np.ndarray:
    """A 1080p workstation screen with three real B-mode crops as the panes."""
    from edge_thyroid.dataset import read_samples

    frame = np.full((1080, 1920, 3), 14, dtype=np.uint8)
    samples = read_samples(csv, labelled_only=False)[:3]
    for (x, y, w, h), sample in zip(ROIS, samples):
        frame[y : y + h, x : x + w] = cv2.resize(cv2.imread(str(sample.image), cv2.IMREAD_COLOR), (w, h))
    return frame


def stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"n": int(ms.size), "p50": float(np.median(ms)), "p90": float(np.quantile(ms, 0.9)),
            "p99": float(np.quantile(ms, 0.99)), "min": float(ms.min()), "mean": float(ms.mean())}


def machine_state() -> dict:
    import onnxruntime
    import psutil

    busy = []
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            process.cpu_percent(None)
        except psutil.Error:
            continue
    time.sleep(1.0)
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            share = process.cpu_percent(None)
        except psutil.Error:
            continue
        if share >= 20 and process.pid != os.getpid():
            busy.append({"cpu_percent": round(share), "command": " ".join(process.info["cmdline"] or [])[:90]})
    from edge_thyroid.cpuinfo import cpu_flags, cpu_model

    flags, model = cpu_flags(), cpu_model()
    return {"cpu": model, "logical_cpus": os.cpu_count(), "isa": [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8")
                                                                   if f in flags],
            "load_average": list(os.getloadavg()), "other_busy_processes": busy,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def load_model(checkpoint: str | None, seed: int):
    import torch

    from edge_thyroid.export.checkpoint import load_checkpoint
    from edge_thyroid.export.models import MultimodalClassifier

    if checkpoint:
        model, info, _ = load_checkpoint(checkpoint)
        return model.eval(), {"checkpoint": str(checkpoint), "image_size": info.image_size,
                              "trained_modalities": list(info.trained_modalities), "threshold": dict(info.threshold)}
    torch.manual_seed(seed)
    model = MultimodalClassifier("resnet50").eval()
    torch.nn.init.normal_(model.head.weight, std=1e-3)
    return model, {"checkpoint": None, "random_init": True, "seed": seed}


def add_model(bundle: Path, key: str, model, precision: str) -> None:
    """Put one more ONNX model into a (scratch) bundle and re-hash it."""
    from edge_thyroid.bundle import ModelEntry, Precision, load_bundle, write_manifest
    from edge_thyroid.export.onnx_export import save_onnx

    loaded = load_bundle(bundle)
    save_onnx(model, bundle / f"model.{key}.onnx")
    loaded.manifest.models[key] = ModelEntry(f"model.{key}.onnx", Precision(precision))
    write_manifest(bundle, loaded.manifest)


def latency(bundle: Path, keys: list[str], frame: np.ndarray, runs: int, block: int, threads: int) -> dict:
    from edge_thyroid.engine import Engine
    from edge_thyroid.frames import Pane

    engines = {key: Engine(bundle, model=key, threads=threads) for key in keys}
    configs = [(key, panes) for key in keys for panes in (1, 3)]
    times: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    panes_of = {n: [Pane(m, roi) for m, roi in zip(MODALITIES, ROIS[:n])] for n in (1, 3)}
    try:
        for key, panes in configs:  # warm-up: first-run allocations and kernel selection
            for _ in range(3):
                engines[key].classify(frame, panes_of[panes])
        for round_index in range(-(-runs // block)):
            for key, panes in configs if round_index % 2 == 0 else configs[::-1]:
                engine, pane_list = engines[key], panes_of[panes]
                engine.classify(frame, pane_list)  # unmeasured: lets the last session's threads go idle
                for _ in range(block):
                    started = time.perf_counter()
                    engine.classify(frame, pane_list)
                    times[(key, panes)].append(time.perf_counter() - started)
    finally:
        for engine in engines.values():
            engine.close()
    return {key: {str(panes): stats(times[(key, panes)]) for panes in (1, 3)} for key in keys}


RSS_PROBE = """
import json, sys
import numpy as np
from edge_thyroid.engine import Engine
from edge_thyroid.frames import Pane
def peak():  # VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over fork + exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
baseline = peak()
frame = np.full((1080, 1920, 3), 40, np.uint8)
rois = {rois}
with Engine(sys.argv[1], model=sys.argv[2], threads=2) as engine:
    for _ in range(5):
        engine.classify(frame, [Pane(m, r) for m, r in zip(("bmode", "smi", "swe"), rois)])
print(json.dumps({{"imports_mb": baseline, "peak_mb": peak()}}))
"""


def peak_rss(bundle: Path, key: str) -> dict:
    """Peak resident memory of a fresh process that loads the model and classifies 3-pane frames."""
    out = subprocess.run([sys.executable, "-c", RSS_PROBE.format(rois=ROIS), str(bundle), key],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def export_int8(model, directory: Path, size: int, calib: Path, count: int, method: str, cache: Path,
                gate_csv: Path | None = None, fp32_layers: tuple[str, ...] = (), keep_fp32: bool = True,
                threshold: dict | None = None, frame_average: bool = True) -> Path:
    """As `edge-thyroid export --precision int8` does it (the checkpoint's decision threshold included:
    the gate's decision agreement is measured at it)."""
    from edge_thyroid.bundle import Precision, Threshold
    from edge_thyroid.export.bundle_export import CalibrationRequest, GateRequest, export_bundle
    from edge_thyroid.export.calibration import CalibrationOptions, parse_method
    from edge_thyroid.verification import GateFailedError

    request = CalibrationRequest(calib, count, CalibrationOptions(parse_method(method), frame_average=frame_average),
                                 fp32_layers)
    gate = GateRequest(gate_csv) if gate_csv else None
    try:
        t = dict(threshold or {})
        chosen = Threshold(float(t.pop("value")), str(t.pop("method", "unknown")), str(t.pop("chosen_on", "unknown")), t) if t else None
        return export_bundle(model, directory, image_size=size, precision=Precision.INT8, calibration=request,
                             keep_fp32=keep_fp32, gate=gate, cache_dir=cache, overwrite=True, progress=True,
                             threshold=chosen)
    except GateFailedError as failure:
        # A failed gate is a result here, not an error: keep its report.
        failed = directory.with_name(directory.name + ".failed.json")
        failed.write_text(json.dumps(failure.report.to_dict(), indent=2))
        return failed


def variant_model(model, size: int, calib: Path, count: int, method: str, cache: Path, *, s8s8: bool = False,
                  fp32_layers: tuple[str, ...] = ()):
    """The same calibration with int8 (S8S8) activations (quantize_static's default), or with some
    layers kept in float: for comparison."""
    from edge_thyroid.export.calibration import CalibrationOptions, calibration_set, parse_method
    from edge_thyroid.export.onnx_export import export_backbone_onnx
    from edge_thyroid.export.quantize import QuantConfig, QuantScheme, fuse_preprocessing, quantize_backbone
    from edge_thyroid.kernels.reference import PreprocessSpec

    spec = PreprocessSpec(image_size=size)
    config = QuantConfig(CalibrationOptions(parse_method(method)), fp32_layers=fp32_layers,
                         scheme_override=QuantScheme("int8", "int8", False) if s8s8 else None)
    result = quantize_backbone(export_backbone_onnx(model, size), calibration_set(calib, count=count), spec, config,
                               cache_dir=cache)
    return fuse_preprocessing(result.model, spec), result.report


def markdown(record: dict, gate: dict | None) -> str:
    lines = ["# INT8 and FP32 on the CPU", ""]
    model = record["model"]
    what = (f"trained checkpoint `{model['checkpoint']}`" if model.get("checkpoint")
            else "random-init ResNet50 (latency does not depend on the weights)")
    m = record["machine"]
    lines += [
        f"Model: {what}. INT8: static QDQ, per-channel int8 weights, uint8 activations, "
        f"{record['settings']['calib_method']} calibration (per-frame ranges averaged) on {record['settings']['calib_count']} "
        "DDTI training-side frames run through the engine's own preprocessing; the Loop/Resize preprocessing stays float32. "
        "int8_s8s8: the same with int8 activations (quantize_static's default). int8_mixed: "
        + (", ".join(next((e["mixed"]["fp32_layers"] for e in record["sizes"].values() if "mixed" in e), [])) or "none")
        + " kept in float (convolutions and residual additions).",
        f"Machine: {m['cpu']} ({', '.join(m['isa'])}), {m['logical_cpus']} logical CPUs, {record['settings']['threads']} "
        f"inference threads; load average {[round(v, 2) for v in m['load_average']]} at start, "
        f"{[round(v, 2) for v in record['machine_end']['load_average']]} at end; "
        f"ONNX Runtime {m['onnxruntime']}. Other busy processes at start: "
        + ("; ".join(f"{p['command']} ({p['cpu_percent']}%)" for p in m["other_busy_processes"]) or "none") + ".",
        f"Latency: `Engine.classify` (frame + ROIs -> p(malignant), preprocessing in the graph) on a 1920x1080 screen with "
        f"600x600 real DDTI panes; medians of {record['settings']['runs']} runs per configuration, interleaved in blocks of "
        f"{record['settings']['block']} in one process (see the script's docstring for why blocks).",
        f"Command: `{record['command']}`",
        "",
        "| size | model | file MB | 1 pane p50 ms | 1 pane p90 | 3 panes p50 ms | 3 panes p90 | 3 panes / FP32 | peak RSS MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, entry in record["sizes"].items():
        fp32_3 = entry["latency_ms"]["fp32"]["3"]["p50"]
        for key, by_panes in entry["latency_ms"].items():
            lines.append(f"| {size} | {key} | {entry['file_mb'][key]:.1f} | {by_panes['1']['p50']:.1f} | {by_panes['1']['p90']:.1f} "
                         f"| {by_panes['3']['p50']:.1f} | {by_panes['3']['p90']:.1f} | {by_panes['3']['p50'] / fp32_3:.2f}x "
                         f"| {entry['peak_rss_mb'][key]['peak_mb']:.0f} |")
    lines += ["", "Peak RSS: a fresh process that imports the runtime, loads the model and classifies five 3-pane frames "
              f"(imports alone: {next(iter(record['sizes'].values()))['peak_rss_mb']['fp32']['imports_mb']:.0f} MB).", ""]
    if gate:
        lines += ["## Accuracy gate (DDTI validation split, fold 0 of 4, seed 0)", "",
                  "Labels are TI-RADS categories binarised (2-3 benign, 4a-5 malignant), a radiologist's risk category, "
                  "not biopsy results. Gate: AUC drop <= 0.01 and decision agreement >= 0.98 against the FP32 model, "
                  "both deciding at the checkpoint's threshold. minmax = per-frame ranges averaged (the export default); "
                  "minmax-extremes = ranges over all frames; '+ fp32 ...' = those parts kept in float.", "",
                  "| INT8 variant | n | FP32 AUC | INT8 AUC | AUC drop | agreement | abs dp p50 | p99 | max | refit threshold | gate |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name, report in gate["variants"].items():
            lines.append(f"| {name} | {report['n']} | {report['reference']['auc']:.4f} | {report['candidate']['auc']:.4f} "
                         f"| {report['auc_drop']:+.4f} | {report['agreement']:.4f} | {report['abs_dp']['p50']:.4f} "
                         f"| {report['abs_dp']['p99']:.4f} | {report['abs_dp']['max']:.4f} "
                         f"| {report['candidate']['refit']['threshold']:.4f} | {'pass' if report['passed'] else 'FAIL'} |")
        lines.append("")
    if record.get("note"):
        lines += [record["note"], ""]
    lines.append("Raw: `quant_cpu.json`" + (", `quant_gate.json`" if gate else "") + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None,
                        help=f"trained checkpoint (default: the one named in {TRAINING_RECORD.name}, else random init)")
    parser.add_argument("--random-init", action="store_true", help="ignore any trained checkpoint")
    parser.add_argument("--sizes", default="128,224", help="pane resolutions (comma list)")
    parser.add_argument("--runs", type=int, default=50, help="measured runs per configuration (>= 50 for the record)")
    parser.add_argument("--block", type=int, default=5, help="runs per interleaved block")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib", default=str(DDTI_CSV), help="calibration CSV or folder")
    parser.add_argument("--calib-count", type=int, default=100)
    parser.add_argument("--calib-method", default="minmax")
    parser.add_argument("--no-s8s8", action="store_true", help="skip the S8S8 (int8 activations) comparison model")
    parser.add_argument("--mixed-layers", default="stem,layer1,layer2",
                        help="an extra INT8 model with these parts in float (--fp32-layers syntax); '' for none")
    parser.add_argument("--gate-methods", default="minmax,minmax-extremes,entropy,percentile",
                        help="with a trained checkpoint: calibration methods to gate on the validation split")
    parser.add_argument("--gate-fp32-layers", default="stem,layer1,layer2/layer2.0;stem,layer1,layer2",
                        help="with a trained checkpoint: ';'-separated --fp32-layers variants (minmax) to gate too")
    parser.add_argument("--cache-dir", default=None, help="calibration cache (default: the export default)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--no-latency", action="store_true",
                        help="keep the latency record already in RESULTS/quant_cpu.json; run only the gate")
    parser.add_argument("--note", default="", help="a paragraph for quantization.md (what the numbers mean here)")
    args = parser.parse_args(argv)

    checkpoint = None if args.random_init else args.checkpoint
    if checkpoint is None and not args.random_init and TRAINING_RECORD.is_file():
        record = json.loads(TRAINING_RECORD.read_text())
        checkpoint = record.get("checkpoint") or record.get("best_checkpoint")
    calib = Path(args.calib)
    mixed_layers = tuple(part for part in args.mixed_layers.split(",") if part)
    cache = Path(args.cache_dir) if args.cache_dir else None
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/quant_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    model, model_info = load_model(checkpoint, seed=0)
    record = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command.strip(),
              "machine": machine_state(), "model": model_info,
              "note": args.note, "settings": {"runs": args.runs, "block": args.block, "threads": args.threads, "calib": str(calib),
                           "calib_count": args.calib_count, "calib_method": args.calib_method}, "sizes": {}}
    frame = screen(DDTI_CSV)
    with tempfile.TemporaryDirectory(prefix="quant_bench_") as scratch:
        if args.no_latency:
            kept = json.loads((results / "quant_cpu.json").read_text())
            record.update({k: kept[k] for k in ("when", "command", "machine", "machine_end", "settings", "sizes")})
            record["model"] = kept["model"]
        for size in ([] if args.no_latency else (int(s) for s in args.sizes.split(","))):
            print(f"== {size} px: export", file=sys.stderr)
            bundle = export_int8(model, Path(scratch) / f"b{size}", size, calib, args.calib_count, args.calib_method, cache)
            keys = ["fp32", "int8"]
            entry: dict = {}
            if not args.no_s8s8:
                s8s8, report = variant_model(model, size, calib, args.calib_count, args.calib_method, cache, s8s8=True)
                add_model(bundle, "int8_s8s8", s8s8, "int8")
                keys.append("int8_s8s8")
                entry["s8s8_convolutions"] = report["convolutions"]["int8_convs"]
            if mixed_layers:
                mixed, report = variant_model(model, size, calib, args.calib_count, args.calib_method, cache,
                                              fp32_layers=mixed_layers)
                add_model(bundle, "int8_mixed", mixed, "int8")
                keys.append("int8_mixed")
                entry["mixed"] = {"fp32_layers": list(mixed_layers), "int8_convolutions": report["convolutions"]["int8_convs"]}
            from edge_thyroid.bundle import load_bundle

            manifest = load_bundle(bundle).manifest
            entry["file_mb"] = {k: (bundle / manifest.models[k].file).stat().st_size / 1e6 for k in keys}
            entry["calibration"] = {k: manifest.calibration[k] for k in ("method", "data", "convolutions", "cache")}
            print(f"== {size} px: latency", file=sys.stderr)
            entry["latency_ms"] = latency(bundle, keys, frame, args.runs, args.block, args.threads)
            entry["ratio_int8_to_fp32_p50"] = {p: entry["latency_ms"]["int8"][p]["p50"] / entry["latency_ms"]["fp32"][p]["p50"]
                                               for p in ("1", "3")}
            entry["peak_rss_mb"] = {k: peak_rss(bundle, k) for k in keys}
            record["sizes"][str(size)] = entry
        if not args.no_latency:
            record["machine_end"] = {"load_average": list(os.getloadavg())}
            (results / "quant_cpu.json").write_text(json.dumps(record, indent=2) + "\n")

        gate = None
        variants = [(m, ()) for m in args.gate_methods.split(",") if m]
        variants += [("minmax", tuple(v.split(","))) for v in args.gate_fp32_layers.split(";") if v]
        if checkpoint and variants:
            size = model_info["image_size"]
            gate = {"when": record["when"], "checkpoint": checkpoint, "image_size": size, "variants": {}}
            for index, (method, layers) in enumerate(variants):
                name = method + (f" + fp32 {','.join(layers)}" if layers else "")
                print(f"== gate: {name}", file=sys.stderr)
                out = export_int8(model, Path(scratch) / f"gate_{index}", size, calib, args.calib_count,
                                  method.split("-")[0], cache, gate_csv=DDTI_CSV, fp32_layers=layers,
                                  threshold=model_info["threshold"], frame_average=not method.endswith("-extremes"))
                if out.suffix == ".json":
                    gate["variants"][name] = json.loads(out.read_text())
                else:
                    gate["variants"][name] = json.loads((out / "manifest.json").read_text())["metrics"]["gate_int8"]
            (results / "quant_gate.json").write_text(json.dumps(gate, indent=2) + "\n")
    (results / "quantization.md").write_text(markdown(record, gate))
    print(json.dumps({size: entry["ratio_int8_to_fp32_p50"] for size, entry in record["sizes"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
