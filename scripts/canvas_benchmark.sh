#!/usr/bin/env bash
# The localization and class-map benchmark of the README: train the canvas classifier (once), score every method
# and baseline on single, cluttered and 3-digit canvases of held-out digits (task.kinds' default: 500 each, one
# run per method), then `cnnlab report` ranks the methods per canvas kind, with intervals and paired comparisons,
# into <out>/results.md and one figure per canvas kind with every method's maps.
#   bash scripts/canvas_benchmark.sh [outputs/canvas]
# pgc:HiResCAM joins where the `cam` extra (pytorch-grad-cam) is installed.
set -euo pipefail
out=${1:-outputs/canvas}
ck="$out/train/checkpoints/best.pt"
[ -f "$ck" ] || python -m cnnlab experiment=canvas_classifier logger=none "hydra.run.dir=$out/train"
methods=fully-conv,cam,grad-cam,grad-cam++,xgrad-cam,layer-cam,random,center,ink
if python -c "import pytorch_grad_cam" 2>/dev/null; then methods+=,pgc:HiResCAM; fi
bench() { python -m cnnlab -m task=cam "checkpoint=$ck" logger=none "hydra.sweep.dir=$out/$1" "${@:2}"; }
bench methods "task.method=$methods"
bench score-cam task.method=score-cam task.canvas.count=50 task.sanity_count=8   # a forward pass per channel: slow
cnnlab report "$out"
