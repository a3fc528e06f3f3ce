"""The losses of stage-1 (VQVAE) training besides reconstruction and VQ: LPIPS from user-supplied weight files, and
VQGAN's PatchGAN discriminator with the hinge loss and the adaptive generator weight."""

import os
import re
from typing import Dict, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------------------------------
# LPIPS (VGG16 features + learned linear heads), weights from user files only
# ----------------------------------------------------------------------------------------------------------------------

# torchvision's vgg16().features up to relu5_3: (in, out) convs and "M" max-pools, each conv followed by a ReLU.
_VGG16_LAYOUT = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256), (256, 256), "M",
                 (256, 512), (512, 512), (512, 512), "M", (512, 512), (512, 512), (512, 512)]
_LPIPS_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in `features` indexing
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    r"""
    LPIPS v0.1 (Zhang et al. 2018) with a VGG16 backbone: unit-normalised features at five depths, squared
    differences weighted by learned non-negative 1x1 convolutions, averaged over space and summed. Inputs in [-1, 1].

    Nothing is downloaded: [`LPIPS.from_files`] reads the weights from files the user provides — torchvision's VGG16
    (`features.<i>.weight`, e.g. `vgg16-397923af.pth`) and the LPIPS heads (`lin<k>.model.1.weight`, the `lpips`
    package's `weights/v0.1/vgg.pth`), or one file with both (e.g. an `lpips.LPIPS` state dict, `net.slice<n>.<i>`).
    """

    def __init__(self):
        super().__init__()
        layers: List[nn.Module] = []
        for item in _VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(item[0], item[1], kernel_size=3, padding=1), nn.ReLU(inplace=False)]
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, paths: Sequence[str]) -> "LPIPS":
        if not paths:
            raise ValueError("LPIPS needs weight files (--lpips-weights); nothing is downloaded.")
        state: Dict[str, torch.Tensor] = {}
        for path in paths:
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"LPIPS weight file {path} not found. Provide torchvision's VGG16 weights (vgg16-397923af.pth) "
                    "and the LPIPS v0.1 heads (lpips/weights/v0.1/vgg.pth); nothing is downloaded."
                )
            if path.endswith(".safetensors"):
                from safetensors.torch import load_file

                loaded = load_file(path)
            else:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
                loaded = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
            for key, value in loaded.items():
                key = key.removeprefix("module.")
                m = re.fullmatch(r"(?:net\.slice\d+|features|net\.features)\.(\d+)\.(weight|bias)", key)
                if m:
                    state[f"features.{m.group(1)}.{m.group(2)}"] = value
                    continue
                m = re.fullmatch(r"lins?\.?(\d)\.(?:model\.1\.)?weight", key)
                if m:
                    state[f"lins.{m.group(1)}.weight"] = value
        model = cls()
        expected = set(model.state_dict())
        missing = sorted(expected - set(state))
        if missing:
            raise ValueError(
                f"The LPIPS files {list(paths)} lack {len(missing)} tensors (e.g. {missing[:3]}): pass both the VGG16 "
                "weights and the LPIPS linear heads."
            )
        model.load_state_dict({k: state[k] for k in expected})
        return model

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-image distance, (B,)."""
        x = (torch.cat((input, target)) - self.shift) / self.scale
        total = 0.0
        tap_index = 0
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == _LPIPS_TAPS[tap_index]:
                f_in, f_tgt = x.float().chunk(2)
                f_in = f_in / (f_in.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
                f_tgt = f_tgt / (f_tgt.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
                diff = self.lins[tap_index].float()((f_in - f_tgt).square())
                total = total + diff.mean(dim=(2, 3)).squeeze(1)
                tap_index += 1
                if tap_index == len(_LPIPS_TAPS):
                    break
        return total


# ----------------------------------------------------------------------------------------------------------------------
# PatchGAN discriminator
# ----------------------------------------------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / VQGAN's `NLayerDiscriminator`): 4x4 convolutions, stride 2 for `num_layers` levels, one
    logit per patch. Each extra layer halves the side, so small images need fewer layers (8x8 works with 1)."""

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: List[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [
                nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(channels * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for module in self.modules():  # VQGAN's weights_init
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.main(pixel_values)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_gan_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """VQGAN's balance between the reconstruction and adversarial gradients at the decoder's last layer."""
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grads.norm() / (g_grads.norm() + 1e-4)).clamp(0.0, 1e4).detach()


__all__ = ["LPIPS", "PatchDiscriminator", "adaptive_gan_weight", "hinge_d_loss"]
