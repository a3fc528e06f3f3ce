import numpy as np
import pytest
import torch

from var_hf import VARScaleScheduler


def _logits(B=3, l=5, V=12, seed=0):
    return torch.randn(B, l, V, generator=torch.Generator().manual_seed(seed)) * 2


def test_guidance_schedules():
    linear = VARScaleScheduler(patch_nums=[1, 2, 3, 4, 5], guidance_schedule="linear")
    constant = VARScaleScheduler(patch_nums=[1, 2, 3, 4, 5], guidance_schedule="constant")
    assert [linear.guidance_weight(k, 2.0) for k in range(5)] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert [constant.guidance_weight(k, 2.0) for k in range(5)] == [2.0] * 5
    cond, uncond = _logits(seed=1), _logits(seed=2)
    guided = linear.apply_guidance(cond, uncond, 3, 2.0)
    torch.testing.assert_close(guided, 2.5 * cond - 1.5 * uncond)
    # Diffusers' convention uncond + w (cond - uncond) with w = 1 + t_k gives the same logits.
    torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_bad_config_and_timesteps():
    with pytest.raises(ValueError, match="guidance_schedule"):
        VARScaleScheduler(guidance_schedule="cosine")
    scheduler = VARScaleScheduler(patch_nums=[1, 2, 4])
    scheduler.set_timesteps()
    assert scheduler.timesteps.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="one step per scale"):
        scheduler.set_timesteps(10)


def test_top_k_keeps_exactly_the_k_largest():
    logits = _logits()
    filtered = VARScaleScheduler.filter_logits(logits.clone(), top_k=4)
    kept = torch.isfinite(filtered)
    assert (kept.sum(-1) == 4).all()
    top4 = logits.topk(4, dim=-1).indices
    assert kept.gather(-1, top4).all()
    # k larger than the vocabulary filters nothing.
    assert torch.isfinite(VARScaleScheduler.filter_logits(logits.clone(), top_k=10_000)).all()


@pytest.mark.parametrize("top_p", [0.3, 0.8, 0.95])
def test_top_p_keeps_the_nucleus(top_p):
    logits = _logits(B=2, l=4, V=9, seed=3)
    filtered = VARScaleScheduler.filter_logits(logits.clone(), top_p=top_p)
    probs = torch.softmax(logits, -1).numpy()
    for row_probs, row_kept in zip(probs.reshape(-1, 9), torch.isfinite(filtered).reshape(-1, 9).numpy()):
        # Independent rule: keep the most likely tokens until their mass reaches top_p (at least one token).
        order = np.argsort(-row_probs)
        mass, expected = 0.0, np.zeros(9, dtype=bool)
        for idx in order:
            if mass >= top_p:
                break
            expected[idx] = True
            mass += row_probs[idx]
        np.testing.assert_array_equal(row_kept, expected)


def test_step_is_seeded_and_top_k_1_is_greedy():
    scheduler = VARScaleScheduler(patch_nums=[1, 2, 3])
    logits = _logits()
    a = scheduler.step(logits, 1, generator=torch.Generator().manual_seed(5)).token_map
    b = scheduler.step(logits, 1, generator=torch.Generator().manual_seed(5)).token_map
    c = scheduler.step(logits, 1, generator=torch.Generator().manual_seed(6)).token_map
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, 5) and a.dtype == torch.long
    greedy = scheduler.step(logits, 1, generator=torch.Generator().manual_seed(0), top_k=1).token_map
    assert torch.equal(greedy, logits.argmax(-1))
    untouched = logits.clone()
    scheduler.step(logits, 1, top_k=3, top_p=0.5)
    assert torch.equal(logits, untouched), "step must not modify its input"


def test_per_sample_generators_equal_single_runs():
    scheduler = VARScaleScheduler(patch_nums=[1, 2, 3])
    logits = _logits(B=3)
    codebook = torch.randn(12, 4)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    batched = scheduler.step(logits, 2, generator=gens, more_smooth=True, codebook=codebook)
    for i, seed in enumerate((1, 2, 3)):
        single = scheduler.step(logits[i : i + 1], 2, generator=torch.Generator().manual_seed(seed), more_smooth=True,
                                codebook=codebook)
        assert torch.equal(batched.token_map[i : i + 1], single.token_map)
        torch.testing.assert_close(batched.smoothed_embeddings[i : i + 1], single.smoothed_embeddings)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        scheduler.step(logits, 0, generator=gens[:2])


def test_smoothing_draws_after_the_tokens_and_mixes_codes():
    scheduler = VARScaleScheduler(patch_nums=[1, 2, 3])
    logits = _logits(V=6)
    plain = scheduler.step(logits, 1, generator=torch.Generator().manual_seed(9), top_k=3)
    smooth = scheduler.step(logits, 1, generator=torch.Generator().manual_seed(9), top_k=3, more_smooth=True,
                            codebook=torch.eye(6))
    # The reference draws the multinomial first, then the Gumbel noise: the tokens are unchanged by smoothing.
    assert torch.equal(plain.token_map, smooth.token_map)
    weights = smooth.smoothed_embeddings  # with an identity codebook these are the softmax weights
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 5))
    filtered = ~torch.isfinite(VARScaleScheduler.filter_logits(logits.clone(), top_k=3))
    assert (weights[filtered] == 0).all()
    assert scheduler.smoothing_tau(0) == pytest.approx(0.27) and scheduler.smoothing_tau(2) == pytest.approx(0.27 * 0.05)
    with pytest.raises(ValueError, match="codebook"):
        scheduler.step(logits, 1, more_smooth=True)


def test_temperature_sharpens():
    scheduler = VARScaleScheduler(patch_nums=[1, 2])
    logits = _logits(B=1, l=2000, V=5)
    cold = scheduler.step(logits, 0, generator=torch.Generator().manual_seed(0), temperature=0.05).token_map
    hot = scheduler.step(logits, 0, generator=torch.Generator().manual_seed(0), temperature=20.0).token_map
    greedy = logits.argmax(-1)
    assert (cold == greedy).float().mean() > (hot == greedy).float().mean() + 0.3


def test_config_round_trip(tmp_path):
    scheduler = VARScaleScheduler(patch_nums=[1, 2, 3, 5], guidance_schedule="constant", smooth_tau_start=0.3)
    scheduler.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler_config.json").is_file()
    loaded = VARScaleScheduler.from_pretrained(tmp_path)
    assert list(loaded.config.patch_nums) == [1, 2, 3, 5]
    assert loaded.config.guidance_schedule == "constant" and loaded.config.smooth_tau_start == 0.3
