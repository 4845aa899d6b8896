"""Issue 18's speed goals in one run, on the machine it runs on (meant for the quiet 2-core machine):

1. the default command (`edge-thyroid bench BUNDLE`: our engine on `--backend auto`, against PyTorch
   eager, plain ONNX Runtime and plain OpenVINO on the same frames, interleaved) -- goal: our fresh
   3-pane 1080p frame >= 1.2x faster than plain OpenVINO and >= 4x faster than PyTorch eager;
2. the shipped INT8 bundle against the project's own FP32 export of the same model, on the backend
   `auto` chose in step 1 (and on the other one, for reference) -- goal: INT8 <= 0.35x FP32;
3. where the time goes: `benchmarks/profile_layers.py` on the INT8 bundle (both runtimes) and on the
   FP32 export (OpenVINO).

    python benchmarks/fast_default_bench.py [--fp32 /work/wt-train/runs/bundles/shipped_fp32] [--frames 200]

Writes benchmarks/results/fast_default.{json,md} (the goals), fast_default_bench.json (step 1's full
record), fast_default_int8_fp32.json (step 2's), profile_layers.{json,md} and profile_layers_fp32.{json,md}.
`auto` measures afresh (a new decision cache directory for this run), as on a first start. About
2-3 minutes on the 2-core AMD EPYC VM; nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BUNDLE = REPO / "edge_thyroid" / "data" / "demo_bundle"
FP32 = Path("/work/wt-train/runs/bundles/shipped_fp32")
GOAL_PEER, GOAL_TORCH, GOAL_INT8 = 1.2, 4.0, 0.35


def edge_thyroid(*args: str, env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "edge_thyroid", *args]
    print("$ edge-thyroid " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, env=env, cwd=REPO)


def rows(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in record["configs"]}


def p50(row: dict[str, Any] | None) -> float | None:
    return round(row["latency_ms"]["p50"], 3) if row and row.get("available") and row.get("latency_ms") else None


def ratio(slow: float | None, fast: float | None) -> float | None:
    return round(slow / fast, 3) if slow and fast else None


def goal_one(record: dict[str, Any]) -> dict[str, Any]:
    """Ours (auto, fresh frame) against each peer: p50 ratio and the median of per-round ratios."""
    table = rows(record)
    ours_name = record["reference"]
    ours = table[ours_name]
    result: dict[str, Any] = {"ours": ours_name, "ours_p50_ms": p50(ours), "auto_choice": ours["details"].get("auto_choice"),
                              "ours_format": ours.get("format"), "peers": {}}
    for name, row in table.items():
        if row["kind"] == "ours":
            continue
        round_ratio = row.get("p50_ratio_vs_reference")
        result["peers"][name] = {"available": row["available"], "reason": row.get("reason"), "p50_ms": p50(row),
                                 "p50_over_ours": ratio(p50(row), p50(ours)),
                                 "median_round_ratio": round(round_ratio, 3) if round_ratio else None,
                                 "format": row.get("format")}
    peer = result["peers"].get("openvino-int8", {})
    torch = next((v for k, v in result["peers"].items() if k.startswith("torch-eager")), {})
    result["goal_vs_openvino"] = {"goal": GOAL_PEER, "ratio": peer.get("median_round_ratio"),
                                  "met": bool(peer.get("median_round_ratio") and peer["median_round_ratio"] >= GOAL_PEER)}
    result["goal_vs_torch"] = {"goal": GOAL_TORCH, "ratio": torch.get("median_round_ratio"),
                               "met": bool(torch.get("median_round_ratio") and torch["median_round_ratio"] >= GOAL_TORCH)}
    cached = table.get(f"{ours_name}-cached")
    result["ours_cached_p50_ms"] = p50(cached)
    # The same engine made to run the panes its model does not read, as every peer does: how much of the
    # lead is that skip, and what the lead is on a model that reads every pane.
    every = table.get(f"{ours_name}-every-pane")
    result["ours_every_pane_p50_ms"] = p50(every)
    result["panes_not_run"] = ours["details"].get("panes_not_run", [])
    result["openvino_over_every_pane"] = ratio(peer.get("p50_ms"), p50(every))
    return result


def goal_two(record: dict[str, Any], chosen_backend: str | None, int8_label: str, fp32_label: str) -> dict[str, Any]:
    """INT8 over FP32 per backend (the same backend, settings and frames for both models); the rows are
    named after the bundles' directories."""
    table = rows(record)
    per_backend: dict[str, Any] = {}
    for name, row in table.items():
        if not name.startswith(f"{int8_label}/"):
            continue
        fp32_name = name.replace(f"{int8_label}/", f"{fp32_label}/").replace("-int8", "-fp32")
        backend = row["details"].get("providers", ["?"])
        key = "openvino" if "-ov-" in name else "onnxruntime"
        int8_ms, fp32_ms = p50(row), p50(table.get(fp32_name))
        per_backend[key] = {"int8_row": name, "fp32_row": fp32_name, "int8_p50_ms": int8_ms, "fp32_p50_ms": fp32_ms,
                            "int8_over_fp32": ratio(int8_ms, fp32_ms), "providers": backend}
    chosen = per_backend.get(chosen_backend or "", {})
    return {"per_backend": per_backend, "default_backend": chosen_backend,
            "goal": GOAL_INT8, "ratio_on_default_backend": chosen.get("int8_over_fp32"),
            "met": bool(chosen.get("int8_over_fp32") and chosen["int8_over_fp32"] <= GOAL_INT8)}


