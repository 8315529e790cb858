"""Shared fixtures: a few dozen real UTKFace crops (or generated stand-ins) and one tiny trained run."""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import struct
import zlib
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

if find_spec("pandas") is not None:
    # Tests read outputs with pandas itself: give them the package's text storage (agegender.data.frames), as
    # pandas 3's default with pyarrow installed (the ray extra) cannot hold the non-UTF-8 names some tests use.
    import agegender.data.frames  # noqa: F401

REAL_DATA_ENV = "AGEGENDER_TEST_DATA"
IMAGENET_ENV = "AGEGENDER_TEST_IMAGENET"


def real_data_dir() -> Path | None:
    value = os.environ.get(REAL_DATA_ENV)
    return Path(value) if value else None


def _generated_faces(dest: Path, n: int = 48) -> None:
    """Stand-ins with UTKFace names: a bright oval on a background whose tone follows the label, so the
    tiny models in the tests have something to fit."""
    rng = np.random.default_rng(0)
    ages = [1, 5, 8, 15, 22, 25, 28, 33, 36, 41, 47, 52, 58, 63, 68, 75]
    for i in range(n):
        age, gender, race = ages[i % len(ages)], (i // len(ages)) % 2, i % 5
        img = np.full((64, 64, 3), 40 + 2 * age, np.uint8)
        img[..., 2] = 200 if gender else 60
        yy, xx = np.mgrid[:64, :64]
        img[((yy - 32) / 24) ** 2 + ((xx - 32) / 18) ** 2 < 1] = (220, 180, 150)
        img = np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(dest / f"{age}_{gender}_{race}_2017011{i:010d}.jpg.chip.jpg", quality=90)


@pytest.fixture(scope="session")
def face_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 labelled face crops: real UTKFace files where AGEGENDER_TEST_DATA is set, generated otherwise."""
    dest = tmp_path_factory.mktemp("faces")
    real = real_data_dir()
    if real is None:
        _generated_faces(dest)
        return dest
    names = sorted(p.name for p in real.iterdir() if p.name.endswith(".jpg.chip.jpg") and p.name.count("_") == 3)
    step = max(1, len(names) // 48)
    for name in names[::step][:48]:  # names sort by age, so this spans all ages
        shutil.copy(real / name, dest / name)
    return dest


def _tiny_train_argv(data: Path, out: Path, *extra: str, quiet: bool = True) -> list[str]:
    """``agegender train`` argv for a tiny run: one epoch of the default network, untrained, at 32 px, batches of 8, no
    workers, a 0.6/0.2/0.2 split; ``extra`` comes after these, so it can override them (argparse keeps the
    last occurrence of an option), and ``-q`` last unless ``quiet`` is false."""
    argv = ["train", "--data", str(data), "--out", str(out), "--pretrained", "none", "--image-size", "32",
            "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--split", "0.6,0.2,0.2", *extra]
    return [*argv, "-q"] if quiet else argv


NEEDS_TORCH = "needs PyTorch (the test trains a tiny model): pip install 'agegender[train]'"


@pytest.fixture(scope="session")
def tiny_train_argv():
    """:func:`_tiny_train_argv`, for test modules (``--import-mode=importlib`` cannot import conftest)."""
    pytest.importorskip("torch", reason=NEEDS_TORCH)
    return _tiny_train_argv


@pytest.fixture(scope="session")
def trained_run(face_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of a tiny ResNet-18 at 32 px through the CLI; returns the run folder."""
    pytest.importorskip("torch", reason=NEEDS_TORCH)
    from agegender.cli import main

    run = tmp_path_factory.mktemp("run") / "tiny"
    rc = main(_tiny_train_argv(face_dir, run))
    assert rc == 0
    return run


@pytest.fixture(scope="session", autouse=True)
def _private_decode_cache(tmp_path_factory: pytest.TempPathFactory):
    """Training runs in tests write their decode caches into a temporary folder, not the user's cache."""
    old = os.environ.get("AGEGENDER_CACHE")
    os.environ["AGEGENDER_CACHE"] = str(tmp_path_factory.mktemp("decode_cache"))
    yield
    if old is None:
        os.environ.pop("AGEGENDER_CACHE", None)
    else:
        os.environ["AGEGENDER_CACHE"] = old


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header that claims ``width`` x ``height`` with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def make_bad_corpus(face_dir: Path, dest: Path) -> dict[str, list[str]]:
    """A UTKFace-style folder with good crops and every kind of bad input; returns the names by kind."""
    dest.mkdir()
    good = sorted(face_dir.glob("*.jpg"))[:20]
    for p in good:
        shutil.copy(p, dest / p.name)
    face = Image.open(good[0]).convert("RGB")
    name = iter(f"3{i}_{i % 2}_{i % 5}_2017010100000{i:04d}.jpg.chip.jpg" for i in range(100))
    odd_ok, broken = {}, {}
    buf = io.BytesIO()
    face.save(buf, "JPEG")
    broken["zero-byte"] = b""
    broken["truncated JPEG"] = buf.getvalue()[: len(buf.getvalue()) // 2]
    broken["text named .jpg"] = b"hello, I am not an image\n"
    broken["header claims 20000x20000"] = _png_claiming(20000, 20000)

    def encode(img: Image.Image, fmt: str, **kw) -> bytes:
        out = io.BytesIO()
        img.save(out, fmt, **kw)
        return out.getvalue()

    rgba = face.convert("RGBA")
    rgba.putalpha(128)
    odd_ok["PNG with alpha"] = encode(rgba, "PNG")
    odd_ok["16-bit PNG"] = encode(Image.fromarray(np.asarray(face.convert("L"), np.uint16) * 257), "PNG")
    odd_ok["grayscale"] = encode(face.convert("L"), "JPEG")
    odd_ok["CMYK JPEG"] = encode(face.convert("CMYK"), "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    odd_ok["EXIF-rotated"] = encode(face.rotate(90, expand=True), "JPEG", exif=exif)
    odd_ok["1x1"] = encode(Image.new("RGB", (1, 1), (200, 150, 120)), "PNG")
    names: dict[str, list[str]] = {"good": [p.name for p in good], "odd_ok": [], "broken": [], "malformed": []}
    for kind, group in (("odd_ok", odd_ok), ("broken", broken)):
        for data in group.values():
            n = next(name)
            (dest / n).write_bytes(data)
            names[kind].append(n)
    for bad in ("39_1_20170116174525125.jpg.chip.jpg", "24_0_1_20170116220224657 .jpg.chip.jpg",
                "55_0_0_20170116232725357jpg.chip.jpg", "130_0_0_20170116232725357.jpg.chip.jpg",
                "30_2_0_20170116232725357.jpg.chip.jpg", "30_0_7_20170116232725357.jpg.chip.jpg"):
        shutil.copy(good[0], dest / bad)
        names["malformed"].append(bad)
    (dest / "copies").mkdir()
    shutil.copy(good[1], dest / "copies" / good[1].name)  # the same file twice
    (dest / "loop").symlink_to(dest, target_is_directory=True)  # a symlink loop
    unreadable = dest / next(name)
    shutil.copy(good[2], unreadable)
    unreadable.chmod(0)  # unreadable for a normal user; root reads it anyway
    names["unreadable"] = [unreadable.name]
    return names


@pytest.fixture(scope="session")
def bad_corpus(face_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    """A UTKFace-style folder of good crops and every kind of bad input (generated, no real faces added)."""
    dest = tmp_path_factory.mktemp("bad") / "data"
    return dest, make_bad_corpus(face_dir, dest)


# --------------------------------------------------------------------------- hostile files
# Crafted at test time (no file of them is committed): what a hostile pass over the project threw at it.


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def _gradient(w: int = 48, h: int = 40, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    arr = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1)
    return Image.fromarray(np.clip(arr + rng.integers(0, 40, arr.shape), 0, 255).astype(np.uint8))


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A valid 8x8 JPEG (about 630 bytes) whose frame header claims ``width`` x ``height``."""
    data = bytearray(_encode(Image.new("RGB", (8, 8), (90, 90, 90)), "JPEG", quality=50))
    struct.pack_into(">HH", data, data.index(b"\xff\xc0") + 5, height, width)
    return bytes(data)


def _tiff_claiming(width: int, height: int) -> bytes:
    """A little-endian TIFF whose one strip of 16 bytes is said to hold ``width`` x ``height`` grey pixels."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8 + 2 + 9 * 12 + 4),
            (277, 3, 1), (278, 4, height), (279, 4, 16)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, kind, 1, v) for t, kind, v in tags)
    return b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + b"\0" * 16


def _exif_mangled(seed: int) -> bytes:
    """A JPEG whose EXIF block (orientation 6 and three text tags) has 1-3 bytes changed, seeded: seeds 57
    and 633 make Pillow's ImageOps.exif_transpose raise struct.error and TypeError while rewriting it."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x0110], exif[0x0131] = 6, "Maker", "Model", "soft"
    data = bytearray(_encode(Image.new("RGB", (16, 8), (200, 100, 50)), "JPEG", exif=exif.tobytes()))
    start = data.index(b"Exif\0\0") + 6
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(start, start + 90)
        data[at] = rng.randrange(256)
    return bytes(data)


def hostile_images() -> dict[str, tuple[bytes, str]]:
    """Case -> (file content, expected outcome): "ok" (decoded and used), or the ImageReadError kind."""
    face, noisy = _gradient(), _gradient(96, 80, 1)
    grey16 = Image.fromarray(np.asarray(face.convert("L"), np.uint16) * 257)
    cases: dict[str, tuple[bytes, str]] = {
        "GIF, 2 frames": (_encode(face.convert("P"), "GIF", save_all=True,
                                  append_images=[face.rotate(180).convert("P")]), "ok"),
        "TIFF, 2 pages": (_encode(face, "TIFF", save_all=True, append_images=[face.rotate(180)]), "ok"),
        "animated WebP": (_encode(face, "WEBP", save_all=True, append_images=[face.rotate(180)]), "ok"),
        "MPO, 2 pictures": (_encode(face, "MPO", save_all=True, append_images=[face.rotate(180)]), "ok"),
        "16-bit PNG": (_encode(grey16, "PNG"), "ok"),
        "16-bit PNG with transparency": (_encode(grey16, "PNG", transparency=0), "ok"),
        "palette PNG with transparency": (_encode(face.convert("P"), "PNG", transparency=0), "ok"),
        "grey + alpha PNG": (_encode(face.convert("LA"), "PNG"), "ok"),
        "CMYK JPEG": (_encode(face.convert("CMYK"), "JPEG"), "ok"),
        "progressive JPEG": (_encode(face, "JPEG", progressive=True), "ok"),
        "BMP": (_encode(face, "BMP"), "ok"),
        "lossless WebP": (_encode(face, "WEBP", lossless=True), "ok"),
        "1x1 PNG": (_encode(Image.new("RGB", (1, 1), (200, 150, 120)), "PNG"), "ok"),
        "EXIF that breaks exif_transpose (struct.error)": (_exif_mangled(57), "ok"),
        "EXIF that breaks exif_transpose (TypeError)": (_exif_mangled(633), "ok"),
        "zero-length": (b"", "empty"),
        "1 byte": (b"\xff", "unsupported"),
        "text named .jpg": (b"hello, I am not an image\n", "unsupported"),
        "PNG with a bad CRC": (_corrupt_crc(_encode(face, "PNG")), "corrupt"),
        "header-only PNG 10000x10000": (_png_claiming(10000, 10000), "too_large"),
        "631-byte JPEG claiming 8000x8000": (_jpeg_claiming(8000, 8000), "too_large"),
        "TIFF claiming 30000x30000": (_tiff_claiming(30000, 30000), "too_large"),
        "TIFF claiming 6000x6000 in 16 bytes": (_tiff_claiming(6000, 6000), "corrupt"),
        "ICO holding a 13000x13000 PNG": (_ico_holding(_png_claiming(13000, 13000)), "unsupported"),
        "DDS with unknown pixel flags": (b"DDS " + struct.pack("<7I", 124, 0x1007, 64, 64, 0, 0, 0) + b"\0" * 44
                                         + struct.pack("<2I", 32, 0x80000) + b"\0" * 4156, "unsupported"),
        "PSD": (b"8BPS\0\1" + b"\0" * 200, "unsupported"),
        "EPS": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "unsupported"),
    }
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        cases[f"EXIF orientation {orientation}"] = (_encode(face, "JPEG", exif=exif.tobytes()), "ok")
    formats = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"] + (["AVIF"] if features.check("avif") else [])
    if "AVIF" in formats:
        cases["AVIF"] = (_encode(face, "AVIF"), "ok")
    for fmt in formats:
        data = _encode(noisy.convert("P") if fmt == "GIF" else noisy, fmt)
        cases[f"truncated {fmt}"] = (data[: len(data) * 6 // 10], "corrupt")
    return cases


def _corrupt_crc(png: bytes) -> bytes:
    data = bytearray(png)
    data[29] ^= 0xFF  # the last byte of IHDR's CRC
    return bytes(data)


def _ico_holding(png: bytes) -> bytes:
    """An ICO whose one entry says 256x256 but holds ``png``."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png


@pytest.fixture(scope="session")
def hostile_cases() -> dict[str, tuple[bytes, str]]:
    """:func:`hostile_images`, for test modules."""
    return hostile_images()


@pytest.fixture(scope="session")
def hostile_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[str, str]]]:
    """A folder of every hostile case under a UTKFace name, beside 12 plain crops so a run can train on it;
    returns the folder and file name -> (case, expected outcome)."""
    dest = tmp_path_factory.mktemp("hostile") / "data"
    dest.mkdir()
    _generated_faces(dest, 12)
    names = {p.name: ("plain crop", "ok") for p in dest.iterdir()}
    for i, (case, (data, expected)) in enumerate(hostile_images().items()):
        name = f"{20 + i % 50}_{i % 2}_{i % 5}_2018010100{i:07d}.jpg.chip.jpg"
        (dest / name).write_bytes(data)
        names[name] = (case, expected)
    return dest, names


