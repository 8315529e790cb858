#!/usr/bin/env bash
# Set up, then train briefly, evaluate and predict on the UTKFace folder named by $UTKFACE.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
UTKFACE=${UTKFACE:-}
if [ -z "$UTKFACE" ] || [ ! -d "$UTKFACE" ]; then
  cat >&2 <<'MSG'
Set UTKFACE to a folder of UTKFace crops (files like 26_1_2_20170116174525125.jpg.chip.jpg), e.g.
  UTKFACE=~/data/UTKFace bash scripts/quickstart.sh
Get them from Kaggle ("utk-face-cropped": kaggle datasets download -d abhikjha/utk-face-cropped, then unzip;
the nested utkcropped/utkcropped layout is fine) or from https://susanqq.github.io/UTKFace/ ("Aligned&Cropped
Faces"). UTKFace is for non-commercial research use only.
MSG
  exit 2
fi
RUN=${RUN:-runs/quickstart}
# A short CPU-sized run: 3,000 images at 64 px for 2 epochs (a few minutes on 2 cores).
.venv/bin/agegender train --data "$UTKFACE" --out "$RUN" --pretrained none --image-size 64 --epochs 2 \
  --limit 3000 --num-workers 1
.venv/bin/agegender evaluate --model "$RUN/best.pt" --data "$UTKFACE" --split-file "$RUN/split.csv" \
  --subset test --out "$RUN/test/REPORT.json" --predictions "$RUN/test/PREDS.csv"
.venv/bin/python - "$RUN/test/REPORT.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"test n={r['n']}  age MAE {r['age_mae']:.2f} y  CS@5 {r['cs5']:.1f}%  "
      f"gender accuracy {100 * r['gender_accuracy']:.1f}%  gender MAE {r['gender_mae']:.3f}")
print("by age bucket:", {k: round(v["age_mae"], 1) for k, v in r["groups"]["age"].items()})
PY
echo "Report, predictions and plots: $RUN/test/"
