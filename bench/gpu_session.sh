#!/usr/bin/env bash
# The GPU figures of bench/README.md in one go on a CUDA machine (sized for one 10-minute call; not yet run to the end):
#   1. bench/gpu.py: two epochs of every full keypoint and ROI-classifier config on fold 0 of a 32-study
#      full-size phantom (pretrained: none, as such a machine may have no internet), images/s and peak memory;
#   2. bench/keypoints.py with bench/configs/gpu/ (the full DeepLabV3Plus + resnet34 at 256 px) on the
#      200-study small phantom, seed 2024.
# Outputs go to $OUT (default /tmp/gpu_session). Wheels the machine lacks may sit in .whl/ (installed to /tmp/site).
#   bash bench/gpu_session.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_session}; WORK=${WORK:-/tmp/gpu_work}; BUDGET_S=${BUDGET_S:-570}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${NO_WHEELS:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site" || exit 1
fi
nvidia-smi -L; python3 -c "import torch, timm, segmentation_models_pytorch as smp, albumentations, pydicom; \
print('torch', torch.__version__, 'timm', timm.__version__, 'smp', smp.__version__, 'cuda', torch.cuda.is_available())"
W=$(nproc)
python3 -m rsna2024.cli synth --out "$WORK/full" --studies "${FULL_STUDIES:-32}" --test-studies 0 --size full --seed 7 --workers $((W/2)) \
  >"$OUT/data.log" 2>&1 &
python3 -c "import sys; sys.path.insert(0, 'bench'); from keypoints import prepare_data; from pathlib import Path; \
prepare_data(Path('$WORK/kp'), ${KP_STUDIES:-200}, 2024, $((W/2)))" >>"$OUT/data.log" 2>&1 &
wait
python3 -m rsna2024.cli folds --data "$WORK/full" >>"$OUT/data.log" 2>&1
python3 -m rsna2024.cli preprocess --data "$WORK/full" --cache "$WORK/cache" --workers "$W" >>"$OUT/data.log" 2>&1
echo "data ready after ${SECONDS}s"; tail -3 "$OUT/data.log"
timeout 240 python3 bench/gpu.py experiments/keypoint_*.yaml experiments/split_*.yaml experiments/global_*.yaml \
  --data "$WORK/full" --cache "$WORK/cache" --epochs 2 --set model.pretrained=none --set workers=8 \
  --out "$OUT/gpu.md" 2>"$OUT/gpu.err" | grep -v '%|'
echo "gpu.py done after ${SECONDS}s"
LEFT=$((BUDGET_S - SECONDS - 15))
timeout "$LEFT" python3 bench/keypoints.py --work "$WORK/kp" --configs bench/configs/gpu --workers "$W" --threads 8 --studies "${KP_STUDIES:-200}" ${KP_SET:-} \
  2>"$OUT/keypoints.err" | tee "$OUT/keypoints.txt"
echo "keypoints done after ${SECONDS}s (limit ${LEFT}s)"
cp "$WORK/kp/report/report.md" "$OUT/keypoint_report.md" 2>/dev/null
tar czf "$OUT/kp_logs.tgz" -C "$WORK/kp" $(cd "$WORK/kp" && ls -d runs/*/log.txt runs/*/*done.json runs/*/*.png coords_train.csv 2>/dev/null)
ls -la "$OUT"
