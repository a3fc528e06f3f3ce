"""Collaborative decoding (VARCollaborativePipeline): exactness against single-model sampling, the refiner's prefix
pass against scale-by-scale caching, loading, and the errors for transformers that cannot share a tokenizer."""

import pytest
import torch

from var_hf import MultiScaleVQVAE, VARPipeline, VARScaleScheduler, VARTransformer
from var_hf.pipelines.pipeline_var_collaborative import (
    VARCollaborativePipeline, check_refiner_fits, prefill_kv_cache,
)

from conftest import make_var_config, make_vqvae_config, perturb_

PATCH_NUMS = (1, 2, 3, 4)
K = len(PATCH_NUMS)
SAMPLING = dict(guidance_scale=2.0, top_k=20, top_p=0.9)


def tiny_models():
    torch.manual_seed(0)
    vqvae = perturb_(MultiScaleVQVAE(make_vqvae_config(patch_nums=PATCH_NUMS)), std=0.05, seed=1).eval()
    drafter = perturb_(VARTransformer(make_var_config(patch_nums=PATCH_NUMS, depth=3, embed_dim=48, num_heads=3)),
                       seed=2).eval()
    refiner = perturb_(VARTransformer(make_var_config(patch_nums=PATCH_NUMS, depth=1, embed_dim=16, num_heads=2)),
                       seed=3).eval()
    return vqvae, drafter, refiner, VARScaleScheduler(patch_nums=list(PATCH_NUMS))


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.fixture(scope="module")
def pipe(models):
    vqvae, drafter, refiner, scheduler = models
    return VARCollaborativePipeline(vqvae=vqvae, transformer=drafter, refiner=refiner, scheduler=scheduler)


def sample(pipeline, seed=0, **kwargs):
    labels = [0, 3, None, 5]
    out = pipeline(labels, generator=torch.Generator().manual_seed(seed), output_type="pt", **SAMPLING, **kwargs)
    return out.token_maps, out.images


# ---------------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("draft_steps, alone", [(K, "drafter"), (0, "refiner")])
def test_extreme_splits_equal_one_model_alone(models, pipe, draft_steps, alone):
    vqvae, drafter, refiner, scheduler = models
    single = VARPipeline(vqvae=vqvae, transformer=drafter if alone == "drafter" else refiner, scheduler=scheduler)
    for seed in (0, 1):
        tokens, images = sample(pipe, seed, draft_steps=draft_steps)
        ref_tokens, ref_images = sample(single, seed)
        assert all(torch.equal(a, b) for a, b in zip(tokens, ref_tokens))
        assert torch.equal(images, ref_images)


def test_drafted_scales_are_the_drafters(models, pipe):
    """The first k scales come from the drafter with the same generator draws as the drafter alone; the rest differ."""
    vqvae, drafter, _, scheduler = models
    ref_tokens, _ = sample(VARPipeline(vqvae=vqvae, transformer=drafter, scheduler=scheduler))
    tokens, _ = sample(pipe, draft_steps=2)
    assert all(torch.equal(tokens[i], ref_tokens[i]) for i in range(2))
    assert not all(torch.equal(tokens[i], ref_tokens[i]) for i in range(2, K))


def scale_inputs(model, vqvae, labels_B, token_maps):
    """Both guidance halves' inputs of every scale for the given token maps, as sampling builds them."""
    labels_2B = torch.cat((labels_B, torch.full_like(labels_B, model.config.null_class)))
    cond_2BD = model.embed_class(labels_2B)
    words_BlC = vqvae.teacher_forcing_input(token_maps)
    inputs = [model.embed_first_scale(cond_2BD)]
    for i, (begin, end) in enumerate(model.config.scale_boundaries[1:], start=1):
        first = model.config.first_len
        inputs.append(model.embed_next_scale(i, words_BlC[:, begin - first:end - first]).repeat(2, 1, 1))
    return cond_2BD, inputs


