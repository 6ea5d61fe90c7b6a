"""timm's model contract on every `ltvit_*` entrypoint at a tiny size, and the LT-ViT invariants,
run against the installed package."""
import argparse
import copy

import pytest
import timm
import torch
from timm.layers.attention import Attention
from timm.models.vision_transformer import VisionTransformer
from torchvision.models.feature_extraction import create_feature_extractor

import ltvit
from ltvit.checkpoint import load_pretrained
from ltvit.model import LTViT

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
    model.reset_classifier(0)  # timm's embedding model: pooled features, no classes
    assert model(x).shape == (2, model.num_features) and model.num_classes == 0
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
    assert len(out['attention']) == 2 and out['attention'][0].shape == (1, 2, 3, 17 + 3)  # label-query rows


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
                                      'decoder_pred.bias': torch.zeros(8)}, 'epoch': 3,
                             'args': argparse.Namespace(model='mae_vit_tiny', mask_ratio=0.75)}),
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
    assert set(rep.new) == {'label_tokens', 'head.weight', 'head.bias', 'blocks.1.norm_label.weight', 'blocks.1.norm_label.bias',
                            'blocks.2.norm_label.weight', 'blocks.2.norm_label.bias'}
    assert torch.equal(model.blocks[2].norm_label.weight, src.blocks[2].norm1.weight)  # label norms start as norm1 copies


def test_plain_vit_baseline_loads_the_same_files(tmp_path):
    src = VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=3, num_heads=2, num_classes=0)
    torch.save(src.state_dict(), tmp_path / 'w.pth')
    vit = timm.create_model('vit_tiny_patch16_224', img_size=64, patch_size=8, embed_dim=24, depth=3, num_heads=2, num_classes=5)
    rep = load_pretrained(vit, tmp_path / 'w.pth', verbose=False)
    assert set(rep.new) == {'head.weight', 'head.bias'} and vit.pos_embed.shape == (1, 65, 24)
    assert any('resampled from a 4x4 grid to 8x8' in n for n in rep.notes)


@pytest.mark.parametrize('name', ENTRYPOINTS)
def test_pretrained_true_loads_a_vit_through_timm(name, tmp_path):
    "`pretrained=True` is timm's path (`build_model_with_cfg` + the filter); a local file stands in for the hub."
    from safetensors.torch import save_file
    torch.manual_seed(3)
    src = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, embed_dim=24, depth=3, num_heads=2)
    save_file(src.state_dict(), str(tmp_path / 'vit.safetensors'))  # with its 1000-class head, as the hub's
    assert timm.get_pretrained_cfg(name).hf_hub_id == f"timm/{name.replace('ltvit', 'vit')}.augreg_in21k_ft_in1k"
    for n_labels in (14, 3):
        torch.manual_seed(0)
        fresh = timm.create_model(name, num_classes=n_labels, label_init='cls', **dict(TINY, img_size=48))
        torch.manual_seed(0)
        m = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'vit.safetensors')),
                              num_classes=n_labels, label_init='cls', **dict(TINY, img_size=48))
        own = m.state_dict()
        for k, v in src.state_dict().items():
            if k == 'pos_embed': assert own[k].shape == (1, 1 + 36, 24)  # 4x4 resampled to 6x6
            elif not k.startswith('head.'): assert torch.equal(own[k], v), k
        assert torch.equal(own['head.weight'], fresh.state_dict()['head.weight'])  # the head is new, not the ViT's
        assert torch.equal(m.blocks[2].norm_label.bias, src.blocks[2].norm1.bias)
        assert torch.allclose(m.label_tokens[0, 1], src.cls_token[0, 0] + own['pos_embed'][0, 0])
    with pytest.raises(RuntimeError, match='pretrained_cfg_overlay'):  # offline: says what to do instead
        timm.create_model(name, pretrained=True, **TINY)


