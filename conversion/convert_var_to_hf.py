"""Convert the official VAR checkpoints (github FoundationVision/VAR) to var_hf.

    python conversion/convert_var_to_hf.py --vae vae_ch160v4096z32.pth --var var_d16.pth --output-dir ./var-d16

writes a folder that `VARPipeline.from_pretrained` loads (`model_index.json`, `vqvae/`, `transformer/`,
`scheduler/`); the subfolders also load on their own with `from_pretrained`. Depth, width, heads, shared AdaLN,
attention type and the 256/512 patch schedule are read off the tensors; flags override them. The tokenizer's
`--quant-resi` and `--using-znorm` are not stored in checkpoints and default to the released tokenizer's values.

Checkpoints are read with `torch.load(weights_only=True)` only, every reference key is mapped by the explicit table
below (or dropped with a check of its value), the models load with `strict=True`, and the folder is written to a
temporary directory first and renamed into place, so a failed run leaves nothing behind.
"""

import argparse
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from transformers.utils import logging

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


class ConversionError(Exception):
    """A problem with the user's input, reported as one line."""


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def _first_sentence(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(err).__name__


def load_reference_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """Read a reference `.pth` safely (`weights_only=True`) and return its flat state dict."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is several paragraphs; keep the one naming the offending global.
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if "global" in line.lower()), lines[0] if lines else "")
        raise ConversionError(
            f"{path}: refused to unpickle it: it holds objects other than tensors (a pickle that could run code). "
            f"Only plain state dicts are accepted ({detail})."
        ) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise ConversionError(
            f"{path}: not a readable torch checkpoint (truncated or corrupt download?): {_first_sentence(err)}"
        ) from None
    # Some training checkpoints wrap the weights; the released ones are plain state dicts.
    if isinstance(obj, dict) and "trainer" in obj and isinstance(obj["trainer"], dict):
        obj = obj["trainer"].get("var_wo_ddp", obj)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}.")
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


def numerical_check(vqvae, transformer, seed: int = 0, vae_path: str = "vae", var_path: str = "var"):
    """Check the two checkpoints belong together, then encode a random image, teacher-force the transformer and check
    the logits are finite."""
    vq_cfg, tr_cfg = vqvae.config, transformer.config
    if vq_cfg.vq_embed_dim != tr_cfg.vq_embed_dim or vq_cfg.vocab_size != tr_cfg.vocab_size:
        raise ConversionError(
            f"{vae_path} and {var_path} do not belong together: the tokenizer has {vq_cfg.vocab_size} codes of "
            f"{vq_cfg.vq_embed_dim} dims, the transformer expects {tr_cfg.vocab_size} codes of {tr_cfg.vq_embed_dim}."
        )
    gen = torch.Generator().manual_seed(seed)
    size = vq_cfg.image_size
    with torch.no_grad():
        pixels = torch.rand(1, vq_cfg.in_channels, size, size, generator=gen) * 2 - 1
        tokens = vqvae.encode_tokens(pixels)
        logits = transformer(torch.tensor([0]), vqvae.teacher_forcing_input(tokens)).logits
    if not torch.isfinite(logits).all():
        raise ConversionError(f"{var_path}: the converted model produces non-finite logits.")


def check_output_dir(output_dir: str, overwrite: bool = False):
    """Refuse a non-empty output folder without `overwrite`, and a path that is a file, before any work is done."""
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ConversionError(f"{output_dir} exists and is not a folder.")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise ConversionError(f"{output_dir} exists and is not empty; pass --overwrite to replace it.")


def write_atomically(output_dir: str, save_fn, overwrite: bool = False):
    """Write into a temporary sibling directory, then rename it into place."""
    output_dir = os.path.abspath(output_dir)
    check_output_dir(output_dir, overwrite)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-convert-", dir=parent)
    try:
        save_fn(tmp)
        if os.path.exists(output_dir):
            backup = tempfile.mkdtemp(prefix=".old-convert-", dir=parent)
            os.rename(output_dir, os.path.join(backup, "old"))
            os.rename(tmp, output_dir)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(tmp, output_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def convert(vae_path: str, var_path: Optional[str], output_dir: str, patch_nums=None, overwrite=False,
            quant_resi: float = 0.5, using_znorm: bool = False, **overrides):
    """Convert a tokenizer checkpoint (and optionally a transformer one) and write them to `output_dir`.

    `quant_resi` and `using_znorm` describe the tokenizer but are not stored in its checkpoint; `overrides`
    (`depth`, `num_heads`, `shared_aln`, `attn_l2_norm`, `num_classes`, `norm_eps`; None means infer or default) go to
    the transformer config.
    """
    check_output_dir(output_dir, overwrite)
    var_sd = load_reference_checkpoint(var_path) if var_path else None
    vae_sd = load_reference_checkpoint(vae_path)
    transformer = None
    if var_sd is not None:
        transformer = convert_var(var_sd, path=var_path, patch_nums=patch_nums, **overrides)
        patch_nums = transformer.config.patch_nums
    vqvae = convert_vqvae(
        vae_sd, patch_nums or PATCH_NUMS_256, path=vae_path, quant_resi=quant_resi, using_znorm=using_znorm
    )
    if transformer is not None:
        numerical_check(vqvae, transformer, vae_path=vae_path, var_path=var_path)

    def save(folder):
        if transformer is None:
            vqvae.save_pretrained(os.path.join(folder, "vqvae"))
            return
        pipeline = _build_pipeline(vqvae, transformer)
        if pipeline is None:
            vqvae.save_pretrained(os.path.join(folder, "vqvae"))
            transformer.save_pretrained(os.path.join(folder, "transformer"))
        else:
            pipeline.save_pretrained(folder)

    write_atomically(output_dir, save, overwrite=overwrite)
    return vqvae, transformer


def _build_pipeline(vqvae, transformer):
    try:
        from var_hf.pipelines import VARPipeline, VARScaleScheduler
    except ImportError:
        return None
    scheduler = VARScaleScheduler(patch_nums=list(transformer.config.patch_nums))
    return VARPipeline(vqvae=vqvae, transformer=transformer, scheduler=scheduler)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--vae", required=True, help="official tokenizer checkpoint, e.g. vae_ch160v4096z32.pth")
    parser.add_argument(
        "--var", help="official transformer checkpoint, e.g. var_d16.pth (omit to convert the VQVAE alone)"
    )
    parser.add_argument(
        "--output-dir", required=True, help="folder to write (model_index.json, vqvae/, transformer/, scheduler/)"
    )
    parser.add_argument("--patch-nums", help="override the inferred schedule, e.g. 1,2,3,4,5,6,8,10,13,16 or 256 / 512")
    parser.add_argument("--depth", type=int, help="override the inferred depth")
    parser.add_argument("--num-heads", type=int, help="override the inferred number of heads")
    parser.add_argument("--shared-aln", type=_bool, default=None, help="override shared AdaLN (true/false)")
    parser.add_argument("--attn-l2-norm", type=_bool, default=None,
                        help="override L2-normalised attention (true/false)")
    parser.add_argument("--num-classes", type=int, help="override the number of classes")
    parser.add_argument("--norm-eps", type=float, default=None,
                        help="LayerNorm epsilon of the transformer (not stored in checkpoints; default 1e-6, the "
                             "release and the reference's default)")
    parser.add_argument("--quant-resi", type=float, default=0.5, help="phi mixing ratio (not stored in checkpoints)")
    parser.add_argument("--using-znorm", action="store_true",
                        help="the tokenizer picks codes by cosine similarity (not stored in checkpoints; the released "
                             "tokenizer uses L2, the default)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser.parse_args(argv)


def _parse_patch_nums(text: Optional[str]):
    if not text:
        return None
    if text in ("256", "512"):
        return list(PATCH_NUMS_256 if text == "256" else PATCH_NUMS_512)
    try:
        return [int(x) for x in text.replace("_", ",").split(",") if x]
    except ValueError:
        raise ConversionError(f"--patch-nums must be comma-separated integers or 256/512, got {text!r}.") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        convert(
            args.vae, args.var, args.output_dir, patch_nums=_parse_patch_nums(args.patch_nums),
            overwrite=args.overwrite, quant_resi=args.quant_resi, using_znorm=args.using_znorm, depth=args.depth,
            num_heads=args.num_heads, shared_aln=args.shared_aln, attn_l2_norm=args.attn_l2_norm,
            num_classes=args.num_classes, norm_eps=args.norm_eps,
        )
    except (ConversionError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # e.g. the output folder cannot be written
        print(f"error: {err.filename or args.output_dir}: {err.strerror or err}", file=sys.stderr)
        return 1
    print(f"wrote {os.path.abspath(args.output_dir)}")
    return 0


__all__ = ["convert", "convert_var", "convert_vqvae", "load_reference_checkpoint", "VQVAE_KEY_MAP", "VAR_KEY_MAP",
           "VAR_DROPPED_KEYS", "ConversionError", "main"]


if __name__ == "__main__":
    sys.exit(main())
