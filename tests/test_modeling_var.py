"""Tests of the VAR transformer at tiny sizes (depth 2, width 32, scales (1, 2, 4): 21 tokens, 32 codes)."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel

from var_hf import NAMED_VAR_CONFIGS, PATCH_NUMS_256, PATCH_NUMS_512, VARKVCache, VARTransformer, VARTransformerConfig
from var_hf.modeling_var import EAGER_BLOCK_OPS

VARIANTS = {
    "l2norm": dict(),
    "shared_aln": dict(shared_aln=True),
    "plain_attention": dict(attn_l2_norm=False),
}


@pytest.fixture
def make_model(var_config_factory, perturb):
    def make(**overrides):
        torch.manual_seed(0)
        return perturb(VARTransformer(var_config_factory(**overrides))).eval()

    return make


def make_inputs(config, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    class_labels = torch.randint(0, config.num_classes, (batch,), generator=gen)
    tf_input = torch.randn(batch, config.seq_len - config.first_len, config.vq_embed_dim, generator=gen)
    labels = torch.randint(0, config.vocab_size, (batch, config.seq_len), generator=gen)
    return class_labels, tf_input, labels


def incremental_logits(model, class_labels, tf_input, kv_cache):
    """The sampling path: scale 0 from the class, then each scale from its teacher-forcing rows, with a KV cache."""
    cfg = model.config
    cond_BD = model.embed_class(class_labels)
    logits = [model.forward_scale(model.embed_first_scale(cond_BD), cond_BD, kv_cache)]
    for si in range(1, cfg.num_scales):
        begin, end = cfg.scale_boundaries[si]
        rows_BlC = tf_input[:, begin - cfg.first_len : end - cfg.first_len]
        logits.append(model.forward_scale(model.embed_next_scale(si, rows_BlC), cond_BD, kv_cache))
    return torch.cat(logits, dim=1)


# ----------------------------------------------------------------------------------------------------------------------
# Forward pass
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_and_loss(make_model, variant):
    model = make_model(**VARIANTS[variant])
    cfg = model.config
    class_labels, tf_input, labels = make_inputs(cfg)
    out = model(class_labels, tf_input, labels=labels)
    assert out.logits.shape == (2, cfg.seq_len, cfg.vocab_size) and out.logits.dtype == torch.float32
    assert torch.isfinite(out.loss)
    expected = F.cross_entropy(out.logits.reshape(-1, cfg.vocab_size), labels.reshape(-1))
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=0)
    # Labels may also come as the list of token maps.
    token_maps = list(labels.split([pn * pn for pn in cfg.patch_nums], dim=1))
    torch.testing.assert_close(model(class_labels, tf_input, labels=token_maps).loss, expected, rtol=0, atol=0)


def test_label_smoothing_and_return_tuple(make_model):
    model = make_model(label_smoothing=0.1)
    class_labels, tf_input, labels = make_inputs(model.config)
    loss, logits = model(class_labels, tf_input, labels=labels, return_dict=False)
    expected = F.cross_entropy(logits.reshape(-1, 32), labels.reshape(-1), label_smoothing=0.1)
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    hidden = model(class_labels, tf_input, output_hidden_states=True).hidden_states
    assert hidden.shape == (2, model.config.seq_len, model.config.embed_dim)


def test_variant_parameters(make_model):
    shared = make_model(shared_aln=True)
    assert shared.shared_adaln is not None and all(hasattr(b, "adaln_table") for b in shared.blocks)
    assert not any(".adaln.linear" in k for k in shared.state_dict() if k.startswith("blocks."))
    plain = make_model(attn_l2_norm=False)
    assert not any("log_scale" in k for k in plain.state_dict())


def test_batch_equals_single(make_model):
    model = make_model()
    class_labels, tf_input, _ = make_inputs(model.config, batch=3)
    batch = model(class_labels, tf_input).logits
    for b in range(3):
        single = model(class_labels[b : b + 1], tf_input[b : b + 1]).logits
        torch.testing.assert_close(single[0], batch[b], rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_block_causal(make_model, variant):
    """Perturbing the inputs of scale k leaves every logit of the coarser scales unchanged and moves scale k's."""
    model = make_model(**VARIANTS[variant])
    cfg = model.config
    class_labels, tf_input, _ = make_inputs(cfg)
    logits = model(class_labels, tf_input).logits
    for k in range(1, cfg.num_scales):
        begin, end = cfg.scale_boundaries[k]
        perturbed = tf_input.clone()
        perturbed[:, begin - cfg.first_len : end - cfg.first_len] += 1.0
        new_logits = model(class_labels, perturbed).logits
        torch.testing.assert_close(new_logits[:, :begin], logits[:, :begin], rtol=0, atol=1e-6)
        assert (new_logits[:, begin:end] - logits[:, begin:end]).abs().max() > 1e-3, f"scale {k} ignores its input"


