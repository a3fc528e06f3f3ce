"""Training (library code; the command lines live in `var_hf.commands`).

- `train_vqvae`: stage 1, the multi-scale VQVAE (tokenizer); `losses`: its LPIPS and PatchGAN losses.
- `tokenize_dataset`: encode a dataset once into token maps.
- `train_var`: stage 2, the VAR transformer.
- `loop`: the training loop both stages share (`TrainingStage`, `train`).
- `arguments` (the dataclasses `HfArgumentParser` parses), `optimization` (schedules, AdamW groups, EMA),
  `checkpointing` (atomic, verified checkpoints), `export`, `trackers` (Accelerator, logging, progress).

Each of `train_vqvae.py`, `train_var.py` and `tokenize_dataset.py` also runs as a script
(`accelerate launch src/var_hf/training/train_var.py ...`) or a module (`accelerate launch -m var_hf.training.train_var`).
"""

__all__ = ["arguments", "checkpointing", "export", "loop", "losses", "optimization", "tokenize_dataset", "trackers",
           "train_var", "train_vqvae"]
