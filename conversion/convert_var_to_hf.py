"""Convert the official VAR checkpoints (github FoundationVision/VAR) to var_hf.

    var-hf-convert --vae vae_ch160v4096z32.pth --var var_d16.pth --output-dir ./var-d16

writes a folder that `VARPipeline.from_pretrained` loads (`model_index.json`, `vqvae/`, `transformer/`,
`scheduler/`); the subfolders also load on their own with `from_pretrained`. Depth, width, heads, shared AdaLN,
attention type and the 256/512 patch schedule are read off the tensors; flags override them. The tokenizer's
`--quant-resi` and `--using-znorm` are not stored in checkpoints and default to the released tokenizer's values.
The command line lives in `var_hf.commands.convert`; this module is the library (tables and functions).

Checkpoints are read with `torch.load(weights_only=True)` only, every reference key is mapped by the explicit table
below (or dropped with a check of its value), the models load with `strict=True`, every weight must be finite and a
random image must encode, decode and teacher-force to finite values. The folder is written to a temporary directory
first and renamed into place, so a failed run leaves nothing behind. An existing output folder is replaced only with
`overwrite=True` and only when it holds nothing but a previous conversion's files; a folder holding an input is
always refused.
"""

import functools
import math
import os
import pickle
import re
import shutil
import struct
import sys
import tempfile
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import torch
from transformers.utils import logging

from var_hf.commands import option_flag  # light: argparse only
from var_hf.configuration_var import VARTransformerConfig
from var_hf.configuration_vqvae import PATCH_NUMS_256, PATCH_NUMS_512, MultiScaleVQVAEConfig

logger = logging.get_logger(__name__)

# ----------------------------------------------------------------------------------------------------------------------
# Key tables: (reference regex, var_hf template). Every reference key must match exactly one row.
# ----------------------------------------------------------------------------------------------------------------------

VQVAE_KEY_MAP: List[Tuple[str, str]] = [
    # Encoder / decoder keep the reference's (VQGAN / LDM) layout.
    (r"(encoder|decoder)\.(.+)", r"\1.\2"),
    (r"(quant_conv|post_quant_conv)\.(weight|bias)", r"\1.\2"),
    (r"quantize\.embedding\.weight", r"quantizer.codebook.weight"),
    (r"quantize\.ema_vocab_hit_SV", r"quantizer.ema_code_hits"),
    # phi convolutions: partially shared (qresi_ls.K), fully shared (qresi), one per scale (K).
    (r"quantize\.quant_resi\.qresi_ls\.(\d+)\.(weight|bias)", r"quantizer.phi.\1.\2"),
    (r"quantize\.quant_resi\.qresi\.(weight|bias)", r"quantizer.phi.0.\1"),
    (r"quantize\.quant_resi\.(\d+)\.(weight|bias)", r"quantizer.phi.\1.\2"),
]

VAR_KEY_MAP: List[Tuple[str, str]] = [
    (r"word_embed\.(weight|bias)", r"word_embed.\1"),
    (r"class_emb\.weight", r"class_embedding.weight"),
    (r"pos_start", r"pos_start"),
    (r"pos_1LC", r"pos_embedding"),
    (r"lvl_embed\.weight", r"level_embedding.weight"),
    (r"shared_ada_lin\.1\.(weight|bias)", r"shared_adaln.linear.\1"),
    (r"blocks\.(\d+)\.attn\.mat_qkv\.weight", r"blocks.\1.attn.qkv.weight"),
    (r"blocks\.(\d+)\.attn\.(q_bias|v_bias)", r"blocks.\1.attn.\2"),
    (r"blocks\.(\d+)\.attn\.scale_mul_1H11", r"blocks.\1.attn.log_scale"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"blocks\.(\d+)\.ffn\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"blocks\.(\d+)\.ada_lin\.1\.(weight|bias)", r"blocks.\1.adaln.linear.\2"),
    (r"blocks\.(\d+)\.ada_gss", r"blocks.\1.adaln_table"),
    (r"head_nm\.ada_lin\.1\.(weight|bias)", r"head_norm.adaln.linear.\1"),
    (r"head\.(weight|bias)", r"head.\1"),
]

# Reference buffers that var_hf derives from the config instead of storing; each is checked before it is dropped.
VAR_DROPPED_KEYS = (r"blocks\.\d+\.attn\.zero_k_bias", r"lvl_1L", r"attn_bias_for_masking")


# Wrappers of a state dict in training checkpoints: {"model": sd}, {"state_dict": sd}, ...
STATE_DICT_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "module", "net")
# The official trainer's checkpoint (`ar-ckpt-last.pth`) holds both models under "trainer".
TRAINER_KEYS = {"vae": "vae_local", "var": "var_wo_ddp"}


