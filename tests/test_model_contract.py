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


def _layouts(sd):
    "The checkpoint layouts ltvit loads, built from one timm state dict."
    return {
        'timm.pth': ('pth', sd),
        'timm.safetensors': ('safetensors', sd),
        'dino_teacher.pth': ('pth', {'teacher': {f'backbone.{k}': v for k, v in sd.items()},
                                     'student': {f'module.backbone.{k}': v * 0 for k, v in sd.items()}, 'epoch': 3}),
        'dino_student.pth': ('pth', {'student': {f'module.backbone.{k}': v for k, v in sd.items()},
                                     'teacher': {f'backbone.{k}': v * 0 for k, v in sd.items()}}),
        'mae.pth': ('pth', {'model': {**sd, 'mask_token': torch.zeros(1, 1, 24), 'decoder_embed.weight': torch.zeros(8, 24),
                                      'decoder_pred.bias': torch.zeros(8)}, 'args': 'ignored'}),
    }


@pytest.mark.parametrize('layout', list(_layouts({})))
def test_load_every_checkpoint_layout(layout, tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(1)
    src = VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=3, num_heads=2, num_classes=0)
    sd = src.state_dict()
    kind, obj = _layouts(sd)[layout]
    f = tmp_path / layout
    if kind == 'safetensors': save_file({k: v.contiguous() for k, v in obj.items()}, str(f))
    else: torch.save(obj, f)
    model = timm.create_model('ltvit_tiny_patch16_224', num_classes=4, **TINY)
    rep = load_pretrained(model, f, dino_key='student' if 'student' in layout else 'teacher', verbose=False)
    own = model.state_dict()
    for k, v in sd.items(): assert torch.equal(own[k], v), (layout, k)
    assert set(rep.new) == {'label_tokens', 'head.weight', 'head.bias', 'label_norms.1.weight', 'label_norms.1.bias',
                            'label_norms.2.weight', 'label_norms.2.bias'}
    assert torch.equal(model.label_norms['2'].weight, src.blocks[2].norm1.weight)  # label norms start as norm1 copies


def test_plain_vit_baseline_loads_the_same_files(tmp_path):
    src = VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=3, num_heads=2, num_classes=0)
    torch.save(src.state_dict(), tmp_path / 'w.pth')
    vit = timm.create_model('vit_tiny_patch16_224', img_size=64, patch_size=8, embed_dim=24, depth=3, num_heads=2, num_classes=5)
    rep = load_pretrained(vit, tmp_path / 'w.pth', verbose=False)
    assert set(rep.new) == {'head.weight', 'head.bias'} and vit.pos_embed.shape == (1, 65, 24)
    assert any('resampled from a 4x4 grid to 8x8' in n for n in rep.notes)
