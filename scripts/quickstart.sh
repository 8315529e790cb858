#!/usr/bin/env bash
# Set up .venv, then find the face in the example photo and estimate its age and gender with the bundled model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/quickstart}
PHOTO=${PHOTO:-examples/astronaut.png}
.venv/bin/agegender predict "$PHOTO" --out "$OUT/preds.csv" --annotate "$OUT"
.venv/bin/python - "$OUT/preds.csv" <<'PY'
import csv, sys
for row in csv.DictReader(open(sys.argv[1])):
    if row["status"] != "ok":
        print(f"{row['file']}: {row['status']} {row['error']}")
        continue
    print(f"{row['file']} face {row['face']}: age {float(row['age']):.1f} "
          f"(80% interval {float(row['age_low']):.0f}-{float(row['age_high']):.0f}), {row['gender']} "
          f"(p_female {float(row['p_female']):.2f}), detector score {float(row['det_score']):.3f}")
PY
echo "Predictions: $OUT/preds.csv; annotated photo: $OUT/$(basename "${PHOTO%.*}")_annotated.jpg"