class ConversionError(ValueError):
    """A problem with the user's input, reported as one line."""


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def _first_sentence(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(err).__name__


def _check_file_format(path: str):
    """Refuse, before unpickling, what is not a `torch.save` file (zip archive or the legacy pickle format)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"):
        return
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 100_000_000:
        raise ConversionError(
            f"{path}: a safetensors file, not a PyTorch checkpoint. The converter reads the official .pth "
            f"checkpoints (vae_ch160v4096z32.pth, var_d16.pth ...); a safetensors folder of var_hf loads directly "
            f"with from_pretrained."
        )
    what = "empty" if not head else ("a text file" if _looks_like_text(head) else "unknown bytes")
    raise ConversionError(
        f"{path}: not a PyTorch checkpoint ({what}; torch.save files are zip archives). Pass the official .pth "
        f"checkpoint (e.g. vae_ch160v4096z32.pth, var_d16.pth), downloaded completely."
    )


def _looks_like_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _describe(obj) -> str:
    if isinstance(obj, dict):
        keys = list(obj)[:8]
        return f"a dict with keys {keys}{' ...' if len(obj) > 8 else ''}"
    return f"a {type(obj).__name__}"


def load_reference_checkpoint(path: str, role: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Read a reference `.pth` safely (`weights_only=True`) and return its flat state dict.

    Accepted: a plain state dict (the released files), one nested under `model` / `state_dict` / ..., and the
    official trainer's checkpoint (`ar-ckpt-*.pth`), from which `role` (`"vae"` or `"var"`) picks `trainer.vae_local`
    or `trainer.var_wo_ddp`.
    """
    if os.path.isdir(path):
        raise ConversionError(f"{path}: a folder, not a checkpoint file; pass the .pth file.")
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file.")
    _check_file_format(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is several paragraphs; keep the one naming the offending global.
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if "global" in line.lower()), lines[0] if lines else "")
        raise ConversionError(
            f"{path}: refused to unpickle it: it holds objects other than tensors (a pickle that could run code). "
            f"Only plain state dicts are accepted ({detail}). For a training checkpoint that also pickles other "
            f"objects, save its state dicts alone where the file is trusted (e.g. torch.save(ckpt['trainer']"
            f"['var_wo_ddp'], 'var.pth')) and convert those."
        ) from None
    except Exception as err:  # noqa: BLE001 - zipfile/torch raise many types for a damaged archive
        raise ConversionError(
            f"{path}: not a readable torch checkpoint (truncated or corrupt download?): {_first_sentence(err)}"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("trainer"), dict):
        trainer = obj["trainer"]
        if role in TRAINER_KEYS and _is_state_dict(trainer.get(TRAINER_KEYS[role])):
            logger.info(f"{path}: a trainer checkpoint; converting its trainer.{TRAINER_KEYS[role]}.")
            return trainer[TRAINER_KEYS[role]]
        held = [f"trainer.{k}" for k in TRAINER_KEYS.values() if _is_state_dict(trainer.get(k))]
        raise ConversionError(
            f"{path}: a trainer checkpoint holding {held or 'no model weights'}; pass it as --vae (for "
            f"trainer.vae_local) or --var (for trainer.var_wo_ddp)."
        )
    if not _is_state_dict(obj) and isinstance(obj, dict):
        nested = [k for k in STATE_DICT_WRAPPER_KEYS if _is_state_dict(obj.get(k))]
        if len(nested) == 1:
            logger.info(f"{path}: the state dict is nested under {nested[0]!r}; converting that.")
            obj = obj[nested[0]]
    if not _is_state_dict(obj):
        raise ConversionError(
            f"{path}: expected a state dict of tensors (or a trainer checkpoint), got {_describe(obj)}. Pass the "
            f"official vae_ch160v4096z32.pth / var_d16.pth, or a trainer checkpoint ar-ckpt-*.pth."
        )
    return obj