def test_tokens_attend_within_their_scale(make_model):
    """Inside a scale attention is bidirectional: changing the last token of scale 2 moves its first token's logits."""
    model = make_model()
    cfg = model.config
    class_labels, tf_input, _ = make_inputs(cfg)
    begin, end = cfg.scale_boundaries[2]
    perturbed = tf_input.clone()
    perturbed[:, end - 1 - cfg.first_len] += 1.0
    delta = (model(class_labels, perturbed).logits - model(class_labels, tf_input).logits)[:, begin]
    assert delta.abs().max() > 1e-4


# ----------------------------------------------------------------------------------------------------------------------
# KV cache
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preallocate", [True, False])
@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_matches_full_forward(make_model, variant, preallocate):
    model = make_model(**VARIANTS[variant])
    class_labels, tf_input, _ = make_inputs(model.config)
    full = model(class_labels, tf_input).logits
    with torch.no_grad():
        incremental = incremental_logits(model, class_labels, tf_input, model.new_kv_cache(preallocate=preallocate))
    torch.testing.assert_close(incremental, full, rtol=0, atol=1e-5)


def test_kv_cache_is_needed(make_model):
    """Without the cache a scale sees only itself, so the logits change: the equality above is not vacuous."""
    model = make_model()
    class_labels, tf_input, _ = make_inputs(model.config)
    full = model(class_labels, tf_input).logits
    with torch.no_grad():
        uncached = incremental_logits(model, class_labels, tf_input, kv_cache=None)
    begin = model.config.scale_boundaries[1][0]
    torch.testing.assert_close(uncached[:, :begin], full[:, :begin], rtol=0, atol=1e-5)
    assert (uncached[:, begin:] - full[:, begin:]).abs().max() > 1e-3


def test_kv_cache_bookkeeping(make_model):
    model = make_model()
    class_labels, tf_input, _ = make_inputs(model.config)
    cache = VARKVCache(model.config.depth)
    with torch.no_grad():
        incremental_logits(model, class_labels, tf_input, cache)
    assert cache.get_seq_length(0) == cache.get_seq_length(1) == model.config.seq_len
    assert cache.keys[0].shape == (2, model.config.num_heads, model.config.seq_len, 16)


# ----------------------------------------------------------------------------------------------------------------------
# Class dropout
# ----------------------------------------------------------------------------------------------------------------------


def test_class_dropout_only_in_training(make_model):
    model = make_model(cond_drop_rate=1.0)
    cfg = model.config
    class_labels, tf_input, _ = make_inputs(cfg)
    eval_logits = model(class_labels, tf_input).logits
    torch.testing.assert_close(model(class_labels, tf_input).logits, eval_logits, rtol=0, atol=0)
    null_logits = model(torch.full_like(class_labels, cfg.null_class), tf_input).logits
    assert (eval_logits - null_logits).abs().max() > 1e-3, "eval mode must keep the labels"

    model.train()  # every label is dropped to the null class; nothing else is random in this config
    torch.testing.assert_close(model(class_labels, tf_input).logits, null_logits, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Saving, loading, initialisation
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["l2norm", "shared_aln"])
def test_save_load_round_trip(make_model, variant, tmp_path):
    model = make_model(**VARIANTS[variant])
    model.save_pretrained(tmp_path)
    loaded = VARTransformer.from_pretrained(tmp_path).eval()
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    # from_pretrained must not re-run _init_weights on loaded tensors (the perturbed values would be lost).
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)
    class_labels, tf_input, _ = make_inputs(model.config)
    assert torch.equal(model(class_labels, tf_input).logits, loaded(class_labels, tf_input).logits)

    auto = AutoModel.from_pretrained(tmp_path)
    assert type(auto) is VARTransformer and auto.config.shared_aln == model.config.shared_aln


