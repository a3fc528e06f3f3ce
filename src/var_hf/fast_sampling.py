"""The experimental fast sampling path of [`VARPipeline`] (`fast_path=True`): static per-scale transformer steps
replayed as CUDA graphs and a sort-free top-k/top-p (in the scheduler); plus the opt-in channels-last decoding with
cuDNN autotuning. Batching by memory lives in `var_hf.sampling_batching`.

Why it stays exact: VAR's shapes are static per scale (scale k always has pn_k^2 tokens attending to the same cache
prefix), so each scale's transformer step can be captured once as a CUDA graph on buffers that never move. A replay
launches the very kernels eager PyTorch launched at capture, so in a given dtype the logits are bit-identical to the
eager ones; the time saved is the launch overhead of the hundreds of small kernels per scale, which dominates at
small batch. Numerics change only where the user changes the dtype (load the pipeline with
`dtype=torch.bfloat16`).

The path is opt-in on every device: the default is the plain loop. On CUDA `fast_path=True` captures and replays
graphs; elsewhere (and in the CPU tests) it runs the same static steps eagerly, on the same buffers, without graphs.
`tests/test_cuda_graphs.py` (run by `benchmarks/gpu_session.sh`) compares it bit for bit with the plain loop on a GPU.
"""

import contextlib
from typing import Dict, List, Optional, Tuple

import torch
from diffusers.utils import logging

from .modeling_var import SamplingConstants, VARTransformer

logger = logging.get_logger(__name__)


def autocast_state(device: torch.device) -> Tuple[bool, Optional[torch.dtype]]:
    """(enabled, dtype) of autocast for the device's type, as the current code would run under it."""
    device_type = torch.device(device).type
    if not torch.is_autocast_enabled(device_type):
        return (False, None)
    return (True, torch.get_autocast_dtype(device_type))


def resolve_fast_path(fast_path: Optional[bool]) -> bool:
    """The fast path is opt-in on every device: `True` turns it on; `False` and `None` (the default) leave it off."""
    if fast_path is None:
        return False
    if not isinstance(fast_path, bool):
        raise ValueError(f"fast_path must be True or False (None: the default, off), got {fast_path!r}.")
    return fast_path


# PyTorch's CUDA sort of a row longer than this is a radix sort, which is stable; shorter rows go to a warp merge sort
# or (up to 32, unless stable=True is asked) a bitonic sort, which is not (`sortKeyValueInplace` in ATen's Sort.cu).
CUDA_STABLE_SORT_MIN_LENGTH = 129


def sort_free_filter_matches_reference(device: torch.device, vocab_size: int) -> bool:
    """Whether the sort-free top-k/top-p gives the reference's tokens here, ties included. It removes tied tokens in
    vocabulary order, the order of a stable sort: PyTorch's CUDA sort of more than 128 entries is a stable radix sort
    (VAR's vocabulary is 4096), its CPU sort and its CUDA sort of short rows are not. So the fast path filters
    sort-free on CUDA for vocabularies of more than 128 codes only."""
    return torch.device(device).type == "cuda" and vocab_size >= CUDA_STABLE_SORT_MIN_LENGTH