@pytest.mark.parametrize("prefix_scales", [1, 2, 3])
@torch.no_grad()
def test_prefix_pass_equals_scale_by_scale(models, prefix_scales):
    vqvae, _, refiner, _ = models
    gen = torch.Generator().manual_seed(prefix_scales)
    token_maps = [torch.randint(0, 32, (3, pn * pn), generator=gen) for pn in PATCH_NUMS]
    cond_2BD, inputs = scale_inputs(refiner, vqvae, torch.tensor([1, 4, 2]), token_maps)
    constants = refiner.sampling_constants(cond_2BD)

    stepwise_cache, stepwise_logits = refiner.new_kv_cache(), []
    for i in range(prefix_scales):
        stepwise_logits.append(refiner.forward_scale(inputs[i], cond_2BD, stepwise_cache, constants=constants))
    cache, logits = prefill_kv_cache(refiner, inputs[:prefix_scales], constants, return_logits=True)

    torch.testing.assert_close(logits, torch.cat(stepwise_logits, dim=1), rtol=1e-5, atol=1e-5)
    length = sum(pn * pn for pn in PATCH_NUMS[:prefix_scales])
    for layer in range(refiner.config.depth):
        assert cache.get_seq_length(layer) == stepwise_cache.get_seq_length(layer) == length
        torch.testing.assert_close(cache.keys[layer][:, :, :length], stepwise_cache.keys[layer][:, :, :length])
        torch.testing.assert_close(cache.values[layer][:, :, :length], stepwise_cache.values[layer][:, :, :length])
    # The next scale, read through either cache, gives the same logits.
    torch.testing.assert_close(
        refiner.forward_scale(inputs[prefix_scales], cond_2BD, cache, constants=constants),
        refiner.forward_scale(inputs[prefix_scales], cond_2BD, stepwise_cache, constants=constants),
        rtol=1e-5, atol=1e-5,
    )


@torch.no_grad()
def reference_collaborative_tokens(models, labels, draft_steps, seed):
    """Collaborative sampling written out with the public model methods, the refiner's cache built scale by scale
    (no prefix pass)."""
    vqvae, drafter, refiner, scheduler = models
    generator = torch.Generator().manual_seed(seed)
    labels_B = torch.tensor(labels)
    B, C = len(labels_B), vqvae.config.vq_embed_dim
    labels_2B = torch.cat((labels_B, torch.full_like(labels_B, drafter.config.null_class)))
    state = {}
    for name, model in (("drafter", drafter), ("refiner", refiner)):
        cond = model.embed_class(labels_2B)
        state[name] = (model, cond, model.sampling_constants(cond), model.new_kv_cache())
    f_hat = torch.zeros(B, C, PATCH_NUMS[-1], PATCH_NUMS[-1])
    words, tokens = [], []
    scheduler.set_timesteps()
    for i, pn in enumerate(PATCH_NUMS):
        names = ["drafter"] if i < draft_steps else ["refiner"]
        if i < draft_steps:
            names.append("refiner")  # the refiner reads the drafted scale too, one scale at a time
        logits = None
        for name in names:
            model, cond, constants, cache = state[name]
            x = model.embed_first_scale(cond) if i == 0 else model.embed_next_scale(i, words[-1]).repeat(2, 1, 1)
            out = model.forward_scale(x, cond, cache, constants=constants)
            logits = out if logits is None else logits
        guided = scheduler.apply_guidance(logits[:B], logits[B:], i, SAMPLING["guidance_scale"])
        step = scheduler.step(guided, i, generator=generator, top_k=SAMPLING["top_k"], top_p=SAMPLING["top_p"],
                              temperature=1.0, codebook=vqvae.quantizer.codebook.weight)
        tokens.append(step.token_map)
        h_BChw = vqvae.embed_tokens(step.token_map).transpose(1, 2).reshape(B, C, pn, pn)
        f_hat, next_BChw = vqvae.next_scale_input(i, f_hat, h_BChw)
        if i + 1 < K:
            words.append(next_BChw.reshape(B, C, -1).transpose(1, 2))
    return tokens


@pytest.mark.parametrize("draft_steps", [1, 2, 3])
def test_collaborative_tokens_equal_scale_by_scale_refiner(models, pipe, draft_steps):
    labels = [0, 3, 5, 1]
    for seed in (0, 7):
        out = pipe(labels, draft_steps=draft_steps, generator=torch.Generator().manual_seed(seed), output_type="latent",
                   **SAMPLING)
        reference = reference_collaborative_tokens(models, labels, draft_steps, seed)
        assert all(torch.equal(a, b) for a, b in zip(out.token_maps, reference))


def test_batching_and_callbacks_pass_through(pipe):
    """VARPipeline's batching and callbacks apply: per-image generators make the result independent of batching."""
    labels = [0, 1, 2, 3]
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(4)]  # noqa: E731
    seen = []
    whole = pipe(labels, draft_steps=2, generator=gens(), output_type="latent", **SAMPLING)
    split = pipe(labels, draft_steps=2, generator=gens(), output_type="latent", max_batch_size=3, **SAMPLING,
                 callback_on_step_end=lambda p, i, t, kw: seen.append(i) or {}, callback_on_step_end_tensor_inputs=["f_hat"])
    assert all(torch.equal(a, b) for a, b in zip(whole.token_maps, split.token_maps))
    assert seen == list(range(K)) * 2


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("field, value", [("vocab_size", 16), ("vq_embed_dim", 4), ("num_classes", 5),
                                          ("patch_nums", (1, 2, 3, 5))])
