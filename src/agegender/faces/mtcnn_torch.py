"""MTCNN's three networks in torch, with the vendored MIT-licensed weights (``weights/mtcnn/*.pt``, see NOTICE.md).

Inference runs their ONNX exports (``weights/mtcnn/*.onnx``, written from these by ``scripts/export_bundled.py``)
through :class:`agegender.faces.detect.FaceDetector`; the torch versions are the source of those files, and
``FaceDetector(runtime="torch")`` runs the same cascade on them (the parity test compares the two).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

WEIGHTS_DIR = Path(__file__).parents[1] / "weights" / "mtcnn"

# Parameter names follow facenet-pytorch's so that its state dicts load with strict=True.


class PNet(nn.Module):
    """Proposal net, fully convolutional: (N, 3, H, W) -> box offsets (N, 4, H', W'), face probability (N, H', W'),
    one cell per 12x12 window at stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)[:, 1]


def _flatten_caffe(x: torch.Tensor) -> torch.Tensor:
    # The dense weights were converted from Caffe/TF and expect (W, H, C) order, not PyTorch's (C, H, W).
    return x.permute(0, 3, 2, 1).contiguous().flatten(1)


class RNet(nn.Module):
    """Refinement net: (N, 3, 24, 24) -> box offsets (N, 4), face probability (N,)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten_caffe(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output net: (N, 3, 48, 48) -> box offsets (N, 4), landmarks (N, 10) as (x0..x4, y0..y4) in units of the
    box size, face probability (N,)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_caffe(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)[:, 1]


def load_networks(device: str | torch.device = "cpu") -> tuple[PNet, RNet, ONet]:
    """The three networks with the bundled weights, in eval mode on ``device``."""
    nets = (PNet(), RNet(), ONet())
    for net, name in zip(nets, ("pnet", "rnet", "onet"), strict=True):
        state = torch.load(WEIGHTS_DIR / f"{name}.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        net.to(device).eval()
    return nets


# Input and output names of the ONNX exports, by network, in the order the torch modules return them.
ONNX_OUTPUTS = {"pnet": ("offsets", "prob"), "rnet": ("offsets", "prob"), "onet": ("offsets", "landmarks", "prob")}


def export_networks(out_dir: str | Path = WEIGHTS_DIR, opset: int = 17) -> list[Path]:
    """Write ``pnet.onnx``, ``rnet.onnx`` and ``onet.onnx`` from the vendored weights into ``out_dir``: input
    ``image`` float32 ``[N, 3, H, W]`` (normalised as the cascade does; H and W dynamic for P-Net, 24 and 48 for
    R- and O-Net), outputs as :data:`ONNX_OUTPUTS`. Each file records the sha256 of its ``.pt``."""
    import hashlib
    import io
    import warnings

    import onnx

    from agegender.io.outputs import atomic_write

    out_dir = Path(out_dir)
    written = []
    for net, (name, side) in zip(load_networks(), (("pnet", 32), ("rnet", 24), ("onet", 48)), strict=True):
        outputs = ONNX_OUTPUTS[name]
        if name == "pnet":  # fully convolutional: any image size, output maps of the matching size
            dynamic = {"image": {0: "batch", 2: "height", 3: "width"}, "offsets": {0: "batch", 2: "rows", 3: "cols"},
                       "prob": {0: "batch", 1: "rows", 2: "cols"}}
        else:
            dynamic = {n: {0: "batch"} for n in ("image", *outputs)}
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice (see export.py)
            torch.onnx.export(net, (torch.zeros(2, 3, side, side),), buf, dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=list(outputs),
                              dynamic_axes=dynamic)
        proto = onnx.load_from_string(buf.getvalue())
        digest = hashlib.sha256((WEIGHTS_DIR / f"{name}.pt").read_bytes()).hexdigest()
        proto.metadata_props.append(onnx.StringStringEntryProto(key="source_sha256", value=digest))
        onnx.checker.check_model(proto)
        path = out_dir / f"{name}.onnx"
        atomic_write(path, lambda f, proto=proto: f.write(proto.SerializeToString()))
        written.append(path)
    return written


class TorchNetworks:
    """The three networks run by torch, called like :class:`agegender.faces.detect.OnnxNetworks`: float32 numpy
    batches in, numpy outputs out."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.nets = dict(zip(("pnet", "rnet", "onet"), load_networks(self.device), strict=True))

    @torch.inference_mode()
    def __call__(self, name: str, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """Network ``name`` on ``batch`` ``[N, 3, H, W]``; outputs in :data:`ONNX_OUTPUTS` order."""
        out = self.nets[name](torch.from_numpy(batch).to(self.device))
        return tuple(t.float().cpu().numpy() for t in out)