class StaticScaleRunner:
    """Runs [`VARTransformer.forward_scale`] for one batch size on buffers allocated once: per-scale inputs, the class
    condition's per-run constants, a pre-allocated [`VARKVCache`] (without the last scale) and one float32
    logits buffer.

    With `use_cuda_graphs` each scale is captured the first time it runs (warm-up on a side stream, capture, then
    replay) and replayed afterwards; all scales share one memory pool and always replay in capture order. Without, the
    same steps run eagerly. The logits returned by [`run`] are a view of one buffer that the next call (of any
    scale) overwrites; consume them first. The cache and the graphs stay allocated while the runner lives (at
    d16 and 2 x 256 rows in bf16, about 14 GB of cache): `VARPipeline.release_fast_path()` drops them.

    Args:
        transformer ([`VARTransformer`]): in eval mode; its weights must not be replaced while the runner is used
            (graphs hold pointers to them).
        batch_size (`int`): rows of every call, conditional and unconditional halves together.
        use_cuda_graphs (`bool`): capture and replay (needs a CUDA transformer).

    Example (the pipeline does this with `fast_path=True`):

    ```python
    >>> import torch
    >>> from var_hf import VARTransformer, VARTransformerConfig
    >>> from var_hf.fast_sampling import StaticScaleRunner
    >>> model = VARTransformer(VARTransformerConfig(vocab_size=16, vq_embed_dim=8, num_classes=4, depth=2,
    ...                                             embed_dim=32, num_heads=2, patch_nums=(1, 2, 3))).eval()
    >>> runner = StaticScaleRunner(model, batch_size=2, use_cuda_graphs=False)
    >>> cond = model.embed_class(torch.tensor([1, 4]))  # a class and the null class
    >>> runner.set_condition(cond)
    >>> with torch.no_grad():
    ...     logits = runner.run(0, model.embed_first_scale(cond))
    >>> logits.shape
    torch.Size([2, 1, 16])

    ```
    """

    def __init__(self, transformer: VARTransformer, batch_size: int, use_cuda_graphs: bool):
        config = transformer.config
        param = next(transformer.parameters())
        self.device, self.dtype = param.device, param.dtype
        if use_cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the transformer on a CUDA device, it is on {self.device}.")
        self.transformer, self.batch_size, self.use_cuda_graphs = transformer, batch_size, use_cuda_graphs
        # A graph replays the casts it captured, so a runner belongs to the autocast state it was made under.
        self.autocast = autocast_state(self.device)
        self.scale_begins = [begin for begin, _ in config.scale_boundaries]
        head_dim = config.embed_dim // config.num_heads
        self.kv_cache = transformer.new_kv_cache().allocate(batch_size, config.num_heads, head_dim, self.dtype, self.device)
        self.inputs_BlC = [
            torch.zeros(batch_size, pn * pn, config.embed_dim, dtype=self.dtype, device=self.device)
            for pn in config.patch_nums
        ]
        self.constants: Optional[SamplingConstants] = None  # allocated by the first `set_condition`
        # One float32 logits buffer sized for the largest scale, which every scale's step writes into (its copy is
        # the upcast): a graph's output must stay put until it is read, and per-scale outputs would keep every
        # scale's logits in the graph pool at once, 2.7 times the last scale's (5.7 GB at d30 and B=256).
        self.logits_buffer = torch.empty(batch_size, max(config.patch_nums) ** 2, config.vocab_size,
                                         dtype=torch.float32, device=self.device)
        self.scale_lengths = [pn * pn for pn in config.patch_nums]
        self.graphs: List[Optional["torch.cuda.CUDAGraph"]] = [None] * len(config.patch_nums)
        self.pool = None

    def set_condition(self, cond_BD: torch.Tensor):
        """The class condition of the whole sampling run, and what every scale would recompute from it and the
        weights alone ([`VARTransformer.sampling_constants`]: AdaLN vectors, qkv biases, query scales), computed
        here once, outside the graphs (the AdaLN projection's weights are a third of the model, and at small batch
        reading weights is most of a scale's time). Call it again after changing the weights in place."""
        with torch.no_grad():
            constants = self.transformer.sampling_constants(cond_BD)
            if self.constants is None:  # first call: keep these tensors; the graphs will point at them
                self.constants = constants
            else:  # later calls refill them in place
                for buffer, value in zip(self.constants.tensors(), constants.tensors()):
                    buffer.copy_(value)

    def _step(self, scale_index: int) -> torch.Tensor:
        self.kv_cache.seek(self.scale_begins[scale_index])
        logits_BlV = self.transformer.forward_scale(  # in the head's dtype: the copy below is the float32 upcast
            self.inputs_BlC[scale_index], None, self.kv_cache, constants=self.constants, upcast=False
        )
        out_BlV = self.logits_buffer[:, : self.scale_lengths[scale_index]]
        out_BlV.copy_(logits_BlV)
        return out_BlV

    def _capture(self, scale_index: int):
        with torch.cuda.device(self.device):  # capture records on the current device; the model may be on another
            self._capture_on_current_device(scale_index)

    def _no_autocast_cache(self):
        # Under the caller's autocast, casts of the weights are cached and freed when the outermost autocast exits; a
        # graph that read such a cached copy would replay on freed memory. Without the cache the casts are recorded
        # in the graph itself (same values: the cache only avoids repeating them).
        enabled, dtype = self.autocast
        if not enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype, cache_enabled=False)

    def _capture_on_current_device(self, scale_index: int):
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), self._no_autocast_cache():
            self._step(scale_index)  # warm-up outside capture: lazy cuBLAS/cuDNN set-up must not be recorded
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), self._no_autocast_cache():
            self._step(scale_index)
        self.pool = graph.pool() if self.pool is None else self.pool
        self.graphs[scale_index] = graph

    def run(self, scale_index: int, hidden_states_BlC: torch.Tensor) -> torch.Tensor:
        """Logits (batch_size, pn*pn, V), float32, of scale `scale_index`; scales must come in order 0, 1, ..."""
        self.inputs_BlC[scale_index].copy_(hidden_states_BlC)
        if not self.use_cuda_graphs:
            return self._step(scale_index)
        if self.graphs[scale_index] is None:
            try:
                self._capture(scale_index)
            except torch.OutOfMemoryError:
                raise  # not a capture problem: the pipeline retries with a smaller batch
            except RuntimeError as err:
                # Same numbers either way; a capture failure (an unsupported kernel, a driver limit) only costs speed,
                # so it is reported and this runner continues without graphs rather than failing the call.
                logger.warning(f"CUDA graph capture of scale {scale_index} failed ({err}); continuing without graphs.")
                self.use_cuda_graphs, self.graphs = False, [None] * len(self.graphs)
                return self._step(scale_index)
        self.graphs[scale_index].replay()
        return self.logits_buffer[:, : self.scale_lengths[scale_index]]


