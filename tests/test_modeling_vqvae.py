"""Tests of the multi-scale residual VQVAE at tiny sizes (8x8 images, scales (1, 2, 4), 32 codes of 8 dims)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

import var_hf
from var_hf import MultiScaleVQVAE, MultiScaleVQVAEConfig
from var_hf.modeling_vqvae import VQVAEAttnBlock, phi_index_for_scale
from conftest import perturb_


@pytest.fixture
def vqvae(vqvae_config_factory, perturb):
    torch.manual_seed(0)
    model = MultiScaleVQVAE(vqvae_config_factory())
    # Spread the codebook (initialised in +-1/V) to the latents' scale so several codes are in use.
    with torch.no_grad():
        model.quantizer.codebook.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    return perturb(model, std=0.02).eval()


def reference_ticks(num_phi: int) -> np.ndarray:
    """The reference's phi ticks: spaced 1/(3K) from the ends for K == 4, 1/(2K) otherwise."""
    margin = 1 / (3 * num_phi) if num_phi == 4 else 1 / (2 * num_phi)
    return np.linspace(margin, 1 - margin, num_phi)


def used_phis(num_scales: int, num_phi: int):
    return {int(np.argmin(np.abs(reference_ticks(num_phi) - k / (num_scales - 1)))) for k in range(num_scales)}


def step_through_scales(vqvae, token_maps):
    """The sampling path: feed ground-truth codes scale by scale through `next_scale_input`."""
    cfg = vqvae.config
    B, side = token_maps[0].shape[0], cfg.patch_nums[-1]
    f_hat = torch.zeros(B, cfg.vq_embed_dim, side, side)
    inputs = []
    for si, (idx_Bl, pn) in enumerate(zip(token_maps, cfg.patch_nums)):
        h_BChw = vqvae.embed_tokens(idx_Bl).transpose(1, 2).reshape(B, cfg.vq_embed_dim, pn, pn)
        f_hat, next_BChw = vqvae.next_scale_input(si, f_hat, h_BChw)
        if si < len(cfg.patch_nums) - 1:
            inputs.append(next_BChw.flatten(2).transpose(1, 2))
    return torch.cat(inputs, dim=1), f_hat


# ----------------------------------------------------------------------------------------------------------------------
# Shapes and token maps
# ----------------------------------------------------------------------------------------------------------------------


def test_shapes(vqvae, pixel_values):
    cfg = vqvae.config
    B = pixel_values.shape[0]
    assert vqvae.encode(pixel_values).shape == (B, cfg.vq_embed_dim, 4, 4)
    tokens = vqvae.encode_tokens(pixel_values)
    assert [tuple(t.shape) for t in tokens] == [(B, pn * pn) for pn in cfg.patch_nums]
    assert all(t.dtype == torch.long for t in tokens)
    images = vqvae.decode_tokens(tokens)
    assert images.shape == pixel_values.shape
    assert images.min() >= -1 and images.max() <= 1
    seq_len = sum(pn * pn for pn in cfg.patch_nums)
    assert vqvae.teacher_forcing_input(tokens).shape == (B, seq_len - cfg.patch_nums[0] ** 2, cfg.vq_embed_dim)


def test_token_maps_in_range_and_row_major(vqvae, pixel_values):
    tokens = vqvae.encode_tokens(pixel_values)
    for idx_Bl in tokens:
        assert 0 <= int(idx_Bl.min()) and int(idx_Bl.max()) < vqvae.config.vocab_size
    assert len(torch.cat(tokens, 1).unique()) > 3, "the fixture should use several codes"

    # At the finest scale the residual is not downsampled: token (i, j) is the nearest code to the residual at
    # latent cell (i, j), stored at i * side + j.
    f = vqvae.encode(pixel_values)
    residual_BChw = f - vqvae.quantizer.latents_to_fhats(f)[-2]
    B, C, side, _ = residual_BChw.shape
    codes_VC = vqvae.quantizer.codebook.weight
    for i, j in [(0, 1), (1, 0), (2, 3), (3, 2)]:
        dist_BV = ((residual_BChw[:, :, i, j, None] - codes_VC.T[None]) ** 2).sum(1)
        assert torch.equal(tokens[-1][:, i * side + j], dist_BV.argmin(1))


