#!/usr/bin/env bash
# The localization and class-map benchmark of the README: train the canvas classifier (once), score every method
# and baseline on 500 single-digit, cluttered and 3-digit canvases (one multirun per canvas kind), then
# `cnnlab report` writes the table into <out>/results.md and one figure per canvas kind with every method's maps.
#   bash scripts/canvas_benchmark.sh [outputs/canvas]
# pgc:HiResCAM joins where the `cam` extra (pytorch-grad-cam) is installed.
set -euo pipefail
out=${1:-outputs/canvas}
ck="$out/train/checkpoints/best.pt"
[ -f "$ck" ] || python -m cnnlab experiment=canvas_classifier logger=none "hydra.run.dir=$out/train"
methods=fully-conv,cam,grad-cam,grad-cam++,xgrad-cam,layer-cam,random,center,ink
if python -c "import pytorch_grad_cam" 2>/dev/null; then methods+=,pgc:HiResCAM; fi
bench() { python -m cnnlab -m task=cam "checkpoint=$ck" logger=none "hydra.sweep.dir=$out/$1" "${@:2}"; }
bench single "task.method=$methods"
bench cluttered "task.method=$methods" task.canvas.clutter=8
bench 3digits "task.method=$methods" task.canvas.digits=3
bench zhou task.method=cam task.threshold=0.2                       # CAM at Zhou et al.'s threshold
bench score-cam task.method=score-cam task.canvas.count=50          # a forward pass per channel: ~65x grad-cam
cnnlab report "$out"
