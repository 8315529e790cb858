"""Speed of the path users run: whole `agegender` processes on folders of real images, start-up included.

    python benchmarks/speed.py --data UTKFACE_DIR [--photos DIR] [--n-crops 1000] [--n-photos 100]
                               [--faceapi ../faceapi-peer] [--runtimes onnx,torch] [--baseline OTHER/src]
                               [--venv] [--no-hog]

Measures, each as a separate process timed from outside (wall seconds, and CPU seconds and peak RSS of the
process from ``wait4``):

* ``agegender predict --aligned`` on N real UTKFace crops (a seeded sample of the bundled model's test subset)
  and ``agegender predict`` on N real photos (AAF portraits resized to 400 px wide, about 400x500, one face
  each; or ``--photos DIR`` as they are), for each runtime in ``--runtimes``;
* the same two runs while ``--hog`` processes (default: one per core) spin beside them, against idle;
* one photo from a fresh process (wall, CPU, peak RSS; median of 3) and ``agegender --help`` (median of 5);
* with ``--venv``, the disk size of a fresh virtual environment with ``pip install .`` (the inference-only
  install) and whether ``agegender predict`` works in it (needs PyPI);
* with node and the face-api.js peer (``--faceapi``, see ../shared/peers/faceapi/README.md) present, face-api.js
  on the same folders in the same run, timed the same way, and the ratios of images per CPU-second;
* with ``--baseline SRC`` another checkout's ``agegender`` (``PYTHONPATH=SRC``, its default runtime), e.g. the
  main branch, on the same folders.

Figures measured beside other work (a training run) measure the contention, not the code: the load average
before the run is printed with the results.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# Beside the checkout (../shared, ../faceapi-peer), or two levels up for a worktree under wt/.
AAF = next((p for p in (ROOT.parent / "shared" / "datasets" / "aaf" / "images",
                        ROOT.parents[1] / "shared" / "datasets" / "aaf" / "images") if p.is_dir()),
           ROOT.parent / "shared" / "datasets" / "aaf" / "images")
PEER_CANDIDATES = (ROOT.parent / "faceapi-peer", ROOT.parents[1] / "faceapi-peer")


@dataclass
class Run:
    """One timed process."""

    wall: float
    cpu: float
    rss_mb: float
    rc: int
    output: str

    def per_cpu_s(self, n: int) -> float:
        return n / self.cpu if self.cpu > 0 else float("nan")


# Forks and times the command from a small process: Linux counts the RSS a child had at fork (the parent's,
# which here holds numpy, PIL and torch) towards its peak, so the benchmark itself must not be the parent.
LAUNCHER = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
json.dump({"wall": time.perf_counter() - t0, "cpu": ru.ru_utime + ru.ru_stime, "rss_kb": ru.ru_maxrss,
           "rc": os.waitstatus_to_exitcode(status)}, open(sys.argv[1], "w"))
"""


def timed(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """Run ``cmd`` to its end: wall seconds, CPU seconds (user + system, children it waited for included) and
    peak resident memory of the process, from ``wait4``."""
    with tempfile.NamedTemporaryFile(suffix=".json") as stats:
        proc = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, stats.name, *cmd], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            m = json.loads(Path(stats.name).read_text())
        except ValueError:
            sys.exit(f"could not time {' '.join(cmd)}:\n{proc.stdout.decode(errors='replace')[-2000:]}")
    return Run(m["wall"], m["cpu"], m["rss_kb"] / 1024, m["rc"], proc.stdout.decode(errors="replace"))


