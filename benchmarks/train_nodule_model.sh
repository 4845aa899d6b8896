#!/usr/bin/env bash
# Reproduce the shipped model on a CPU (or a GPU: the same commands pick CUDA when torch sees it):
# data packs -> pre-training (BUSI + the unlabelled DDTI crops) -> 4-fold case-level cross-validation ->
# the same recipe on all DDTI crops -> CV figures and threshold stamped into the checkpoint.
#   bash benchmarks/train_nodule_model.sh            (DATA=../shared/data RUNS=runs PYTHON=.venv/bin/python)
# Every step resumes where it stopped (per-epoch checkpoints, per-fold result files).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
THREADS=${THREADS:-0}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-12}
EPOCHS=${EPOCHS:-30}
# auto: bf16 autocast on CUDA, f32 on a CPU (the reference: it reproduces the shipped model byte for byte
# on the CPU kind it was trained on, AMD EPYC lscpu family 26 model 2). bf16 on a CPU with AMX trains
# faster; its figures differ from the reference run's about as much as f32 on another CPU does
# (BENCHMARKS.md "Training precision").
PRECISION=${PRECISION:-auto}
[ -f "$RUNS/ddti_pack.npz" ] || $PY -m edge_thyroid.export.datapack --data "$DATA/ddti/labels.csv" -o "$RUNS/ddti_pack.npz"
[ -f "$RUNS/pretrain_pack.npz" ] || $PY -m edge_thyroid.export.datapack --data "$DATA/ddti/labels.csv" \
    --pretrain-with-busi "$DATA/busi/labels.csv" --size 224 -o "$RUNS/pretrain_pack.npz"
$PY -m edge_thyroid.export.nodule_training --data "$RUNS/pretrain_pack.npz" --all --out "$RUNS/pretrain" \
    --epochs "$PRETRAIN_EPOCHS" --threads "$THREADS" --precision "$PRECISION"
# Fine-tuning draws 10% of its crops with the nodule made a synthetic anechoic cyst, labelled benign
# (export/augment.py synthetic_cyst; pre-training above draws none). Seeds 0-2, scored as the bundle scores.
$PY benchmarks/cross_validate.py --data "$RUNS/ddti_pack.npz" --out "$RUNS/cv_resnet50_cyst" \
    --json benchmarks/results/cv_resnet50_cyst_tta.json --epochs "$EPOCHS" --init "$RUNS/pretrain/final.pt" \
    --threads "$THREADS" --precision "$PRECISION" --seeds 0,1,2 --p-cyst 0.1 --test-time-flip --also-all --all-first-after 2
$PY benchmarks/stamp_checkpoint.py benchmarks/results/cv_resnet50_cyst_tta.json "$RUNS/cv_resnet50_cyst/all/final.pt" \
    -o "$RUNS/shipped.pt"
