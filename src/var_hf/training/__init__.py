"""Training entry points: `train_vqvae` (stage 1, the tokenizer), `tokenize` (encode a dataset once into token maps)
and `train_var` (stage 2, the transformer). Each module exposes `add_arguments(parser)`, `run(args)` and `main(argv)`,
and runs under `accelerate launch -m var_hf.training.<module>`."""

__all__ = ["common", "tokenize", "train_var", "train_vqvae"]