# --- timm's hooks, on every entrypoint and on models built with from_vit -----------------------------------------
CONFIGS = {'reuse': {}, 'fresh': dict(reuse_blocks=False), 'split': dict(attn_impl='split'), 'no_label_attn': dict(label_attn=False)}


def _models(config):
    "The same LT-ViT configuration from each entrypoint and from `LTViT.from_vit`."
    torch.manual_seed(0)
    out = {name: timm.create_model(name, num_classes=4, **TINY, **CONFIGS[config]) for name in ENTRYPOINTS}
    vit = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, embed_dim=24, depth=3, num_heads=2, num_classes=0)
    out['from_vit'] = LTViT.from_vit(vit, 4, n2=2, **CONFIGS[config])
    return out


def _each_eval_model(config):
    "(name, model in eval mode) for every way of building `config`, with one input batch."
    x = torch.randn(2, 3, 32, 32)
    return x, [(name, model.eval()) for name, model in _models(config).items()]


def _saved_bytes(model, x):
    "Bytes autograd saves for the backward pass of `model(x).sum()` (then runs the backward)."
    total = [0]
    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).sum()
    loss.backward()
    return total[0]


@pytest.mark.parametrize('config', ['reuse', 'fresh'])
def test_grad_checkpointing_same_gradients_less_memory(config):
    x = torch.randn(4, 3, 32, 32)
    for name, model in _models(config).items():
        model.train()
        ck = copy.deepcopy(model)
        ck.set_grad_checkpointing(True)
        plain, saved = _saved_bytes(model, x), _saved_bytes(ck, x)
        assert saved < 0.5 * plain, (name, saved, plain)
        for (n, p), q in zip(model.named_parameters(), ck.parameters()):
            assert torch.allclose(p.grad, q.grad, atol=1e-6), (name, n)


@pytest.mark.parametrize('config', list(CONFIGS))
def test_forward_intermediates_and_pruning_agree_with_forward(config):
    x, models = _each_eval_model(config)
    for name, model in models:
        with torch.no_grad():
            final, inter = model.forward_intermediates(x, indices=[0, 2])
            assert torch.equal(model.forward_head(final), model(x)), name
            assert final.shape == (2, 17 + 4, 24) and [t.shape for t in inter] == [(2, 24, 4, 4)] * 2
            vit_like = model.forward_intermediates(x, indices=[0], intermediates_only=True)[0]
        pruned = copy.deepcopy(model)
        pruned.prune_intermediate_layers([0])
        with pytest.raises(RuntimeError, match='pruned'): pruned(x)
        with pytest.raises(ValueError, match='need every block'): pruned.forward_intermediates(x, [0])
        with torch.no_grad():
            assert torch.allclose(pruned.forward_intermediates(x, [0], intermediates_only=True)[0], vit_like, atol=1e-6)


@pytest.mark.parametrize('feature_cls', ['getter', 'fx'])
def test_features_only(feature_cls):
    x = torch.randn(2, 3, 32, 32)
    for name in ENTRYPOINTS:
        torch.manual_seed(0)
        ref = timm.create_model(name, num_classes=4, **TINY).eval()
        torch.manual_seed(0)
        fe = timm.create_model(name, num_classes=4, features_only=True, feature_cls=feature_cls, out_indices=(0, 1, 2), **TINY).eval()
        with torch.no_grad():
            feats = fe(x)
            want = ref.forward_intermediates(x, indices=[0, 1, 2], intermediates_only=True, output_fmt='NLC')
        assert len(feats) == 3
        for f, w in zip(feats, want):
            if feature_cls == 'getter': assert f.shape == (2, 24, 4, 4) and torch.allclose(f.flatten(2).transpose(1, 2), w, atol=1e-5)
            else: assert torch.allclose(f[:, 1:17], w, atol=1e-5)  # raw block outputs: CLS, patches (then labels in LT blocks)


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')  # deprecated, still supported: tested as timm tests it
@pytest.mark.parametrize('config', list(CONFIGS))
def test_torchscript_and_fx_match_eager(config):
    x, models = _each_eval_model(config)
    for name, model in models:
        with torch.no_grad():
            ref = model(x)
            assert torch.allclose(torch.jit.script(model)(x), ref, atol=1e-6), name
            assert torch.allclose(torch.fx.symbolic_trace(model)(x), ref, atol=1e-6), name
            out = create_feature_extractor(model, return_nodes={'blocks.0': 'b0', 'head': 'logits'})(x)
            assert torch.allclose(out['logits'], ref, atol=1e-6) and out['b0'].shape == (2, 17, 24)


