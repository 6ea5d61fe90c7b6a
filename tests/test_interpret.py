"""Interpretability on trained models: LT-ViT's attention maps must localise findings better than a random map."""
import json
from pathlib import Path

import pytest
import torch

from ltvit.data import NIHChestXray14, make_transform
from ltvit.interpret import compare_localisation, plot_maps, attention_maps, gradcam_maps
from ltvit.model import load_model
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
    table, raw = compare_localisation(lt, test, baseline=vit, max_images=200)
    print(table.round(3).to_string())
    att, rnd = table.loc['overall'], table.loc['overall']
    n = int(table.loc['overall', 'random n'])
    assert n >= 150
    # a clear margin over the uniform-random floor, in both measures
    assert table.loc['overall', 'LT-ViT attention pointing'] >= 1.5 * table.loc['overall', 'random pointing'] + 0.03
    assert table.loc['overall', 'LT-ViT attention energy'] >= 1.5 * table.loc['overall', 'random energy']
    assert {'ViT Grad-CAM pointing', 'LT-ViT Grad-CAM pointing'} <= set(table.columns)


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
    table, raw = compare_localisation(model, ds, max_images=20)
    scores = raw['LT-ViT attention']
    assert len(scores) > 0 and set(scores['label']) <= set(ds.labels)
    assert ((scores['box_fraction'] > 0) & (scores['box_fraction'] < 1)).all()  # boxes scaled into the 64-px frame
