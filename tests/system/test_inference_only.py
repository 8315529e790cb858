"""Predicting and serving need no torch, torchvision, pandas, matplotlib, OpenCV, PyYAML or onnx: each command
runs in a fresh interpreter where importing those fails, as in an inference-only install
(``pip install agegender``); the commands that need them say which extra to install (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agegender.model.checkpoint import BUNDLED_ONNX

ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = ROOT / "examples" / "astronaut.png"
BLOCKED = ("torch", "torchvision", "pandas", "matplotlib", "cv2", "yaml", "onnx", "scipy")

SCRIPT = """
import json, logging, sys
for name in {blocked!r}:
    sys.modules[name] = None  # `import name` now fails, as where it is not installed
from agegender.cli import main
argv = json.loads(sys.argv[1])
result = {{"rc": main(argv)}}
result["loaded"] = sorted({{m.split(".")[0] for m, v in sys.modules.items() if v is not None}} & set({blocked!r}))
print("RESULT", json.dumps(result))
"""

SERVE = """
import json, sys
for name in {blocked!r}:
    sys.modules[name] = None
from fastapi.testclient import TestClient
from agegender.inference.predictor import Predictor
from agegender.serving.app import create_app
with TestClient(create_app(Predictor.default())) as client:
    r = client.post("/v1/predict", content=open(sys.argv[1], "rb").read(), headers={{"Content-Type": "image/png"}})
    card = client.get("/v1/model").json()
loaded = sorted({{m.split(".")[0] for m, v in sys.modules.items() if v is not None}} & set({blocked!r}))
print("RESULT", json.dumps({{"status": r.status_code, "faces": len(r.json()["faces"]), "loaded": loaded,
                             "epoch": card["training"].get("epoch")}}))
"""

pytestmark = pytest.mark.skipif(not BUNDLED_ONNX.is_file(), reason="no bundled model in this checkout")


def run(script: str, *args: str) -> tuple[dict, str]:
    res = subprocess.run([sys.executable, "-c", script.format(blocked=BLOCKED), *args], capture_output=True,
                         text=True, timeout=300)
    lines = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result (exit {res.returncode}):\n{res.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):]), res.stderr


def cli(*argv: str) -> tuple[dict, str]:
    return run(SCRIPT, json.dumps(list(argv)))


def test_predict_photos_and_crops_without_torch(tmp_path: Path) -> None:
    out = tmp_path / "photo.csv"
    result, err = cli("predict", str(ASTRONAUT), "--out", str(out), "-q")
    assert result == {"rc": 0, "loaded": []}, err
    rows = out.read_text().splitlines()
    assert rows[0].startswith("file,face,box_x1") and len(rows) == 2 and ",female," in rows[1]
    from PIL import Image

    Image.open(ASTRONAUT).convert("RGB").crop((150, 30, 290, 190)).save(tmp_path / "face.jpg")
    result, err = cli("predict", "--aligned", str(tmp_path / "face.jpg"), "--out", str(tmp_path / "crop.json"), "-q")
    assert result == {"rc": 0, "loaded": []}, err
    assert json.loads((tmp_path / "crop.json").read_text())[0]["gender"] in ("male", "female")


def test_serve_without_torch() -> None:
    result, err = run(SERVE, str(ASTRONAUT))
    assert result == {"status": 200, "faces": 1, "loaded": [], "epoch": result["epoch"]}, err
    assert result["epoch"] >= 1  # the model card's training facts travel in the ONNX file


@pytest.mark.parametrize(("argv", "extra"), [
    (["train", "--data", ".", "--out", "runs/x"], "train"),
    (["export", "--out", "m.onnx"], "train"),
    (["evaluate", "--data", ".", "--out", "r.json"], "eval"),
])
def test_commands_that_need_extras_say_which(argv: list[str], extra: str) -> None:
    result, err = cli(*argv)
    assert result["rc"] == 2 and result["loaded"] == []
    assert f"pip install 'agegender[{extra}]'" in err and "Traceback" not in err


def test_help_imports_nothing_heavy() -> None:
    script = "import sys\nsys.argv = ['agegender', '--help']\nfrom agegender.cli import main\ntry:\n    main()\n" \
             "except SystemExit:\n    pass\nprint('RESULT', sorted(m for m in ('numpy', 'PIL', 'onnxruntime', " \
             "'torch') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "usage: agegender" in res.stdout and "RESULT []" in res.stdout, res.stderr


def test_a_video_without_the_video_extra_says_which(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 64)
    result, err = cli("predict", str(clip), "--out", str(tmp_path / "rows.csv"))
    assert result == {"rc": 2, "loaded": []}, err
    assert "pip install 'agegender[video]'" in err and "Traceback" not in err
