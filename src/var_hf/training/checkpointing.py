"""Atomic, verified, rotating checkpoints with exact resumption, and the output-folder rules.

A checkpoint is `output_dir/checkpoint-<step>/`:

- what `accelerator.save_state` writes for the prepared objects: `model*.safetensors` (or FSDP shards), `optimizer*.bin`,
  `scaler.pt`, `random_states_<process>.pkl`. accelerate reads all of them back with `torch.load(weights_only=True)`;
  before it does, the random states of this process are loaded once here the same way, because accelerate would only
  log a failure at INFO level and continue with fresh random states;
- our own state, written and read here without pickle: `<name>.safetensors` tensors (the EMA, the dead-code counters)
  and `trainer_state.json` (step, run kind, compatibility fingerprint, number of processes, small counters);
- `checkpoint_manifest.json`, written LAST: the size and sha256 of every other file. A folder whose files do not match
  its manifest (truncated, modified, missing, or added) is refused before anything is loaded, naming the file.

Nothing in a checkpoint is registered with `accelerator.register_for_checkpointing`, whose `custom_checkpoint_*.pkl`
files accelerate unpickles with `weights_only=False`.

Every process writes into `output_dir/.tmp-checkpoint-<step>`; the main process then adds our files and the manifest
and renames the folder, so a folder named `checkpoint-*` is always complete; a crash during saving leaves only a
`.tmp-*` folder, which is ignored and removed on the next start. Rotation is ours rather than accelerate's
`ProjectConfiguration(total_limit=...)`, which only rotates its own `checkpoints/checkpoint_<i>` folders written in
place (not atomically).
"""

import glob
import json
import os
import re
import shutil
from typing import Any, Dict, List, Optional, Tuple

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from var_hf.file_utils import atomic_write, file_digest, write_json_atomically

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-" + CHECKPOINT_PREFIX
TRAINER_STATE_NAME = "trainer_state.json"
MANIFEST_NAME = "checkpoint_manifest.json"
RUN_CONFIG_NAME = "training_config.json"
CHECKPOINT_FORMAT_VERSION = 2  # 2: own state in safetensors/JSON, manifest; 1 held pickled custom objects


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or was written by an incompatible run."""


def _checkpoint_step(path: str) -> int:
    return int(os.path.basename(path.rstrip("/"))[len(CHECKPOINT_PREFIX):])


def list_checkpoints(output_dir: str) -> List[str]:
    """The `checkpoint-<step>` folders of `output_dir`, oldest first."""
    paths = [
        p for p in glob.glob(os.path.join(glob.escape(output_dir), CHECKPOINT_PREFIX + "*"))
        if os.path.isdir(p) and re.fullmatch(r"\d+", os.path.basename(p)[len(CHECKPOINT_PREFIX):])
    ]
    return sorted(paths, key=_checkpoint_step)


def check_output_dir(output_dir: str, resume: Optional[str], overwrite_output_dir: bool):
    """Refuse, before any work, to start a new run over an earlier run's checkpoints (as transformers' `Trainer`)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output-dir {output_dir} is a file; give a folder.")
    if resume is None and not overwrite_output_dir and list_checkpoints(output_dir):
        raise ValueError(
            f"--output-dir {output_dir} already holds checkpoints of an earlier run. Continue it with --resume latest, "
            "or pass --overwrite-output-dir to delete them and start over."
        )
    if resume not in (None, "latest") and not os.path.isdir(resume):
        raise ValueError(f"--resume {resume}: no such checkpoint folder (give 'latest' or a checkpoint-<step> folder).")


# ----------------------------------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------------------------------


def _files(folder: str) -> List[str]:
    out = []
    for root, _, names in os.walk(folder):
        out += [os.path.relpath(os.path.join(root, n), folder) for n in names]
    return sorted(f for f in out if f != MANIFEST_NAME)


def write_manifest(folder: str):
    files = {rel: {"size": os.path.getsize(os.path.join(folder, rel)), "sha256": file_digest(os.path.join(folder, rel))}
             for rel in _files(folder)}
    write_json_atomically(os.path.join(folder, MANIFEST_NAME), {"format_version": CHECKPOINT_FORMAT_VERSION,
                                                                "files": files})


