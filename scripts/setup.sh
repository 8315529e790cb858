#!/usr/bin/env bash
# Create .venv and install agegender with training, the Ray engine and the test tools ([train,dev,ray]). Safe to
# run again.
# (An inference-only install, without torch, is just: pip install . )
# TORCH_SPEC picks the PyTorch build; the default pins the release this project is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q $TORCH_SPEC
.venv/bin/python -m pip install -q -e ".[train,dev,ray]"
.venv/bin/python -c "import agegender, torch, torchvision; print('agegender', agegender.__version__, '| torch', torch.__version__, '| torchvision', torchvision.__version__)"
