"""The main job: papermill on nbs/05_train.ipynb, resume after a kill, DDP on CPU, and the real NIH sample."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / 'nbs' / '05_train.ipynb'
TINY = dict(synthetic_patients=60, img_size=32, batch_size=16, n2=1, n_boot=50, seed=3,
            model_args='patch_size:8,embed_dim:32,depth:2,num_heads:2')


@pytest.fixture(scope='module')
def syn_dir(tmp_path_factory):
    from ltvit.synthetic import make_synthetic
    return str(make_synthetic(tmp_path_factory.mktemp('syn'), n_patients=60, progress=False))


def test_papermill_run_writes_every_file_and_uses_parameters(tmp_path, syn_dir):
    out = tmp_path / 'run'
    pm.execute_notebook(str(NB), str(tmp_path / 'out.ipynb'), cwd=str(NB.parent), kernel_name='python3', progress_bar=False,
                        parameters=dict(TINY, data_dir=syn_dir, epochs=2, lr=0.002, out_dir=str(out)))
    for f in ('config.json', 'metrics.json', 'per_class_auc.csv', 'predictions.csv', 'history.csv', 'curves.png',
              'roc.png', 'best.safetensors'):
        assert (out / f).is_file(), f
    cfg = json.loads((out / 'config.json').read_text())['config']
    assert (cfg['epochs'], cfg['lr'], cfg['img_size'], cfg['model_args']['embed_dim'], cfg['seed']) == (2, 0.002, 32, 32, 3)
    m = json.loads((out / 'metrics.json').read_text())
    assert set(m['per_class_auc']) == set(json.loads((out / 'config.json').read_text())['labels'])
    assert m['mean_auc_ci95'][0] <= m['mean_auc'] <= m['mean_auc_ci95'][1]
    assert len(pd.read_csv(out / 'history.csv')) == 2
    executed = (tmp_path / 'out.ipynb').read_text()
    assert 'Test mean AUC' in executed


def test_wrong_dataset_fails_clearly(tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(NB), str(tmp_path / 'bad.ipynb'), cwd=str(NB.parent), kernel_name='python3',
                            progress_bar=False, parameters=dict(dataset='imagenet', out_dir=str(tmp_path / 'r')))
    from ltvit.train import DATASETS
    assert f"ParameterError: dataset='imagenet' is not one of {DATASETS}" in str(e.value) and 'padchest' in DATASETS
    assert not (tmp_path / 'r').exists()


def test_card_command_trains_from_the_paper_weights_and_stops_at_once_offline(tmp_path, monkeypatch):
    "`papermill nbs/05_train.ipynb runs/nih.ipynb -p dataset nih` asks for the paper's ImageNet weights; offline it stops first."
    import torch
    from ltvit.checkpoint import check_pretrained
    from ltvit.core import UsageError
    from ltvit.train import PAPER_WEIGHTS, TrainConfig
    c = TrainConfig.for_dataset('nih').resolved()
    assert c.pretrained == PAPER_WEIGHTS == 'deit_small_patch16_224.fb_in1k' and c.layer_decay == 0.55
    assert TrainConfig.for_dataset('synthetic').resolved().pretrained == 'none' == TrainConfig().pretrained
    assert TrainConfig.for_dataset('nih', pretrained='none').resolved().layer_decay == 1.0
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('LTVIT_DATA', str(tmp_path / 'no-data'))  # no data either: the weights must fail first
    t = time.time()
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(NB), str(tmp_path / 'card.ipynb'), cwd=str(NB.parent), kernel_name='python3',
                            progress_bar=False, parameters=dict(dataset='nih', out_dir=str(tmp_path / 'r')))
    msg = str(e.value)
    assert PAPER_WEIGHTS in msg and '-p pretrained <local file>' in msg and '-p pretrained none' in msg, msg[-2000:]
    assert 'data folder not found' not in msg and time.time() - t < 120
    # the check leaves the caller's random stream where it was, and names a missing file
    torch.manual_seed(0); want = torch.rand(3)
    torch.manual_seed(0)
    with pytest.raises(UsageError, match='-p pretrained none'): check_pretrained(PAPER_WEIGHTS)
    assert torch.equal(torch.rand(3), want)
    with pytest.raises(UsageError, match='pretrained <local file>'): check_pretrained(tmp_path / 'gone.pth')


def _cli(args):
    return [sys.executable, '-m', 'ltvit.train'] + [f'--{k.replace("_", "-")}={v}' for k, v in args.items()]


@pytest.mark.slow
def test_resume_after_kill_gives_the_same_metrics(tmp_path, syn_dir):
    args = dict(TINY, dataset='synthetic', data_dir=syn_dir, epochs=12, deterministic=True, workers=0)
    ref = subprocess.run(_cli(dict(args, out_dir=tmp_path / 'ref')), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / 'killed'
    proc = subprocess.Popen(_cli(dict(args, out_dir=out)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / 'checkpoints' / 'last.json'
    t0 = time.time()
    while time.time() - t0 < 300 and proc.poll() is None:
        if last.is_file() and json.loads(last.read_text())['epoch'] >= 1: break  # mid-way: after epoch 2 of 12
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (out / 'metrics.json').exists(), 'the run finished before it could be killed'
    done_epochs = json.loads(last.read_text())['epoch'] + 1
    assert 2 <= done_epochs < 12
    res = subprocess.run(_cli(dict(args, out_dir=out, resume=True)), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f'Resuming {out} after epoch {done_epochs}' in res.stdout
    a, b = (json.loads((d / 'metrics.json').read_text()) for d in (tmp_path / 'ref', out))
    assert a['mean_auc'] == b['mean_auc'] and a['per_class_auc'] == b['per_class_auc']
    pa, pb = (pd.read_csv(d / 'predictions.csv') for d in (tmp_path / 'ref', out))
    pd.testing.assert_frame_equal(pa, pb)
    ha, hb = (pd.read_csv(d / 'history.csv') for d in (tmp_path / 'ref', out))
    assert np.allclose(ha['train_loss'], hb['train_loss'], rtol=0, atol=0)


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    "Two gloo processes see the same global batches as one: losses and test AUC agree to float tolerance, with\n    U-Ignore labels masked out (the masked loss is normalised over the global batch, not per process)."
    from ltvit.data import make_chexpert_like
    root = make_chexpert_like(tmp_path / 'chexpert', n_patients=40, size=48)
    args = dict(dataset='chexpert', data_dir=root, label_policy='ignore', img_size=32, batch_size=16, n2=1, n_boot=20, seed=3,
                pretrained='none',
                model='ltvit_tiny_patch16_224', model_args='patch_size:8,embed_dim:32,depth:2,num_heads:2', augment='none',
                drop_path=0.0, epochs=2, workers=0, device='cpu')  # no stochastic depth: the processes draw differently
    one = subprocess.run(_cli(dict(args, out_dir=tmp_path / 'one')), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    two = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29533',
                          '-m', 'ltvit.train'] + _cli(dict(args, out_dir=tmp_path / 'two'))[3:], capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / 'metrics.json').read_text()) for d in ('one', 'two'))
    assert json.loads((tmp_path / 'two' / 'config.json').read_text())['world_size'] == 2
    assert a['n_images'] == b['n_images']  # every test image once, gathered across ranks
    assert abs(a['mean_auc'] - b['mean_auc']) <= 1e-4, (a['mean_auc'], b['mean_auc'])
    ha, hb = (pd.read_csv(tmp_path / d / 'history.csv') for d in ('one', 'two'))
    assert np.allclose(ha['train_loss'], hb['train_loss'], rtol=1e-5, atol=0), (ha['train_loss'], hb['train_loss'])


def test_masked_loss_is_normalised_over_the_global_batch():
    "Two halves of a batch, each scaled as one DDP process computes it, average to the one-process loss."
    import torch
    from ltvit.train import masked_bce
    torch.manual_seed(0)
    lg, tg = torch.randn(8, 5), (torch.rand(8, 5) > 0.5).float()
    mk = (torch.rand(8, 5) > 0.3).float(); mk[:4] = 0; mk[0, 0] = 1  # the first half knows one label only
    want = torch.nn.functional.binary_cross_entropy_with_logits(lg[mk.bool()], tg[mk.bool()])
    known = mk.sum()  # what the all_reduce gives each process
    per = [(torch.nn.functional.binary_cross_entropy_with_logits(lg[h], tg[h], reduction='none') * mk[h]).sum() * 2 / known
           for h in (slice(0, 4), slice(4, 8))]
    assert torch.allclose((per[0] + per[1]) / 2, want)  # DDP's average of the two processes' losses
    assert torch.allclose(masked_bce(lg, tg, mk), want)
    assert not torch.allclose((masked_bce(lg[:4], tg[:4], mk[:4]) + masked_bce(lg[4:], tg[4:], mk[4:])) / 2, want)


@pytest.mark.slow
def test_one_epoch_on_the_real_nih_sample(tmp_path, nih_sample):
    out = tmp_path / 'nih'
    pm.execute_notebook(str(NB), str(tmp_path / 'nih.ipynb'), cwd=str(NB.parent), kernel_name='python3', progress_bar=False,
                        parameters=dict(dataset='nih', data_dir=str(nih_sample), subset=True, model='ltvit_tiny_patch16_224',
                                        pretrained='none',
                                        model_args='patch_size:16,depth:2', n2=1, img_size=64, epochs=1, batch_size=32, n_boot=50,
                                        workers=2, out_dir=str(out)))
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['split_sizes']['test'] == 60 and cfg['split_sizes']['train'] + cfg['split_sizes']['val'] == 440
    pred = pd.read_csv(out / 'predictions.csv')
    assert len(pred) == 60 and pred['id'].str.endswith('.png').all()
    entry = pd.read_csv(nih_sample / 'Data_Entry_2017.csv').set_index('Image Index')
    for _, r in pred.iterrows():
        assert (r['true_Mass'] == 1) == ('Mass' in entry.loc[r['id'], 'Finding Labels'].split('|'))


def test_chexpert_run_names_its_labels_everywhere(tmp_path):
    "`num_classes=5` without names in a CheXpert run: the data set's names reach every saved artefact, never `label_<i>`."
    from ltvit.core import CHEXPERT_5
    from ltvit.data import make_chexpert_like
    from ltvit.checkpoint import checkpoint_metadata, load_model
    from ltvit.train import TrainConfig, train
    root = make_chexpert_like(tmp_path / 'chexpert', n_patients=24, size=48)
    out = tmp_path / 'run'
    train(TrainConfig.for_dataset('chexpert', data_dir=str(root), img_size=32, epochs=1, batch_size=8, n2=1, n_boot=20, pretrained='none',
                      model='ltvit_tiny_patch16_224', model_args=dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5),
                      augment='none', workers=0, out_dir=str(out)), verbose=False)
    assert checkpoint_metadata(out / 'best.safetensors')['label_names'] == list(CHEXPERT_5)
    assert load_model(out / 'best.safetensors').label_names == list(CHEXPERT_5)
    assert list(json.loads((out / 'metrics.json').read_text())['per_class_auc']) == list(CHEXPERT_5)
    for f in out.rglob('*'):
        if f.suffix in ('.json', '.csv'): assert 'label_0' not in f.read_text(), f


def test_command_line_keeps_text_values():
    "`--augment=none` means no augmentation (not the preset's RandAugment); numbers and None are parsed."
    from ltvit.train import config_from_cli
    c = config_from_cli(['--dataset=chexpert', '--augment=none', '--pretrained=none', '--epochs=3', '--lr=None', '--out-dir=x'])
    assert (c.augment, c.pretrained, c.epochs, c.lr) == ('none', 'none', 3, None)
    r = c.resolved()
    assert r.augment == 'none' and r.epochs == 3
    assert config_from_cli(['--dataset=chexpert', '--out-dir=x']).resolved().augment == 'rand-m6-mstd0.5'  # omitted: preset


def test_parameters_cell_is_the_train_config():
    "The papermill parameters of 05_train and `TrainConfig` are one definition: same names, order, defaults and help."
    import ast
    import inspect
    import re
    from ltvit.train import TrainConfig
    from dataclasses import fields
    cell = pm.inspect_notebook(str(NB))
    src = inspect.getsource(TrainConfig)
    from ltvit.train import RECIPE
    help_ = dict(re.findall(r'^    (\w+): [^=]+= .*?  # (.*)$', src, flags=re.M))
    assert list(cell) == TrainConfig.parameter_names()
    for f in fields(TrainConfig):
        p = cell[f.name]
        if f.name in RECIPE or f.name == 'layer_decay':  # the data set decides: None, and the help says what each gives
            assert ast.literal_eval(p['default']) is None and p['help'].startswith(help_[f.name].split(' (None')[0]), f.name
            assert f.name == 'layer_decay' or (repr(f.default) in p['help'] and repr(RECIPE[f.name]) in p['help']) \
                or f.name == 'lr', (f.name, p['help'])
        else:
            assert ast.literal_eval(p['default']) == f.default, f.name
            assert p['help'] == help_[f.name], f.name


def test_vit_baseline_pooling_is_a_parameter_and_mae_weights_load_into_average_pooling(tmp_path):
    """vit_pool='avg' averages the patch tokens after the pre-trained final norm (both arms keep it: like for like);
    'avg_fc_norm' is MAE's own fine-tuning (final norm dropped, a new fc_norm); an MAE checkpoint loads into both."""
    import timm
    import torch
    from ltvit.train import TrainConfig, build_model, readout_parameter_names
    arch = dict(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2)
    src = timm.create_model('vit_tiny_patch16_224', num_classes=0, **arch)
    with torch.no_grad(): src.norm.weight.uniform_(0.5, 1.5)  # a pre-trained final norm that is not the identity
    mae = {**src.state_dict(), 'mask_token': torch.zeros(1, 1, 24), 'decoder_embed.weight': torch.zeros(16, 24)}
    torch.save({'model': mae, 'epoch': 799}, tmp_path / 'mae.pth')
    kw = dict(dataset='nih', model='vit_tiny_patch16_224', model_args='patch_size:8,embed_dim:24,depth:2,num_heads:2',
              img_size=32, pretrained=str(tmp_path / 'mae.pth'))
    x = torch.randn(2, 3, 32, 32)
    m = build_model(TrainConfig(**kw, vit_pool='avg').resolved(), ['a', 'b']).eval()
    assert m.global_pool == 'avg' and isinstance(m.fc_norm, torch.nn.Identity) and torch.equal(m.norm.weight, src.norm.weight)
    assert torch.equal(m.blocks[1].mlp.fc1.weight, src.blocks[1].mlp.fc1.weight)
    with torch.no_grad():
        f = m.forward_features(x)  # the final norm applied to every token, then the mean of the patch tokens
        assert torch.allclose(m.forward_head(f, pre_logits=True), f[:, m.num_prefix_tokens:].mean(1), atol=1e-6)
        assert torch.allclose(f, src.forward_features(x), atol=1e-6)
    assert readout_parameter_names(m) == ['norm.weight', 'norm.bias']  # the pre-trained norm, as LT-ViT's final norm
    o = build_model(TrainConfig(**kw, vit_pool='avg_fc_norm').resolved(), ['a', 'b']).eval()
    assert isinstance(o.fc_norm, torch.nn.LayerNorm) and isinstance(o.norm, torch.nn.Identity)
    with torch.no_grad():
        f = o.forward_features(x)
        assert torch.allclose(o.forward_head(f, pre_logits=True), o.fc_norm(f[:, o.num_prefix_tokens:].mean(1)), atol=1e-6)
    t = build_model(TrainConfig(**kw).resolved(), ['a', 'b'])
    assert t.global_pool == 'token' and torch.equal(t.norm.weight, src.norm.weight)  # CLS pooling keeps the final norm
    with pytest.raises(ValueError, match="sets the ViT baseline's pooling"): TrainConfig(vit_pool='avg').resolved()
    with pytest.raises(ValueError, match="vit_pool='max'"): TrainConfig(**kw, vit_pool='max').resolved()


