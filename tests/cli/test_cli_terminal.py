"""What a new user meets on the command line: an answer on the terminal without --out, JSON lines, CSV on standard
output, an image on standard input, --version, plain wording, and --device refused when it cannot be honoured.
All on the bundled model (its ONNX export) and the example photo."""

from __future__ import annotations

import csv
import io
import json
import logging
import socket
import sys
from pathlib import Path

import pytest

from agegender import __version__
from agegender.cli import main
from agegender.inference.batch import PHOTO_COLUMNS

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "astronaut.png"


def test_without_out_a_table_of_the_faces_is_printed(capsys: pytest.CaptureFixture,
                                                     caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("RGB", (200, 150), (128, 128, 128)).save(blank)
    caplog.set_level(logging.INFO, logger="agegender")
    assert main(["predict", str(EXAMPLE), str(blank)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "face", "age", "80%", "range", "gender", "p_female", "det", "box",
                                "x1,y1,x2,y2"]
    row = lines[1].split()
    assert row[0] == str(EXAMPLE) and row[1] == "0" and row[4] == "female"
    assert 20 < float(row[2]) < 40 and 0.5 < float(row[5]) < 1
    low, high = (float(v) for v in row[3].split("-"))
    assert low < float(row[2]) < high
    assert lines[2].split()[1:] == ["no", "face", "found"] and len(lines) == 3
    # Plain wording in the summary: one file, one face, no "1 problems".
    assert "2 files: 1 face, 1 without a face, 0 problems" in caplog.text


def test_json_lines_and_csv_on_standard_output(capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", str(EXAMPLE), "--json", "-q"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    assert row["file"] == str(EXAMPLE) and row["status"] == "ok" and row["gender"] == "female"
    assert list(row) == [c for c in PHOTO_COLUMNS if c in row] and "error" not in row
    assert main(["predict", str(EXAMPLE), "--out", "-", "-q"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1 and list(rows[0]) == PHOTO_COLUMNS
    assert float(rows[0]["age"]) == pytest.approx(row["age"]) and rows[0]["status"] == "ok"


def test_an_image_on_standard_input(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(EXAMPLE.read_bytes())))
    assert main(["predict", "-", "--json", "--annotate", str(tmp_path / "ann"), "-q"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["file"] == "<stdin>" and row["gender"] == "female"
    assert (tmp_path / "ann" / "stdin_annotated.jpg").is_file()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"not an image at all")))
    assert main(["predict", "-", "--json", "-q"]) == 1  # the input could not be used: its own row says why
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["file"] == "<stdin>" and row["status"] == "error"
    assert main(["predict", "-", str(EXAMPLE), "-q"]) == 2  # standard input is one image, alone


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"agegender {__version__}\n"


def test_device_refused_unless_it_can_be_used(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import agegender.compute.runtime as runtime

    monkeypatch.setattr(runtime, "available_providers", lambda: ["CPUExecutionProvider"])  # no GPU here
    for device, message in (("banana", "unknown device 'banana': use cpu, cuda, cuda:N or auto"),
                            ("cuda", "this onnxruntime has no CUDA provider"),
                            ("cuda:1", "pip install 'agegender[gpu]'")):
        caplog.clear()
        assert main(["predict", str(EXAMPLE), "--device", device, "-q"]) == 2, device
        assert len(caplog.records) == 1 and message in caplog.text, caplog.text
    for device in ("cpu", "auto", "CPU"):
        assert main(["predict", str(EXAMPLE), "--device", device, "--json", "-q"]) == 0, device
        assert json.loads(capsys.readouterr().out)["status"] == "ok"


def test_serve_names_the_file_it_runs_and_says_plainly_what_it_needs(caplog: pytest.LogCaptureFixture,
                                                                      capsys: pytest.CaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import agegender.serving.http as http

    # The whole command up to the server's loop, which returns at once here.
    monkeypatch.setattr(http, "serve", lambda app, sock, header_timeout, quiet: True)
    caplog.set_level(logging.INFO, logger="agegender")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["serve", "--port", str(port)]) == 0
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model ")]
    assert "default_model.onnx (mobilenet_v2, on cpu)" in line and "default_model.pt" not in line
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = capsys.readouterr().out
    assert "extra" not in help_text and "--docs, --no-docs" in help_text and "CDN" not in help_text