def _init_stats(model):
    cfg = model.config
    C, std = cfg.embed_dim, math.sqrt(1 / (3 * cfg.embed_dim))
    assert model.head.weight.std().item() == pytest.approx(cfg.init_head * std, rel=0.15)
    assert model.head.bias.abs().max() == 0
    for block in model.blocks:
        assert block.attn.proj.weight.std().item() == pytest.approx(std / math.sqrt(2 * cfg.depth), rel=0.15)
        assert block.mlp.fc2.weight.std().item() == pytest.approx(std / math.sqrt(2 * cfg.depth), rel=0.15)
        assert block.mlp.fc1.weight.std().item() == pytest.approx(std, rel=0.15)
        if cfg.attn_l2_norm:
            torch.testing.assert_close(block.attn.log_scale, torch.full_like(block.attn.log_scale, math.log(4.0)))
        if cfg.shared_aln:
            gammas, scales = block.adaln_table[0, 0, :2], block.adaln_table[0, 0, 2:]
            assert scales.std().item() == pytest.approx(cfg.init_adaln / math.sqrt(C), rel=0.15)
        else:
            weight = block.adaln.linear.weight  # rows: gamma1, gamma2 | scale1, scale2, shift1, shift2
            gammas, scales = weight[: 2 * C], weight[2 * C :]
            assert scales.std().item() == pytest.approx(cfg.init_adaln * std, rel=0.15)
        assert gammas.std() < 1e-3 * scales.std(), "residual gates must start near zero"
    assert model.head_norm.adaln.linear.weight.std().item() == pytest.approx(cfg.init_adaln * std, rel=0.15)
    assert model.class_embedding.weight.std().item() == pytest.approx(std, rel=0.15)


def test_init_weights_shared_aln(var_config_factory):
    torch.manual_seed(0)
    _init_stats(VARTransformer(var_config_factory(vocab_size=64, embed_dim=64, num_heads=2, shared_aln=True)))


def test_init_weights(var_config_factory):
    torch.manual_seed(0)
    _init_stats(VARTransformer(var_config_factory(vocab_size=64, embed_dim=64, num_heads=2)))


def test_named_configs():
    d16 = VARTransformerConfig.from_named("var_d16")
    assert (d16.depth, d16.embed_dim, d16.num_heads, d16.seq_len, d16.patch_nums) == (
        16, 1024, 16, 680, list(PATCH_NUMS_256)
    )
    assert d16.drop_path_rate == pytest.approx(0.1 * 16 / 24)
    d36 = VARTransformerConfig.from_named("var_d36")
    assert d36.shared_aln and d36.seq_len == 2240 and d36.patch_nums == list(PATCH_NUMS_512)
    assert set(NAMED_VAR_CONFIGS) == {"var_d16", "var_d20", "var_d24", "var_d30", "var_d36"}
    with pytest.raises(ValueError, match="divisible"):
        VARTransformerConfig(depth=2, embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="Unknown VAR name"):
        VARTransformerConfig.from_named("var_d17")


# ----------------------------------------------------------------------------------------------------------------------
# Gradient checkpointing
# ----------------------------------------------------------------------------------------------------------------------


def _enable_checkpointing(model):
    # transformers 5 names it activation checkpointing; gradient_checkpointing_enable is its deprecated alias.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable()
    else:
        model.gradient_checkpointing_enable()


def test_gradient_checkpointing(make_model):
    model = make_model(cond_drop_rate=0.0).train()
    class_labels, tf_input, labels = make_inputs(model.config)
    calls = []
    model.blocks[0].attn.register_forward_hook(lambda *args: calls.append(1))

    loss = model(class_labels, tf_input, labels=labels).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert len(calls) == 1
    model.zero_grad()

    _enable_checkpointing(model)
    calls.clear()
    loss_ckpt = model(class_labels, tf_input, labels=labels).loss
    loss_ckpt.backward()
    assert len(calls) == 2, "the block should be recomputed in the backward pass"
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], rtol=0, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, 7])
def test_class_labels_out_of_range(make_model, bad):
    model = make_model()  # 6 classes: ids 0..5, 6 is the null class
    _, tf_input, _ = make_inputs(model.config)
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 6\]"):
        model(torch.tensor([0, bad]), tf_input)


