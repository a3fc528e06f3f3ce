"""Evaluating a VAR pipeline: the sampling protocol, feature extractors, references and the `var-hf evaluate` runner.

The protocol is the one behind the paper's ImageNet numbers (arXiv 2404.02905, Sec. 5; the ADM evaluator of
Dhariwal & Nichol): 50 samples per class (50,000 for ImageNet), saved as PNG (lossless; JPEG artefacts move FID),
`guidance_scale=1.5, top_k=900, top_p=0.96`, no smoothing, then FID, Inception Score and precision/recall against a
reference (the ADM reference batch `VIRTUAL_imagenet256_labeled.npz` for ImageNet 256).

Sampling is resumable and deterministic: sample `i` of class `c` is drawn with its own generator seeded from
`(seed, c, i)`, batches are fixed chunks of the class-major sample list, and PNGs already on disk are kept; a run that
is interrupted and restarted writes the same files.

Two feature spaces:

- [`InceptionV3FeatureExtractor`]: the TensorFlow FID InceptionV3 (2015-12-05 weights, as ported by pytorch-fid /
  torch-fidelity) with TensorFlow-1 bilinear resizing to 299, as the ADM evaluator computes it. Its weights come from
  a file you give (`--inception-weights`) or that is already in torch's hub cache; nothing is downloaded.
- [`DomainClassifier`]: a small CNN trained on a dataset's own training split ([`train_domain_classifier`]), for
  datasets far from ImageNet (e.g. Fashion-MNIST): FID in its feature space and the class accuracy of samples.
"""

import argparse
import dataclasses
import datetime
import glob
import hashlib
import itertools
import json
import os
import platform
import zipfile
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from . import metrics

logger = logging.get_logger(__name__)

# The reference protocol (VAR README / paper, Sec. 5): what `var-hf evaluate` does unless told otherwise.
REFERENCE_PROTOCOL = {
    "num_per_class": 50,
    "guidance_scale": 1.5,
    "top_k": 900,
    "top_p": 0.96,
    "more_smooth": False,
    "image_format": "png",
}

INCEPTION_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
# The same file under pytorch-fid's and torch-fidelity's names (same content hash, 6726825d).
INCEPTION_WEIGHTS_FILENAMES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
ADM_REFERENCE_BATCH_URL = (
    "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz"
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
METRICS_FILENAME = "metrics.json"
SAMPLES_DIRNAME = "samples"
SAMPLES_NPZ_FILENAME = "samples.npz"
REFERENCE_CACHE_FILENAME = "reference_features.npz"


# ----------------------------------------------------------------------------------------------------------------------
# InceptionV3 for FID (TensorFlow-compatible)
# ----------------------------------------------------------------------------------------------------------------------


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
    strictly. Build it with [`load_inception`].

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

    def __init__(self):
        super().__init__()
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
        self.fc = nn.Linear(2048, self.num_logits)

    def forward(self, pixel_values: torch.Tensor, output_spatial: bool = False):
        """uint8 (B, 3, H, W) -> (pool features (B, 2048), unbiased logits (B, 1008)), both float32; with
        `output_spatial`, also the sFID features (B, 2023)."""
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
        logits_BK = features_BD @ self.fc.weight.T  # pool_3 -> softmax without the bias, as in the IS code
        if output_spatial:
            return features_BD, logits_BK, spatial_BD
        return features_BD, logits_BK


def find_inception_weights(path: Optional[str] = None) -> str:
    """Locate the FID InceptionV3 weights: `path` if given, else a copy already in torch's hub cache.

    Raises:
        `FileNotFoundError`: with where to get the file. Nothing is ever downloaded.
    """
    how = (
        f"Download it once from {INCEPTION_WEIGHTS_URL} (pytorch-fid's port of the TensorFlow FID Inception) "
        f"and pass it with --inception-weights PATH (or place it in {_torch_checkpoint_dir()})."
    )
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"InceptionV3 weights file {path!r} does not exist. {how}")
        return path
    for name in INCEPTION_WEIGHTS_FILENAMES:
        candidate = os.path.join(_torch_checkpoint_dir(), name)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"No InceptionV3 weights given and none found in the torch hub cache ({_torch_checkpoint_dir()}). {how}"
    )


def _torch_checkpoint_dir() -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def load_inception(weights_path: Optional[str] = None, device: Union[str, torch.device] = "cpu"):
    """Build [`InceptionV3FeatureExtractor`] with the weights of [`find_inception_weights`] (`.pth` or `.safetensors`).

    Raises:
        `FileNotFoundError`: when the weights file is missing.
        `ValueError`: when the file is not the FID InceptionV3 state dict.
    """
    path = find_inception_weights(weights_path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state_dict = load_file(path)
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
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


# ----------------------------------------------------------------------------------------------------------------------
# Domain classifier
# ----------------------------------------------------------------------------------------------------------------------


class DomainClassifierConfig(PretrainedConfig):
    r"""
    Configuration of [`DomainClassifier`], the small CNN that gives FID and class accuracy in a dataset's own feature
    space.

    Args:
        num_classes (`int`, *optional*, defaults to 10):
            Number of classes of the dataset.
        num_channels (`int`, *optional*, defaults to 1):
            Channels the network sees: 1 converts RGB inputs to luma (ITU-R 601, as PIL's `"L"`), 3 keeps RGB.
        image_size (`int`, *optional*, defaults to 28):
            Side the inputs are resized to (antialiased bilinear) before the network.
        hidden_channels (`Sequence[int]`, *optional*, defaults to `(16, 32, 64)`):
            Width of each conv stage (two 3x3 convs, BatchNorm, ReLU, then 2x2 max-pool); the last is the feature size.
        pixel_mean (`float`, *optional*, defaults to 0.5), pixel_std (`float`, *optional*, defaults to 0.25):
            Normalisation of inputs in [0, 1]; [`train_domain_classifier`] sets them from the training images.
    """

    model_type = "var_domain_classifier"

    def __init__(
        self,
        num_classes: int = 10,
        num_channels: int = 1,
        image_size: int = 28,
        hidden_channels: Sequence[int] = (16, 32, 64),
        pixel_mean: float = 0.5,
        pixel_std: float = 0.25,
        **kwargs,
    ):
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 or 3, got {num_channels}.")
        self.num_classes = num_classes
        self.num_channels = num_channels
        self.image_size = image_size
        self.hidden_channels = list(hidden_channels)
        self.pixel_mean = pixel_mean
        self.pixel_std = pixel_std
        super().__init__(**kwargs)


@dataclass
class DomainClassifierOutput(ModelOutput):
    """
    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, num_classes)`): class logits.
        features (`torch.FloatTensor` of shape `(batch_size, hidden_channels[-1])`): pooled features (FID space).
        loss (`torch.FloatTensor`, *optional*): cross-entropy, when `labels` are given.
    """

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    features: Optional[torch.FloatTensor] = None


class DomainClassifierPreTrainedModel(PreTrainedModel):
    config_class = DomainClassifierConfig
    base_model_prefix = "domain_classifier"
    main_input_name = "pixel_values"

    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, std=0.01)
            init.zeros_(module.bias)