def read_checkpoint_json(folder: str, name: str, why_missing: str) -> Any:
    """A JSON file every complete checkpoint holds; `CheckpointError` naming it if it is missing or unreadable."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{folder} is not a complete checkpoint (no {name}: {why_missing}). Pass another --resume, or "
            "--overwrite-output-dir to start over."
        )
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"Could not load checkpoint {folder}: {name} is unreadable ({e}).") from e


def verify_manifest(folder: str):
    """Raise `CheckpointError` naming the first file of `folder` that is missing, truncated, modified or unexpected."""
    manifest = read_checkpoint_json(folder, MANIFEST_NAME, "the save was interrupted, or an older var_hf wrote it")
    expected = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(expected, dict):
        raise CheckpointError(f"Could not load checkpoint {folder}: {MANIFEST_NAME} lists no files.")
    for rel, info in sorted(expected.items()):
        file = os.path.join(folder, rel)
        if not os.path.isfile(file):
            raise CheckpointError(f"Could not load checkpoint {folder}: {rel} is missing.")
        size = os.path.getsize(file)
        if size != info.get("size") or file_digest(file) != info.get("sha256"):
            raise CheckpointError(
                f"Could not load checkpoint {folder}: {rel} is truncated or was modified since it was saved ({size} "
                f"bytes, {info.get('size')} expected, or another sha256)."
            )
    extra = sorted(set(_files(folder)) - set(expected))
    if extra:
        raise CheckpointError(
            f"Could not load checkpoint {folder}: {extra[0]} is not part of it (not in {MANIFEST_NAME}); remove it."
        )


# ----------------------------------------------------------------------------------------------------------------------
# The manager
# ----------------------------------------------------------------------------------------------------------------------


class CheckpointManager:
    r"""
    Saves and restores one run's checkpoints (see the module docstring for the layout).

    Args:
        accelerator (`Accelerator`), output_dir (`str`):
        kind (`str`): `"vqvae"` or `"var"`; a checkpoint of the other kind is refused.
        compatibility (`dict`): What must match to resume (model config, global batch, seed, ...).
        keep_last (`int`): Checkpoints kept.
        run_config (`dict`): The run's full configuration, copied into each checkpoint.
    """

    def __init__(self, accelerator: Accelerator, output_dir: str, kind: str, compatibility: Dict[str, Any],
                 keep_last: int = 3, run_config: Optional[Dict[str, Any]] = None):
        self.accelerator, self.output_dir, self.kind = accelerator, output_dir, kind
        self.compatibility = json.loads(json.dumps(compatibility))  # normalise tuples to lists
        self.keep_last = max(1, keep_last)
        self.run_config = run_config or {}

    def checkpoints(self) -> List[str]:
        return list_checkpoints(self.output_dir)

    def resolve(self, resume: Optional[str], overwrite_output_dir: bool = False) -> Optional[str]:
        """Checkpoint folder to resume from, or None for a fresh start."""
        if resume is None:
            found = self.checkpoints()
            if found and not overwrite_output_dir:
                check_output_dir(self.output_dir, resume, overwrite_output_dir)
            if found:
                self.accelerator.wait_for_everyone()
                if self.accelerator.is_main_process:
                    logger.warning(f"--overwrite-output-dir: deleting {len(found)} checkpoint(s) in {self.output_dir}.")
                    for path in found:
                        shutil.rmtree(path)
                self.accelerator.wait_for_everyone()
            return None
        if resume == "latest":
            found = self.checkpoints()
            if not found:
                logger.info(f"No checkpoint in {self.output_dir}; starting from scratch.", main_process_only=True)
                return None
            return found[-1]
        if not os.path.isdir(resume):
            raise CheckpointError(f"--resume {resume}: no such checkpoint folder.")
        return resume

    def read_state(self, path: str) -> Dict[str, Any]:
        return read_checkpoint_json(path, TRAINER_STATE_NAME, "it is corrupt or was not written by var_hf")

    def check_compatible(self, path: str, state: Dict[str, Any]):
        problems = []
        if state.get("kind") != self.kind:
            problems.append(f"it is a {state.get('kind')!r} checkpoint, this is a {self.kind!r} run")
        if state.get("format_version") != CHECKPOINT_FORMAT_VERSION:
            problems.append(f"format version {state.get('format_version')} != {CHECKPOINT_FORMAT_VERSION} (written by "
                            "another var_hf version)")
        if state.get("num_processes") != self.accelerator.num_processes:
            problems.append(
                f"it was written by {state.get('num_processes')} processes, this run has "
                f"{self.accelerator.num_processes} (the per-process RNG states cannot be matched)"
            )
        saved = state.get("compatibility", {})
        for key in sorted(set(saved) | set(self.compatibility)):
            if saved.get(key) != self.compatibility.get(key):
                problems.append(f"{key}: checkpoint {saved.get(key)!r} != this run {self.compatibility.get(key)!r}")
        if problems:
            raise CheckpointError(f"Cannot resume from {path}: " + "; ".join(problems) + ".")
        num_rng = len(glob.glob(os.path.join(glob.escape(path), "random_states_*.pkl")))
        if num_rng != self.accelerator.num_processes:
            raise CheckpointError(
                f"{path} holds {num_rng} random-state files for {self.accelerator.num_processes} processes; the "
                "checkpoint is incomplete or corrupt."
            )

    def load(self, path: str) -> Tuple[int, Dict[str, Any], Dict[str, Dict[str, torch.Tensor]]]:
        """Verify `path`, restore everything `accelerator.prepare`d, and return `(step, trainer state, our tensors)`."""
        from accelerate.utils import load as accelerate_load
        from safetensors.torch import load_file

        state = self.read_state(path)
        self.check_compatible(path, state)
        verify_manifest(path)
        rng_file = os.path.join(path, f"random_states_{self.accelerator.process_index}.pkl")
        try:  # accelerate's own loader (weights_only=True), once here so that a failure is not just logged
            accelerate_load(rng_file)
        except Exception as e:  # noqa: BLE001 - any failure means the file cannot be used
            raise CheckpointError(f"Could not load checkpoint {path}: {os.path.basename(rng_file)} is unreadable "
                                  f"({type(e).__name__}: {e}).") from e
        try:
            self.accelerator.load_state(path)
        except Exception as e:  # a foreign file surfaces here as many different exception types
            raise CheckpointError(f"Could not load checkpoint {path}: {type(e).__name__}: {e}") from e
        tensors = {}
        for name in state.get("tensor_files", []):
            try:
                tensors[name] = load_file(os.path.join(path, name))
            except Exception as e:  # noqa: BLE001
                raise CheckpointError(f"Could not load checkpoint {path}: {name}: {type(e).__name__}: {e}") from e
        logger.info(f"Resumed from {path} at step {state['step']}.", main_process_only=True)
        return int(state["step"]), state, tensors

    def cleanup_partial(self):
        if self.accelerator.is_main_process:
            for path in glob.glob(os.path.join(glob.escape(self.output_dir), TMP_PREFIX + "*")):
                logger.warning(f"Removing partial checkpoint {path} (a save was interrupted).")
                shutil.rmtree(path, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def save(self, step: int, tensors: Optional[Dict[str, Dict[str, torch.Tensor]]] = None,
             extra: Optional[Dict[str, Any]] = None) -> str:
        """Write `checkpoint-<step>`: accelerate's state, then `tensors` (file name -> tensors) and `extra` (JSON
        values in trainer_state.json), then the manifest, then the rename."""
        from safetensors.torch import save as safetensors_bytes

        acc = self.accelerator
        final = os.path.join(self.output_dir, f"{CHECKPOINT_PREFIX}{step:08d}")
        tmp = os.path.join(self.output_dir, f"{TMP_PREFIX}{step:08d}")
        if acc.is_main_process and os.path.exists(tmp):
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(tmp)
        acc.wait_for_everyone()
        if acc.is_main_process:
            tensors = tensors or {}
            for name, values in tensors.items():
                with atomic_write(os.path.join(tmp, name), "wb") as f:
                    f.write(safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in values.items()}))
            state = {
                "format_version": CHECKPOINT_FORMAT_VERSION,
                "kind": self.kind,
                "step": step,
                "num_processes": acc.num_processes,
                "compatibility": self.compatibility,
                "run_config": self.run_config,
                "tensor_files": sorted(tensors),
                **(extra or {}),
            }
            write_json_atomically(os.path.join(tmp, TRAINER_STATE_NAME), state, default=str)
            write_manifest(tmp)  # last: a folder with a valid manifest is complete
            if os.path.exists(final):  # re-running the same step (--overwrite-output-dir raced, or a manual copy)
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.checkpoints()[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final


def write_run_config(output_dir: str, config: Dict[str, Any]):
    os.makedirs(output_dir, exist_ok=True)
    write_json_atomically(os.path.join(output_dir, RUN_CONFIG_NAME), config, default=str)


__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointError",
    "CheckpointManager",
    "MANIFEST_NAME",
    "TRAINER_STATE_NAME",
    "check_output_dir",
    "list_checkpoints",
    "read_checkpoint_json",
    "verify_manifest",
    "write_manifest",
    "write_run_config",
]