def map_keys(
    state_dict: Dict[str, torch.Tensor], key_map: Sequence[Tuple[str, str]], dropped: Sequence[str] = (), path: str = ""
) -> Dict[str, torch.Tensor]:
    """Rename every key by the table; a key that matches no row is an error (nothing is silently ignored)."""
    out, unknown = {}, []
    for key, value in state_dict.items():
        if any(re.fullmatch(pattern, key) for pattern in dropped):
            continue
        for pattern, template in key_map:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, template, key, count=1)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"{path}: unexpected keys (not a VAR checkpoint of this layout?): {unknown[:8]}")
    return out


def _count(state_dict, pattern: str) -> int:
    return len({m.group(1) for k in state_dict if (m := re.fullmatch(pattern, k))})


def _is_vqvae(state_dict) -> bool:
    return any(k.startswith("encoder.") for k in state_dict) and "quantize.embedding.weight" in state_dict


def _is_var(state_dict) -> bool:
    return "class_emb.weight" in state_dict and "pos_1LC" in state_dict


# ----------------------------------------------------------------------------------------------------------------------
# Config inference
# ----------------------------------------------------------------------------------------------------------------------


def infer_patch_nums(var_sd: Dict[str, torch.Tensor], path: str = "var") -> List[int]:
    """The schedule from `lvl_1L` (scale of every position) when present, else from the sequence length."""
    if "lvl_1L" in var_sd:
        counts = torch.bincount(var_sd["lvl_1L"].flatten().long()).tolist()
        sides = [math.isqrt(c) for c in counts]
        if all(s * s == c for s, c in zip(sides, counts)):
            return sides
    seq_len = var_sd["pos_1LC"].shape[1]
    for schedule in (PATCH_NUMS_256, PATCH_NUMS_512):
        if sum(pn * pn for pn in schedule) == seq_len:
            return list(schedule)
    raise ConversionError(
        f"{path}: cannot infer the patch schedule from a sequence of {seq_len} tokens (neither the 256px nor the 512px "
        f"one, and no usable lvl_1L); pass --patch-nums."
    )