def test_batch_equals_single(vqvae, pixel_values):
    batch = vqvae.encode_tokens(pixel_values)
    for b in range(pixel_values.shape[0]):
        single = vqvae.encode_tokens(pixel_values[b : b + 1])
        assert all(torch.equal(s[0], t[b]) for s, t in zip(single, batch))


def test_decode_all_scales(vqvae, pixel_values):
    tokens = vqvae.encode_tokens(pixel_values)
    images = vqvae.decode_tokens(tokens, return_all_scales=True)
    assert len(images) == len(vqvae.config.patch_nums)
    assert all(img.shape == pixel_values.shape for img in images)
    torch.testing.assert_close(images[-1], vqvae.decode_tokens(tokens), rtol=0, atol=0)
    assert not torch.allclose(images[0], images[-1]), "coarser prefixes should decode to different images"
    # The encoder's running sum and the sum rebuilt from the tokens are different float32 op sequences: equal up to
    # rounding, which depends on the CPU's kernels (up to 3.2e-6 measured on an AVX2 CPU, within 1e-6 on other CPUs).
    torch.testing.assert_close(vqvae.reconstruct(pixel_values), vqvae.decode_tokens(tokens), rtol=0, atol=2e-5)


def test_teacher_forcing_matches_sampling_steps(vqvae, pixel_values):
    """The training input (all scales at once) equals the sampling path's inputs built scale by scale."""
    tokens = vqvae.encode_tokens(pixel_values)
    stepped, f_hat = step_through_scales(vqvae, tokens)
    torch.testing.assert_close(vqvae.teacher_forcing_input(tokens), stepped, rtol=0, atol=1e-6)
    torch.testing.assert_close(vqvae.decode(f_hat), vqvae.decode_tokens(tokens), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Training pass
# ----------------------------------------------------------------------------------------------------------------------


def test_training_forward_gradients(vqvae, pixel_values):
    vqvae.train()
    out = vqvae(pixel_values)
    assert out.reconstruction.shape == pixel_values.shape
    assert out.vq_loss.ndim == 0 and torch.isfinite(out.vq_loss) and out.vq_loss > 0
    out.vq_loss.backward()
    assert vqvae.encoder.conv_in.weight.grad.abs().sum() > 0, "commitment loss must reach the encoder"
    assert vqvae.quantizer.codebook.weight.grad.abs().sum() > 0, "codebook loss must reach the codes"
    num_phi = len(vqvae.quantizer.phi)
    for k in used_phis(len(vqvae.config.patch_nums), num_phi):
        assert vqvae.quantizer.phi[k].weight.grad.abs().sum() > 0, f"phi {k} is used by a scale but got no gradient"


def test_vq_loss_is_summed_in_the_references_order(vqvae_config_factory):
    """The VQ loss is the reference's to the bit: per scale beta * mse(sg(f_hat), f) + mse(f_hat, sg(f)), that sum
    added to the total, then the total times 1/K. Summing left to right instead, or dividing by K, rounds elsewhere."""
    torch.manual_seed(0)
    model = MultiScaleVQVAE(vqvae_config_factory(patch_nums=(1, 2, 3, 4), channel_multipliers=(1, 1))).train()
    with torch.no_grad():
        model.quantizer.codebook.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    quantizer, other_order_differs = model.quantizer, False
    for seed in range(20):
        f_BChw = torch.randn(2, model.config.vq_embed_dim, 4, 4, generator=torch.Generator().manual_seed(seed))
        _, vq_loss, _ = quantizer(f_BChw)
        total = other = torch.zeros(())
        for _, f_hat in quantizer._residual_scales(f_BChw, track_grad=True):
            commitment, codebook = F.mse_loss(f_hat.detach(), f_BChw).mul(quantizer.beta), F.mse_loss(f_hat, f_BChw)
            total = total + (commitment + codebook)
            other = other + commitment + codebook
        assert torch.equal(vq_loss, total * (1.0 / 4))
        other_order_differs |= not torch.equal(vq_loss, other / 4)
    assert other_order_differs, "no input told the two orders apart; the test could not fail"


def test_straight_through_estimator(vqvae, pixel_values):
    """The reconstruction loss alone reaches the encoder through f_hat's straight-through estimator."""
    vqvae.train()
    out = vqvae(pixel_values)
    (out.reconstruction - pixel_values).square().mean().backward()
    assert vqvae.encoder.conv_in.weight.grad.abs().sum() > 0
    assert vqvae.decoder.conv_out.weight.grad.abs().sum() > 0
    codebook_grad = vqvae.quantizer.codebook.weight.grad
    assert codebook_grad is None or codebook_grad.abs().sum() == 0, "only the VQ loss trains the codebook"


def test_codebook_usage_updates_in_train_mode_only(vqvae, pixel_values):
    quantizer = vqvae.quantizer
    with torch.no_grad():
        out = vqvae(pixel_values)  # eval mode
    assert int(quantizer.num_hit_updates) == 0 and quantizer.ema_code_hits.abs().sum() == 0
    B = pixel_values.shape[0]
    assert out.code_hits.shape == (3, vqvae.config.vocab_size)
    assert out.code_hits.sum(1).tolist() == [B * pn * pn for pn in vqvae.config.patch_nums]

    vqvae.train()
    with torch.no_grad():
        out = vqvae(pixel_values)
    assert int(quantizer.num_hit_updates) == 1
    torch.testing.assert_close(quantizer.ema_code_hits, out.code_hits)  # the first update copies
    assert out.codebook_usage.shape == (3,)
    assert ((out.codebook_usage > 0) & (out.codebook_usage <= 100)).all()


# ----------------------------------------------------------------------------------------------------------------------
# Quantizer variants
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_phi", [1, 2, 3, 4, 5, 6])
def test_phi_index_for_scale(num_phi):
    for num_scales in range(2, 14):
        expected = [int(np.argmin(np.abs(reference_ticks(num_phi) - k / (num_scales - 1)))) for k in range(num_scales)]
        assert [phi_index_for_scale(k, num_scales, num_phi) for k in range(num_scales)] == expected


def test_phi_ticks_for_four_are_spaced_by_a_third():
    """K = 4 (the released tokenizer) is the one case with 1/(3K) margins; with 1/(2K) the 10-scale mapping differs."""
    got = [phi_index_for_scale(k, 10, 4) for k in range(10)]
    half_margin = np.linspace(1 / 8, 7 / 8, 4)
    assert got != [int(np.argmin(np.abs(half_margin - k / 9))) for k in range(10)]
    # Ticks 3/36, 13/36, 23/36, 33/36 against k/9 = 4k/36; scales 2 and 7 are exact ties (left to float rounding, as in
    # the reference), the others are clear-cut.
    clear_cut = {0: 0, 1: 0, 3: 1, 4: 1, 5: 2, 6: 2, 8: 3, 9: 3}
    assert {k: got[k] for k in clear_cut} == clear_cut


def residual_quantize(quantizer, f_BChw, patch_nums, phi_schedule_length):
    """Algorithm 1 written out: nearest codes of the area-downsampled residual, bicubic upsampling, phi by the
    reference's ticks at k / (phi_schedule_length - 1). Returns the tokens and the final f_hat."""
    B, C, H, W = f_BChw.shape
    f_rest, f_hat, tokens = f_BChw.clone(), torch.zeros_like(f_BChw), []
    codes_VC = quantizer.codebook.weight
    for k, pn in enumerate(patch_nums):
        rest_NC = (F.interpolate(f_rest, size=(pn, pn), mode="area") if pn != H else f_rest).permute(0, 2, 3, 1).reshape(-1, C)
        idx_N = torch.cdist(rest_NC, codes_VC).argmin(dim=1)
        h_BChw = codes_VC[idx_N].view(B, pn, pn, C).permute(0, 3, 1, 2)
        h_BChw = F.interpolate(h_BChw, size=(H, W), mode="bicubic") if pn != H else h_BChw
        ticks = reference_ticks(len(quantizer.phi))
        h_BChw = quantizer.phi[int(np.argmin(np.abs(ticks - k / (phi_schedule_length - 1))))](h_BChw)
        f_hat, f_rest = f_hat + h_BChw, f_rest - h_BChw
        tokens.append(idx_N.view(B, -1))
    return tokens, f_hat


def test_custom_encoding_schedule_picks_phi_by_its_own_length(vqvae_config_factory):
    """`encode_tokens(x, patch_nums=...)` (the reference's `img_to_idxBl(x, v_patch_nums)`) chooses each scale's phi
    by its position in the schedule it runs, not in the model's."""
    torch.manual_seed(0)
    model = MultiScaleVQVAE(vqvae_config_factory(patch_nums=(1, 2, 3, 4), channel_multipliers=(1, 1))).eval()
    with torch.no_grad():
        model.quantizer.codebook.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    assert len(model.quantizer.phi) == 4
    custom = (1, 2, 4)  # scale 2 of 3 sits at 1.0 (phi 3); at 2/3 of the model's 4 scales it would take phi 2
    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        f_BChw = model.encode(pixels)
        tokens, f_hat = residual_quantize(model.quantizer, f_BChw, custom, phi_schedule_length=3)
        _, f_hat_model_length = residual_quantize(model.quantizer, f_BChw, custom, phi_schedule_length=4)
        assert all(torch.equal(a, b) for a, b in zip(model.encode_tokens(pixels, patch_nums=custom), tokens))
        torch.testing.assert_close(model.quantizer.latents_to_fhats(f_BChw, custom)[-1], f_hat, atol=1e-5, rtol=0)
        assert (f_hat - f_hat_model_length).abs().max() > 1e-3
    with pytest.raises(ValueError, match="at least two scales"):
        model.encode_tokens(pixels, patch_nums=(4,))


def test_share_quant_resi_variants(vqvae_config_factory):
    assert len(MultiScaleVQVAE(vqvae_config_factory(share_quant_resi=1)).quantizer.phi) == 1
    assert len(MultiScaleVQVAE(vqvae_config_factory(share_quant_resi=0)).quantizer.phi) == 3  # one per scale
    assert len(MultiScaleVQVAE(vqvae_config_factory(share_quant_resi=0, num_quant_resi=2)).quantizer.phi) == 2


def test_without_phi(vqvae_config_factory, pixel_values):
    """quant_resi=0: no phi convolutions, f_hat is the plain sum of upsampled codes."""
    vqvae = MultiScaleVQVAE(vqvae_config_factory(quant_resi=0.0)).eval()
    assert len(vqvae.quantizer.phi) == 0
    assert not [k for k in vqvae.state_dict() if "phi" in k]
    tokens = vqvae.encode_tokens(pixel_values)
    assert vqvae.decode_tokens(tokens).shape == pixel_values.shape
    # After the 1x1 scale f_hat is that code everywhere, so scale 2's input is the code itself.
    first_code_BC = vqvae.quantizer.codebook.weight[tokens[0][:, 0]]
    tf_input = vqvae.teacher_forcing_input(tokens)
    torch.testing.assert_close(tf_input[:, :4], first_code_BC[:, None].expand(-1, 4, -1), rtol=0, atol=1e-6)


def test_using_znorm_picks_codes_by_cosine(vqvae_config_factory, pixel_values):
    vqvae = MultiScaleVQVAE(vqvae_config_factory(using_znorm=True)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # codes of very different norms, so L2 and cosine disagree
        vqvae.quantizer.codebook.weight.copy_(torch.randn(32, 8, generator=gen) * torch.rand(32, 1, generator=gen) * 10)
    f = vqvae.encode(pixel_values)
    mean_BC = f.mean(dim=(2, 3))  # the 1x1 scale sees the area average of the latent
    codes_VC = vqvae.quantizer.codebook.weight
    cosine = F.normalize(mean_BC, dim=1) @ F.normalize(codes_VC, dim=1).T
    tokens = vqvae.encode_tokens(pixel_values)
    assert torch.equal(tokens[0][:, 0], cosine.argmax(1))
    l2_choice = torch.cdist(mean_BC, codes_VC).argmin(1)
    assert not torch.equal(l2_choice, cosine.argmax(1)), "the fixture should separate L2 from cosine"


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of 32"):
        MultiScaleVQVAEConfig(base_channels=24, channel_multipliers=(1, 2))
    with pytest.raises(ValueError, match="strictly increasing"):
        MultiScaleVQVAEConfig(patch_nums=(1, 3, 2))
    named = MultiScaleVQVAEConfig.from_named("vae_ch160v4096z32")
    assert (named.base_channels, named.vocab_size, named.vq_embed_dim, named.image_size) == (160, 4096, 32, 256)
    assert MultiScaleVQVAEConfig.from_named(patch_nums=var_hf.PATCH_NUMS_512).image_size == 512


# ----------------------------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------------------------


def test_save_load_round_trip(vqvae, pixel_values, tmp_path):
    vqvae.train()
    with torch.no_grad():
        vqvae(pixel_values)  # non-zero code statistics must survive too
    vqvae.eval()
    vqvae.save_pretrained(tmp_path)
    loaded = MultiScaleVQVAE.from_pretrained(tmp_path).eval()
    state, loaded_state = vqvae.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)
    tokens = vqvae.encode_tokens(pixel_values)
    assert all(torch.equal(a, b) for a, b in zip(tokens, loaded.encode_tokens(pixel_values)))
    assert torch.equal(vqvae.decode_tokens(tokens), loaded.decode_tokens(tokens))

    auto = AutoModel.from_pretrained(tmp_path)
    assert type(auto) is MultiScaleVQVAE
    assert auto.config.patch_nums == list(vqvae.config.patch_nums)


# ----------------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 1, 8, 8), (2, 3, 8, 8, 1)])
def test_bad_pixel_values_shape(vqvae, shape):
    with pytest.raises(ValueError, match=r"pixel_values must be a tensor of shape \(batch, 3, height, width\)"):
        vqvae.encode_tokens(torch.zeros(shape))
    with pytest.raises(ValueError, match="pixel_values"):
        vqvae(torch.zeros(shape))


def test_image_size_must_match_schedule(vqvae):
    with pytest.raises(ValueError, match="finest scale"):
        vqvae.encode_tokens(torch.zeros(1, 3, 12, 12))


def test_bad_token_maps(vqvae, pixel_values):
    tokens = vqvae.encode_tokens(pixel_values)
    with pytest.raises(ValueError, match="needs 3 token maps"):
        vqvae.decode_tokens(tokens[:2])
    with pytest.raises(ValueError, match=r"token map 1 must have shape \(batch, 4\)"):
        vqvae.decode_tokens([tokens[0], tokens[1][:, :3], tokens[2]])
    with pytest.raises(ValueError, match="token map 2"):
        vqvae.decode_tokens([tokens[0], tokens[1], tokens[2].view(2, 4, 4)])


def _attention_inputs(seed=0):
    torch.manual_seed(seed)
    block = perturb_(VQVAEAttnBlock(32), std=0.3).eval()
    hidden_BCHW = torch.randn(2, 32, 4, 5, generator=torch.Generator().manual_seed(seed))
    return block, hidden_BCHW


def _sdpa_attention(block, hidden_BCHW):
    B, C, H, W = hidden_BCHW.shape
    q, k, v = (t.flatten(2).transpose(1, 2) for t in block.qkv(block.norm(hidden_BCHW)).chunk(3, dim=1))
    out_BNC = F.scaled_dot_product_attention(q, k, v)
    return hidden_BCHW + block.proj_out(out_BNC.transpose(1, 2).reshape(B, C, H, W))


def test_tokenizer_attention_is_softmax_attention_over_positions():
    block, hidden_BCHW = _attention_inputs()
    with torch.no_grad():
        torch.testing.assert_close(block(hidden_BCHW), _sdpa_attention(block, hidden_BCHW), atol=1e-5, rtol=0)


def test_tokenizer_attention_keeps_the_references_operation_order_under_autocast():
    """The reference computes `bmm(q^T, k) * C^-0.5`, softmax, `bmm(v, w^T)`; under autocast each product is rounded
    to bf16 where it happens, so only that order gives its images (an SDPA kernel rounds elsewhere)."""
    block, hidden_BCHW = _attention_inputs(1)
    B, C, H, W = hidden_BCHW.shape
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = block(hidden_BCHW)
        q, k, v = (t.reshape(B, C, H * W) for t in block.qkv(block.norm(hidden_BCHW)).chunk(3, dim=1))
        weights = torch.bmm(q.permute(0, 2, 1).contiguous(), k.contiguous()).mul_(C ** -0.5).softmax(dim=2)
        out = torch.bmm(v.contiguous(), weights.permute(0, 2, 1).contiguous())
        expected = hidden_BCHW + block.proj_out(out.reshape(B, C, H, W))
        sdpa = _sdpa_attention(block, hidden_BCHW)
    assert torch.equal(got, expected)
    assert not torch.equal(got, sdpa)  # the order is visible at this precision, so the check above can fail


def test_sampling_step_keeps_the_dtype_of_smoothed_codes_under_autocast(vqvae):
    """Smoothed codes come out of a matmul, bf16 under autocast; the reference upsamples and convolves them in that
    dtype. Without autocast they are cast to the model's dtype (a bf16 model gets float32 smoothed codes)."""
    h_BChw = torch.randn(2, 8, 2, 2, generator=torch.Generator().manual_seed(0)).bfloat16()
    f_hat = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, _ = vqvae.next_scale_input(1, f_hat.clone(), h_BChw)
            expected = f_hat.clone().add_(vqvae.quantizer.apply_phi(1, F.interpolate(h_BChw, size=(4, 4), mode="bicubic")))
            upcast = f_hat.clone().add_(vqvae.quantizer.apply_phi(1, F.interpolate(h_BChw.float(), size=(4, 4), mode="bicubic")))
        plain, _ = vqvae.next_scale_input(1, f_hat.clone(), h_BChw)
    assert torch.equal(got, expected) and not torch.equal(got, upcast)
    torch.testing.assert_close(plain, f_hat + vqvae.quantizer.apply_phi(1, F.interpolate(h_BChw.float(), size=(4, 4), mode="bicubic")))


def test_quantizer_runs_in_full_precision_under_autocast(vqvae, pixel_values):
    """Under autocast the encoder gives a bf16 latent; quantization casts it to the codebook's dtype with autocast
    off (the reference turns autocast off there too, then fails on the bf16 latent)."""
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            f_bf16 = vqvae.encode(pixel_values)
            tokens = vqvae.quantizer.latents_to_tokens(f_bf16)
            reconstruction = vqvae.reconstruct(pixel_values)
        expected = vqvae.quantizer.latents_to_tokens(f_bf16.float())
    assert f_bf16.dtype == torch.bfloat16 and torch.isfinite(reconstruction).all()
    assert all(torch.equal(a, b) for a, b in zip(tokens, expected))