class DomainClassifier(DomainClassifierPreTrainedModel):
    r"""
    A small CNN classifier used as a feature extractor for datasets far from ImageNet: FID in its pooled-feature
    space and the fraction of samples classified as the class they were generated for. Train one with
    [`train_domain_classifier`]; it saves with `save_pretrained` (safetensors + `config.json`).

    Input: uint8 images `(B, 3, H, W)` (or `(B, 1, H, W)`) of any size, as the evaluator reads PNGs.

    Example:

    ```python
    >>> import torch
    >>> from var_hf.evaluation import DomainClassifier, DomainClassifierConfig
    >>> model = DomainClassifier(DomainClassifierConfig(num_classes=10)).eval()
    >>> out = model(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    >>> out.logits.shape, out.features.shape
    (torch.Size([2, 10]), torch.Size([2, 64]))

    ```
    """

    def __init__(self, config: DomainClassifierConfig):
        super().__init__(config)
        layers, in_channels = [], config.num_channels
        for out_channels in config.hidden_channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            in_channels = out_channels
        self.stages = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_channels, config.num_classes)
        self.post_init()

    @property
    def feature_dim(self) -> int:
        return self.config.hidden_channels[-1]

    @property
    def name(self) -> str:
        return "domain-classifier"

    def preprocess(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3 or 1, H, W) -> normalised float (B, num_channels, image_size, image_size)."""
        x = pixel_values.float() / 255.0
        if self.config.num_channels == 1 and x.shape[1] == 3:
            x = (x * x.new_tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(1, keepdim=True)
        elif self.config.num_channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.config.pixel_mean) / self.config.pixel_std

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, return_dict: bool = True):
        x = self.preprocess(pixel_values)
        features_BD = self.stages(x).mean(dim=(2, 3))
        logits_BK = self.classifier(features_BD)
        loss = F.cross_entropy(logits_BK, labels) if labels is not None else None
        if not return_dict:
            return tuple(v for v in (loss, logits_BK, features_BD) if v is not None)
        return DomainClassifierOutput(loss=loss, logits=logits_BK, features=features_BD)


def train_domain_classifier(
    dataset,
    output_dir: Optional[str] = None,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    num_channels: Optional[int] = None,
    image_size: Optional[int] = None,
    hidden_channels: Sequence[int] = (16, 32, 64),
    num_epochs: int = 3,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: Union[str, torch.device, None] = None,
) -> DomainClassifier:
    r"""
    Train a [`DomainClassifier`] on a dataset's real training split and, with `output_dir`, save it there
    (`model.safetensors` + `config.json`; load it back with `DomainClassifier.from_pretrained(output_dir)`).

    Args:
        dataset (`datasets.Dataset`, `datasets.DatasetDict` or `(images, labels)`):
            The training images with labels. A `DatasetDict` uses its `"train"` split. `images` is uint8
            `(N, H, W)`, `(N, H, W, C)` or a list of PIL images.
        output_dir (`str`, *optional*):
            Where to save the trained classifier.
        image_column, label_column (`str`, *optional*):
            Columns of a `datasets.Dataset`; default to its first `Image` and `ClassLabel` features (else `"image"` /
            `"label"`).
        num_channels (`int`, *optional*):
            1 (grayscale) or 3; defaults to 1 when every training image is grayscale.
        image_size (`int`, *optional*):
            Input side; defaults to the training images' side.
        hidden_channels (`Sequence[int]`, *optional*, defaults to `(16, 32, 64)`):
            Conv stage widths.
        num_epochs, batch_size, learning_rate, weight_decay (*optional*):
            AdamW with a one-cycle (warm-up then cosine) learning-rate schedule.
        seed (`int`, *optional*, defaults to 0):
            Seeds the initialisation and the shuffling.
        device (`str`, *optional*):
            Defaults to CUDA when available.

    Returns:
        [`DomainClassifier`] in eval mode.
    """
    images_NHWC, labels_N, id2label = _training_arrays(dataset, image_column, label_column)
    if num_channels is None:
        gray = (images_NHWC[..., :1] == images_NHWC).all()
        num_channels = 1 if gray else 3
    if image_size is None:
        image_size = images_NHWC.shape[1]
    num_classes = int(labels_N.max()) + 1 if id2label is None else len(id2label)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    torch.manual_seed(seed)
    scaled = images_NHWC.astype(np.float32) / 255.0
    config = DomainClassifierConfig(
        num_classes=num_classes,
        num_channels=num_channels,
        image_size=image_size,
        hidden_channels=hidden_channels,
        pixel_mean=float(scaled.mean()),
        pixel_std=float(max(scaled.std(), 1e-3)),
        id2label=id2label or {i: str(i) for i in range(num_classes)},
    )
    model = DomainClassifier(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    steps_per_epoch = -(-len(labels_N) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=num_epochs * steps_per_epoch, pct_start=0.15
    )
    pixels_NCHW = torch.from_numpy(images_NHWC).permute(0, 3, 1, 2).contiguous()
    targets_N = torch.from_numpy(labels_N.astype(np.int64))
    shuffle = torch.Generator().manual_seed(seed)
    for epoch in range(num_epochs):
        order = torch.randperm(len(targets_N), generator=shuffle)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss = model(pixels_NCHW[idx].to(device), labels=targets_N[idx].to(device)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
        logger.info(f"domain classifier epoch {epoch + 1}/{num_epochs}: loss {total / len(order):.4f}")
    model.eval()
    if output_dir is not None:
        model.save_pretrained(output_dir)
    return model


def _training_arrays(dataset, image_column, label_column):
    """(images uint8 (N, H, W, C), labels (N,), id2label or None) from a dataset or an (images, labels) pair."""
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        images, labels = dataset
        return images_to_array(images), np.asarray(labels).reshape(-1), None
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise ValueError(f"A DatasetDict needs a 'train' split to train on; it has {list(dataset)}.")
        dataset = dataset["train"]
    image_column = image_column or _find_column(dataset, datasets.Image, "image")
    label_column = label_column or _find_column(dataset, datasets.ClassLabel, "label")
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(f"Column {column!r} not in the dataset (columns: {dataset.column_names}).")
    label_feature = dataset.features[label_column]
    id2label = dict(enumerate(label_feature.names)) if isinstance(label_feature, datasets.ClassLabel) else None
    images = images_to_array(dataset[image_column])
    return images, np.asarray(dataset[label_column]).reshape(-1), id2label


def _find_column(dataset, feature_type, fallback: str) -> str:
    for name, feature in dataset.features.items():
        if isinstance(feature, feature_type):
            return name
    return fallback


def load_domain_classifier(path: str, device: Union[str, torch.device] = "cpu") -> DomainClassifier:
    """Load a [`DomainClassifier`] saved by [`train_domain_classifier`], with a clear error when it is missing."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"No domain classifier in {path!r} (no config.json). Train one on the dataset's training split with "
            f"`var_hf.evaluation.train_domain_classifier(dataset, output_dir={path!r})`."
        )
    model = DomainClassifier.from_pretrained(path)
    model.weights_path = path
    return model.eval().requires_grad_(False).to(device)


