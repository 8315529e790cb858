"""Write the ONNX files inference runs from the torch weights in the repository: the bundled age/gender model
(``src/agegender/default_model.onnx`` from ``default_model.pt``) and MTCNN's three networks
(``src/agegender/weights/mtcnn/{pnet,rnet,onet}.onnx`` from the ``.pt`` files beside them).

    python scripts/export_bundled.py [--check]

Run it whenever ``default_model.pt`` (a retrained bundled model) or the MTCNN weights change, and commit the
files it writes. Each file records the sha256 of the file it was made from; ``--check`` writes nothing and exits
1 when a committed export is missing or was made from other weights (``tests/test_bundled_onnx.py`` checks the
same).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agegender.faces.detect import WEIGHTS_DIR
from agegender.faces.mtcnn_torch import export_networks
from agegender.model.checkpoint import BUNDLED_MODEL, BUNDLED_ONNX
from agegender.model.export import export_checkpoint, file_sha256
from agegender.model.onnx import SOURCE_KEY


def stale(onnx_path: Path, source: Path) -> str | None:
    """Why ``onnx_path`` is not the export of ``source`` (None when it is)."""
    import onnx

    if not onnx_path.is_file():
        return f"{onnx_path} is missing"
    meta = {p.key: p.value for p in onnx.load(onnx_path, load_external_data=False).metadata_props}
    if meta.get(SOURCE_KEY) != file_sha256(source):
        return f"{onnx_path} was not exported from the current {source.name}"
    return None


def pairs() -> list[tuple[Path, Path]]:
    """(ONNX file, the torch file it is exported from) for every shipped export."""
    return [(BUNDLED_ONNX, BUNDLED_MODEL)] + [(WEIGHTS_DIR / f"{n}.onnx", WEIGHTS_DIR / f"{n}.pt")
                                             for n in ("pnet", "rnet", "onet")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that the committed exports are current")
    args = ap.parse_args(argv)
    if args.check:
        problems = [why for onnx_path, source in pairs() if (why := stale(onnx_path, source))]
        for why in problems:
            print(why)
        print("exports are current" if not problems else f"run: python {Path(__file__).name}")
        return 1 if problems else 0
    print("wrote", export_checkpoint(BUNDLED_MODEL, BUNDLED_ONNX))
    for path in export_networks(WEIGHTS_DIR):
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
