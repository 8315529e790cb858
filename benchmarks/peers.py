"""Side by side with face-api.js: both tools on the same test images, in one run, per age bucket.

    python benchmarks/peers.py --utk UTKFACE_DIR --aaf AAF_IMAGES_DIR [--aaf-labels CSV] [--model CKPT]
        [--out runs/peers] [--peer-dir ../faceapi-peer] [--limit N] [--no-peer]

Sets (either may be left out):
- UTKFace test crops (the model's own split, recomputed from its checkpoint): no detection on either side;
  agegender through the same code as `agegender evaluate`, face-api.js's AgeGenderNet on the whole crop.
- AAF test photos (loose face photos with a labels file file,age,gender): each tool through its own detector:
  agegender's MTCNN + alignment with the "largest" face policy, face-api.js's SSD MobileNetV1 with its
  highest-scoring face. Scored on the photos where both found a face; each tool alone on what it found, too.

The peer (face-api.js in Node, `predict.mjs` from ../shared/peers/faceapi) reads a folder, so each set's test
images are linked into a temporary folder: both tools see exactly the same files. Without `node`, or with the
peer folder missing or not installed, one line says so and agegender runs alone. Per-image predictions of both
tools (CSV), the tables (peers.md) and a plot of MAE per age bucket go to --out.
"""

from __future__ import annotations

import argparse
import math
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from agegender.data.records import AGE_BUCKET_NAMES, Record, age_bucket
from agegender.data.sources import folder_split, limit_records, select, split_from_checkpoint
from agegender.errors import CheckpointError, DataError
from agegender.evaluation.evaluate import evaluate
from agegender.evaluation.metrics import summarize
from agegender.inference.predictor import Predictor
from agegender.model.checkpoint import load_checkpoint, resolve_model_path
from agegender.model.onnx import OnnxModel

TOOLS = {"ours": "agegender", "faceapi": "face-api.js"}
PEER_SOURCE = "../shared/peers/faceapi"  # the read-only copy shipped beside the data sets
TITLES = {"utkface": "UTKFace test crops", "aaf": "AAF test photos, each tool's own detector (faces found by both)"}
# Children, counted together for gender (their faces carry the least of it), and the smallest age group that counts
# in the balanced figures (its "bias" column is the largest |mean signed error| of the groups counted).
CHILDREN = ("0-2", "3-9")
MIN_GROUP = 20
FACE_POLICY = "largest"  # a loose crop may show part of a second face: take the largest, as our photos path does


@dataclass
class Run:
    """One tool's pass over a set: predictions (file, age_pred, p_female; only images with a face) and cost."""

    preds: pd.DataFrame
    images: int
    images_per_s: float
    cpu_s: float
    note: str = ""