# ----------------------------------------------------------------------------------------------------------------------
# Images and features
# ----------------------------------------------------------------------------------------------------------------------


def center_crop_arr(image: PIL.Image.Image, image_size: int) -> np.ndarray:
    """The ADM reference-batch preprocessing: box-halve while the short side is >= 2x, bicubic-resize the short side
    to `image_size`, centre-crop to a square. Returns uint8 (image_size, image_size, 3)."""
    image = image.convert("RGB")
    while min(*image.size) >= 2 * image_size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=PIL.Image.BOX)
    scale = image_size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=PIL.Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def images_to_array(images, resolution: Optional[int] = None) -> np.ndarray:
    """PIL images, uint8 arrays or a uint8 batch -> uint8 (N, H, W, 3) (grayscale is replicated to RGB).

    With `resolution`, images of another size go through [`center_crop_arr`]; images already square at `resolution`
    are kept as they are.
    """
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim in (3, 4):
        batch = images[..., None] if images.ndim == 3 else images
        if batch.shape[-1] == 1:
            batch = np.repeat(batch, 3, axis=-1)
        if batch.shape[-1] == 3 and (resolution is None or batch.shape[1:3] == (resolution, resolution)):
            return np.ascontiguousarray(batch)
        images = list(batch)
    arrays = []
    for image in images:
        if not isinstance(image, PIL.Image.Image):
            image = PIL.Image.fromarray(np.asarray(image).squeeze())
        if resolution is not None and image.size != (resolution, resolution):
            arrays.append(center_crop_arr(image, resolution))
        else:
            arrays.append(np.asarray(image.convert("RGB")))
    if not arrays:
        raise ValueError("No images.")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"Images have different sizes {sorted(shapes)[:4]}; give a resolution to crop them to.")
    return np.stack(arrays)


ImagesOrPaths = Union[np.ndarray, Sequence[str]]


def iter_image_batches(images: ImagesOrPaths, batch_size: int) -> Iterator[np.ndarray]:
    """uint8 (b, H, W, 3) batches from an array, or from image files read a batch at a time (50,000 ImageNet samples
    are 9.8 GB as one array)."""
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        if isinstance(images, np.ndarray):
            yield chunk
        else:
            yield np.stack([np.asarray(PIL.Image.open(p).convert("RGB")) for p in chunk])


@torch.no_grad()
def extract_features(
    extractor: nn.Module,
    images: ImagesOrPaths,
    batch_size: int = 64,
    device: Union[str, torch.device, None] = None,
    spatial: bool = False,
):
    """Run a feature extractor over uint8 images (N, H, W, 3), or over image files.

    Returns:
        `(features, logits)`: float64 arrays `(N, feature_dim)` and `(N, num_classes)`; with `spatial=True` (the
        InceptionV3 only) also the sFID features `(N, 2023)`.
    """
    if spatial and not isinstance(extractor, InceptionV3FeatureExtractor):
        raise ValueError(f"sFID features come from the FID InceptionV3; the {extractor.name} extractor has none.")
    device = device or next(extractor.parameters()).device
    features, logits, spatials = [], [], []
    for batch in iter_image_batches(images, batch_size):
        pixels_BCHW = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(device)
        if spatial:
            feats_BD, logits_BK, spatial_BD = extractor(pixels_BCHW, output_spatial=True)
            spatials.append(spatial_BD.double().cpu().numpy())
        else:
            out = extractor(pixels_BCHW)
            feats_BD, logits_BK = (out.features, out.logits) if isinstance(out, DomainClassifierOutput) else out
        features.append(feats_BD.double().cpu().numpy())
        logits.append(logits_BK.double().cpu().numpy())
    if spatial:
        return np.concatenate(features), np.concatenate(logits), np.concatenate(spatials)
    return np.concatenate(features), np.concatenate(logits)


# ----------------------------------------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Reference:
    """A reference set: images, precomputed Inception statistics (`mu`, `sigma`), or both (the ADM batch).

    `info` describes where it came from and is written to the metrics JSON.
    """

    info: Dict[str, Any]
    images: Optional[np.ndarray] = None  # uint8 (N, H, W, 3)
    mu: Optional[np.ndarray] = None
    sigma: Optional[np.ndarray] = None
    mu_s: Optional[np.ndarray] = None  # sFID statistics, as in the ADM reference batch
    sigma_s: Optional[np.ndarray] = None