def infer_vqvae_config(
    vae_sd: Dict[str, torch.Tensor], patch_nums: Sequence[int], quant_resi: float = 0.5, using_znorm: bool = False
):
    """Read the tokenizer's shape off its tensors. `quant_resi` and `using_znorm` are not stored in checkpoints."""
    ch = vae_sd["encoder.conv_in.weight"].shape[0]
    num_levels = _count(vae_sd, r"encoder\.down\.(\d+)\..*")
    mults = [vae_sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(num_levels)]
    vocab_size, vq_embed_dim = vae_sd["quantize.embedding.weight"].shape
    if any(k.startswith("quantize.quant_resi.qresi_ls.") for k in vae_sd):
        share, num_quant_resi = _count(vae_sd, r"quantize\.quant_resi\.qresi_ls\.(\d+)\..*"), 0
    elif "quantize.quant_resi.qresi.weight" in vae_sd:
        share, num_quant_resi = 1, 0
    elif any(re.fullmatch(r"quantize\.quant_resi\.\d+\.weight", k) for k in vae_sd):
        share, num_quant_resi = 0, _count(vae_sd, r"quantize\.quant_resi\.(\d+)\..*")
    else:
        share, num_quant_resi, quant_resi = 4, 0, 0.0
    return MultiScaleVQVAEConfig(
        in_channels=vae_sd["encoder.conv_in.weight"].shape[1],
        base_channels=ch,
        channel_multipliers=mults,
        num_res_blocks=_count(vae_sd, r"encoder\.down\.0\.block\.(\d+)\..*"),
        use_attention=any(k.startswith(f"encoder.down.{num_levels - 1}.attn.") for k in vae_sd),
        use_mid_attention="encoder.mid.attn_1.qkv.weight" in vae_sd,
        vocab_size=vocab_size,
        vq_embed_dim=vq_embed_dim,
        using_znorm=using_znorm,
        quant_conv_kernel_size=vae_sd["quant_conv.weight"].shape[-1],
        quant_resi=quant_resi,
        share_quant_resi=share,
        num_quant_resi=num_quant_resi,
        patch_nums=patch_nums,
    )


def infer_var_config(var_sd: Dict[str, torch.Tensor], patch_nums: Sequence[int], path: str = "var", **overrides):
    """Read the transformer's shape off its tensors; `overrides` (not None) win."""
    embed_dim, vq_embed_dim = var_sd["word_embed.weight"].shape
    attn_l2_norm = "blocks.0.attn.scale_mul_1H11" in var_sd
    if attn_l2_norm:
        num_heads = var_sd["blocks.0.attn.scale_mul_1H11"].shape[1]
    elif overrides.get("num_heads") is not None:
        num_heads = overrides["num_heads"]
    elif embed_dim % 64 == 0:
        # Without the per-head temperature nothing in the checkpoint has a head axis: assume 64-dim heads, the
        # released models' rule (num_heads = depth, embed_dim = 64 * depth).
        num_heads = embed_dim // 64
        logger.warning(
            f"{path}: the checkpoint does not store the number of heads (no attn_l2_norm temperature); assuming "
            f"64-dim heads, num_heads={num_heads}. If the model was built with other heads, pass --num-heads "
            f"(num_heads= in Python): a wrong head count loads without error but computes different logits."
        )
    else:
        raise ConversionError(
            f"{path}: cannot infer the number of heads (no attn_l2_norm temperature and embed_dim={embed_dim} is not a "
            f"multiple of 64); pass --num-heads."
        )
    depth = _count(var_sd, r"blocks\.(\d+)\..*")
    kwargs = dict(
        vocab_size=var_sd["head.weight"].shape[0],
        vq_embed_dim=vq_embed_dim,
        num_classes=var_sd["class_emb.weight"].shape[0] - 1,
        depth=depth,
        embed_dim=embed_dim,
        num_heads=num_heads,
        mlp_ratio=var_sd["blocks.0.ffn.fc1.weight"].shape[0] / embed_dim,
        shared_aln="shared_ada_lin.1.weight" in var_sd,
        attn_l2_norm=attn_l2_norm,
        patch_nums=patch_nums,
    )
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    if kwargs["embed_dim"] % kwargs["num_heads"]:
        raise ConversionError(
            f"{path}: embed_dim {kwargs['embed_dim']} is not divisible by num_heads {kwargs['num_heads']}; pass a "
            f"--num-heads that divides it (the released models use embed_dim // 64)."
        )
    return VARTransformerConfig(**kwargs)


def check_dropped_var_buffers(var_sd: Dict[str, torch.Tensor], config: VARTransformerConfig, path: str):
    for key, value in var_sd.items():
        if key.endswith("attn.zero_k_bias") and value.abs().max() != 0:
            raise ConversionError(f"{path}: {key} is not zero; var_hf assumes the reference's zero key bias.")
    if "attn_bias_for_masking" in var_sd and var_sd["attn_bias_for_masking"].shape[-1] != config.seq_len:
        raise ConversionError(
            f"{path}: attn_bias_for_masking covers {var_sd['attn_bias_for_masking'].shape[-1]} tokens but the schedule "
            f"{config.patch_nums} has {config.seq_len}; pass the right --patch-nums."
        )