def test_class_labels_shape(make_model):
    model = make_model()
    _, tf_input, _ = make_inputs(model.config)
    with pytest.raises(ValueError, match="class_labels must be a 1-D"):
        model(torch.tensor([[0], [1]]), tf_input)


@pytest.mark.parametrize("bad", [-3, 32])
def test_labels_out_of_range(make_model, bad):
    model = make_model()
    class_labels, tf_input, labels = make_inputs(model.config)
    labels[1, 5] = bad
    with pytest.raises(ValueError, match="labels"):
        model(class_labels, tf_input, labels=labels)


@pytest.mark.parametrize("shape", [(2, 21, 8), (2, 20, 4), (3, 20, 8), (20, 8)])
def test_teacher_forcing_input_shape(make_model, shape):
    model = make_model()
    with pytest.raises(ValueError, match=r"teacher_forcing_input must have shape \(2, 20, 8\)"):
        model(torch.tensor([0, 1]), torch.zeros(shape))


@pytest.mark.parametrize("shape", [(2, 20), (1, 21), (2, 21, 1)])
def test_labels_shape(make_model, shape):
    model = make_model()
    class_labels, tf_input, _ = make_inputs(model.config)
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 21\)"):
        model(class_labels, tf_input, labels=torch.zeros(shape, dtype=torch.long))


# ----------------------------------------------------------------------------------------------------------------------
# Real size
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_var_d16_forward_real_size():
    """The official d16 shapes (310M parameters) with random weights: one float32 forward at batch 1."""
    torch.manual_seed(0)
    model = VARTransformer(VARTransformerConfig.from_named("var_d16")).eval()
    assert 300e6 < sum(p.numel() for p in model.parameters()) < 320e6
    class_labels, tf_input, labels = make_inputs(model.config, batch=1)
    with torch.no_grad():
        out = model(class_labels, tf_input, labels=labels)
    assert out.logits.shape == (1, 680, 4096) and torch.isfinite(out.loss)


@pytest.mark.parametrize("variant", ["l2norm", "shared_aln"])
def test_training_forward_compiles_without_graph_breaks(make_model, variant):
    """`--compile` must capture the whole training forward and loss (dynamo tracing only, backend="eager")."""
    torch._dynamo.reset()
    model = make_model(**VARIANTS[variant]).train()
    class_labels, tf_input, labels = make_inputs(model.config)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    loss = compiled(class_labels, tf_input, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(class_labels, tf_input).logits, model(class_labels, tf_input).logits)


def _traced_graphs(model, config):
    """Run a teacher-forced pass and a cached scale-by-scale pass; return (logits, cached logits, unique graphs)."""
    from torch._dynamo.utils import counters

    class_labels, tf_input, _ = make_inputs(config)
    with torch.no_grad():
        full = model(class_labels, tf_input).logits
        cached = incremental_logits(model, class_labels, tf_input, model.new_kv_cache())
    return full, cached, counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("variant", ["l2norm", "shared_aln", "plain_attention"])
def test_compile_blocks_traces_once_for_all_blocks_and_scales(make_model, variant):
    """The compiled pieces must see no per-block or per-scale Python state: the number of graphs may not grow with
    depth, and tracing (backend="eager") must not change a bit."""
    from torch._dynamo.utils import counters

    graphs = []
    for depth in (2, 4):
        torch._dynamo.reset()
        counters.clear()
        model = make_model(depth=depth, patch_nums=(1, 2, 3, 4, 5), **VARIANTS[variant])
        eager_full, eager_cached, _ = _traced_graphs(model, model.config)
        model.compile_blocks(backend="eager", fullgraph=True)
        full, cached, num_graphs = _traced_graphs(model, model.config)
        assert torch.equal(full, eager_full) and torch.equal(cached, eager_cached)
        graphs.append(num_graphs)
    assert 0 < graphs[0] == graphs[1] <= 10
    model.compile_blocks(False)
    assert all(block.ops is EAGER_BLOCK_OPS for block in model.blocks) and model.head_norm.ops is EAGER_BLOCK_OPS