@pytest.mark.parametrize('name', ENTRYPOINTS)
def test_embedding_model(name):
    x = torch.randn(2, 3, 32, 32)
    emb = timm.create_model(name, num_classes=0, **TINY).eval()
    assert emb.num_classes == 0 and emb(x).shape == (2, 24) and emb.label_names == []
    vit = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, embed_dim=24, depth=3, num_heads=2, num_classes=0).eval()
    vit.load_state_dict({k: v for k, v in emb.state_dict().items() if not k.startswith(('label_tokens', 'blocks.1.norm_label', 'blocks.2.norm_label'))})
    with torch.no_grad(): assert torch.allclose(emb(x), vit(x), atol=1e-5)  # the ViT's pooled CLS feature


@pytest.mark.parametrize('name', ENTRYPOINTS)
def test_label_names_follow_the_count(name):
    assert timm.create_model(name, num_classes=14, **TINY).label_names == list(ltvit.NIH_LABELS)
    assert timm.create_model(name, **TINY).label_names == list(ltvit.NIH_LABELS)
    assert timm.create_model(name, label_names=['a', 'b'], **TINY).num_classes == 2


@pytest.mark.parametrize('config', list(CONFIGS))
def test_mask_holds_on_fused_and_unfused_attention(config):
    x, models = _each_eval_model(config)
    for name, model in models:
        with torch.no_grad():
            fused = model(x)
            for m in model.modules():
                if isinstance(m, Attention): m.fused_attn = False
            unfused, lt = model(x), model.forward_lt(x, return_attention=True)
        assert torch.allclose(fused, unfused, atol=1e-5), name
        assert torch.allclose(lt['logits'], fused, atol=1e-5), name