class StaticScaleRunners:
    """The runners of one pipeline, by batch size; at most `max_runners` are kept (a chunked batch needs two: full
    chunks and the remainder). Dropping a runner frees its cache and graphs."""

    def __init__(self, max_runners: int = 2):
        self.max_runners = max_runners
        self.runners: Dict[Tuple, StaticScaleRunner] = {}

    def get(self, transformer: VARTransformer, batch_size: int, use_cuda_graphs: bool) -> StaticScaleRunner:
        param = next(transformer.parameters())
        # The weights' address is part of the key: graphs hold pointers, so a moved or reloaded model needs new ones.
        # So is the caller's autocast state: a replay repeats the casts of its capture.
        key = (id(transformer), batch_size, param.dtype, param.device, param.data_ptr(), use_cuda_graphs,
               autocast_state(param.device))
        runner = self.runners.pop(key, None)
        if runner is None:
            while len(self.runners) >= self.max_runners:
                self.runners.pop(next(iter(self.runners)))
            runner = StaticScaleRunner(transformer, batch_size, use_cuda_graphs)
        self.runners[key] = runner  # most recently used last
        return runner

    def holds(self, batch_size: int) -> bool:
        """Whether a runner for `batch_size` rows is kept (its memory is already allocated)."""
        return any(runner.batch_size == batch_size for runner in self.runners.values())

    def clear(self):
        self.runners.clear()


def is_channels_last(vqvae) -> bool:
    """Whether the user put the VQVAE's weights in channels-last layout (`vqvae.to(memory_format=torch.channels_last)`,
    the diffusers idiom): the pipeline then decodes channels-last. Not the default, because other convolution
    algorithms round differently from the reference's."""
    return vqvae.post_quant_conv.weight.is_contiguous(memory_format=torch.channels_last) and not (
        vqvae.post_quant_conv.weight.is_contiguous()
    )


@contextlib.contextmanager
def fast_decoding(device: torch.device):
    """cuDNN autotuning for the decoder's convolutions (restored on exit); used with channels-last weights."""
    if torch.device(device).type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


__all__ = [
    "CUDA_STABLE_SORT_MIN_LENGTH",
    "autocast_state",
    "StaticScaleRunner",
    "StaticScaleRunners",
    "fast_decoding",
    "is_channels_last",
    "resolve_fast_path",
    "sort_free_filter_matches_reference",
]