EXAMPLE_PHOTO = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"


def face_grid(n: int) -> bytes:
    """A PNG of ``n`` copies of the example photo's face in a grid on grey: a crowd photo made on the spot."""
    face = Image.open(EXAMPLE_PHOTO).convert("RGB").crop((146, 18, 303, 216)).resize((80, 101))
    cols = int(np.ceil(np.sqrt(n)))
    canvas = Image.new("RGB", (cols * 90, int(np.ceil(n / cols)) * 112), (128, 128, 128))
    for i in range(n):
        canvas.paste(face, ((i % cols) * 90 + 5, (i // cols) * 112 + 5))
    return _encode(canvas, "PNG")


@pytest.fixture(scope="session")
def crowd_photo():
    """:func:`face_grid`, for test modules."""
    return face_grid


def _seed_images() -> dict[str, bytes]:
    """One small image of each accepted format (and MPO): the starting points of the mutation fuzz."""
    face = Image.fromarray(np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    formats = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"] + (["AVIF"] if features.check("avif") else [])
    return {fmt: _encode(face, fmt) for fmt in formats}


def _mutated_headers(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` seeded mutants ``(format, bytes)`` of small images of every accepted format: 1-4 bytes changed,
    inserted or removed in the first 64 bytes, and one in five cut short."""
    rng = random.Random(seed)
    seeds = _seed_images()
    names = sorted(seeds)
    out = []
    for i in range(n):
        data = bytearray(seeds[names[i % len(names)]])
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(min(64, len(data)))
            action = rng.random()
            if action < 0.6:
                data[at] = rng.randrange(256)
            elif action < 0.8:
                data[at:at] = bytes([rng.randrange(256)])
            else:
                del data[at]
        if rng.random() < 0.2:
            data = data[: rng.randrange(1, len(data))]
        out.append((names[i % len(names)], bytes(data)))
    return out


@pytest.fixture(scope="session")
def mutated_headers():
    """:func:`_mutated_headers`, for test modules."""
    return _mutated_headers


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def default_sigint():
    """A ``preexec_fn`` for a child a test interrupts with SIGINT: Ctrl-C's default action before exec, so that
    Python installs its KeyboardInterrupt handler even when the test run was started in the background (a POSIX
    shell leaves SIGINT ignored for asynchronous commands, and a child inherits that)."""
    return _default_sigint