# ----------------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------------


def _load_strict(model, state_dict, path: str):
    model_sd = model.state_dict()
    missing = sorted(set(model_sd) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(model_sd))
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(model_sd[k].shape)}" for k, v in state_dict.items()
             if k in model_sd and v.shape != model_sd[k].shape]
    if missing or unexpected or wrong:
        raise ConversionError(
            f"{path}: does not fit the inferred model: missing {missing[:6]}, unexpected {unexpected[:6]}, "
            f"wrong shapes {wrong[:6]}."
        )
    model.load_state_dict(state_dict, strict=True)


def _infer(fn, source: str, *args, **kwargs):
    """Run a config inference; a missing key or an impossible shape becomes a one-line error naming the file."""
    try:
        return fn(*args, **kwargs)
    except ConversionError:
        raise
    except KeyError as err:
        raise ConversionError(f"{source}: missing key {err.args[0]!r} (truncated or not a VAR checkpoint?).") from None
    except (ValueError, IndexError, ZeroDivisionError) as err:
        raise ConversionError(f"{source}: tensors do not describe a valid model: {err}") from None


def convert_vqvae(
    vae_sd: Dict[str, torch.Tensor], patch_nums: Sequence[int], path: str = "vae", quant_resi=0.5, using_znorm=False
):
    from var_hf import MultiScaleVQVAE

    if not _is_vqvae(vae_sd):
        hint = " It looks like a VAR transformer checkpoint: pass it as --var." if _is_var(vae_sd) else ""
        raise ConversionError(f"{path}: not a VQVAE checkpoint (no encoder.* / quantize.embedding.weight).{hint}")
    config = _infer(infer_vqvae_config, path, vae_sd, patch_nums, quant_resi=quant_resi, using_znorm=using_znorm)
    hf_sd = map_keys(vae_sd, VQVAE_KEY_MAP, path=path)
    hits = hf_sd.get("quantizer.ema_code_hits")
    if hits is None or hits.shape[0] != len(patch_nums):
        # The reference resets these statistics when the schedule length differs; so do we.
        hf_sd["quantizer.ema_code_hits"] = torch.zeros(len(patch_nums), config.vocab_size)
    hf_sd["quantizer.num_hit_updates"] = torch.zeros((), dtype=torch.long)
    model = MultiScaleVQVAE(config)
    _load_strict(model, hf_sd, path)
    return model.eval()


def convert_var(var_sd: Dict[str, torch.Tensor], path: str = "var", patch_nums=None, **overrides):
    from var_hf import VARTransformer

    if not _is_var(var_sd):
        hint = " It looks like a VQVAE checkpoint: pass it as --vae." if _is_vqvae(var_sd) else ""
        raise ConversionError(f"{path}: not a VAR transformer checkpoint (no class_emb.weight / pos_1LC).{hint}")
    patch_nums = list(patch_nums) if patch_nums else _infer(infer_patch_nums, path, var_sd, path=path)
    config = _infer(infer_var_config, path, var_sd, patch_nums, path=path, **overrides)
    check_dropped_var_buffers(var_sd, config, path)
    hf_sd = map_keys(var_sd, VAR_KEY_MAP, dropped=VAR_DROPPED_KEYS, path=path)
    model = VARTransformer(config)
    _load_strict(model, hf_sd, path)
    return model.eval()


