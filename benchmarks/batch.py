"""Plain ``agegender predict`` against ``agegender predict --engine ray`` on the same photos, in one run: photos per
CPU-second of each (all the processes a run starts, Ray's included), wall time, and the fixed start-up cost; then
a scaling table on paper from the measured per-core rate.

    python benchmarks/batch.py [--n 2000] [--workers 2] [--sizes 200 400] [--keep DIR]

Photos are copies of examples/astronaut.png, each resized to its own side between --sizes (one face each). CPU
time is read from /proc for every process of the run's session (each run is started in a session of its own),
sampled every 0.2 s: a process that ends between two samples loses at most 0.2 s. The load average before and
after is printed: on a shared machine other work competes for the same cores, which inflates wall times more
than CPU times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"
TICK = os.sysconf("SC_CLK_TCK")


def make_photos(dest: Path, n: int, sizes: tuple[int, int]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    photo = Image.open(EXAMPLE).convert("RGB")
    low, high = sizes
    for i in range(n):
        side = low + (i * 37) % (high - low + 1)
        photo.resize((side, side)).save(dest / f"p{i:05d}.jpg", quality=88)


def session_cpu(sid: int, seen: dict[int, tuple[str, float]]) -> None:
    """Update ``seen`` (pid -> (name, CPU seconds)) with every live process of session ``sid``."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                name, rest = f.read().split(" (", 1)[1].rsplit(")", 1)
        except (OSError, ValueError):
            continue
        fields = rest.split()  # after the name: state, ppid, pgrp, session, ..., utime (11), stime (12)
        if int(fields[3]) == sid:
            seen[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / TICK)


def breakdown(seen: dict[int, tuple[str, float]], top: int = 6) -> str:
    """The processes that used the most CPU, by name."""
    by_name: dict[str, float] = {}
    for name, cpu in seen.values():
        by_name[name] = by_name.get(name, 0.0) + cpu
    return ", ".join(f"{n} {c:.1f}" for n, c in sorted(by_name.items(), key=lambda x: -x[1])[:top])


def measure(cmd: list[str]) -> tuple[float, float, int, str]:
    """(wall s, CPU s of the whole session, exit status, where the CPU went) of ``cmd``."""
    seen: dict[int, tuple[str, float]] = {}
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    while proc.poll() is None:
        session_cpu(proc.pid, seen)
        time.sleep(0.2)
    wall = time.monotonic() - started
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode not in (0, 1):
        print(err[-2000:], file=sys.stderr)
    return wall, sum(cpu for _, cpu in seen.values()), proc.returncode, breakdown(seen)


def run_both(photos: Path, out: Path, workers: int, tag: str) -> dict[str, tuple[float, float, int, str]]:
    agegender = [sys.executable, "-m", "agegender.cli.main", "predict", str(photos), "-q", "--workers", str(workers)]
    return {
        "plain": measure([*agegender, "--out", str(out / f"{tag}.csv")]),
        "ray": measure([*agegender, "--engine", "ray", "--out", str(out / f"{tag}_ray")]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs=2, default=(200, 400))
    ap.add_argument("--small", type=int, default=16, help="photos of the start-up run")
    ap.add_argument("--keep", help="folder for photos and outputs (default: a temporary one, removed)")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="agegender-batch-"))
    many, few = root / "many", root / "few"
    make_photos(many, args.n, args.sizes)
    make_photos(few, args.small, args.sizes)
    print(f"{args.n} photos of {args.sizes[0]}-{args.sizes[1]} px, --workers {args.workers}, {os.cpu_count()} cores; "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    small = run_both(few, root, args.workers, "few")
    big = run_both(many, root, args.workers, "many")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| engine | start-up run: wall s, CPU s | full run: wall s, CPU s | photos/CPU-s (all) | "
          "photos/CPU-s (marginal) | photos/s wall |")
    print("| --- | --- | --- | --- | --- | --- |")
    rates = {}
    for engine in ("plain", "ray"):
        (sw, sc, _, _), (bw, bc, rc, _) = small[engine], big[engine]
        marginal = (args.n - args.small) / max(bc - sc, 1e-9)
        rates[engine] = (args.n / bc, marginal)
        print(f"| {engine} | {sw:.1f}, {sc:.1f} | {bw:.1f}, {bc:.1f} (exit {rc}) | {args.n / bc:.2f} | "
              f"{marginal:.2f} | {args.n / bw:.2f} |")
    for engine in ("plain", "ray"):
        print(f"CPU s by process, {engine}: start-up run: {small[engine][3]}; full run: {big[engine][3]}")
    print(f"\nray / plain, photos per CPU-second: {rates['ray'][0] / rates['plain'][0]:.2f}x over the whole run, "
          f"{rates['ray'][1] / rates['plain'][1]:.2f}x marginal (start-up excluded); goal >= 0.8x")
    per_core = rates["ray"][1]
    print(f"\nOn paper (not measured): the marginal Ray rate, {per_core:.2f} photos per CPU-second of these sizes, "
          "times cores:\n")
    print("| cores | photos/s | 1M photos | what bounds it next |")
    print("| --- | --- | --- | --- |")
    notes = {2: "decode + detection on each core (this machine)",
             16: "still the cores; local disk or NFS reads of ~100 KB photos are far below their limits",
             128: "S3 GETs: 8 threads per actor, ~20-50 ms each, ~160-400 objects/s per actor: ample",
             1024: "the driver: listing (1,000 keys per S3 LIST), the committed-set read at start, "
                   "one summary row per block (256 photos) - still small; bigger blocks cut task overhead"}
    for cores, note in notes.items():
        rate = per_core * cores
        hours = 1e6 / rate / 3600
        took = f"{hours:.1f} h" if hours >= 1 else f"{60 * hours:.0f} min"
        print(f"| {cores} | {rate:,.0f} | {took} | {note} |")
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
