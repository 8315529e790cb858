"""Where labelled images come from and how they are divided: scanning a folder (UTKFace names or a labels
file), the seeded stratified split, a run's split recreated from its checkpoint, and how a file becomes a face
(decoded as it is, or detected and aligned).

Nothing here needs torch: prediction and evaluation use it as well as training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from agegender.data.records import Record, ScanResult, data_fingerprint, scan_utkface
from agegender.errors import DataError
from agegender.faces.loader import FACE_POLICIES, image_loader

SUBSETS = ("train", "val", "test")
# The split of a folder a model never trained on, so that every model is scored on the same images of it.
OWN_SPLIT, OWN_SEED = "0.8,0.1,0.1", 0


@dataclass(frozen=True)
class Source:
    """One folder of labelled images and how to read it: UTKFace names or a ``labels`` file; face crops, or
    photos to ``detect`` and align first (``face`` policy, smallest face ``min_face`` pixels)."""

    data: str
    labels: str = ""
    detect: bool = False
    face: str = "single"
    min_face: int = 20
    name: str = ""

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("a source needs its data folder")
        if self.face not in FACE_POLICIES:
            raise ValueError(f"source {self.data}: face must be one of {', '.join(FACE_POLICIES)}, got {self.face!r}")
        if self.min_face < 1:
            raise ValueError(f"source {self.data}: min_face must be >= 1 pixel, got {self.min_face}")

    @property
    def key(self) -> str:
        """Short name for logs, metrics and split files: ``name``, else the folder's name (its parent's for
        a folder called ``images``).

        >>> Source("/d/aaf/images").key, Source("/d/UTKFace/").key, Source("x", name="mine").key
        ('aaf', 'UTKFace', 'mine')
        """
        if self.name:
            return self.name
        path = Path(self.data)
        return path.parent.name if path.name == "images" and path.parent.name else path.name

    def loader(self) -> Callable:
        return image_loader(self.detect, self.face, self.min_face)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_source(spec: str | dict) -> Source:
    """A :class:`Source` from a YAML mapping or a command-line spec ``DIR[,key=value...]``.

    >>> parse_source("aaf/images,labels=aaf/labels.csv,detect=true,face=largest,min_face=60")
    Source(data='aaf/images', labels='aaf/labels.csv', detect=True, face='largest', min_face=60, name='')
    """
    if isinstance(spec, dict):
        values = dict(spec)
    else:
        data, *pairs = str(spec).split(",")
        values = {"data": data}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"source {spec!r}: expected key=value after the folder, got {pair!r}")
            values[key.strip()] = value.strip()
    known = {f.name: f.type for f in fields(Source)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"source {spec!r}: unknown keys {unknown}; known: {', '.join(known)}")
    if isinstance(values.get("detect"), str):
        if values["detect"].lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"source {spec!r}: detect must be true or false, got {values['detect']!r}")
        values["detect"] = values["detect"].lower() in ("true", "1", "yes")
    if "min_face" in values:
        try:
            values["min_face"] = int(values["min_face"])
        except ValueError:
            raise ValueError(f"source {spec!r}: min_face must be a whole number of pixels") from None
    return Source(**{k: str(v) if known[k] == "str" else v for k, v in values.items()})


def split_file_name(index: int, source: Source) -> str:
    """``split.csv`` for the first source (what single-source runs always wrote), ``split-KEY.csv`` after it."""
    return "split.csv" if index == 0 else f"split-{source.key}.csv"


def scan(root: str | Path, labels: str = "") -> ScanResult:
    """The labelled images of a folder: from a labels file when given, else from UTKFace file names."""
    if labels:
        from agegender.data.labels import read_labels

        return read_labels(labels, root)
    return scan_utkface(root)


def limit_records(records: list[Record], limit: int, seed: int) -> list[Record]:
    """At most ``limit`` records (0 = all): a seeded, name-keyed subset, so repeated quick runs see the same
    images."""
    if not limit or limit >= len(records):
        return records
    keyed = sorted(records, key=lambda r: _hash01(seed + 1, r.file))
    return sorted(keyed[:limit], key=lambda r: r.file)


def _hash01(seed: int, name: str) -> float:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def parse_split(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> ``(0.8, 0.1, 0.1)``; fractions must be >= 0 and sum to 1.

    >>> parse_split("0.8,0,0.2")
    (0.8, 0.0, 0.2)
    """
    parts = [float(x) for x in text.split(",")] if isinstance(text, str) else [float(x) for x in text]
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6 or parts[0] <= 0:
        raise ValueError(f"split must be three fractions train,val,test >= 0 summing to 1, got {text!r}")
    return parts[0], parts[1], parts[2]


