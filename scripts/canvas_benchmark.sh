#!/usr/bin/env bash
# The localization/CAM measurements in the README: train the canvas classifier, then score the class-map methods
# and the baselines on 500 single-digit, cluttered and 3-digit canvases. Figures land in each run dir's figures/.
#   bash scripts/canvas_benchmark.sh [outputs/canvas]
# pgc:HiResCAM runs only where the `cam` extra (pytorch-grad-cam) is installed.
set -euo pipefail
out=${1:-outputs/canvas}
run() { python -m cnnlab logger=none "hydra.run.dir=$out/$1" "${@:2}"; python - "$out/$1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1] + "/metrics.json"))
print(sys.argv[1], {k: round(m[k], 3) for k in ("cls_acc", "loc_acc", "mean_iou", "center_err_px", "pointing_acc") if k in m})
PY
}
[ -f "$out/train/checkpoints/best.pt" ] || python -m cnnlab experiment=canvas_classifier logger=none "hydra.run.dir=$out/train"
ck="checkpoint=$out/train/checkpoints/best.pt"
run localize-single task=localize "$ck"
run localize-clutter task=localize "$ck" task.canvas.clutter=8
run localize-3digits task=localize "$ck" task.canvas.digits=3
run cam-single task=cam "$ck"
run cam-single-paper task=cam "$ck" task.threshold=0.2
run cam-clutter task=cam "$ck" task.canvas.clutter=8
run cam-3digits task=cam "$ck" task.canvas.digits=3
for method in grad-cam grad-cam++ xgrad-cam layer-cam random center ink; do
  run "$method-single" task=cam "$ck" task.method=$method
  run "$method-clutter" task=cam "$ck" task.method=$method task.canvas.clutter=8
done
run ink-3digits task=cam "$ck" task.method=ink task.canvas.digits=3
run score-cam-single task=cam "$ck" task.method=score-cam task.canvas.count=50   # 64 forward passes a canvas: slow
if python -c "import pytorch_grad_cam" 2>/dev/null; then run pgc-hirescam-single task=cam "$ck" task.method=pgc:HiResCAM; fi