def run_ours(predictor: Predictor, root: str | Path, records: list[Record], detect: bool) -> Run:
    """agegender through `agegender evaluate`'s code; CPU seconds of this process (all its threads)."""
    wall, cpu = time.perf_counter(), _cpu_seconds(resource.RUSAGE_SELF)
    df, _ = evaluate(predictor, root, records, detect=detect, face=FACE_POLICY, progress=False)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds(resource.RUSAGE_SELF) - cpu
    return Run(df[["file", "age_pred", "p_female"]], len(records), len(records) / wall, cpu)


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def peer_problem(peer_dir: Path) -> str | None:
    """Why face-api.js cannot run here (one line with what to do), or None."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    setup = f"cp -r {PEER_SOURCE} {peer_dir} && cd {peer_dir} && npm install"
    if not (peer_dir / "predict.mjs").is_file():
        return f"no face-api.js peer in {peer_dir} (set it up with: {setup})"
    if not (peer_dir / "node_modules").is_dir():
        return f"the face-api.js peer in {peer_dir} is not installed (run: cd {peer_dir} && npm install)"
    return None


def link_folder(root: str | Path, records: list[Record], folder: Path) -> dict[str, str]:
    """Symlink exactly ``records`` into the flat ``folder`` the peer reads; returns ``{link name: file}``."""
    names: dict[str, str] = {}
    for r in records:
        name = r.file.replace("/", "__")  # the peer lists one folder level only
        if name in names:
            raise DataError(f"two test images would share the link name {name}: {names[name]} and {r.file}")
        names[name] = r.file
        (folder / name).symlink_to((Path(root) / r.file).resolve())
    return names


def run_peer(peer_dir: Path, root: str | Path, records: list[Record], detect: bool) -> Run | None:
    """face-api.js over exactly ``records``; None (and one line saying why) if it fails."""
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        folder = Path(tmp, "images")
        folder.mkdir()
        names = link_folder(root, records, folder)
        out = Path(tmp, "faceapi.csv")
        cmd = ["node", "predict.mjs", "--mode", "detect" if detect else "crop", str(folder), str(out)]
        proc = subprocess.run(cmd, cwd=peer_dir, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            print(f"face-api.js failed (exit {proc.returncode}: {last}); its columns are left out")
            return None
        preds = pd.read_csv(out, dtype={"file": str})
    preds["file"] = preds["file"].map(names)
    found = (re.search(r"total_seconds=[\d.]+ images_per_second=([\d.]+)", proc.stdout),
             re.search(r"process_cpu_seconds\([^)]*\)=([\d.]+)", proc.stdout))
    if not all(found):
        raise RuntimeError(f"face-api.js printed no images_per_second/cpu_seconds lines: {proc.stdout!r}")
    extras = [line for line in proc.stdout.splitlines() if line.startswith(("no_face=", "WARNING"))]
    return Run(preds.dropna(subset=["age_pred"]), len(records), float(found[0][1]), float(found[1][1]),
               "; ".join(extras))


def side_by_side(records: list[Record], ours: pd.DataFrame, peer: pd.DataFrame | None) -> pd.DataFrame:
    """One row per test image: labels, then each tool's ``<tool>_age``/``<tool>_p_female`` (NaN where that
    tool found no face, or could not read the image)."""
    frame = pd.DataFrame({"file": [r.file for r in records], "age_true": [r.age for r in records],
                          "gender_true": [r.gender for r in records]})
    for tool, preds in (("ours", ours), ("faceapi", peer)):
        if preds is not None:
            names = {c: f"{tool}_age" if c == "age_pred" else f"{tool}_{c}" for c in preds.columns if c != "file"}
            frame = frame.merge(preds.rename(columns=names), on="file", how="left")
    return frame


def bucket_table(frame: pd.DataFrame, min_group: int = MIN_GROUP) -> pd.DataFrame:
    """Per age bucket with images, children ``0-9`` together, ``all``, and ``balanced`` (the mean of the buckets'
    MAEs over buckets of at least ``min_group`` scored images, with the largest |bias| among them): ``photos``,
    each tool's faces ``<tool>_found``, and on the ``n`` images every tool found a face in, each tool's
    ``<tool>_mae``, ``<tool>_bias`` (mean signed error) and ``<tool>_gender_acc`` (None where undefined)."""
    tools = [t for t in TOOLS if f"{t}_age" in frame]
    found = {t: frame[f"{t}_age"].notna() for t in tools}
    scored = pd.concat(found.values(), axis=1).all(axis=1)
    buckets = frame["age_true"].map(lambda a: age_bucket(a) if not pd.isna(a) else None)
    rows = []
    for name in [*AGE_BUCKET_NAMES, "0-9", "all"]:
        mask = pd.Series(True, index=frame.index) if name == "all" else \
            buckets.isin(CHILDREN) if name == "0-9" else buckets == name
        if not mask.any():
            continue
        both = frame[mask & scored]
        row = {"age": name, "photos": int(mask.sum()), "n": len(both)}
        for t in tools:
            figures = summarize(both[f"{t}_age"], both["age_true"], both[f"{t}_p_female"], both["gender_true"]) \
                if len(both) else {}
            row |= {f"{t}_found": int((mask & found[t]).sum()), f"{t}_mae": figures.get("age_mae"),
                    f"{t}_bias": figures.get("age_bias"), f"{t}_gender_acc": figures.get("gender_accuracy")}
        rows.append(row)
    groups = [r for r in rows if r["age"] in AGE_BUCKET_NAMES and r["n"] >= max(min_group, 1)]
    if groups:  # every age group counted the same: the mean of the groups' MAEs, and the largest |bias|
        balanced = {"age": "balanced", "photos": sum(r["photos"] for r in groups), "n": sum(r["n"] for r in groups)}
        for t in tools:
            worst = max(groups, key=lambda r: abs(r[f"{t}_bias"]))
            balanced |= {f"{t}_found": sum(r[f"{t}_found"] for r in groups),
                         f"{t}_mae": sum(r[f"{t}_mae"] for r in groups) / len(groups),
                         f"{t}_bias": worst[f"{t}_bias"], f"{t}_gender_acc": None}
        rows.append(balanced)
    return pd.DataFrame(rows)


def alone_rows(frame: pd.DataFrame) -> list[str]:
    """Markdown rows: each tool on every image it found a face in (its own n)."""
    rows = []
    for t, label in TOOLS.items():
        if f"{t}_age" in frame:
            own = frame[frame[f"{t}_age"].notna()]
            f = summarize(own[f"{t}_age"], own["age_true"], own[f"{t}_p_female"], own["gender_true"])
            rows.append(f"| {label} alone | {f['n']} | {_num(f.get('age_mae'))} | {_num(f.get('age_bias'), '+.2f')} "
                        f"| {_pct(f.get('gender_accuracy'))} |")
    return rows


def _num(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def markdown(table: pd.DataFrame, detect: bool) -> list[str]:
    """The bucket table as markdown; a faces-found column for photos."""
    tools = [t for t in TOOLS if f"{t}_mae" in table]
    head = ["age", "n"] + [f"{TOOLS[t]} {k}" for t in tools for k in ("age MAE", "bias")] \
        + [f"{TOOLS[t]} gender acc" for t in tools]
    if detect:
        head.append(f"faces found ({' / '.join(TOOLS[t] for t in tools)}, of photos)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.to_dict("records"):
        cells = [row["age"], str(row["n"])] + [c for t in tools for c in (_num(row[f"{t}_mae"]),
                                                                           _num(row[f"{t}_bias"], "+.2f"))] \
            + [_pct(row[f"{t}_gender_acc"]) for t in tools]
        if detect:
            cells.append(" / ".join(str(row[f"{t}_found"]) for t in tools) + f" of {row['photos']}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(tables: dict[str, pd.DataFrame], path: Path) -> None:
    """MAE per age bucket, both tools, one panel per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(6.5 * len(tables), 3.8), squeeze=False)
    for ax, (name, table) in zip(axes[0], tables.items(), strict=True):
        tools = [t for t in TOOLS if f"{t}_mae" in table]
        width = 0.8 / len(tools)
        for k, t in enumerate(tools):
            x = [i + (k - (len(tools) - 1) / 2) * width for i in range(len(table))]
            ax.bar(x, table[f"{t}_mae"].astype(float).fillna(0), width, color=f"C{k}", label=TOOLS[t])
        ax.set_xticks(range(len(table)), [f"{a}\nn={n}" for a, n in zip(table["age"], table["n"], strict=True)],
                      fontsize=8)
        ax.set_title(TITLES.get(name, name), fontsize=10)
        ax.set_xlabel("true age bucket")
        ax.set_ylabel("age MAE (years)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cost_line(label: str, run: Run, how: str) -> str:
    return (f"{label}: {run.images} images in {run.images / run.images_per_s:.1f} s, {run.images_per_s:.1f} images/s, "
            f"{run.cpu_s:.1f} CPU s ({run.images / run.cpu_s:.1f} images per CPU-second); {how}")


def run_set(name: str, root: str, records: list[Record], detect: bool, predictor: Predictor,
            peer_dir: Path | None, out: Path) -> tuple[list[str], pd.DataFrame]:
    """Both tools over one set: the lines to print and the bucket table; writes the per-image CSV."""
    ours = run_ours(predictor, root, records, detect)
    peer = run_peer(peer_dir, root, records, detect) if peer_dir else None
    frame = side_by_side(records, ours.preds, peer.preds if peer else None)
    frame.to_csv(out / f"{name}_predictions.csv", index=False)
    table = bucket_table(frame)
    runtime = "onnxruntime" if isinstance(predictor.model, OnnxModel) else "torch"
    how = "detect + align (MTCNN), face policy largest" if detect else "crops, no detection"
    lines = [cost_line("agegender", ours, f"{how}, flip TTA {'on' if predictor.flip_tta else 'off'}, "
                       f"{runtime} on {predictor.workers} thread(s); timing excludes model loading")]
    if peer:
        peer_how = "SSD MobileNetV1, highest-scoring face" if detect else "whole crop, no detection"
        lines.append(cost_line("face-api.js", peer, f"{peer_how}, 1 wasm thread; images/s as it prints it "
                               f"(excludes model load), CPU s of its whole process") + (f"; {peer.note}" if peer.note
                                                                                        else ""))
    if detect:
        lines.append("scored on the photos where " + ("both tools" if peer else "agegender") + " found a face:")
    lines += markdown(table, detect)
    if detect:
        lines += ["each tool on every photo it found a face in:", "| tool | n | age MAE | bias | gender acc |",
                  "|---|---|---|---|---|", *alone_rows(frame)]
    return lines, table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utk", help="the UTKFace folder the model was trained on (its test crops)")
    ap.add_argument("--aaf", help="AAF's images folder (its test photos)")
    ap.add_argument("--aaf-labels", help="AAF's labels file (default: labels.csv in --aaf or beside it)")
    ap.add_argument("--model", help="checkpoint (default: the bundled model)")
    ap.add_argument("--out", default="runs/peers")
    ap.add_argument("--peer-dir", default="../faceapi-peer", help="face-api.js peer folder, npm-installed")
    ap.add_argument("--limit", type=int, default=0, help="a seeded subset of N images of each test set")
    ap.add_argument("--no-peer", action="store_true", help="agegender alone")
    args = ap.parse_args(argv)
    if not (args.utk or args.aaf):
        ap.error("give --utk, --aaf or both")
    command = f"$ {' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}"
    print(command, flush=True)
    try:
        return _run(args, command)
    except (DataError, CheckpointError) as e:
        print(f"error: {e}")
        return 2


def _run(args: argparse.Namespace, command: str) -> int:
    t0 = time.time()
    model = resolve_model_path(args.model)
    ckpt = load_checkpoint(model)
    predictor = Predictor.from_checkpoint(model, device="auto")
    peer_dir: Path | None = None if args.no_peer else Path(args.peer_dir)
    problem = peer_dir and peer_problem(peer_dir)
    if problem:
        print(f"face-api.js not run: {problem}; agegender runs alone", flush=True)
        peer_dir = None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"model {model} ({ckpt['model_config']['backbone']}, {ckpt['model_config']['image_size']} px)"]
    print(lines[0], flush=True)
    tables = {}
    for name, records, detect, root, how in _sets(args, ckpt):
        records = limit_records(records, args.limit, 0)
        set_lines, tables[name] = run_set(name, root, records, detect, predictor, peer_dir, out)
        set_lines.insert(0, f"\n{name} test subset, {len(records)} images ({how})")
        print("\n".join(set_lines), flush=True)
        lines += set_lines
    plot(tables, out / "peers_mae_by_age.png")
    lines.append(f"({time.time() - t0:.0f} s; per-image predictions, peers.md and peers_mae_by_age.png in {out}/)")
    print(lines[-1])
    (out / "peers.md").write_text("\n".join([command, *lines]) + "\n")
    return 0


def _sets(args: argparse.Namespace, ckpt: dict):
    """(name, test records, detect, root, how the split was chosen) for each set asked for."""
    if args.utk:
        records, split, same = split_from_checkpoint(ckpt, args.utk)
        how = "the model's own split" if same else ("warning: this folder's fingerprint differs from the training "
                                                     "data's, so the test subset may not be the one held out")
        yield "utkface", select(records, split, "test"), False, args.utk, how
    if args.aaf:
        labels = args.aaf_labels or next((str(p) for p in (Path(args.aaf, "labels.csv"),
                                                             Path(args.aaf).parent / "labels.csv") if p.is_file()), "")
        if not labels:
            raise DataError(f"no labels.csv in {args.aaf} or beside it; pass --aaf-labels")
        records, split, how = folder_split(ckpt, args.aaf, labels)
        yield "aaf", select(records, split, "test"), True, args.aaf, how


if __name__ == "__main__":
    sys.exit(main())
