import pytest
import torch
import torch.nn.functional as F

from grok_tune.model import ModelConfig, Transformer


def paper_model() -> Transformer:
    return Transformer(ModelConfig(vocab_size=99, num_classes=97))


def test_paper_model_size():
    model = paper_model()
    # per block: attention 4·128² + 4·128, MLP 2·128·512 + 512 + 128, two LayerNorms 4·128
    block = 4 * 128 * 128 + 4 * 128 + 2 * 128 * 512 + 512 + 128 + 4 * 128
    assert model.num_params(non_embedding=True) == 2 * block + 2 * 128 + 128 * 97 + 97
    assert 4.0e5 < model.num_params() < 4.3e5  # "about 400k", Power et al.


def test_nanda_variant_has_no_layer_norm():
    model = Transformer(ModelConfig(vocab_size=115, num_classes=113, n_layers=1, layer_norm=False))
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert len(model.blocks) == 1


def reference_forward(model: Transformer, idx: torch.Tensor) -> torch.Tensor:
    """The obvious computation: every layer on every position, causal mask, then the last
    n_predict positions."""
    x = model.tok_emb(idx) + model.pos_emb.weight[: idx.shape[1]]
    norm = model.cfg.block_norm
    for block in model.blocks:
        B, T, C = x.shape

        def attention(h: torch.Tensor, block=block, B=B, T=T, C=C) -> torch.Tensor:
            q, k, v = block.attn.qkv(h).split(C, dim=2)
            q, k, v = (t.view(B, T, block.attn.n_heads, -1).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return block.attn.proj(y.transpose(1, 2).reshape(B, T, C))

        if norm == "post":  # nn.TransformerEncoderLayer(norm_first=False)
            x = block.ln1(x + attention(x))
            if block.mlp is not None:
                x = block.ln2(x + block.mlp(x))
            continue
        if norm == "stream":  # Grokfast: x = ln_1(x); x = x + attn(x)
            x = block.ln1(x)
            x = x + attention(x)
        else:
            x = x + attention(block.ln1(x))
        if block.mlp is not None:
            x = x + block.mlp(block.ln2(x))
    return model.head(model.ln_f(x))[:, -model.cfg.n_predict :]


# (n_positions, n_predict, shared_prefix, d_mlp): a table, a table without the operator token,
# a sum's answer digits, an attention-only model predicting every position
LAYOUTS = [(4, 1, 2, 512), (3, 1, 1, 512), (8, 3, 0, 64), (9, 9, 0, 0), (6, 3, 2, 32)]


@pytest.mark.parametrize("layout", LAYOUTS, ids=["table", "a b =", "digits", "all", "prefix+3"])
@pytest.mark.parametrize("shared_prefix", [True, False])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("block_norm", ["pre", "post", "stream"])
def test_shortcuts_are_exact(block_norm, n_layers, shared_prefix, layout):
    n_positions, n_predict, prefix, d_mlp = layout
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=13,
        num_classes=11,
        n_positions=n_positions,
        n_predict=n_predict,
        shared_prefix=prefix if shared_prefix else 0,
        n_layers=n_layers,
        d_mlp=d_mlp,
        block_norm=block_norm,
    )
    model = Transformer(cfg)
    if block_norm == "post":
        assert isinstance(model.ln_f, torch.nn.Identity)  # nn.TransformerEncoder: no final norm
    # few distinct prefixes, as in a table: rows share them
    idx = torch.randint(0, 13, (64, n_positions))
    idx[:, :2] = torch.randint(0, 3, (64, 2))
    out, ref = model(idx), reference_forward(model, idx)
    assert out.shape == (64, n_predict, 11)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # and the gradients: every row's share of its prefix flows back to the shared computation
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    grads_ref = torch.autograd.grad(ref.square().sum(), list(model.parameters()))
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


def test_attention_only_blocks_have_no_mlp():
    model = Transformer(ModelConfig(vocab_size=13, num_classes=13, d_mlp=0, n_layers=2))
    assert all(b.mlp is None for b in model.blocks)
    assert not any(isinstance(x, torch.nn.ReLU) for x in model.modules())


def test_model_defaults_are_the_settings_defaults():
    # TrainConfig owns the knobs and their defaults; the model reads them from there
    import dataclasses

    from grok_tune.config import TrainConfig

    for field in dataclasses.fields(ModelConfig):
        if field.name in TrainConfig.model_fields and field.name != "n_positions":
            assert field.default == TrainConfig.model_fields[field.name].default, field.name


def test_dropout_runs_every_row_on_its_own():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=13, num_classes=11, dropout=0.5, shared_prefix=2))
    idx = torch.tensor([[1, 11, 2, 12]] * 2)
    # shared prefixes would give both rows the same dropout mask, hence the same logits
    assert not torch.allclose(*model(idx))
    torch.testing.assert_close(*model.eval()(idx))


def test_attention_is_causal():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=13, num_classes=11, n_layers=2)).eval()
    a = torch.tensor([[1, 11, 2, 12]])
    # changing a later token must not change an earlier position's state in layer one
    h1, _ = model.blocks[0](model.tok_emb(a) + model.pos_emb.weight)
    b = a.clone()
    b[0, 2] = 5
    h2, _ = model.blocks[0](model.tok_emb(b) + model.pos_emb.weight)
    torch.testing.assert_close(h1[:, :2], h2[:, :2])
    assert not torch.allclose(h1[:, 2:], h2[:, 2:])


def test_decay_scopes():
    model = paper_model()
    total = model.num_params()

    def decayed(scope):
        groups = model.param_groups(1.0, scope)
        assert groups[1]["weight_decay"] == 0.0
        assert sum(p.numel() for g in groups for p in g["params"]) == total
        return sum(p.numel() for p in groups[0]["params"])

    embeddings = 99 * 128 + 4 * 128
    vectors = sum(p.numel() for p in model.parameters() if p.dim() < 2)
    assert decayed("all") == total
    assert decayed("matrices") == total - vectors
    assert decayed("matrices_except_embeddings") == total - vectors - embeddings


def test_init_scale_multiplies_weights():
    torch.manual_seed(0)
    a = Transformer(ModelConfig(vocab_size=9, num_classes=7))
    torch.manual_seed(0)
    b = Transformer(ModelConfig(vocab_size=9, num_classes=7, init_scale=3.0))
    torch.testing.assert_close(b.head.weight, 3 * a.head.weight)


def test_xavier_attention_is_multihead_attentions_init():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=13, num_classes=11, attn_init="xavier"))
    torch.manual_seed(0)
    plain = Transformer(ModelConfig(vocab_size=13, num_classes=11))
    mha = torch.nn.MultiheadAttention(128, 4)
    for block, other in zip(model.blocks, plain.blocks, strict=True):
        w = block.attn.qkv.weight
        bound = (6 / (128 + 3 * 128)) ** 0.5  # Xavier over the (3d, d) in_proj as one matrix
        assert w.shape == mha.in_proj_weight.shape and w.abs().max() <= bound
        assert w.abs().max() > 0.9 * bound
        assert not block.attn.qkv.bias.any() and not block.attn.proj.bias.any()
        assert not mha.in_proj_bias.any() and not mha.out_proj.bias.any()
        # what MultiheadAttention leaves at nn.Linear's default is left alone
        torch.testing.assert_close(block.mlp[0].weight.std(), other.mlp[0].weight.std())