def test_compiled_blocks_train_like_eager_blocks(make_model):
    torch._dynamo.reset()
    losses, grads = [], []
    for compiled in (False, True):
        model = make_model(drop_path_rate=0.0).train()
        if compiled:
            model.compile_blocks(backend="eager", fullgraph=True)
        class_labels, tf_input, labels = make_inputs(model.config)
        torch.manual_seed(1)  # class dropout draws
        loss = model(class_labels, tf_input, labels=labels).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.blocks[0].mlp.fc1.weight.grad.clone())
    assert torch.equal(losses[0], losses[1]) and torch.equal(grads[0], grads[1])


def test_selective_checkpointing_compiles_without_graph_breaks(make_model):
    """`--selective_checkpointing --compile`: the checkpoint policy must be traceable (a plain function)."""
    torch._dynamo.reset()
    grads = []
    for compiled in (False, True):
        model = make_model().train()
        model.config.cond_drop_rate = 0.0
        model.enable_selective_checkpointing()
        class_labels, tf_input, labels = make_inputs(model.config)
        run = torch.compile(model, backend="eager", fullgraph=True) if compiled else model
        run(class_labels, tf_input, labels=labels).loss.backward()
        grads.append(model.blocks[1].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_attention_gate_rounds_like_an_in_place_mul_under_autocast(make_model):
    """The reference gates the attention output in place (`attn(...).mul_(gamma1)`), which keeps the output's bf16
    under autocast even where the gates are float32 (shared AdaLN adds a float32 table); the MLP output is gated out
    of place and promotes. Images under autocast depend on that rounding."""
    model = make_model(shared_aln=True)
    block, C = model.blocks[0], model.config.embed_dim
    hidden_BLC = torch.randn(2, 5, C, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cond = model.condition_for_blocks(model.embed_class(torch.tensor([0, 1])))
        got = block(hidden_BLC, block.modulation(cond))

        gamma1, gamma2, scale1, scale2, shift1, shift2 = (block.adaln_table + cond).unbind(2)
        attn_out = block.attn(F.layer_norm(hidden_BLC, (C,), eps=block.ln.eps).mul(scale1.add(1)).add_(shift1))
        assert attn_out.dtype == torch.bfloat16 and gamma1.dtype == torch.float32  # the case that matters
        promoted = hidden_BLC + attn_out.mul(gamma1)
        after_attn = hidden_BLC + attn_out.clone().mul_(gamma1)
        mlp_in = F.layer_norm(after_attn, (C,), eps=block.ln.eps).mul(scale2.add(1)).add_(shift2)
        expected = after_attn + block.mlp(mlp_in).mul(gamma2)
    assert torch.equal(got, expected)
    assert not torch.equal(after_attn, promoted)  # the rounding is visible here, so the check above can fail


@pytest.mark.parametrize("variant", ["l2norm", "shared_aln"])
def test_training_forward_under_autocast_runs_the_residual_stream_in_the_autocast_dtype(make_model, variant):
    """As the reference's `VAR.forward`: inputs built with autocast off (float32 word embedding), then the residual
    stream and the block condition cast to the autocast dtype, and logits from the float32 upcast of the last
    block's output."""
    model = make_model(**VARIANTS[variant])
    class_labels, tf_input, _ = make_inputs(model.config)
    seen = {}
    first, last = model.blocks[0], model.blocks[-1]
    first.register_forward_hook(lambda m, args, out: seen.update(first_in=args[0], modulation=args[1]))
    last.register_forward_hook(lambda m, args, out: seen.update(last_out=out))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(class_labels, tf_input).logits
        cond_BD = model.embed_class(class_labels)
        expected_logits = model.logits(seen["last_out"].float(), cond_BD)
        expected_modulation = first.modulation(model.condition_for_blocks(cond_BD).to(torch.bfloat16))
    with torch.no_grad():
        cfg = model.config
        sos = cond_BD.unsqueeze(1).expand(-1, cfg.first_len, -1) + model.pos_start
        x_BLC = torch.cat((sos, model.word_embed(tf_input)), dim=1) + model.level_pos_embedding()
    assert seen["first_in"].dtype == torch.bfloat16
    assert torch.equal(seen["modulation"], expected_modulation)  # from the condition cast to bf16, as the reference
    assert torch.equal(seen["first_in"], x_BLC.to(torch.bfloat16))
    assert torch.equal(logits, expected_logits)
    # Per-block AdaLN keeps the stream in bf16; shared AdaLN's float32 gates promote it, in the reference too.
    assert seen["last_out"].dtype == (torch.float32 if model.config.shared_aln else torch.bfloat16)