def stratified_split(
    records: Sequence[Record], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, str]:
    """Assign every record to train/val/test, stratified by age bucket x gender.

    Within each stratum files are ordered by a seeded hash of their base name and cut at the fractions, so
    the split depends only on the seed and the stratum's own files: adding files to other strata, or
    non-image files, changes nothing, and one file added to a stratum moves at most one file per boundary.
    Returns ``{file: subset}``.
    """
    strata: dict[tuple[str, int], list[Record]] = {}
    for r in records:
        strata.setdefault(r.stratum(), []).append(r)
    out: dict[str, str] = {}
    for members in strata.values():
        members = sorted(members, key=lambda r: (_hash01(seed, Path(r.file).name), r.file))
        n = len(members)
        n_train = round(n * fractions[0])
        n_val = round(n * (fractions[0] + fractions[1])) - n_train
        for i, r in enumerate(members):
            out[r.file] = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
    return out


def write_split(path: str | Path, split: dict[str, str]) -> None:
    from agegender.data.frames import pd
    from agegender.io.outputs import atomic_write

    text = pd.DataFrame(sorted(split.items()), columns=["file", "subset"]).to_csv(index=False)
    atomic_write(path, lambda f: f.write(text.encode("utf-8", "surrogateescape")))  # names as they are on disk


def read_split(path: str | Path) -> dict[str, str]:
    from agegender.data.frames import pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read split file {path}: {e}") from e
    if not {"file", "subset"} <= set(df.columns):
        raise DataError(f"split file {path} needs the columns file,subset; it has {list(df.columns)}")
    bad = sorted(set(df["subset"]) - set(SUBSETS))
    if bad:
        raise DataError(f"split file {path} has unknown subsets {bad}; expected {SUBSETS}")
    return dict(zip(df["file"], df["subset"], strict=True))


def select(records: Iterable[Record], split: dict[str, str], subset: str) -> list[Record]:
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    return [r for r in records if split.get(r.file) == subset]


def split_from_checkpoint(ckpt: dict, root: str | Path) -> tuple[list[Record], dict[str, str], bool]:
    """Recreate a run's split of ``root`` from what its checkpoint recorded (fractions, seed, image limit).

    Returns ``(records, split, same_data)``; ``same_data`` is False when the folder's fingerprint differs
    from the training data's, in which case the subsets may differ from the ones used in training.
    """
    training = ckpt["training"]
    cfg = training["config"]
    labels, fingerprint = cfg.get("labels", ""), training.get("data_fingerprint")
    if cfg.get("sources"):
        i, source = source_of(root, [parse_source(s) for s in cfg["sources"]])
        labels = source.labels
        fingerprint = (training.get("sources") or [{}] * (i + 1))[i].get("fingerprint")
    records = limit_records(scan(root, labels).records, cfg["limit"], cfg["seed"])
    split = stratified_split(records, parse_split(cfg["split"]), cfg["seed"])
    return records, split, data_fingerprint(root, records) == fingerprint


def same_folder(a: str | Path, b: str | Path) -> bool:
    """Whether two data paths name the same folder: equal once resolved, or (a training config's relative
    path was resolved from another working directory) ending in the same two path components.

    >>> same_folder("/x/shared/datasets/aaf/images", "../other/datasets/aaf/images/")
    True
    >>> same_folder("/x/datasets/aaf/images", "/x/datasets/utkface")
    False
    """
    pa, pb = Path(a).resolve(), Path(b).resolve()
    return pa == pb or pa.parts[-2:] == pb.parts[-2:]


def folder_split(ckpt: dict, root: str | Path, labels: str = "") -> tuple[list[Record], dict[str, str], str]:
    """The split of a labelled folder the model may or may not have been trained on:
    ``(records, {file: subset}, how it was chosen)``.

    If the checkpoint's training config names ``root`` (its ``data``, or an entry of the multi-source list
    ``sources`` = ``[{data, labels, detect, face}, ...]``), the folder is split as training split it: the
    config's ``split`` fractions and ``seed`` (and its image ``limit``, as :func:`sources.split_from_checkpoint`
    does). Otherwise it was never trained on, and gets its own seeded split 0.8,0.1,0.1 with seed 0. The
    records come from ``labels`` as given here: a config's labels path may be relative to another directory.
    """
    records = scan(root, labels).records
    cfg = ckpt.get("training", {}).get("config", {})
    sources = cfg.get("sources") or ([{"data": cfg["data"]}] if cfg.get("data") else [])
    source = next((s for s in sources if s.get("data") and same_folder(s["data"], root)), None)
    if source is None:
        split = stratified_split(records, parse_split(OWN_SPLIT), OWN_SEED)
        return records, split, f"not in the model's training data: own split {OWN_SPLIT}, seed {OWN_SEED}"
    records = limit_records(records, cfg.get("limit", 0), cfg["seed"])
    split = stratified_split(records, parse_split(cfg["split"]), cfg["seed"])
    return records, split, f"split as in the model's training ({source['data']}: {cfg['split']}, seed {cfg['seed']})"


def source_of(root: str | Path, sources: Sequence[Source]) -> tuple[int, Source]:
    """The source (and its position) that ``root`` is (:func:`same_folder`)."""
    for i, source in enumerate(sources):
        if same_folder(source.data, root):
            return i, source
    raise DataError(f"{root} is none of the model's training sources ({', '.join(s.data for s in sources)})")