def check_finite_weights(model, path: str):
    """Every floating-point weight and buffer must be finite: a NaN weight gives NaN images, never an error."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ConversionError(f"{path}: {len(bad)} tensors hold NaN or inf values (damaged checkpoint?): {bad[:6]}")


def numerical_check(vqvae, transformer=None, seed: int = 0, vae_path: str = "vae", var_path: str = "var"):
    """Check the two checkpoints belong together, then encode a random image, decode its tokens and teacher-force the
    transformer: the tokens must be valid codes and the image and the logits finite."""
    vq_cfg = vqvae.config
    check_finite_weights(vqvae, vae_path)
    if transformer is not None:
        check_finite_weights(transformer, var_path)
        tr_cfg = transformer.config
        if vq_cfg.vq_embed_dim != tr_cfg.vq_embed_dim or vq_cfg.vocab_size != tr_cfg.vocab_size:
            raise ConversionError(
                f"{vae_path} and {var_path} do not belong together: the tokenizer has {vq_cfg.vocab_size} codes of "
                f"{vq_cfg.vq_embed_dim} dims, the transformer expects {tr_cfg.vocab_size} codes of "
                f"{tr_cfg.vq_embed_dim}."
            )
    gen = torch.Generator().manual_seed(seed)
    size = vq_cfg.image_size
    with torch.no_grad():
        pixels = torch.rand(1, vq_cfg.in_channels, size, size, generator=gen) * 2 - 1
        tokens = vqvae.encode_tokens(pixels)
        if any(((t < 0) | (t >= vq_cfg.vocab_size)).any() for t in tokens):
            raise ConversionError(f"{vae_path}: the converted tokenizer produces codes outside its codebook.")
        if not torch.isfinite(vqvae.decode_tokens(tokens)).all():
            raise ConversionError(f"{vae_path}: the converted tokenizer decodes a random image to non-finite pixels.")
        if transformer is not None:
            logits = transformer(torch.tensor([0]), vqvae.teacher_forcing_input(tokens)).logits
            if not torch.isfinite(logits).all():
                raise ConversionError(f"{var_path}: the converted model produces non-finite logits.")


def _is_within(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


@functools.lru_cache(maxsize=None)
def files_a_conversion_writes() -> FrozenSet[str]:
    """The paths (relative, `/`-separated) that a conversion writes into its output folder, of either kind (the VQVAE
    alone, or a whole pipeline): only these may be replaced with `overwrite=True`. Read off a conversion of the
    smallest models through the same [`save_conversion`], so the rule follows whatever `save_pretrained` writes
    (weights, configs, the `pipeline.py` and `var_hf_auto.py` modules for diffusers' and transformers' loaders). Weight
    files are never sharded at VAR's sizes (transformers shards above 50 GB)."""
    from var_hf.modeling_var import VARTransformer
    from var_hf.modeling_vqvae import MultiScaleVQVAE

    patch_nums = (1, 2)
    vqvae = MultiScaleVQVAE(MultiScaleVQVAEConfig(base_channels=32, channel_multipliers=(1,), num_res_blocks=1,
                                                  vocab_size=2, vq_embed_dim=2, patch_nums=patch_nums))
    transformer = VARTransformer(VARTransformerConfig(vocab_size=2, vq_embed_dim=2, num_classes=1, depth=1,
                                                      embed_dim=8, num_heads=1, patch_nums=patch_nums))
    written = set()
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # this save is not the user's
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for kind, models in (("vqvae", (vqvae, None)), ("pipeline", (vqvae, transformer))):
                folder = os.path.join(tmp, kind)
                save_conversion(folder, *models)
                for root, _, names in os.walk(folder):
                    written.update(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
                                   for name in names)
    finally:
        if bars:
            logging.enable_progress_bar()
    return frozenset(written)


def _foreign_entries(output_dir: str) -> List[str]:
    """Entries of `output_dir` that a conversion does not write (relative paths)."""
    allowed = files_a_conversion_writes()
    allowed_folders = {path.split("/", 1)[0] for path in allowed if "/" in path}
    foreign = []
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if os.path.islink(path):
            foreign.append(name)
        elif os.path.isdir(path) and name in allowed_folders:
            for inner in sorted(os.listdir(path)):
                inner_path = os.path.join(path, inner)
                if not (f"{name}/{inner}" in allowed and os.path.isfile(inner_path) and not os.path.islink(inner_path)):
                    foreign.append(f"{name}/{inner}")
        elif not (os.path.isfile(path) and name in allowed):
            foreign.append(name)
    return foreign