def test_real_dino_and_mae_checkpoints_load_and_code_is_refused(tmp_path):
    "DINO's full training checkpoint and MAE's misc.save_model file, at ViT-S/16 shapes, with `args` Namespaces."
    vit = timm.create_model('vit_small_patch16_224', num_classes=0)
    sd = vit.state_dict()
    dino_args = argparse.Namespace(arch='vit_small', patch_size=16, out_dim=65536, norm_last_layer=True, momentum_teacher=0.996,
                                   use_bn_in_head=False, teacher_temp=0.04, lr=0.0005, epochs=100, output_dir='/ckpt/dino')
    head = {'head.mlp.0.weight': torch.zeros(2048, 384), 'head.last_layer.weight_g': torch.ones(65536, 1),
            'head.last_layer.weight_v': torch.zeros(65536, 256)}
    torch.save({'student': {f'module.backbone.{k}': v for k, v in sd.items()} | {f'module.{k}': v for k, v in head.items()},
                'teacher': {f'backbone.{k}': v for k, v in sd.items()} | head,
                'optimizer': torch.optim.AdamW(vit.parameters()).state_dict(), 'epoch': 100, 'args': dino_args,
                'fp16_scaler': None, 'dino_loss': {'center': torch.zeros(1, 65536)}}, tmp_path / 'checkpoint.pth')
    decoder = {'mask_token': torch.zeros(1, 1, 512), 'decoder_embed.weight': torch.zeros(512, 384),
               'decoder_pos_embed': torch.zeros(1, 197, 512), 'decoder_blocks.0.attn.qkv.weight': torch.zeros(1536, 512),
               'decoder_norm.weight': torch.ones(512), 'decoder_pred.weight': torch.zeros(768, 512)}
    mae_args = argparse.Namespace(model='mae_vit_small_patch16', input_size=224, mask_ratio=0.75, norm_pix_loss=True,
                                  blr=1.5e-4, epochs=800, output_dir='./output_dir')
    torch.save({'model': {**sd, **decoder}, 'optimizer': torch.optim.AdamW(vit.parameters()).state_dict(), 'epoch': 799,
                'scaler': {'scale': 65536.0, 'growth_factor': 2.0, 'backoff_factor': 0.5, 'growth_interval': 2000, '_growth_tracker': 0},
                'args': mae_args}, tmp_path / 'mae-checkpoint-799.pth')
    for f in ('checkpoint.pth', 'mae-checkpoint-799.pth'):
        model = timm.create_model('ltvit_small_patch16_224', n2=4)
        load_pretrained(model, tmp_path / f, verbose=False)
        own = model.state_dict()
        assert all(torch.equal(own[k], v) for k, v in sd.items()), f

    class Payload:
        def __reduce__(self): return (exec, (f"open({str(tmp_path / 'ran')!r}, 'w').write('x')",))
    torch.save({'model': sd, 'args': Payload()}, tmp_path / 'bad.pth')
    with pytest.raises(ValueError, match='weights-only'):
        load_pretrained(timm.create_model('ltvit_small_patch16_224'), tmp_path / 'bad.pth')
    assert not (tmp_path / 'ran').exists()


@pytest.mark.parametrize('how', ['entrypoint', 'from_vit', 'fresh', 'one_channel', 'chexpert_labels', 'split'])
def test_every_saved_model_reloads(how, tmp_path):
    from ltvit.checkpoint import save_model, load_model
    from ltvit.core import CHEXPERT_5
    vit1 = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, embed_dim=24, depth=3, num_heads=2,
                             in_chans=1, num_classes=0)
    model = {'entrypoint': lambda: timm.create_model('ltvit_small_patch16_224', **TINY),
             'from_vit': lambda: LTViT.from_vit(vit1, ['a', 'b'], n2=2),
             'fresh': lambda: timm.create_model('ltvit_base_patch16_224', reuse_blocks=False, **TINY),
             'one_channel': lambda: timm.create_model('ltvit_tiny_patch16_224', in_chans=1, **TINY),
             'chexpert_labels': lambda: timm.create_model('ltvit_tiny_patch16_224', label_names=CHEXPERT_5, **TINY),
             'split': lambda: timm.create_model('ltvit_tiny_patch16_224', attn_impl='split', label_attn=False, **TINY)}[how]().eval()
    save_model(model, tmp_path / 'best.safetensors')
    back = load_model(tmp_path / 'best.safetensors').eval()
    x = torch.randn(2, model.patch_embed.proj.in_channels, 32, 32)
    with torch.no_grad(): assert torch.equal(back(x), model(x))
    assert back.label_names == model.label_names and back.lt_config() == model.lt_config()


@pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning')  # deprecated, still supported: tested as timm tests it
@pytest.mark.parametrize('name', ['ltvit_tiny_patch16_224', 'vit_tiny_patch16_224'])
def test_fx_graph_scripts_as_in_timms_own_test(name):
    "timm's test_model_forward_fx_torchscript: trace with timm's no-trace lists, script the graph, run it (ViT as control)."
    from timm import set_scriptable
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import get_graph_node_names
    with set_scriptable(True):
        model = timm.create_model(name, img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=2,
                                  **({'n2': 1} if name.startswith('ltvit') else {})).eval()
    tk = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tk)
    fx = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                  tracer_kwargs=tk)
    scripted = torch.jit.script(fx)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tuple(scripted(x).values())[0], model(x), atol=1e-6)
