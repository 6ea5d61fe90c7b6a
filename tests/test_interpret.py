"""Interpretability on trained models: LT-ViT's attention maps must localise findings better than a random map."""
import json
from pathlib import Path

import pytest
import torch

from ltvit.data import NIHChestXray14, make_transform
from ltvit.interpret import compare_localisation, plot_maps, attention_maps, gradcam_maps
from ltvit.checkpoint import load_model
from ltvit.train import TrainConfig, build_datasets, train


pytestmark = pytest.mark.slow  # trains models / runs a grid

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "The synthetic demo's LT-ViT (its preset: ~4 min on 2 cores), and a plain ViT baseline trained briefly."
    d = tmp_path_factory.mktemp('interp')
    cfg = TrainConfig(dataset='synthetic', data_dir=str(d / 'syn'), out_dir=str(d / 'lt'), n_boot=0)
    m = train(cfg, verbose=False)
    base_cfg = TrainConfig(dataset='synthetic', data_dir=str(d / 'syn'), out_dir=str(d / 'vit'), n_boot=0, epochs=8,
                           model='vit_tiny_patch16_224')
    train(base_cfg, verbose=False)
    ds, _, _ = build_datasets(cfg.resolved(), verbose=False)
    return load_model(d / 'lt' / 'best.safetensors').eval(), load_model(d / 'vit' / 'best.safetensors').eval(), ds['test'], m


def test_attention_points_at_findings_better_than_random(trained):
    lt, vit, test, metrics = trained
    assert metrics['mean_auc'] > 0.8  # a trained model, not a random one
    res = compare_localisation(lt, test, baseline=vit, max_images=200)
    table, raw = res.table, res.scores
    print(table.round(3).to_string())
    att, rnd = table.loc['overall'], table.loc['overall']
    n = int(table.loc['overall', 'random n'])
    assert n >= 150
    # a clear margin over the uniform-random floor, in both measures
    assert table.loc['overall', 'LT-ViT attention pointing'] >= 1.5 * table.loc['overall', 'random pointing'] + 0.03
    assert table.loc['overall', 'LT-ViT attention energy'] >= 1.5 * table.loc['overall', 'random energy']
    assert {'ViT Grad-CAM pointing', 'LT-ViT Grad-CAM pointing'} <= set(table.columns)
    # the floor's interval lies below attention's: the margin is not a matter of which images were drawn
    iv = res.intervals(n_boot=500)
    assert iv.loc['LT-ViT attention', 'pointing low'] > iv.loc['random', 'pointing']
    assert iv.loc['random', 'pointing low'] <= iv.loc['random', 'pointing'] <= iv.loc['random', 'pointing high']


def test_gradcam_layer_is_chosen_on_validation_and_used(trained):
    lt, vit, test, _ = trained
    from ltvit.interpret import choose_layer, gradcam_layers
    from ltvit.train import TrainConfig, build_datasets
    val = build_datasets(TrainConfig(dataset='synthetic', data_dir=str(test.root), n_boot=0).resolved(), verbose=False)[0]['val']
    assert set(val.table['id']).isdisjoint(test.table['id'])
    best, by_layer = choose_layer(vit, val, max_images=40)
    assert list(by_layer.index) == list(gradcam_layers(vit)) and by_layer.loc[best, 'chosen']
    assert by_layer.loc[best, 'pointing'] == by_layer['pointing'].max()
    # the chosen layer is the one used on the test images: its maps differ from the default layer's when it is not the last
    res = compare_localisation(lt, test, baseline=vit, max_images=16, layers={'ViT': best})
    assert res.layers['ViT'] == best and res.layers['LT-ViT'] == list(gradcam_layers(lt))[-1]


