"""What a finished run writes: a plain copy of the trained model (EMA or raw weights), the frozen VQVAE's lookup and
fingerprint, and the complete `VARPipeline` folder with its model card."""

import copy
import hashlib
import json
import os
from typing import Any, Dict, List, Optional

import torch
from accelerate import Accelerator

from var_hf.training.optimization import EMA
from var_hf.training.trackers import is_fsdp


def exported_copy(accelerator: Accelerator, model, ema: Optional[EMA] = None):
    """A plain CPU copy of the trained model (full weights gathered under FSDP), optionally with the EMA weights."""
    unwrapped = accelerator.unwrap_model(model)
    if is_fsdp(accelerator):
        state = accelerator.get_state_dict(model)
        copy_model = type(unwrapped)(copy.deepcopy(unwrapped.config))
        if accelerator.is_main_process:
            copy_model.load_state_dict(state)
    else:
        copy_model = copy.deepcopy(unwrapped)
    copy_model = copy_model.to("cpu").float()
    if ema is not None:
        ema.copy_to(copy_model)
    return copy_model.eval()


def vqvae_folder(path: str) -> str:
    """A MultiScaleVQVAE folder: `path` itself, or the `vqvae/` inside a pipeline or a train-vqvae output folder."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    if os.path.exists(os.path.join(path, "vqvae", "config.json")):
        return os.path.join(path, "vqvae")
    raise FileNotFoundError(f"No MultiScaleVQVAE in {path} (expected config.json or vqvae/config.json).")


def transformer_folder(path: str) -> str:
    """A VARTransformer folder: `path` itself, or the `transformer/` inside a pipeline or a train-var output folder."""
    if os.path.exists(os.path.join(path, "transformer", "config.json")):
        return os.path.join(path, "transformer")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    raise FileNotFoundError(f"No VARTransformer in {path} (expected config.json or transformer/config.json).")


def load_frozen_vqvae(path: str, device) -> torch.nn.Module:
    from var_hf.modeling_vqvae import MultiScaleVQVAE

    vqvae = MultiScaleVQVAE.from_pretrained(vqvae_folder(path)).to(device).eval()
    vqvae.requires_grad_(False)
    return vqvae


def vqvae_fingerprint(vqvae) -> str:
    """Short hash of a VQVAE's configuration and codebook: tokens are only meaningful with the VQVAE that made them."""
    digest = hashlib.sha256()
    config = {k: v for k, v in vqvae.config.to_dict().items() if k not in ("transformers_version", "_name_or_path")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(vqvae.quantizer.codebook.weight.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def hub_dataset_ids(source: str) -> Optional[List[str]]:
    """The training set as Hub ids for the model card (None for local folders)."""
    if source.lower() in ("fashion-mnist", "fashion_mnist"):
        return ["zalando-datasets/fashion_mnist"]
    return None if os.path.exists(source) or source.startswith("imagefolder:") else [source]


def save_pipeline(folder: str, vqvae, transformer, card: Optional[Dict[str, Any]] = None):
    """Write a complete `VARPipeline` folder (model_index.json, vqvae/, transformer/, scheduler/) and, given `card`
    (`title`, `description`, `datasets`, `sample_grid`), its model card (`var_hf.hub.write_model_card`)."""
    from var_hf.hub import write_model_card
    from var_hf.pipelines import VARPipeline
    from var_hf.scheduling_var import VARScaleScheduler

    pipe = VARPipeline(
        vqvae=vqvae, transformer=transformer,
        scheduler=VARScaleScheduler(patch_nums=list(transformer.config.patch_nums)),
    )
    pipe.save_pretrained(folder)
    if card is not None:
        write_model_card(folder, model_name=card["title"], description=card["description"],
                         datasets=list(card.get("datasets") or []) or None, sample_grid=card.get("sample_grid", True))


__all__ = [
    "exported_copy",
    "hub_dataset_ids",
    "load_frozen_vqvae",
    "save_pipeline",
    "transformer_folder",
    "vqvae_fingerprint",
    "vqvae_folder",
]