def markdown(summary: dict[str, Any]) -> str:
    one, two = summary["goal1"], summary["goal2"]
    choice = one.get("auto_choice") or {}
    lines = [f"# Issue 18 speed goals ({summary['created']})", "",
             f"Machine: {summary['machine']['cpu_model']}, {summary['machine']['logical_cpus']} logical CPUs, "
             f"{summary['machine']['threads']} threads pinned to {summary['machine']['pinned_cpus']}; load average "
             f"{summary['machine']['loadavg_start']} at start, {summary['loadavg_end']} at the end; git {summary['git']}.",
             "", f"## 1. Default command, fresh 3-pane 1080p frame (`{summary['commands']['goal1']}`)", "",
             f"Ours: `{one['ours']}` = {one['ours_format']}; auto chose **{choice.get('configuration')}** "
             f"({choice.get('how')}; trial p50 ms {choice.get('p50_ms')}, other work on "
             f"{choice.get('others_busy')} of the CPUs during the trial).", "",
             "| row | p50 ms | p50 / ours | median per-round ratio |", "|---|---:|---:|---:|",
             f"| {one['ours']} | {one['ours_p50_ms']} | 1.00 | 1.00 |"]
    if one.get("ours_cached_p50_ms"):
        lines.append(f"| {one['ours']}-cached (pane cache, not a fresh frame) | {one['ours_cached_p50_ms']} | | |")
    if one.get("ours_every_pane_p50_ms"):
        lines.append(f"| {one['ours']}-every-pane (also runs the panes the model does not read, as the peers do) | "
                     f"{one['ours_every_pane_p50_ms']} | {ratio(one['ours_every_pane_p50_ms'], one['ours_p50_ms'])} | |")
    for name, peer in one["peers"].items():
        if peer["available"]:
            lines.append(f"| {name} | {peer['p50_ms']} | {peer['p50_over_ours']} | {peer['median_round_ratio']} |")
        else:
            lines.append(f"| {name} | not run: {peer['reason']} | | |")
    for key, label in (("goal_vs_openvino", "plain OpenVINO"), ("goal_vs_torch", "PyTorch eager")):
        goal = one[key]
        lines.append("")
        lines.append(f"- >= {goal['goal']}x faster than {label}: {goal['ratio']}x -> **{'met' if goal['met'] else 'NOT met'}**")
    if one.get("panes_not_run"):
        lines += ["", f"Ours does not run the {', '.join(one['panes_not_run'])} pane(s): the shipped model's head has "
                  "exactly zero weight for them, so their contribution is known without running them (p identical; "
                  "tests/test_unread_panes.py). The peers run every pane. With every pane run, plain OpenVINO / ours = "
                  f"{one.get('openvino_over_every_pane')}x: the lead on a model that reads all three modalities."]
    lines += ["", f"## 2. INT8 vs the FP32 export, same backend (`{summary['commands']['goal2']}`)", "",
              "| backend | INT8 p50 ms | FP32 p50 ms | INT8 / FP32 |", "|---|---:|---:|---:|"]
    for backend, values in two["per_backend"].items():
        mark = " (auto's choice)" if backend == two["default_backend"] else ""
        lines.append(f"| {backend}{mark} | {values['int8_p50_ms']} | {values['fp32_p50_ms']} | {values['int8_over_fp32']} |")
    lines += ["", f"- INT8 <= {two['goal']}x FP32 on the default backend ({two['default_backend']}): "
                  f"{two['ratio_on_default_backend']} -> **{'met' if two['met'] else 'NOT met'}**",
              "", "## 3. Where the time goes", "", "See profile_layers.md (INT8) and profile_layers_fp32.md (FP32 export).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(BUNDLE), help="the shipped INT8 bundle (default: the demo bundle)")
    parser.add_argument("--fp32", default=str(FP32), help="the FP32 export of the same model (a bundle directory)")
    parser.add_argument("--frames", type=int, default=200, help="timed frames per configuration in step 1")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--no-profile", action="store_true", help="skip step 3")
    args = parser.parse_args(argv)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    fp32 = Path(args.fp32)
    if not (fp32 / "manifest.json").is_file():
        print(f"--fp32 {fp32} is not a bundle directory (no manifest.json); expected the FP32 export of the "
              "shipped model", file=sys.stderr)
        return 2
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="edge-thyroid-auto-") as cache:
        # A fresh decision cache: auto measures on this machine now, as on a first start.
        env = {**os.environ, "EDGE_THYROID_CACHE_DIR": cache}
        bench1 = results / "fast_default_bench.json"
        goal1_args = ["bench", args.bundle, "--frames", str(args.frames), "--warmup", "10", "--quiet",
                      "--every-pane", "--json", str(bench1)]
        edge_thyroid(*goal1_args, env=env)
        record1 = json.loads(bench1.read_text())
        one = goal_one(record1)
        chosen = (one.get("auto_choice") or {}).get("backend")
        bench2 = results / "fast_default_int8_fp32.json"
        goal2_args = ["bench", args.bundle, str(fp32), "--backend", "openvino", "--backend", "onnxruntime",
                      "--peers", "none", "--no-cache", "--no-cold-start", "--no-flops", "--frames", "100",
                      "--warmup", "10", "--quiet", "--json", str(bench2)]
        edge_thyroid(*goal2_args, env=env)
        two = goal_two(json.loads(bench2.read_text()), chosen, Path(args.bundle).name, fp32.name)
    if not args.no_profile:
        profile = [sys.executable, str(REPO / "benchmarks" / "profile_layers.py")]
        subprocess.run([*profile, args.bundle, "--frames", "20", "--out", str(results / "profile_layers")], check=True)
        subprocess.run([*profile, str(fp32), "--frames", "10", "--runtimes", "openvino",
                        "--out", str(results / "profile_layers_fp32")], check=True)
    summary = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(time.time() - started, 1),
               "machine": record1["machine"], "git": (record1.get("git") or {}).get("commit"),
               "loadavg_end": [round(v, 2) for v in os.getloadavg()],
               "commands": {"goal1": "edge-thyroid " + " ".join(goal1_args), "goal2": "edge-thyroid " + " ".join(goal2_args)},
               "goal1": one, "goal2": two}
    (results / "fast_default.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    text = markdown(summary)
    (results / "fast_default.md").write_text(text)
    print(text)
    print(f"wrote {results / 'fast_default.json'} and .md in {summary['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
