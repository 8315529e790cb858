"""onnxruntime sessions, torch-free: one intra-op thread by default, no spinning, no memory patterns, and one
memory arena shared by every session of the process, handed back when the work is done (:func:`release_memory`).
The age model (:class:`agegender.model.onnx.OnnxModel`) and the face detector's three networks
(:class:`agegender.faces.detect.OnnxNetworks`) are made here, on the execution providers a ``--device`` names
(:func:`providers_for`).
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agegender.compute.allocator import release_free_memory
from agegender.errors import CheckpointError

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
DEVICES = "cpu, cuda, cuda:N or auto"
GPU_HINT = ("pip install 'agegender[gpu]' (onnxruntime-gpu, in place of onnxruntime) on a machine with an NVIDIA GPU, "
            "CUDA 12 and cuDNN 9")


def available_providers() -> list[str]:
    """onnxruntime's execution providers in this installation (empty without onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def providers_for(device: str, available: Sequence[str] | None = None) -> list:
    """onnxruntime's providers for ``device`` (``available``: the installation's, by default asked of onnxruntime).

    ``cpu``: the CPU. ``cuda`` or ``cuda:N``: GPU N (0) through the CUDA provider, the CPU for what it cannot run;
    ``ValueError`` where this onnxruntime has no CUDA provider. ``auto``: CUDA where there is a provider for it,
    else the CPU. Anything else is a ``ValueError`` (a user's error: exit 2). A device asked for by name is a
    ``(name, options)`` pair, and :func:`session` refuses to fall back from it; ``auto``'s is a plain name.

    >>> providers_for("cpu", [CUDA, CPU]), providers_for("auto", [CPU]), providers_for("auto", [CUDA, CPU])
    (['CPUExecutionProvider'], ['CPUExecutionProvider'], ['CUDAExecutionProvider', 'CPUExecutionProvider'])
    >>> providers_for("CUDA:1", [CUDA, CPU])
    [('CUDAExecutionProvider', {'device_id': 1}), 'CPUExecutionProvider']
    >>> providers_for("banana", [CPU])
    Traceback (most recent call last):
    ...
    ValueError: unknown device 'banana': use cpu, cuda, cuda:N or auto
    """
    name = str(device).strip().lower()
    cuda = re.fullmatch(r"cuda(?::(\d+))?", name)
    if name not in ("cpu", "auto") and cuda is None:
        raise ValueError(f"unknown device {device!r}: use {DEVICES}")
    available = available_providers() if available is None else list(available)
    if name == "cpu":
        return [CPU]
    if name == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    if CUDA not in available:
        raise ValueError(f"device {device!r}: this onnxruntime has no CUDA provider (it has "
                         f"{', '.join(available) or 'none'}); {GPU_HINT}; or use --device cpu")
    return [(CUDA, {"device_id": int(cuda[1] or 0)}), CPU]

_ARENA_LOCK = threading.Lock()
_shared_arena: bool | None = None  # None: not tried yet in this process
# A protobuf message (an ONNX file without external data) holds at most 2 GiB.
MAX_MODEL_BYTES = 2**31
# One cheap call on a session of the shared arena, made with arena shrinkage on (see release_memory).
_probe: tuple[weakref.ref, dict[str, Any]] | None = None


def _use_shared_arena(ort, options) -> None:
    """Make the session allocate from one CPU arena registered for the whole process.

    Each session otherwise grows an arena of its own to its own peak and keeps it: the face detector's three
    networks and the age model. One arena, growing only by what is asked (``kSameAsRequested``), is sized by
    the largest need of the work in flight (two threads x 300 photos: 35 MiB less growth than one per session).
    """
    global _shared_arena
    with _ARENA_LOCK:
        if _shared_arena is None:
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                # max_mem 0 = no limit; strategy 1 = kSameAsRequested; -1 = onnxruntime's defaults.
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
                _shared_arena = True
            except Exception:  # noqa: BLE001 - an older onnxruntime, or one registered already by the host app
                _shared_arena = False
    if _shared_arena:
        options.add_session_config_entry("session.use_env_allocators", "1")


def register_probe(sess: Any, feed: dict[str, Any]) -> None:
    """Make ``sess`` (a session of this module) on input ``feed`` (as cheap as can be) the call that shrinks the
    arena in :func:`release_memory`. The session is held weakly: the probe goes when it does."""
    global _probe
    with _ARENA_LOCK:
        _probe = (weakref.ref(sess), feed)


def release_memory() -> bool:
    """Hand onnxruntime's idle arena memory and the heap's free pages back to the system; True where both ran.

    The arena grows by what the work in flight asks (``kSameAsRequested``) and, to reuse it, keeps it: after four
    crowd photos at once, 200 MB. One call made with ``memory.enable_memory_arena_shrinkage`` frees every region
    of the arena no run is using, then ``malloc_trim`` returns the pages (measured in-process, the face detector
    alone: 359 MB resident after four crowd photos, 285 trimmed, 81 shrunk and trimmed, where idle was 100).
    A few milliseconds: call it when a service's queue runs empty, not after every call.
    """
    with _ARENA_LOCK:
        probe = _probe
    sess = probe[0]() if probe is not None else None
    if sess is not None:
        import onnxruntime as ort

        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        sess.run(None, probe[1], options)
    return release_free_memory() and sess is not None


def session(path: str | Path, threads: int | None = 1, providers: list | None = None):
    """An ``onnxruntime.InferenceSession`` for ``path`` with ``threads`` intra-op threads (``None``: one per
    core) on ``providers`` (:func:`providers_for`; default the CPU). Raises :class:`CheckpointError` for a file
    onnxruntime cannot read, and ``ValueError`` when a device asked for by name could not be used (onnxruntime
    would fall back to the CPU without a word)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise CheckpointError("running an ONNX model needs onnxruntime: pip install onnxruntime") from e
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX model {path} does not exist")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle onnxruntime threads otherwise spin for a while after each run and starve whatever runs next (the
    # face detector between two batches, another request, or another process on a busy machine).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # A memory pattern is planned and kept per input shape, and its one block per run fragments the arena: the
    # detector's P-Net sees a new shape at every scale of every photo size, the age model a new batch size.
    # Without it, two threads x 900 photos held 1 MiB more than after their first, instead of 37 (same speed).
    options.enable_mem_pattern = False
    _use_shared_arena(ort, options)
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise CheckpointError(f"{path} is {path.stat().st_size:,} bytes, over the {MAX_MODEL_BYTES:,} an ONNX file "
                              "can hold")
    # From its bytes, not its path: onnxruntime then resolves no external-data file named inside the model (a 4 GB
    # sparse file beside an .onnx took over 6 GB at load), so a model is one self-contained file, as exports are.
    try:
        made = ort.InferenceSession(path.read_bytes(), options, providers=providers or [CPU])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable files
        external = "external" in str(e).lower() or "model_path must not be empty" in str(e)
        raise CheckpointError(f"{path} is not a readable ONNX model: " + (
            "its weights are in separate files (external data), which are not loaded: export it as one file"
            if external else str(e))) from None
    named = [p[0] for p in providers or [] if isinstance(p, tuple)]
    missing = [p for p in named if p not in made.get_providers()]
    if missing:
        raise ValueError(f"{missing[0]} could not start for {path.name} (onnxruntime fell back to "
                         f"{', '.join(made.get_providers())}; its log above says why); {GPU_HINT}; or use --device cpu")
    return made


