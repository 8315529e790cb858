"""Several training sources at once, source specs, and the photo-quality degradations."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from agegender.cli import main
from agegender.data.sources import Source, parse_source, read_split, select, source_of, split_from_checkpoint
from agegender.evaluation.damage import degrade_fixed
from agegender.model.checkpoint import load_checkpoint


def test_parse_source_reads_specs_and_mappings() -> None:
    spec = parse_source("photos,labels=l.csv,detect=yes,face=largest,min_face=60,name=mine")
    assert spec == Source("photos", "l.csv", True, "largest", 60, "mine")
    assert parse_source({"data": "crops"}) == Source("crops")
    assert parse_source({"data": "p", "detect": False}).detect is False


@pytest.mark.parametrize(("spec", "match"), [
    ("photos,detect", r"expected key=value after the folder, got 'detect'"),
    ("photos,colour=red", r"unknown keys \['colour'\]"),
    ("photos,detect=maybe", r"detect must be true or false, got 'maybe'"),
    ("photos,min_face=big", r"min_face must be a whole number of pixels"),
    ("photos,face=all", r"face must be one of single, largest, got 'all'"),
    (",labels=x.csv", r"a source needs its data folder"),
])
def test_parse_source_rejects_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_source(spec)


def test_source_of_finds_a_folder_by_path_then_by_its_last_two_parts(tmp_path: Path) -> None:
    sources = [Source(str(tmp_path / "utk")), Source(str(tmp_path / "aaf" / "images"), name="aaf")]
    assert source_of(tmp_path / "aaf" / "images", sources)[0] == 1
    assert source_of(Path("/elsewhere") / tmp_path.name / "utk", sources)[0] == 0
    with pytest.raises(ValueError, match=r"none of the model's training sources"):
        source_of(tmp_path / "other", sources)


def test_concat_datasets_indexes_through_all_parts() -> None:
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")
    from agegender.training.datasets import concat_datasets
    first = [(torch.zeros(1), {}, i) for i in range(3)]
    second = [None, (torch.ones(1), {}, 1)]
    pooled = concat_datasets([first, second])
    assert [pooled[i] is None or pooled[i][2] for i in range(5)] == [0, 1, 2, True, 4]


def test_random_degrade_changes_images_and_keeps_their_form() -> None:
    torch = pytest.importorskip("torch", reason="needs PyTorch: pip install 'agegender[train]'")
    from agegender.training.transforms import RandomDegrade
    img = torch.from_numpy(np.asarray(Image.open("examples/astronaut.png").convert("RGB").resize((64, 64))).copy())
    img = img.permute(2, 0, 1).contiguous()
    torch.manual_seed(0)
    outs = [RandomDegrade(1.0)(img) for _ in range(20)]
    assert all(o.dtype == torch.uint8 and o.shape == img.shape for o in outs)
    assert sum(not torch.equal(o, img) for o in outs) == 20  # p=1: every image is damaged some way
    assert torch.equal(RandomDegrade(0.0)(img), img)
    with pytest.raises(ValueError, match=r"degradation probability must be in \[0, 1\], got 1.5"):
        RandomDegrade(1.5)


def test_degrade_fixed_is_greyscale_blurred_and_deterministic() -> None:
    photo = Image.open("examples/astronaut.png").convert("RGB").resize((120, 100))
    out = degrade_fixed(photo)
    pixels = np.asarray(out).astype(int)
    assert out.size == photo.size
    assert np.abs(pixels[..., 0] - pixels[..., 1]).max() <= 3  # grey, up to JPEG chroma rounding
    # Blurred: far less high-frequency energy than the photo's own luminance.
    grey = np.asarray(photo.convert("L")).astype(int)
    assert np.abs(np.diff(pixels[..., 0], axis=1)).mean() < 0.6 * np.abs(np.diff(grey, axis=1)).mean()
    assert np.array_equal(np.asarray(degrade_fixed(photo)), np.asarray(out))


@pytest.fixture(scope="module")
def two_sources(face_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The UTKFace-named crops, and the same crops renamed in a second folder with a labels file."""
    other = tmp_path_factory.mktemp("second") / "images"
    other.mkdir()
    rows = []
    for i, p in enumerate(sorted(face_dir.glob("*.jpg"))):
        age, gender = p.name.split("_")[:2]
        shutil.copy(p, other / f"{i:05d}.jpg")
        rows.append({"file": f"{i:05d}.jpg", "age": age, "gender": "female" if gender == "1" else "male"})
    labels = other.parent / "labels.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    return face_dir, other


def test_training_on_two_sources_splits_validates_and_records_each(two_sources: tuple[Path, Path], tmp_path: Path,
                                                                   tiny_train_argv) -> None:
    utk, other = two_sources
    run = tmp_path / "run"
    argv = tiny_train_argv(utk, run, "--source", str(utk), "--source",
                           f"{other},labels={other.parent / 'labels.csv'},name=second", "--degrade", "0.5")
    argv.remove("--data")
    argv.remove(str(utk))
    assert main(argv) == 0
    split_first, split_second = read_split(run / "split.csv"), read_split(run / "split-second.csv")
    assert len(split_first) == len(split_second) == len(list(utk.glob("*.jpg")))
    metrics = pd.read_csv(run / "metrics.csv")
    for key in ("val", "val_faces0", "val_second"):
        assert metrics[f"{key}_age_mae"].notna().all(), key
    # The pooled figure lies between the two sources' (same crops: it need not equal either).
    pooled, a, b = (metrics[f"{k}_age_mae"].iloc[0] for k in ("val", "val_faces0", "val_second"))
    assert min(a, b) - 1e-6 <= pooled <= max(a, b) + 1e-6
    ckpt = load_checkpoint(run / "best.pt")
    recorded = ckpt["training"]["sources"]
    assert [s["key"] for s in recorded] == ["faces0", "second"]
    assert ckpt["training"]["config"]["degrade"] == 0.5
    # A benchmark recreates each source's split from the checkpoint alone.
    records, split, same = split_from_checkpoint(ckpt, other)
    assert same and split == split_second
    assert {r.file for r in select(records, split, "test")} == {f for f, s in split_second.items() if s == "test"}
    assert "age_interval" in ckpt["calibration"]  # calibrated on the pooled validation subset


def test_sources_and_data_labels_cannot_be_mixed(two_sources: tuple[Path, Path], tmp_path: Path) -> None:
    utk, other = two_sources
    rc = main(["train", "--source", str(utk), "--labels", str(other.parent / "labels.csv"), "--out",
               str(tmp_path / "r"), "-q"])
    assert rc == 2