def load_reference(
    reference: str,
    split: str = "train",
    image_column: Optional[str] = None,
    max_samples: Optional[int] = None,
    resolution: Optional[int] = None,
    seed: int = 0,
) -> Reference:
    r"""
    Load a reference for FID / precision / recall.

    Args:
        reference (`str`):
            - an `.npz`: `arr_0` uint8 images and/or precomputed `mu`, `sigma` (and sFID's `mu_s`, `sigma_s`; the
              ADM reference batch `VIRTUAL_imagenet256_labeled.npz` holds all of them);
            - a folder saved with `datasets`' `save_to_disk`;
            - a folder of images (searched recursively; png, jpg, webp, bmp, tif);
            - `"fashion-mnist"`: Debian's Fashion-MNIST idx files ([`var_hf.data.load_fashion_mnist`]; the same
              images as the Hub's `zalando-datasets/fashion_mnist`, no network needed);
            - otherwise, a Hub dataset id (needs the network or the local `datasets` cache).
        split (`str`, *optional*, defaults to `"train"`):
            Split of a `datasets` reference.
        image_column (`str`, *optional*):
            Image column of a `datasets` reference; defaults to its first `Image` feature.
        max_samples (`int`, *optional*):
            Keep a seeded random subset of this many images.
        resolution (`int`, *optional*):
            Images of another size are centre-cropped and resized to it ([`center_crop_arr`]); use the samples'
            resolution.
        seed (`int`, *optional*, defaults to 0):
            Seeds the `max_samples` subset.
    """
    info: Dict[str, Any] = {"source": reference, "max_samples": max_samples, "resolution": resolution}

    def subset(n: int) -> Optional[np.ndarray]:
        if max_samples is None or max_samples >= n:
            return None
        return np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))

    if reference.endswith(".npz"):
        if not os.path.isfile(reference):
            raise FileNotFoundError(f"Reference {reference!r} does not exist (for ImageNet 256: {ADM_REFERENCE_BATCH_URL}).")
        with np.load(reference) as npz:
            keys = set(npz.files)
            if not keys & {"arr_0", "mu"}:
                raise ValueError(f"Reference {reference!r} has neither images (arr_0) nor statistics (mu, sigma): {sorted(keys)}.")
            images = npz["arr_0"] if "arr_0" in keys else None
            mu, sigma = (npz["mu"], npz["sigma"]) if "mu" in keys else (None, None)
            mu_s, sigma_s = (npz["mu_s"], npz["sigma_s"]) if {"mu_s", "sigma_s"} <= keys else (None, None)
        if images is not None:
            idx = subset(len(images))
            images = images_to_array(images if idx is None else images[idx], resolution)
        info.update(kind="npz", has_statistics=mu is not None, has_spatial_statistics=mu_s is not None,
                    num_images=0 if images is None else len(images))
        return Reference(info=info, images=images, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)

    if os.path.isdir(reference):
        if os.path.isfile(os.path.join(reference, "dataset_info.json")) or os.path.isfile(
            os.path.join(reference, "dataset_dict.json")
        ):
            import datasets

            dataset = datasets.load_from_disk(reference)
            info.update(kind="datasets-disk", split=split)
            return _reference_from_dataset(dataset, info, split, image_column, subset, resolution)
        paths = sorted(
            p for p in glob.glob(os.path.join(reference, "**", "*"), recursive=True)
            if p.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not paths:
            raise ValueError(f"Reference folder {reference!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        idx = subset(len(paths))
        paths = paths if idx is None else [paths[i] for i in idx]
        images = images_to_array([PIL.Image.open(p) for p in paths], resolution)
        info.update(kind="image-folder", num_images=len(images))
        return Reference(info=info, images=images)

    if reference == "fashion-mnist" and not os.path.exists(reference):
        from .data import load_fashion_mnist

        info.update(kind="fashion-mnist-idx", split=split)
        return _reference_from_dataset(load_fashion_mnist(split), info, split, image_column, subset, resolution)

    if os.path.exists(reference) or reference.startswith((".", "/")):
        raise FileNotFoundError(f"Reference {reference!r} is neither an .npz, a folder, nor a Hub dataset id.")
    import datasets

    try:
        dataset = datasets.load_dataset(reference, split=split)
    except Exception as err:  # datasets raises many types for "could not get it"; all mean the same to the user
        raise ValueError(
            f"Could not load the reference {reference!r} as a Hub dataset (split {split!r}): {type(err).__name__}: "
            f"{err}. Give an .npz, an image folder or a dataset saved with save_to_disk instead."
        ) from err
    info.update(kind="hub-dataset", split=split)
    return _reference_from_dataset(dataset, info, split, image_column, subset, resolution)


def _reference_from_dataset(dataset, info, split, image_column, subset, resolution) -> Reference:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"Split {split!r} not in the reference dataset (splits: {list(dataset)}).")
        dataset = dataset[split]
    image_column = image_column or _find_column(dataset, datasets.Image, "image")
    if image_column not in dataset.column_names:
        raise ValueError(f"Image column {image_column!r} not in the reference dataset ({dataset.column_names}).")
    idx = subset(len(dataset))
    if idx is not None:
        dataset = dataset.select(idx)
    images = images_to_array(dataset[image_column], resolution)
    info.update(image_column=image_column, num_images=len(images))
    return Reference(info=info, images=images)


# ----------------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------------


def sample_seed(seed: int, class_id: int, index: int) -> int:
    """The seed of sample `index` of class `class_id`: independent of batch size, class list and sample count, so
    runs can be resumed or extended (50 -> 100 per class keeps the first 50)."""
    return int(np.random.SeedSequence([seed, class_id, index]).generate_state(1, dtype=np.uint64)[0])


def sample_path(sample_dir: str, class_id: int, index: int, num_classes: int = 1000) -> str:
    """`sample_dir/<class>/<index>.png`, zero-padded (an ImageFolder layout)."""
    width = max(4, len(str(num_classes - 1)))
    return os.path.join(sample_dir, f"{class_id:0{width}d}", f"{index:05d}.png")


@dataclass
class SamplingResult:
    """What [`generate_samples`] did. `num_generated` counts samples the model produced in this call (a resumed run
    that finds every file produces none); `num_batches` the pipeline calls."""

    paths: List[str]
    class_labels: List[int]
    num_generated: int
    num_skipped: int
    num_batches: int


def generate_samples(
    pipe,
    sample_dir: str,
    class_ids: Optional[Sequence[int]] = None,
    num_per_class: int = REFERENCE_PROTOCOL["num_per_class"],
    batch_size: int = 25,
    guidance_scale: float = REFERENCE_PROTOCOL["guidance_scale"],
    top_k: int = REFERENCE_PROTOCOL["top_k"],
    top_p: float = REFERENCE_PROTOCOL["top_p"],
    more_smooth: bool = REFERENCE_PROTOCOL["more_smooth"],
    seed: int = 0,
    progress: bool = True,
) -> SamplingResult:
    r"""
    Sample `num_per_class` PNGs for every class into `sample_dir`, skipping those already written.

    The class-major list of `(class, index)` pairs is cut into fixed chunks of `batch_size`; a chunk runs if any of
    its files is missing, and only missing files are written (atomically, so an interrupted run leaves no partial
    PNG). Every image has its own `torch.Generator` seeded with [`sample_seed`].

    Args:
        pipe (`VARPipeline`):
            The pipeline (already on its device).
        sample_dir (`str`):
            Output folder (`<class>/<index>.png`).
        class_ids (`Sequence[int]`, *optional*):
            Classes to sample; defaults to all `pipe.transformer.config.num_classes`.
        num_per_class (`int`, *optional*, defaults to 50):
            Samples per class.
        batch_size (`int`, *optional*, defaults to 25):
            Images per pipeline call (each call runs 2x this through the transformer for guidance).
        guidance_scale, top_k, top_p, more_smooth (*optional*):
            Sampling settings; the defaults are the reference protocol.
        seed (`int`, *optional*, defaults to 0):
            Base seed.
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar over batches (and silence the pipeline's own).
    """
    num_classes = pipe.transformer.config.num_classes
    class_ids = list(range(num_classes)) if class_ids is None else [int(c) for c in class_ids]
    bad = [c for c in class_ids if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"Class ids {bad[:5]} are out of range for a {num_classes}-class model.")
    if num_per_class < 1 or batch_size < 1:
        raise ValueError(f"num_per_class and batch_size must be >= 1, got {num_per_class} and {batch_size}.")
    items = [(c, i) for c in class_ids for i in range(num_per_class)]
    paths = [sample_path(sample_dir, c, i, num_classes) for c, i in items]
    chunks = [range(s, min(s + batch_size, len(items))) for s in range(0, len(items), batch_size)]
    todo = [chunk for chunk in chunks if not all(os.path.isfile(paths[j]) for j in chunk)]

    device = pipe._execution_device
    call_kwargs = dict(guidance_scale=guidance_scale, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
    previous_bar_config = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)  # one bar over batches instead of one per call
    try:
        num_generated = _sample_chunks(pipe, todo, items, paths, device, seed, progress, call_kwargs)
    finally:
        pipe.set_progress_bar_config(**previous_bar_config)
    return SamplingResult(
        paths=paths,
        class_labels=[c for c, _ in items],
        num_generated=num_generated,
        num_skipped=len(items) - num_generated,
        num_batches=len(todo),
    )


def _sample_chunks(pipe, todo, items, paths, device, seed, progress, call_kwargs) -> int:
    num_generated = 0
    for chunk in _progress(todo, progress, "sampling"):
        labels = [items[j][0] for j in chunk]
        generators = [torch.Generator(device=device).manual_seed(sample_seed(seed, *items[j])) for j in chunk]
        images = pipe(
            class_labels=labels, generator=generators, num_images_per_label=1, output_type="pil", **call_kwargs
        ).images
        for j, image in zip(chunk, images):
            if os.path.isfile(paths[j]):
                continue
            os.makedirs(os.path.dirname(paths[j]), exist_ok=True)
            tmp = paths[j] + ".tmp"
            image.save(tmp, format="PNG")
            os.replace(tmp, paths[j])
            num_generated += 1
    return num_generated


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc)