def check_output_dir(output_dir: str, overwrite: bool = False, inputs: Sequence[Optional[str]] = ()):
    """Before any work: the output folder must not hold an input, must be creatable, and must be new or empty, or
    (with `overwrite`) hold nothing but a previous conversion's files."""
    output_dir = os.path.abspath(output_dir)
    for path in inputs:
        if path and _is_within(path, output_dir):
            raise ConversionError(
                f"the output folder {output_dir} holds the input {path}; writing there would replace it. Pass an "
                f"--output-dir outside the inputs' folder."
            )
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ConversionError(f"{output_dir} exists and is not a folder; pass a new or empty folder as --output-dir.")
    parent = os.path.dirname(output_dir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConversionError(f"cannot create {output_dir}: {parent} is a file, not a folder.")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if not overwrite:
            raise ConversionError(
                f"{output_dir} exists and is not empty; pass --overwrite to replace a previous conversion."
            )
        foreign = _foreign_entries(output_dir)
        if foreign:
            raise ConversionError(
                f"{output_dir} holds files a conversion does not write ({', '.join(foreign[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}); --overwrite only replaces a previous conversion. Move them "
                f"or pick another --output-dir."
            )


def _make_dir_like_open(path: str):
    """`tempfile.mkdtemp` creates 0700; give the folder the permissions `os.makedirs` would (0777 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o777 & ~mask)


def write_atomically(output_dir: str, save_fn, overwrite: bool = False, inputs: Sequence[Optional[str]] = ()):
    """Write into a temporary sibling directory, then rename it into place."""
    output_dir = os.path.abspath(output_dir)
    check_output_dir(output_dir, overwrite, inputs)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-convert-", dir=parent)
    try:
        _make_dir_like_open(tmp)
        save_fn(tmp)
        if os.path.exists(output_dir):
            check_output_dir(output_dir, overwrite, inputs)  # still only a previous conversion's files
            backup = tempfile.mkdtemp(prefix=".old-convert-", dir=parent)
            os.rename(output_dir, os.path.join(backup, "old"))
            os.rename(tmp, output_dir)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(tmp, output_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def check_overrides(patch_nums=None, quant_resi: float = 0.5, **overrides):
    """Values given for settings the checkpoint does not fix (flags): positive counts, a finite epsilon and ratio,
    an increasing schedule. Raises `ConversionError` naming the flag."""
    for name in ("depth", "num_heads", "num_classes"):
        value = overrides.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConversionError(f"{option_flag(name)} must be an integer >= 1, got {value!r}.")
    eps = overrides.get("norm_eps")
    if eps is not None and not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ConversionError(f"--norm-eps must be a finite number > 0, got {eps!r}.")
    if not (isinstance(quant_resi, (int, float)) and math.isfinite(quant_resi) and abs(quant_resi) <= 1):
        raise ConversionError(f"--quant-resi must be a number in [-1, 1] (the release uses 0.5), got {quant_resi!r}.")
    if patch_nums is not None:
        pns = list(patch_nums)
        if (len(pns) < 2 or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in pns)
                or any(b <= a for a, b in zip(pns, pns[1:]))):
            raise ConversionError(
                f"--patch-nums must be at least two increasing integers >= 1 (e.g. 1,2,3,4,5,6,8,10,13,16), got {pns}."
            )


def convert(vae_path: str, var_path: Optional[str], output_dir: str, patch_nums=None, overwrite=False,
            quant_resi: float = 0.5, using_znorm: bool = False, **overrides):
    """Convert a tokenizer checkpoint (and optionally a transformer one) and write them to `output_dir`.

    `quant_resi` and `using_znorm` describe the tokenizer but are not stored in its checkpoint; `overrides`
    (`depth`, `num_heads`, `shared_aln`, `attn_l2_norm`, `num_classes`, `norm_eps`; None means infer or default) go to
    the transformer config. `overwrite` replaces a previous conversion in `output_dir` (nothing else).

    Example (a tiny VQVAE written in the reference's layout and converted back):

    ```py
    >>> import os, tempfile, torch
    >>> from var_hf import MultiScaleVQVAE, MultiScaleVQVAEConfig
    >>> from var_hf.conversion.convert_var_to_hf import VQVAE_KEY_MAP, convert
    >>> vqvae = MultiScaleVQVAE(MultiScaleVQVAEConfig(base_channels=32, channel_multipliers=(1, 2), vocab_size=16,
    ...                                               vq_embed_dim=8, patch_nums=(1, 2, 4)))
    >>> reference = {"quantize.embedding.weight" if k == "quantizer.codebook.weight" else
    ...              "quantize.ema_vocab_hit_SV" if k == "quantizer.ema_code_hits" else
    ...              k.replace("quantizer.phi.", "quantize.quant_resi.qresi_ls."): v
    ...              for k, v in vqvae.state_dict().items() if k != "quantizer.num_hit_updates"}
    >>> folder = tempfile.mkdtemp()
    >>> torch.save(reference, os.path.join(folder, "vae.pth"))
    >>> converted, _ = convert(os.path.join(folder, "vae.pth"), None, os.path.join(folder, "out"), patch_nums=[1, 2, 4])
    >>> sorted(os.listdir(os.path.join(folder, "out")))
    ['vqvae']

    ```
    """
    check_overrides(patch_nums=patch_nums, quant_resi=quant_resi, **overrides)
    check_output_dir(output_dir, overwrite, inputs=(vae_path, var_path))
    var_sd = load_reference_checkpoint(var_path, role="var") if var_path else None
    vae_sd = load_reference_checkpoint(vae_path, role="vae")
    transformer = None
    if var_sd is not None:
        transformer = convert_var(var_sd, path=var_path, patch_nums=patch_nums, **overrides)
        patch_nums = transformer.config.patch_nums
    vqvae = convert_vqvae(
        vae_sd, patch_nums or PATCH_NUMS_256, path=vae_path, quant_resi=quant_resi, using_znorm=using_znorm
    )
    numerical_check(vqvae, transformer, vae_path=vae_path, var_path=var_path)

    write_atomically(output_dir, lambda folder: save_conversion(folder, vqvae, transformer), overwrite=overwrite,
                     inputs=(vae_path, var_path))
    return vqvae, transformer


def save_conversion(folder: str, vqvae, transformer=None):
    """Write a conversion into `folder`: `vqvae/` alone, or the whole pipeline when there is a transformer."""
    if transformer is None:
        vqvae.save_pretrained(os.path.join(folder, "vqvae"))
    else:
        build_pipeline(vqvae, transformer).save_pretrained(folder)


def build_pipeline(vqvae, transformer):
    from var_hf.pipelines import VARPipeline
    from var_hf.scheduling_var import VARScaleScheduler

    scheduler = VARScaleScheduler(patch_nums=list(transformer.config.patch_nums))
    return VARPipeline(vqvae=vqvae, transformer=transformer, scheduler=scheduler)


__all__ = [
    "ConversionError",
    "VAR_DROPPED_KEYS",
    "VAR_KEY_MAP",
    "VQVAE_KEY_MAP",
    "build_pipeline",
    "check_output_dir",
    "check_overrides",
    "convert",
    "convert_var",
    "convert_vqvae",
    "files_a_conversion_writes",
    "load_reference_checkpoint",
    "numerical_check",
    "save_conversion",
]


if __name__ == "__main__":  # `python conversion/convert_var_to_hf.py ...`: the same command as var-hf-convert
    from var_hf.commands.convert import main

    sys.exit(main())