@contextlib.contextmanager
def cpu_hog(processes: int) -> Iterator[None]:
    """``processes`` processes that keep one core busy each (at the benchmark's own niceness)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        time.sleep(1.0)  # let the scheduler spread them
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def prepare_crops(data: Path, n: int, dest: Path) -> list[str]:
    """Copy ``n`` crops of the bundled model's test subset (seeded sample) into ``dest``."""
    from agegender.data.sources import split_from_checkpoint
    from agegender.model.checkpoint import BUNDLED_MODEL, load_checkpoint

    records, split, _ = split_from_checkpoint(load_checkpoint(BUNDLED_MODEL), data)
    test = sorted(r.file for r in records if split[r.file] == "test")
    pick = sorted(np.random.default_rng(0).choice(len(test), size=min(n, len(test)), replace=False))
    dest.mkdir(parents=True)
    for i in pick:
        shutil.copy(data / test[i], dest / Path(test[i]).name)
    return [Path(test[i]).name for i in pick]


def prepare_photos(source: Path, n: int, dest: Path, width: int) -> None:
    """``n`` photos of ``source`` (sorted, evenly spaced), resized to ``width`` px wide (0: as they are) and
    saved as JPEG (quality 92)."""
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        sys.exit(f"no photos in {source}")
    dest.mkdir(parents=True)
    for p in files[:: max(1, len(files) // n)][:n]:
        img = Image.open(p).convert("RGB")
        if width:
            img = img.resize((width, round(width * img.height / img.width)), Image.Resampling.LANCZOS)
        img.save(dest / f"{p.stem}.jpg", quality=92)


def agegender_cmd(python: str, *args: str) -> list[str]:
    return [python, "-m", "agegender", *args]


def faceapi_peer(option: str | None) -> Path | None:
    if shutil.which("node") is None:
        return None
    for folder in ([Path(option)] if option else PEER_CANDIDATES):
        if (folder / "predict.mjs").is_file() and (folder / "node_modules").is_dir():
            return folder
    return None


def count_rows(path: Path, column: str) -> tuple[int, int]:
    """(rows, rows with a value in ``column``) of a CSV."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return len(rows), sum(1 for r in rows if r.get(column) not in ("", None))


def found_faces(path: Path, who: str) -> str:
    """How many photos got an age in a predict CSV (ours: rows with an age; face-api.js: non-empty age_pred)."""
    if who == "face-api.js":
        total, found = count_rows(path, "age_pred")
        return f"{who}: a face in {found} of {total} photos"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return (f"{who}: a face in {len({r['file'] for r in rows if r['status'] == 'ok'})} of "
            f"{len({r['file'] for r in rows})} photos")


def venv_install(repo: Path, work: Path) -> tuple[float | None, str]:
    """Disk size (MB) of a fresh venv with ``pip install repo`` (no extras), and the one-line result of running
    ``agegender predict`` on the example photo inside it."""
    venv = work / "inference-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(repo)], capture_output=True, text=True)
    if pip.returncode != 0:
        return None, f"pip install failed: {pip.stderr.strip().splitlines()[-1:]}"
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6
    out = work / "venv_pred.csv"
    run = timed([str(venv / "bin" / "agegender"), "predict", str(ROOT / "examples" / "astronaut.png"), "--out",
                 str(out), "-q"], env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    has_torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True).returncode
    verdict = f"predict exit {run.rc}, {count_rows(out, 'age')[1] if out.exists() else 0} face(s); torch " + (
        "absent" if has_torch else "PRESENT")
    return size, verdict


def median_run(cmd: list[str], times: int, env: dict[str, str] | None = None) -> Run:
    runs = [timed(cmd, env) for _ in range(times)]
    for r in runs:
        if r.rc not in (0, 1):
            sys.exit(f"{' '.join(cmd)} failed ({r.rc}):\n{r.output[-2000:]}")
    return sorted(runs, key=lambda r: r.wall)[len(runs) // 2]


class Bench:
    """The timed runs of one benchmark, all on the same input folders, collected as rows of the table."""

    def __init__(self, work: Path, peer: Path | None) -> None:
        self.work, self.peer = work, peer
        self.rows: list[tuple[str, str, Run, int]] = []  # (work, who, run, images)

    def csv(self, who: str, label: str) -> Path:
        return self.work / f"{who}-{label}.csv".replace(" ", "_").replace(",", "")

    def ours(self, label: str, who: str, folder: Path, extra: list[str], env: dict | None = None) -> None:
        """``agegender predict FOLDER`` with ``extra`` arguments, in a process of its own."""
        r = timed(agegender_cmd(sys.executable, "predict", str(folder), "--out", str(self.csv(who, label)), "-q",
                                *extra), env)
        if r.rc not in (0, 1):
            sys.exit(f"agegender predict failed ({r.rc}):\n{r.output[-3000:]}")
        self.rows.append((label, who, r, len(list(folder.iterdir()))))

    def face_api(self, label: str, mode: str, folder: Path) -> None:
        """face-api.js on the same folder (``mode`` crop or detect), when the peer is there."""
        if self.peer is None:
            return
        r = timed(["node", str(self.peer / "predict.mjs"), "--mode", mode, str(folder),
                   str(self.csv("face-api.js", label))], cwd=self.peer)
        if r.rc != 0:
            sys.exit(f"face-api.js failed ({r.rc}):\n{r.output[-3000:]}")
        self.rows.append((label, "face-api.js", r, len(list(folder.iterdir()))))

    def runs(self, crops: Path, photos: Path, runtimes: list[str], baseline: str | None, hog: int) -> None:
        for rt in runtimes:
            self.ours("crops", f"agegender {rt}", crops, ["--aligned", "--runtime", rt])
            self.ours("photos", f"agegender {rt}", photos, ["--runtime", rt])
        self.face_api("crops", "crop", crops)
        self.face_api("photos", "detect", photos)
        if baseline:
            env = {**os.environ, "PYTHONPATH": str(Path(baseline).resolve())}
            self.ours("crops", "baseline", crops, ["--aligned"], env)
            self.ours("photos", "baseline", photos, [], env)
        if hog:
            with cpu_hog(hog):
                self.ours("crops, busy", f"agegender {runtimes[0]}", crops, ["--aligned", "--runtime", runtimes[0]])
                self.ours("photos, busy", f"agegender {runtimes[0]}", photos, ["--runtime", runtimes[0]])
                self.face_api("crops, busy", "crop", crops)
                self.face_api("photos, busy", "detect", photos)


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """The two input folders (kept in ``work`` between runs with ``--work``)."""
    crops, photos = work / "crops", work / "photos"
    if not crops.exists():
        prepare_crops(Path(args.data), args.n_crops, crops)
    if not photos.exists():
        if args.photos:
            shutil.copytree(args.photos, photos)
        else:
            prepare_photos(AAF, args.n_photos, photos, args.photo_width)
    return crops, photos


def parity(a: Path, b: Path) -> str:
    """Largest differences between two predict CSVs of the same crops."""
    def read(p: Path) -> dict[str, tuple[float, float]]:
        with open(p, newline="") as f:
            return {r["file"].rsplit("/", 1)[-1]: (float(r["age"]), float(r["p_female"])) for r in csv.DictReader(f)
                    if r["status"] == "ok"}

    x, y = read(a), read(b)
    common = sorted(set(x) & set(y))
    age = max(abs(x[k][0] - y[k][0]) for k in common)
    p = max(abs(x[k][1] - y[k][1]) for k in common)
    return f"{len(common)} crops: max |age difference| {age:.3f} years, max |p_female difference| {p:.4f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the UTKFace folder (crops come from the bundled model's test "
                    "subset)")
    ap.add_argument("--photos", help=f"folder of photos, used as they are (default: {AAF}, resized)")
    ap.add_argument("--photo-width", type=int, default=400, help="width the default photos are resized to")
    ap.add_argument("--n-crops", type=int, default=1000)
    ap.add_argument("--n-photos", type=int, default=100)
    ap.add_argument("--runtimes", default="onnx,torch", help="agegender runtimes to time (default onnx,torch)")
    ap.add_argument("--faceapi", help="face-api.js peer folder (default: ../faceapi-peer when present)")
    ap.add_argument("--baseline", help="src folder of another agegender checkout to time the same way")
    ap.add_argument("--hog", type=int, default=os.cpu_count() or 1, help="busy processes for the loaded runs "
                    "(default: one per core; 0 skips those runs)")
    ap.add_argument("--venv", action="store_true", help="also measure a fresh inference-only install (PyPI)")
    ap.add_argument("--work", help="folder for inputs and outputs (default: a temporary folder, removed)")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="agegender-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    runtimes = [r for r in args.runtimes.split(",") if r]
    try:
        crops, photos = prepare(args, work)
        bench = Bench(work, faceapi_peer(args.faceapi))
        bench.runs(crops, photos, runtimes, args.baseline, args.hog)
        one = sorted(photos.iterdir())[0]
        cold = median_run(agegender_cmd(sys.executable, "predict", str(one), "--out", str(work / "one.csv"), "-q"), 3)
        script = Path(sys.executable).with_name("agegender")
        helps = median_run([str(script), "--help"] if script.exists() else agegender_cmd(sys.executable, "--help"), 5)
        venv = venv_install(ROOT, work) if args.venv else (None, "not measured (run with --venv)")
        notes = [found_faces(bench.csv(who, "photos"), who) for who in dict.fromkeys(w for _, w, _, _ in bench.rows)]
        if {"onnx", "torch"} <= set(runtimes):
            notes.append("onnx vs torch runtime on " + parity(bench.csv("agegender onnx", "crops"),
                                                              bench.csv("agegender torch", "crops")))
        report(bench, cold, helps, venv, notes, load_before, photos)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def report(bench: Bench, cold: Run, helps: Run, venv: tuple[float | None, str], notes: list[str],
           load_before: tuple[float, ...], photos: Path) -> None:
    sizes = [Image.open(p).size for p in photos.iterdir()]
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{os.cpu_count()} cores ({platform.machine()}), load average before the run {load_before[0]:.2f} (1 min) "
          f"{load_before[2]:.2f} (15 min); photos {min(w for w, _ in sizes)}-{max(w for w, _ in sizes)} x "
          f"{min(h for _, h in sizes)}-{max(h for _, h in sizes)} px" + ("" if bench.peer else
                                                                        "; face-api.js peer not found"))
    peer_rate = {label: r.per_cpu_s(n) for label, who, r, n in bench.rows if who == "face-api.js"}
    idle_wall = {(label, who): r.wall for label, who, r, n in bench.rows}
    print("| work | who | wall s | CPU s | images per CPU-second | peak RSS MB | vs face-api.js | busy / idle wall |")
    print("|---|---|---|---|---|---|---|---|")
    for label, who, r, n in bench.rows:
        base = label.replace(", busy", "")
        ratio = r.per_cpu_s(n) / peer_rate[label] if label in peer_rate and who != "face-api.js" else None
        slow = r.wall / idle_wall[(base, who)] if label.endswith("busy") and (base, who) in idle_wall else None
        print(f"| {n} {label} | {who} | {r.wall:.1f} | {r.cpu:.1f} | {r.per_cpu_s(n):.1f} | {r.rss_mb:.0f} | "
              f"{'' if ratio is None else f'{ratio:.2f}x'} | {'' if slow is None else f'{slow:.2f}x'} |")
    for line in notes:
        print(line)
    print(f"one photo from a fresh process (median of 3): {cold.wall:.2f} s wall, {cold.cpu:.2f} CPU s, "
          f"peak RSS {cold.rss_mb:.0f} MB")
    print(f"agegender --help (median of 5): {helps.wall:.2f} s wall")
    size, verdict = venv
    print(f"inference-only install (fresh venv, pip install .): "
          f"{'n/a' if size is None else f'{size:.0f} MB'}; {verdict}")


if __name__ == "__main__":
    sys.exit(main())
