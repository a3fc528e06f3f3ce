"""Policies around [`VARPipeline`]'s scale loop: batching by memory, the out-of-memory retry, rewinding generators,
and the sorting re-draw of the fast path. The loop itself stays in the pipeline; these decide how often it runs and
on which rows.

- Batching by memory: on CUDA a call samples at most as many images at once as the free memory should hold
  ([`max_batch_for_memory`], an estimate); a batch that still runs out of memory is retried at half the size from
  rewound generators, so the result is exactly what that batch size gives from the start. With one generator for
  the whole call the draws depend on the batching (as in the reference, one multinomial per scale over the batch);
  with one generator per image they do not.
- A call whose outputs alone cannot fit the host's (or the GPU's) memory is refused before any work
  ([`check_call_fits_memory`]), on every device.
- The fast path's sort-free filter reports when degenerate logits tie beyond its short list; that batch is then
  drawn again with sorting from rewound generators ([`draw_batch`]).
"""

import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Union

import torch
from diffusers.utils import logging

logger = logging.get_logger(__name__)

GeneratorArg = Optional[Union[torch.Generator, Sequence[torch.Generator]]]

# The pipeline decodes at most this many images at a time, so the decoder's memory does not grow with the batch.
DECODE_BATCH_SIZE = 16


@dataclass
class BatchSample:
    """What one pass of the scale loop returns for a batch of rows.

    Args:
        f_hat (`torch.Tensor`): the final latents, (B, vq_embed_dim, pn, pn).
        token_maps (`List[torch.LongTensor]`): coarse to fine, each (B, pn_k * pn_k).
        filter_exact (`bool`): False when the sort-free filter could not rebuild the reference's filtered logits.
    """

    f_hat: torch.Tensor
    token_maps: List[torch.LongTensor]
    filter_exact: bool = True


# ---------------------------------------------------------------------------------------------------- generators


def generators_drawn_from(generator: GeneratorArg, device) -> List[torch.Generator]:
    """The generators a sampling call draws from: the given ones, or the device's default generator for None."""
    if generator is None:
        device = torch.device(device)
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            return [torch.cuda.default_generators[index]]
        return [torch.default_generator]
    return list(generator) if isinstance(generator, (list, tuple)) else [generator]


class GeneratorRewind:
    """A rewind point: remembers the states of the generators a call draws from; calling it restores them."""

    def __init__(self, generator: GeneratorArg, device):
        self.generators = generators_drawn_from(generator, device)
        self.states = [g.get_state() for g in self.generators]

    def __call__(self):
        for g, state in zip(self.generators, self.states):
            g.set_state(state)


# ---------------------------------------------------------------------------------------------------- batching


def draw_batch(sample_batch: Callable[..., BatchSample], rows: slice, generator: GeneratorArg, device,
               sort_free: bool) -> BatchSample:
    """`sample_batch(rows, generator, sort_free=sort_free)`; if the sort-free filter was not exact (more logits tied
    with the k-th largest than its short list holds), the batch is drawn again with sorting from the same states."""
    rewind = GeneratorRewind(generator, device) if sort_free else None
    sample = sample_batch(rows, generator, sort_free=sort_free)
    if sort_free and not sample.filter_exact:
        logger.info("Logits tied beyond the sort-free filter's reach; re-sampling the chunk with sorting.")
        rewind()
        sample = sample_batch(rows, generator, sort_free=False)
    return sample


def sample_in_batches(
    sample_batch: Callable[..., BatchSample],
    batch_size: int,
    max_rows: int,
    generator: GeneratorArg,
    device,
    sort_free: bool = False,
    retry_out_of_memory: bool = False,
    on_out_of_memory: Optional[Callable[[], None]] = None,
) -> BatchSample:
    """Run `sample_batch(rows, generator, sort_free=...)` over `batch_size` images, `max_rows` at a time, and join
    the results. With `retry_out_of_memory`, a `torch.OutOfMemoryError` calls `on_out_of_memory` (free caches),
    rewinds the generators and starts again with half as many rows (down to 1)."""
    rewind = GeneratorRewind(generator, device)
    while True:
        try:
            batches = [slice(start, min(start + max_rows, batch_size)) for start in range(0, batch_size, max_rows)]
            if len(batches) > 1:
                logger.info(
                    f"Sampling {batch_size} images in {len(batches)} batches of at most {max_rows} (to fit memory). "
                    f"With one generator the draws depend on the batching; pass one generator per image for "
                    f"batch-independent results."
                )
            samples = []
            for rows in batches:
                rows_generator = generator[rows] if isinstance(generator, (list, tuple)) else generator
                samples.append(draw_batch(sample_batch, rows, rows_generator, device, sort_free))
            break
        except torch.OutOfMemoryError:
            if not retry_out_of_memory or max_rows == 1:
                raise
            if on_out_of_memory is not None:
                on_out_of_memory()
            rewind()
            logger.warning(f"Out of memory with {max_rows} images per batch; retrying with {max_rows // 2}.")
            max_rows //= 2
    if len(samples) == 1:
        return samples[0]
    return BatchSample(
        f_hat=torch.cat([s.f_hat for s in samples]),
        token_maps=[torch.cat(maps) for maps in zip(*(s.token_maps for s in samples))],
    )


