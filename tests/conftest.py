"""Shared tiny configurations for the test suite.

Sizes follow the style guide: real classes at tiny widths, three scales `(1, 2, 4)` so an image is 8x8 pixels and the
transformer sequence has 1 + 4 + 16 = 21 tokens.
"""

import os

import pytest
import torch

from var_hf import MultiScaleVQVAEConfig, VARTransformerConfig
from var_hf.data import FASHION_MNIST_DIR, fashion_mnist_available

# Tiny models are dominated by per-op overhead; extra intra-op threads only add contention on small machines.
torch.set_num_threads(1)

TINY_PATCH_NUMS = (1, 2, 4)

# Tests that train or tokenize on the real dataset (Debian's fashion-mnist package).
needs_fmnist = pytest.mark.skipif(
    not fashion_mnist_available(),
    reason=f"Fashion-MNIST idx files missing from {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
)


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.slow` tests (real sizes) run only with `-m slow` or VAR_HF_RUN_SLOW=1."""
    if "slow" in (config.getoption("-m") or "") or os.environ.get("VAR_HF_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="real-size check: run with -m slow or VAR_HF_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def make_vqvae_config(**overrides) -> MultiScaleVQVAEConfig:
    kwargs = dict(
        base_channels=32, channel_multipliers=(1, 2), num_res_blocks=1, vocab_size=32, vq_embed_dim=8,
        patch_nums=TINY_PATCH_NUMS,
    )
    return MultiScaleVQVAEConfig(**{**kwargs, **overrides})


def make_var_config(**overrides) -> VARTransformerConfig:
    # No stochastic depth by default, so train-mode passes are deterministic.
    kwargs = dict(
        vocab_size=32, vq_embed_dim=8, num_classes=6, depth=2, embed_dim=32, num_heads=2,
        patch_nums=TINY_PATCH_NUMS, drop_path_rate=0.0,
    )
    return VARTransformerConfig(**{**kwargs, **overrides})


def perturb_(model: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Add seeded noise to every parameter: the near-zero initial gains (AdaLN gamma 1e-5, zero biases) would
    otherwise hide mistakes in masking, caching or key mapping."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * std)
    return model


@pytest.fixture(scope="session")
def vqvae_config_factory():
    return make_vqvae_config


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory):
    """A tiny random VQVAE (8x8 images, 21 tokens) saved as a folder (training tests)."""
    from var_hf import MultiScaleVQVAE

    folder = tmp_path_factory.mktemp("vqvae")
    torch.manual_seed(0)
    MultiScaleVQVAE(make_vqvae_config()).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def var_config_factory():
    return make_var_config


@pytest.fixture
def pixel_values():
    """Two seeded 8x8 RGB images in [-1, 1]."""
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.fixture(scope="session")
def perturb():
    return perturb_


@pytest.fixture(scope="module")
def tiny_pipeline():
    """A random `VARPipeline` with 8x8 images, 4 classes and 16 codes (evaluation and Hub tests)."""
    from var_hf import MultiScaleVQVAE, MultiScaleVQVAEConfig, VARPipeline, VARScaleScheduler, VARTransformer

    torch.manual_seed(0)
    vqvae = MultiScaleVQVAE(
        MultiScaleVQVAEConfig(
            base_channels=32, channel_multipliers=(1, 2), vocab_size=16, vq_embed_dim=8, patch_nums=TINY_PATCH_NUMS
        )
    )
    transformer = VARTransformer(
        VARTransformerConfig(
            vocab_size=16, vq_embed_dim=8, num_classes=4, depth=2, embed_dim=32, num_heads=2, patch_nums=TINY_PATCH_NUMS
        )
    )
    scheduler = VARScaleScheduler(patch_nums=list(TINY_PATCH_NUMS))
    return VARPipeline(vqvae=vqvae.eval(), transformer=transformer.eval(), scheduler=scheduler)