@pytest.mark.parametrize('preset', ['quick', 'paper'])
def test_both_arms_readouts_learn_at_the_same_rate_in_the_presets(preset):
    """Read from the optimizers the training loop builds for the main table's ViT and LT-ViT: the ViT's CLS token and
    final norm learn at the head's rate, as LT-ViT's label tokens, label norms and final norm do; every backbone
    parameter the two share learns at the same rate in both."""
    from dataclasses import replace
    from ltvit.experiments import make_grid
    from ltvit.train import TrainConfig, _optimizer, build_model
    grid = make_grid(preset, nih_dir='/data/nih', chexpert_dir='/data/chexpert')
    scales, names = {}, {}
    for arch in ('vit', 'ltvit'):
        params = {k: v for k, v in grid.runs[f'nih-{arch}-ImageNet'].params.items() if not str(v).startswith('{run:')}
        c = TrainConfig.for_dataset(**params).resolved()
        assert c.layer_decay == {'quick': 0.75, 'paper': 0.55}[preset]  # the decay chosen for the depth
        labels = [f'finding {i}' for i in range(5)]
        model = build_model(replace(c, pretrained='none'), labels)  # the weights do not change the groups
        opt, _, _ = _optimizer(c, model, n_train=10 * c.batch_size)
        by_id = {id(p): g['lr_scale'] for g in opt.param_groups for p in g['params']}
        scales[arch] = {n: by_id[id(p)] for n, p in model.named_parameters()}
        names[arch] = set(scales[arch])
    vit, lt = scales['vit'], scales['ltvit']
    head = vit['head.weight']
    assert head == lt['head.weight'] == 1.0
    for n in ('cls_token', 'norm.weight', 'norm.bias'): assert vit[n] == head, (n, vit[n])
    assert lt['label_tokens'] == head and lt['norm.weight'] == head
    assert all(v == head for n, v in lt.items() if 'norm_label' in n)
    shared = {n for n in names['vit'] & names['ltvit'] if not n.startswith(('head', 'norm.', 'cls_token'))}
    assert shared and all(vit[n] == lt[n] for n in shared)
    assert min(vit.values()) < head  # layer decay is on: the stem learns slower than the readout