def test_floors_ceiling_and_attention_block_on_a_trained_model(trained):
    """The image-blind prior map beats random maps, the perfect patch-grid map beats every method, and attention's block
    is chosen on validation among the LT blocks and their mean, exactly as Grad-CAM's layer is."""
    lt, vit, test, _ = trained
    from ltvit.interpret import CEILING, choose_layer, dataset_boxes, localisation_differences, prior_maps
    from ltvit.train import TrainConfig, build_datasets
    val = build_datasets(TrainConfig(dataset='synthetic', data_dir=str(test.root), n_boot=0).resolved(), verbose=False)[0]['val']
    block, by_block = choose_layer(lt, val, max_images=40, method='attention')
    assert list(by_block.index) == [str(i) for i in range(lt.n2)] + ['mean'] and by_block.loc[block, 'chosen']
    size = test[0]['image'].shape[-1]
    prior = prior_maps(dataset_boxes(val, size), test.labels, (size, size))
    res = compare_localisation(lt, test, baseline=vit, max_images=120, prior=prior, layers={'attention': block})
    t = res.table.loc['overall']
    print(res.table.round(3).to_string())
    # a finding's usual place is worth something: the prior map beats random maps, and nothing beats the ceiling
    assert t['prior map pointing'] > t['random pointing'] + 0.1
    for m in ('LT-ViT attention', 'LT-ViT Grad-CAM', 'ViT Grad-CAM', 'prior map', 'random'):
        assert t[f'{CEILING} patch pointing'] >= t[f'{m} patch pointing']
    assert t[f'{CEILING} patch pointing'] == 1.0
    # focal and diffuse findings are reported apart, and partition the pairs
    assert res.table.loc['focal', 'random n'] + res.table.loc['diffuse', 'random n'] == t['random n'] > 0
    d = localisation_differences(res.scores, [('prior map', 'random')], n_boot=300, level=0.975)
    assert d['low'].iloc[0] > 0 and d['level'].iloc[0] == 0.975


def test_figure_of_trained_maps(trained, tmp_path):
    lt, vit, test, _ = trained
    x = torch.stack([test[i]['image'] for i in range(3)])
    a, p = attention_maps(lt, x); g, _ = gradcam_maps(lt, x)
    path = plot_maps(x, {'LT-ViT': a, 'Grad-CAM': g}, p, test.labels, show=['Cardiomegaly', 'Effusion'],
                     path=tmp_path / 'fig.pdf') and tmp_path / 'fig.pdf'
    assert path.is_file() and path.read_bytes()[:4] == b'%PDF'


def test_localisation_on_the_nih_box_file(nih_sample):
    import timm
    ds = NIHChestXray14(nih_sample, 'test', subset=True, transform=make_transform(64), verbose=False)
    model = timm.create_model('ltvit_tiny_patch16_224', img_size=64, depth=2, n2=1)
    res = compare_localisation(model, ds, max_images=20)
    scores = res.scores['LT-ViT attention']
    assert len(scores) > 0 and set(scores['label']) <= set(ds.labels)
    assert ((scores['box_fraction'] > 0) & (scores['box_fraction'] < 1)).all()  # boxes scaled into the 64-px frame


def test_layer_choice_without_validation_boxes_uses_disjoint_test_halves(nih_sample):
    "NIH has boxes on test images only: the layer is chosen on one half of them, every method scored on the other."
    from ltvit.experiments import _layer_split
    from ltvit.interpret import dataset_boxes
    make = lambda s: NIHChestXray14(nih_sample, s, subset=True, transform=make_transform(64), verbose=False)
    val, test = make('val'), make('test')
    assert not dataset_boxes(val, 64)
    choose, score, how = _layer_split(val, test)
    assert 'no validation boxes' in how
    a, b = set(choose.table['id']), set(score.table['id'])
    assert a and b and a.isdisjoint(b) and a | b == set(test.table['id'])
    boxed = set(test.table['id'].iloc[sorted(dataset_boxes(test, 64))])
    assert abs(len(a & boxed) - len(b & boxed)) <= 1  # the boxed images are split in half
    assert score[0]['id'] == score.table['id'].iat[0]