def test_refiner_that_cannot_share_the_tokenizer_is_refused(models, field, value):
    vqvae, drafter, _, scheduler = models
    bad = VARTransformer(make_var_config(**{"patch_nums": PATCH_NUMS, field: value}))
    with pytest.raises(ValueError, match=field):
        VARCollaborativePipeline(vqvae=vqvae, transformer=drafter, refiner=bad, scheduler=scheduler)
    with pytest.raises(ValueError, match=field):
        check_refiner_fits(drafter, bad)


def test_bad_arguments_are_refused(models, pipe):
    vqvae, drafter, _, scheduler = models
    with pytest.raises(ValueError, match="refiner must be a VARTransformer"):
        VARCollaborativePipeline(vqvae=vqvae, transformer=drafter, refiner=vqvae, scheduler=scheduler)
    for bad in (-1, K + 1, 1.5, True):
        with pytest.raises(ValueError, match="draft_steps"):
            pipe([0], draft_steps=bad)
    with pytest.raises(ValueError, match="fast_path"):
        pipe([0], draft_steps=1, fast_path=True)


# ---------------------------------------------------------------------------------------------------- loading


def test_from_pretrained_with_refiner_and_round_trip(models, pipe, tmp_path):
    vqvae, drafter, refiner, scheduler = models
    VARPipeline(vqvae=vqvae, transformer=drafter, scheduler=scheduler).save_pretrained(tmp_path / "large")
    VARPipeline(vqvae=vqvae, transformer=refiner, scheduler=scheduler).save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match="holds no refiner"):
        VARCollaborativePipeline.from_pretrained(tmp_path / "large")
    reference, _ = sample(pipe, draft_steps=2)
    for given in (refiner, str(tmp_path / "small"), str(tmp_path / "small" / "transformer")):
        loaded = VARCollaborativePipeline.from_pretrained(tmp_path / "large", refiner=given)
        tokens, _ = sample(loaded, draft_steps=2)
        assert all(torch.equal(a, b) for a, b in zip(tokens, reference))
    loaded = VARCollaborativePipeline.from_pretrained(tmp_path / "large", refiner=refiner, draft_steps=1)
    loaded.save_pretrained(tmp_path / "collab")
    again = VARCollaborativePipeline.from_pretrained(tmp_path / "collab")
    assert again.draft_steps == 1
    tokens, _ = sample(again, draft_steps=2)
    assert all(torch.equal(a, b) for a, b in zip(tokens, reference))


# ---------------------------------------------------------------------------------------------------- command line


def test_generate_command_with_a_refiner_is_the_collaborative_pipeline(models, pipe, tmp_path, capsys):
    import os

    import numpy as np
    import PIL.Image

    from var_hf.commands.var_hf_cli import main as cli_main

    vqvae, drafter, refiner, scheduler = models
    model_dir, refiner_dir = tmp_path / "large", tmp_path / "small"
    VARPipeline(vqvae=vqvae, transformer=drafter, scheduler=scheduler).save_pretrained(model_dir)
    refiner.save_pretrained(refiner_dir)
    out_dir = tmp_path / "samples"
    assert cli_main(["generate", "--model", str(model_dir), "--refiner", str(refiner_dir), "--draft-steps", "2",
                     "--label", "0", "--label", "3", "--seed", "5", "--guidance-scale", "2", "--top-k", "20",
                     "--top-p", "0.9", "--out", str(out_dir)]) == 0
    expected = pipe([0, 3], generator=torch.Generator().manual_seed(5), draft_steps=2, **SAMPLING).images
    files = sorted(f for f in os.listdir(out_dir) if f != "grid.png")
    assert len(files) == 2
    for name, image in zip(files, expected):
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(out_dir / name)), np.asarray(image))

    # A refiner with another vocabulary is a usage error before any sampling; --draft-steps alone too.
    other = VARTransformer(make_var_config(patch_nums=PATCH_NUMS, depth=1, embed_dim=16, num_heads=2, vocab_size=48))
    other.save_pretrained(tmp_path / "other")
    capsys.readouterr()
    assert cli_main(["generate", "--model", str(model_dir), "--refiner", str(tmp_path / "other"),
                     "--out", str(tmp_path / "bad")]) == 2
    assert "vocab" in capsys.readouterr().err.lower()
    assert cli_main(["generate", "--model", str(model_dir), "--draft-steps", "2", "--out", str(tmp_path / "bad")]) == 2
    assert "--refiner" in capsys.readouterr().err and not (tmp_path / "bad").exists()