def load_samples(paths: Sequence[str]) -> np.ndarray:
    """Read sample PNGs back as uint8 (N, H, W, 3): metrics are computed on the quantised files, as ADM does."""
    return np.concatenate(list(iter_image_batches(list(paths), 256)))


def _save_npz_atomically(path: str, **arrays: np.ndarray):
    """`np.savez` through a temporary file, so an interrupted run never leaves a truncated cache behind."""
    tmp = path + ".tmp.npz"  # np.savez appends .npz to names without it
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def write_samples_npz(path: str, images: ImagesOrPaths, class_labels: Sequence[int], batch_size: int = 256) -> str:
    """Write samples in the ADM evaluator's layout: `arr_0` uint8 (N, H, W, 3) and `arr_1` int64 labels (N,).

    `images` is an array or a list of image files; files are streamed into the (uncompressed, like `np.savez`) zip a
    batch at a time, so the whole set is never in memory. The file appears atomically.
    """
    labels = np.asarray(class_labels, dtype=np.int64)
    if labels.shape != (len(images),):
        raise ValueError(f"{len(images)} images but labels of shape {labels.shape}.")
    batches = iter_image_batches(images, batch_size)
    first = next(batches)
    if first.dtype != np.uint8 or first.ndim != 4 or first.shape[-1] != 3:
        raise ValueError(f"Expected uint8 (N, H, W, 3) images, got {first.dtype} {first.shape}.")
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
        "fortran_order": False,
        "shape": (len(images), *first.shape[1:]),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("arr_0.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for batch in itertools.chain([first], batches):
                if batch.shape[1:] != first.shape[1:]:
                    raise ValueError(f"Samples have different shapes: {first.shape[1:]} and {batch.shape[1:]}.")
                f.write(np.ascontiguousarray(batch, dtype=np.uint8).tobytes())
        with archive.open("arr_1.npy", "w") as f:
            np.lib.format.write_array(f, labels)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Metrics on samples
# ----------------------------------------------------------------------------------------------------------------------


def compute_sample_metrics(
    images: ImagesOrPaths,
    class_labels: Sequence[int],
    extractor: nn.Module,
    reference: Optional[Reference] = None,
    nearest_k: int = 3,
    is_split_size: int = 5000,
    batch_size: int = 64,
    reference_cache: Optional[str] = None,
) -> Tuple[Dict[str, float], Dict[str, Any]]:
    r"""
    FID, Inception Score, precision/recall and (for a [`DomainClassifier`]) class accuracy of samples, given as uint8
    (N, H, W, 3) or as PNG paths (read a batch at a time).

    FID uses the reference's precomputed `mu`/`sigma` when it has them and the extractor is the InceptionV3 (the ADM
    evaluator's rule); otherwise statistics of the reference images' features. Precision/recall need reference images.
    The Inception Score is computed on the extractor's softmax (InceptionV3: 1008 ImageNet classes; the domain
    classifier: the dataset's classes).

    Args:
        reference_cache (`str`, *optional*):
            An `.npz` to keep the reference features in; reused when its key (source, extractor, count) matches.

    Returns:
        `(metrics, details)`: the numbers and how each was obtained (written to the metrics JSON).
    """
    is_inception = isinstance(extractor, InceptionV3FeatureExtractor)
    features, logits, spatial = _all_features(extractor, images, batch_size)
    results: Dict[str, float] = {"inception_score": metrics.inception_score(metrics.softmax(logits), is_split_size)}
    details: Dict[str, Any] = {"num_samples": int(len(images)), "is_split_size": is_split_size}
    if isinstance(extractor, DomainClassifier):
        results["class_accuracy"] = metrics.class_accuracy(logits, class_labels)
    if reference is None:
        return results, details

    use_statistics = reference.mu is not None and is_inception
    if not use_statistics and reference.images is None:
        raise ValueError(
            f"The reference {reference.info['source']!r} holds only precomputed statistics, which are InceptionV3 "
            f"statistics; the {extractor.name} extractor needs reference images."
        )
    reference_features = reference_spatial = None
    if reference.images is not None:
        reference_features, reference_spatial = _reference_features(reference, extractor, batch_size, reference_cache)
    if use_statistics:
        results["fid"] = metrics.frechet_distance(*metrics.feature_statistics(features), reference.mu, reference.sigma)
        details["fid_reference"] = "precomputed statistics (mu, sigma)"
    else:
        results["fid"] = metrics.frechet_distance_from_features(features, reference_features)
        details["fid_reference"] = "reference image features"
    if is_inception and reference.mu_s is not None:  # sFID, by the same rule as FID
        results["sfid"] = metrics.frechet_distance(*metrics.feature_statistics(spatial), reference.mu_s, reference.sigma_s)
        details["sfid_reference"] = "precomputed statistics (mu_s, sigma_s)"
    elif reference_spatial is not None:
        results["sfid"] = metrics.frechet_distance_from_features(spatial, reference_spatial)
        details["sfid_reference"] = "reference image features"
    if reference_features is not None:
        results["precision"], results["recall"] = metrics.precision_recall(features, reference_features, nearest_k)
        details.update(nearest_k=nearest_k, num_reference_images=int(len(reference_features)))
    return results, details


def _all_features(extractor, images, batch_size: int):
    """(features, logits, sFID features or None): the sFID features are extracted with the InceptionV3 only."""
    if isinstance(extractor, InceptionV3FeatureExtractor):
        return extract_features(extractor, images, batch_size, spatial=True)
    return (*extract_features(extractor, images, batch_size), None)


def _reference_features(
    reference: Reference, extractor, batch_size: int, cache: Optional[str]
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Features of the reference images (and, for the InceptionV3, their sFID features), cached in `cache`."""
    spatial = isinstance(extractor, InceptionV3FeatureExtractor)
    key = json.dumps(
        [reference.info, extractor.name, str(getattr(extractor, "weights_path", "")), int(len(reference.images)), spatial],
        sort_keys=True,
        default=str,
    )
    if cache is not None and os.path.isfile(cache):
        with np.load(cache) as npz:
            if str(npz["key"]) == key:
                logger.info(f"Reusing reference features from {cache}.")
                return npz["features"], (npz["spatial"] if spatial else None)
    features, _, spatial_features = _all_features(extractor, reference.images, batch_size)
    if cache is not None:
        arrays = {"features": features} if spatial_features is None else {"features": features, "spatial": spatial_features}
        _save_npz_atomically(cache, key=np.array(key), **arrays)
    return features, spatial_features


# ----------------------------------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """What [`evaluate_pipeline`] wrote and measured. `report` is the metrics JSON's content."""

    metrics: Dict[str, float]
    report: Dict[str, Any]
    sampling: SamplingResult
    metrics_path: Optional[str] = None
    npz_path: Optional[str] = None
    sample_dir: Optional[str] = None


def load_feature_extractor(
    kind: str = "inception",
    inception_weights: Optional[str] = None,
    domain_classifier: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
) -> nn.Module:
    """`"inception"` -> [`load_inception`]; `"domain"` -> [`load_domain_classifier`]. Errors are raised here, before
    any sampling."""
    if kind == "inception":
        return load_inception(inception_weights, device)
    if kind == "domain":
        if domain_classifier is None:
            raise ValueError("The domain feature extractor needs --domain-classifier DIR (see train_domain_classifier).")
        return load_domain_classifier(domain_classifier, device)
    raise ValueError(f"Unknown feature extractor {kind!r}; use 'inception' or 'domain'.")


def evaluate_pipeline(
    pipe,
    output_dir: str,
    reference: Optional[Union[str, Reference]] = None,
    feature_extractor: Union[str, nn.Module] = "inception",
    inception_weights: Optional[str] = None,
    domain_classifier: Optional[str] = None,
    class_ids: Optional[Sequence[int]] = None,
    num_per_class: int = REFERENCE_PROTOCOL["num_per_class"],
    batch_size: int = 25,
    guidance_scale: float = REFERENCE_PROTOCOL["guidance_scale"],
    top_k: int = REFERENCE_PROTOCOL["top_k"],
    top_p: float = REFERENCE_PROTOCOL["top_p"],
    more_smooth: bool = REFERENCE_PROTOCOL["more_smooth"],
    seed: int = 0,
    reference_split: str = "train",
    reference_image_column: Optional[str] = None,
    reference_max_samples: Optional[int] = None,
    reference_resolution: Optional[int] = None,
    nearest_k: int = 3,
    is_split_size: int = 5000,
    feature_batch_size: int = 64,
    compute_metrics: bool = True,
    model_name_or_path: Optional[str] = None,
    progress: bool = True,
) -> EvaluationResult:
    r"""
    Sample with the protocol, write the PNGs, the ADM-layout `.npz` and a metrics JSON.

    Everything that can fail before sampling (feature extractor weights, the reference) is loaded first.

    Args:
        pipe (`VARPipeline`):
            The pipeline, on the device to sample on.
        output_dir (`str`):
            Gets `samples/<class>/<index>.png`, `samples.npz`, `metrics.json` (and `reference_features.npz`, a cache).
        reference (`str` or [`Reference`], *optional*):
            See [`load_reference`]. Needed unless `compute_metrics=False`.
        feature_extractor (`str` or `nn.Module`, *optional*, defaults to `"inception"`):
            `"inception"`, `"domain"`, or a loaded extractor.
        inception_weights (`str`, *optional*):
            The FID InceptionV3 weights file (see [`find_inception_weights`]).
        domain_classifier (`str`, *optional*):
            Folder of a [`DomainClassifier`] for `feature_extractor="domain"`.
        class_ids, num_per_class, batch_size, guidance_scale, top_k, top_p, more_smooth, seed:
            See [`generate_samples`].
        reference_split, reference_image_column, reference_max_samples, reference_resolution:
            See [`load_reference`]; the resolution defaults to the samples'.
        nearest_k (`int`, *optional*, defaults to 3), is_split_size (`int`, *optional*, defaults to 5000):
            Metric settings.
        compute_metrics (`bool`, *optional*, defaults to `True`):
            `False` only samples and writes the `.npz` (e.g. for the ADM evaluator).
        model_name_or_path (`str`, *optional*):
            Recorded in the JSON.
    """
    if compute_metrics and reference is None:
        raise ValueError("A reference is needed to compute metrics (or pass compute_metrics=False).")
    device = pipe._execution_device
    extractor = None
    if compute_metrics:
        extractor = (
            feature_extractor
            if isinstance(feature_extractor, nn.Module)
            else load_feature_extractor(feature_extractor, inception_weights, domain_classifier, device)
        )
    image_size = pipe.vqvae.config.image_size
    ref = reference
    if compute_metrics and not isinstance(reference, Reference):
        ref = load_reference(
            reference, reference_split, reference_image_column, reference_max_samples,
            reference_resolution or image_size, seed,
        )

    os.makedirs(output_dir, exist_ok=True)
    sample_dir = os.path.join(output_dir, SAMPLES_DIRNAME)
    sampling = generate_samples(
        pipe, sample_dir, class_ids, num_per_class, batch_size, guidance_scale, top_k, top_p, more_smooth, seed,
        progress,
    )
    npz_path = write_samples_npz(os.path.join(output_dir, SAMPLES_NPZ_FILENAME), sampling.paths, sampling.class_labels)

    results, details = {}, {}
    if compute_metrics:
        results, details = compute_sample_metrics(
            sampling.paths, sampling.class_labels, extractor, ref, nearest_k, is_split_size, feature_batch_size,
            reference_cache=os.path.join(output_dir, REFERENCE_CACHE_FILENAME),
        )

    num_classes = pipe.transformer.config.num_classes
    all_classes = class_ids is None or sorted(set(class_ids)) == list(range(num_classes))
    report = {
        "metrics": results,
        "model": {
            "name_or_path": model_name_or_path or getattr(pipe, "name_or_path", None),
            "num_classes": num_classes,
            "image_size": image_size,
            "depth": pipe.transformer.config.depth,
            "dtype": str(pipe.transformer.dtype).replace("torch.", ""),
        },
        "sampling": {
            "num_per_class": num_per_class,
            "classes": "all" if all_classes else [int(c) for c in class_ids],
            "num_samples": len(sampling.paths),
            "guidance_scale": guidance_scale,
            "top_k": top_k,
            "top_p": top_p,
            "more_smooth": more_smooth,
            "seed": seed,
            "seed_rule": "torch.Generator per sample, seeded with numpy SeedSequence([seed, class_id, index])",
            "batch_size": batch_size,
            "image_format": "png",
            "device": str(device),
            "protocol": "reference" if _is_reference_protocol(num_per_class, guidance_scale, top_k, top_p, more_smooth, all_classes) else "custom",
        },
        "reference": None if ref is None else dict(ref.info),
        "feature_extractor": None if extractor is None else _extractor_info(extractor),
        "metric_settings": details,
        "files": {"samples": SAMPLES_DIRNAME, "npz": SAMPLES_NPZ_FILENAME},
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    metrics_path = os.path.join(output_dir, METRICS_FILENAME)
    with open(metrics_path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, default=_json_default)
        f.write("\n")
    return EvaluationResult(results, report, sampling, metrics_path, npz_path, sample_dir)


def _is_reference_protocol(num_per_class, guidance_scale, top_k, top_p, more_smooth, all_classes) -> bool:
    p = REFERENCE_PROTOCOL
    return (num_per_class, guidance_scale, top_k, top_p, more_smooth, all_classes) == (
        p["num_per_class"], p["guidance_scale"], p["top_k"], p["top_p"], p["more_smooth"], True,
    )


def _extractor_info(extractor) -> Dict[str, Any]:
    info = {"name": extractor.name, "feature_dim": int(extractor.feature_dim)}
    path = getattr(extractor, "weights_path", None)
    if path is not None:
        info["weights"] = os.path.abspath(path)
        if os.path.isfile(path):
            info["weights_sha256"] = _sha256(path)
    if isinstance(extractor, DomainClassifier):
        info["num_classes"] = extractor.config.num_classes
        info["image_size"] = extractor.config.image_size
    return info


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> Dict[str, str]:
    import diffusers
    import transformers

    from . import __version__

    return {
        "var_hf": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return str(obj)


# ----------------------------------------------------------------------------------------------------------------------
# CLI: `var-hf evaluate`
# ----------------------------------------------------------------------------------------------------------------------


def parse_class_ids(spec: Optional[str]) -> Optional[List[int]]:
    """`"0-9,15,20-22"` -> [0, ..., 9, 15, 20, 21, 22]; `None` or `"all"` -> `None` (every class)."""
    if spec is None or spec.strip().lower() == "all":
        return None
    ids: List[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                ids.extend(range(lo, hi + 1))
            else:
                ids.append(int(part))
        except ValueError:
            raise ValueError(f"Bad class list {spec!r}: use ids and ranges like '0-9,15'.") from None
    return ids


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of `var-hf evaluate` (the defaults are the reference protocol)."""
    p = REFERENCE_PROTOCOL
    parser.add_argument("--model", required=True, help="Folder of a saved VARPipeline (or a Hub repo id).")
    parser.add_argument(
        "--reference",
        help="Reference: an .npz (arr_0 images and/or mu/sigma, e.g. the ADM VIRTUAL_imagenet256_labeled.npz), an "
        "image folder, a dataset saved with save_to_disk, fashion-mnist (Debian's idx files), or a Hub dataset id. "
        "Required unless --no-metrics.",
    )
    parser.add_argument("--output-dir", required=True, help="Where samples/, samples.npz and metrics.json go.")
    parser.add_argument("--num-per-class", type=int, default=p["num_per_class"], help="Samples per class.")
    parser.add_argument("--classes", default=None, help="Class ids to sample, e.g. '0-9,15' (default: all).")
    parser.add_argument("--batch-size", type=int, default=25, help="Images per pipeline call.")
    parser.add_argument("--guidance-scale", type=float, default=p["guidance_scale"], help="Classifier-free guidance.")
    parser.add_argument("--top-k", type=int, default=p["top_k"], help="Top-k sampling (0 disables).")
    parser.add_argument("--top-p", type=float, default=p["top_p"], help="Nucleus sampling (0 disables).")
    parser.add_argument("--more-smooth", action="store_true", help="Gumbel smoothing (keep off for FID).")
    parser.add_argument("--seed", type=int, default=0, help="Base of the per-sample seeds.")
    parser.add_argument(
        "--feature-extractor", choices=("inception", "domain"), default="inception",
        help="Feature space: the FID InceptionV3, or a domain classifier (small datasets).",
    )
    parser.add_argument(
        "--inception-weights", default=None,
        help="FID InceptionV3 weights, pt_inception-2015-12-05-6726825d.pth (default: torch's hub cache).",
    )
    parser.add_argument("--domain-classifier", default=None, help="Folder of a trained domain classifier.")
    parser.add_argument("--reference-split", default="train", help="Split of a datasets reference.")
    parser.add_argument("--reference-image-column", default=None, help="Image column of a datasets reference.")
    parser.add_argument("--reference-max-samples", type=int, default=None, help="Seeded random subset of the reference.")
    parser.add_argument(
        "--reference-resolution", type=int, default=None,
        help="Centre-crop/resize reference images to this side (default: the samples' resolution).",
    )
    parser.add_argument("--nearest-k", type=int, default=3, help="k of the precision/recall manifolds.")
    parser.add_argument("--is-split-size", type=int, default=5000, help="Samples per Inception Score split.")
    parser.add_argument("--feature-batch-size", type=int, default=64, help="Images per feature-extractor call.")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available).")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
        help="Pipeline weights dtype (bfloat16/float16 are for GPUs).",
    )
    parser.add_argument("--no-metrics", action="store_true", help="Only sample and write the .npz.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    return parser


def run_evaluate_command(args: argparse.Namespace) -> int:
    """Run `var-hf evaluate`; prints the metrics JSON path and numbers. Returns the exit code."""
    import sys

    from .pipelines import VARPipeline

    try:
        if not args.no_metrics and args.reference is None:
            raise ValueError("--reference is required (or pass --no-metrics to only sample).")
        class_ids = parse_class_ids(args.classes)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        extractor = None
        if not args.no_metrics:  # fail on missing weights before loading the model or sampling
            extractor = load_feature_extractor(
                args.feature_extractor, args.inception_weights, args.domain_classifier, device
            )
        pipe = VARPipeline.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(device)
        result = evaluate_pipeline(
            pipe,
            args.output_dir,
            reference=args.reference,
            feature_extractor=extractor if extractor is not None else args.feature_extractor,
            class_ids=class_ids,
            num_per_class=args.num_per_class,
            batch_size=args.batch_size,
            guidance_scale=args.guidance_scale,
            top_k=args.top_k,
            top_p=args.top_p,
            more_smooth=args.more_smooth,
            seed=args.seed,
            reference_split=args.reference_split,
            reference_image_column=args.reference_image_column,
            reference_max_samples=args.reference_max_samples,
            reference_resolution=args.reference_resolution,
            nearest_k=args.nearest_k,
            is_split_size=args.is_split_size,
            feature_batch_size=args.feature_batch_size,
            compute_metrics=not args.no_metrics,
            model_name_or_path=args.model,
            progress=not args.quiet,
        )
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"var-hf evaluate: error: {err}", file=sys.stderr)
        return 2
    s = result.sampling
    print(f"samples: {result.sample_dir} ({s.num_generated} generated, {s.num_skipped} already there)")
    print(f"npz:     {result.npz_path}")
    print(f"metrics: {result.metrics_path}")
    for name, value in result.metrics.items():
        print(f"  {name}: {value:.4f}")
    return 0


def add_train_domain_classifier_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of a `train-domain-classifier` command: train [`DomainClassifier`] on a dataset's training split."""
    parser.add_argument("--dataset", required=True, help="Hub dataset id or a folder saved with save_to_disk.")
    parser.add_argument("--output-dir", required=True, help="Where the classifier is saved.")
    parser.add_argument("--split", default="train", help="Training split (train).")
    parser.add_argument("--image-column", default=None)
    parser.add_argument("--label-column", default=None)
    parser.add_argument("--image-size", type=int, default=None, help="Input side (default: the images').")
    parser.add_argument("--num-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    return parser


def run_train_domain_classifier_command(args: argparse.Namespace) -> int:
    import sys

    import datasets

    try:
        if os.path.isdir(args.dataset):
            dataset = datasets.load_from_disk(args.dataset)
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset[args.split]
        else:
            dataset = datasets.load_dataset(args.dataset, split=args.split)
        train_domain_classifier(
            dataset, args.output_dir, args.image_column, args.label_column, image_size=args.image_size,
            num_epochs=args.num_epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
            seed=args.seed, device=args.device,
        )
    except (FileNotFoundError, ValueError, OSError, KeyError) as err:
        print(f"var-hf train-domain-classifier: error: {err}", file=sys.stderr)
        return 2
    print(f"domain classifier saved to {args.output_dir}")
    return 0


__all__ = [
    "ADM_REFERENCE_BATCH_URL",
    "DomainClassifier",
    "DomainClassifierConfig",
    "DomainClassifierOutput",
    "EvaluationResult",
    "INCEPTION_WEIGHTS_URL",
    "InceptionV3FeatureExtractor",
    "REFERENCE_PROTOCOL",
    "Reference",
    "SamplingResult",
    "add_evaluate_arguments",
    "add_train_domain_classifier_arguments",
    "center_crop_arr",
    "compute_sample_metrics",
    "evaluate_pipeline",
    "extract_features",
    "find_inception_weights",
    "generate_samples",
    "images_to_array",
    "iter_image_batches",
    "load_domain_classifier",
    "load_feature_extractor",
    "load_inception",
    "load_reference",
    "load_samples",
    "parse_class_ids",
    "resize_bilinear_tf1",
    "run_evaluate_command",
    "run_train_domain_classifier_command",
    "sample_path",
    "sample_seed",
    "train_domain_classifier",
    "write_samples_npz",
]
