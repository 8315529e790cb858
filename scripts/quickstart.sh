#!/usr/bin/env bash
# The first answer: a light .venv (agegender without PyTorch: numpy, Pillow, onnxruntime, FastAPI, ...; about
# 250 MB), then the faces of the example photo, their age and gender, printed here. Safe to run again: an existing
# .venv with agegender in it (scripts/setup.sh's, say) is used as it is. After the answer, the test tools (no PyTorch)
# go into the same .venv, so that `.venv/bin/python -m pytest` runs next (the tests that train skip, saying so).
# Contributors: bash scripts/setup.sh adds PyTorch and training (what CI runs the tests with).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PHOTO=${PHOTO:-examples/astronaut.png}
OUT=${OUT:-runs/quickstart}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! .venv/bin/python -c "import agegender" 2>/dev/null; then
  echo "Installing agegender (inference only, no PyTorch) into .venv ..."
  # Editable, so that scripts/setup.sh can add training and the tests to the same install later.
  .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi
echo
.venv/bin/agegender predict "$PHOTO" --annotate "$OUT" -q
cat <<TXT

age: the estimate in years; 80% range: the calibrated interval, which holds the true age of 8 faces in 10 like
this one; p_female: the probability that the face is female (gender says which side of 0.5); det: the face
detector's score; box: where the face is, in pixels. Annotated copy: $OUT/. More: README.md.
Next: .venv/bin/agegender predict YOUR_PHOTOS/ --out preds.csv, or .venv/bin/agegender serve (a web page).
Contributors: bash scripts/setup.sh (PyTorch, training, the tests), then .venv/bin/python -m pytest.
TXT
if ! .venv/bin/python -c "import pytest, playwright, pandas, matplotlib" 2>/dev/null; then
  echo
  echo "Installing the test tools into .venv (no PyTorch: the tests that train skip until scripts/setup.sh adds it) ..."
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
  echo "Done: .venv/bin/python -m pytest runs the tests."
fi
