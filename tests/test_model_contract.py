"""timm's model contract on every `ltvit_*` entrypoint at a tiny size, and the LT-ViT invariants,
run against the installed package."""
import copy

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

import ltvit
from ltvit.model import LTViT, load_pretrained

TINY = dict(img_size=32, patch_size=8, embed_dim=24, depth=3, num_heads=2, n2=2)
ENTRYPOINTS = timm.list_models('ltvit_*')


def test_entrypoints_registered():
    assert ENTRYPOINTS == ['ltvit_base_patch16_224', 'ltvit_small_patch16_224', 'ltvit_tiny_patch16_224']


@pytest.mark.parametrize('name', ENTRYPOINTS)
def test_timm_contract(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, drop_path_rate=0.1, **TINY)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 5) and not torch.isnan(out).any()
    out.sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f'parameters without a gradient: {no_grad}'
    model.eval()
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    assert feats.shape == (2, 5, model.num_features)
    cfg = model.pretrained_cfg
    sd = model.state_dict()
    assert cfg['classifier'] + '.weight' in sd and cfg['first_conv'] + '.weight' in sd
    model.reset_classifier(0)
    assert model(x).shape == (2, 5, model.num_features)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.label_tokens.shape == (1, 3, 24)


@pytest.mark.parametrize('name', ENTRYPOINTS)
def test_usual_timm_kwargs(name):
    m = timm.create_model(name, img_size=48, patch_size=16, embed_dim=32, depth=4, num_heads=4, drop_path_rate=0.2, n2=3)
    assert (m.patch_embed.img_size, m.patch_embed.patch_size, m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads) == \
           ((48, 48), (16, 16), 32, 4, 4)
    assert (m.n1, m.n2, m.num_classes) == (1, 3, 14) and m.label_names == list(ltvit.NIH_LABELS)


@pytest.mark.parametrize('n2', [1, 2, 3])
def test_image_tokens_equal_plain_vit(n2):
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=3, num_heads=2, num_classes=4).eval()
    lt = LTViT.from_vit(vit, 4, n2=n2).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        diff = (lt.forward_features(x)[:, :-4] - vit.forward_features(x)).abs().max().item()
    assert diff < 1e-5


def test_label_gradient_never_reaches_image_tokens():
    lt = timm.create_model('ltvit_tiny_patch16_224', num_classes=3, **TINY)
    x = torch.randn(2, 3, 32, 32)
    img = lt.forward_features(x)[:, :-3]
    g, = torch.autograd.grad(img.sum(), lt.label_tokens)
    assert torch.count_nonzero(g) == 0


def test_training_uses_fused_attention_and_extraction_restores_it():
    lt = timm.create_model('ltvit_tiny_patch16_224', num_classes=3, **TINY).eval()
    fused = [b.attn.fused_attn for b in lt.blocks]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = lt(x); out = lt.forward_lt(x, return_attention=True); after = lt(x)
    assert torch.equal(before, after) and [b.attn.fused_attn for b in lt.blocks] == fused
    assert len(out['attention']) == 2 and out['attention'][0].shape == (1, 2, 17 + 3, 17 + 3)