# ---------------------------------------------------------------------------------------------------- memory


def sampling_bytes_per_image(transformer, vqvae_config=None) -> int:
    """Estimated peak memory of sampling one image with CFG: its share of the KV cache (which stays allocated) plus
    the transient tensors of the last, largest scale (one layer's concatenated keys/values, the MLP hidden, the
    head's logits and the fast path's float32 logits buffer, the sampler's copies). Decoding runs afterwards,
    `pipe.decode_batch_size` images at a time, and is not counted."""
    config = transformer.config
    item = next(transformer.parameters()).element_size()
    rows, C, V = 2, config.embed_dim, config.vocab_size
    last = config.patch_nums[-1] ** 2
    cache = rows * config.depth * 2 * (config.seq_len - last) * C * item
    last_scale = rows * (2 * config.seq_len * C + 2 * last * round(C * config.mlp_ratio)) * item
    # The runner's float32 logits buffer, the head's output in the model's dtype, the sampler's float32 copies.
    sampling = rows * last * V * 4 + rows * last * V * item + 5 * last * V * 4
    return int(1.05 * (cache + last_scale + sampling))


def output_bytes_per_image(image_size: int, vq_embed_dim: int, patch_nums: Sequence[int]) -> int:
    """Memory one image's outputs hold until the call returns: f_hat, the token maps, the float32 image and one
    post-processed copy (numpy or PIL)."""
    f_hat = vq_embed_dim * patch_nums[-1] ** 2 * 4
    tokens = sum(pn * pn for pn in patch_nums) * 8
    image = 3 * image_size * image_size * 4
    return f_hat + tokens + 2 * image


def available_host_bytes() -> Optional[int]:
    """Memory the host can still give: Linux's `MemAvailable` (free memory plus reclaimable caches), else the free
    physical pages; None where neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_call_fits_memory(batch_size: int, rows_at_once: Optional[int], transformer, vqvae_config, device):
    """Refuse, before any work, a call that cannot fit: its outputs for every image (all held until it returns)
    plus one batch's sampling. On CPU `rows_at_once=None` means the whole batch at once. Raises `ValueError`
    naming `num_images_per_label`."""
    outputs = batch_size * output_bytes_per_image(vqvae_config.image_size, vqvae_config.vq_embed_dim,
                                                  vqvae_config.patch_nums)
    rows = batch_size if rows_at_once is None else min(rows_at_once, batch_size)
    needed = outputs + rows * sampling_bytes_per_image(transformer)
    available = available_host_bytes()
    if torch.device(device).type == "cuda":
        # On CUDA batching keeps the sampling within the GPU's memory; the outputs end up on the host.
        needed = outputs
    if available is not None and needed > available:
        raise ValueError(
            f"num_images_per_label x len(class_labels) = {batch_size} images need about {needed / 2**30:.1f} GiB, "
            f"more than the {available / 2**30:.1f} GiB of memory available; ask for fewer images per call (or pass "
            f"max_batch_size to sample fewer at once)."
        )


def rows_at_once(batch_size: int, max_batch_size: Optional[int], transformer, vqvae_config, device,
                 runners=None, fast: bool = False) -> int:
    """How many images one pass of the scale loop samples: `max_batch_size` if given; on CUDA as many as the free
    memory should hold (the fast path's kept runners are dropped first, unless one already holds this batch);
    elsewhere the whole batch."""
    if max_batch_size is not None:
        return min(max_batch_size, batch_size)
    if torch.device(device).type != "cuda":
        return batch_size
    if fast and runners is not None and runners.holds(2 * batch_size):
        return batch_size  # this batch ran in one pass before, and its cache is still allocated
    if runners is not None:
        runners.clear()  # kept caches would otherwise count against this batch
    torch.cuda.empty_cache()
    fits = max_batch_for_memory(transformer, vqvae_config, device)
    return min(batch_size, fits) if fits is not None else batch_size


def max_batch_for_memory(transformer, vqvae_config, device) -> Optional[int]:
    """Largest batch that the free CUDA memory should hold (None = no limit known, e.g. on CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free_bytes, _ = torch.cuda.mem_get_info(device)
    return max(1, int(0.95 * free_bytes) // sampling_bytes_per_image(transformer, vqvae_config))


__all__ = [
    "DECODE_BATCH_SIZE",
    "BatchSample",
    "GeneratorRewind",
    "available_host_bytes",
    "check_call_fits_memory",
    "draw_batch",
    "generators_drawn_from",
    "max_batch_for_memory",
    "output_bytes_per_image",
    "rows_at_once",
    "sample_in_batches",
    "sampling_bytes_per_image",
]
