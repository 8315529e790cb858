"""Doctest collection of the package without the optional extras: modules that need a package this installation
lacks (torch for training, pandas or matplotlib for evaluation reports) are left out, so that an inference-only
install collects and passes the rest (their own tests skip with the reason)."""

from importlib.util import find_spec

NEEDS = {
    "torch": ["src/agegender/training/*.py", "src/agegender/model/network.py", "src/agegender/model/export.py",
              "src/agegender/faces/mtcnn_torch.py"],
    "pandas": ["src/agegender/data/labels.py", "src/agegender/data/frames.py"],
    "matplotlib": ["src/agegender/evaluation/plots.py"],
}
collect_ignore_glob = [pattern for package, patterns in NEEDS.items() if find_spec(package) is None
                       for pattern in patterns]
