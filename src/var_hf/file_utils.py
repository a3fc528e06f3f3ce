"""Writing files so that nothing is ever half-written, and small environment facts shared by every entry point.

Every file var_hf writes goes through `atomic_write`: the bytes land in a temporary file beside the target, which is
then renamed over it (`os.replace` is atomic on POSIX and Windows), so a killed process leaves either the old file or
the new one. New files get the usual permissions (0666 less the umask), as `open()` would give them.
"""

import contextlib
import io
import json
import os
import platform
import tempfile
from typing import Any, Dict, Iterator, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", encoding: Optional[str] = None) -> Iterator[io.IOBase]:
    """Open a temporary file beside `path` for writing; on success it replaces `path`, on error it is removed.

    Example:

    ```py
    >>> import os, tempfile
    >>> from var_hf.file_utils import atomic_write
    >>> path = os.path.join(tempfile.mkdtemp(), "hello.txt")
    >>> with atomic_write(path, "w") as f:
    ...     _ = f.write("hi")
    >>> open(path).read()
    'hi'

    ```
    """
    if "w" not in mode:
        raise ValueError(f"atomic_write opens files for writing ('w' or 'wb'), got mode {mode!r}.")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file open()'s permissions
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomically(path: PathLike, text: str):
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json_atomically(path: PathLike, obj: Any, indent: int = 2, default=None):
    """JSON with sorted keys and a trailing newline; refuses NaN/inf (`allow_nan=False`), which JSON cannot hold."""
    text = json.dumps(obj, indent=indent, sort_keys=True, allow_nan=False, default=default) + "\n"
    write_text_atomically(path, text)


def save_npz_atomically(path: PathLike, **arrays):
    import numpy as np

    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def save_image_atomically(image, path: PathLike, **save_kwargs):
    """Save a PIL image (format from `save_kwargs["format"]`, else PNG) without ever leaving half a file."""
    fmt = save_kwargs.pop("format", "PNG")
    with atomic_write(path, "wb") as f:
        image.save(f, format=fmt, **save_kwargs)


def file_digest(path: PathLike, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in 1 MiB blocks (`hashlib.file_digest` needs Python 3.11)."""
    import hashlib

    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions(extra: Sequence[str] = ()) -> Dict[str, str]:
    """Versions of var_hf, Python and the libraries whose numerics a result depends on (for run and metric records)."""
    import importlib

    from . import __version__

    versions = {"var_hf": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "diffusers", "accelerate", "datasets", "numpy", *extra):
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            continue
    return versions


def default_device(device: Optional[str] = None) -> str:
    """`device` if given, else "cuda" when a CUDA device is present, else "cpu"."""
    if device is not None:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_computes_natively(precision: str) -> bool:
    """Whether this CPU computes `precision` ("bf16"/"bfloat16" or "fp16"/"float16") in hardware, as oneDNN and
    PyTorch report: bf16 with AVX512-BF16 or AMX, fp16 with AMX-FP16. Elsewhere (AVX2) those matmuls and convolutions
    are emulated, many times slower than float32 (benchmarks/cpu_autocast.py)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    if precision in ("bf16", "bfloat16"):
        mkldnn_check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        if mkldnn_check is not None:
            return bool(mkldnn_check())
        return any(bool(getattr(cpu, name, lambda: False)()) for name in ("_is_avx512_bf16_supported",
                                                                          "_is_amx_tile_supported"))
    if precision in ("fp16", "float16"):
        return bool(getattr(cpu, "_is_amx_fp16_supported", lambda: False)())
    raise ValueError(f"precision must be bf16, bfloat16, fp16 or float16, got {precision!r}")


def cpu_emulates(device, precision: str) -> bool:
    """Whether running in `precision` on `device` means emulation: `device` is the CPU and `precision` is a
    reduced one ("bf16"/"bfloat16"/"fp16"/"float16") that `cpu_computes_natively` says it has no hardware for.
    False for float32 ("no", "float32") and for every other device."""
    import torch

    if torch.device(device).type != "cpu" or precision not in ("bf16", "bfloat16", "fp16", "float16"):
        return False
    return not cpu_computes_natively(precision)


__all__ = [
    "atomic_write",
    "cpu_emulates",
    "cpu_computes_natively",
    "default_device",
    "file_digest",
    "library_versions",
    "save_image_atomically",
    "save_npz_atomically",
    "write_json_atomically",
    "write_text_atomically",
]
