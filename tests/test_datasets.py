"""The readers beyond NIH and CheXpert, checked against real label files: VinDr-CXR's training annotations as the
torchxrayvision wheel ships them (every image, every label, against torchxrayvision's own reader), and end to end
(training, the preprocessing cache, localisation) on folders in the release layouts written here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ltvit.data import DataError
from ltvit.datasets import VINDR_LABELS, OwnData, RSNAPneumonia, VinDrCXR, read_own_table, read_rsna_labels, vindr_labels
from ltvit.predict import write_test_dicom

BIN = Path(sys.executable).parent
TXV_NAMES = {'Effusion': 'Pleural effusion', 'Other Lesion': 'Other lesion', 'Pleural_Thickening': 'Pleural thickening',
             'Pulmonary Fibrosis': 'Pulmonary fibrosis'}  # torchxrayvision's spelling -> the release's


@pytest.fixture(scope='module')
def vindr_table():
    "The Kaggle VinDr-CXR training annotations (67,914 rows, 15,000 images) from the torchxrayvision wheel."
    from importlib.resources import files
    path = files('torchxrayvision') / 'data' / 'vinbigdata-train.csv.gz'
    return pd.read_csv(path)


def test_vindr_labels_equal_torchxrayvisions_on_every_image(vindr_table, tmp_path):
    "The 'any' rule is torchxrayvision's (a finding one reader marked); on all 15,000 images the labels agree."
    import torchxrayvision as xrv
    txv = xrv.datasets.VinDr_Dataset(imgpath=str(tmp_path))
    theirs = pd.DataFrame(txv.labels, index=txv.csv['image_id'], columns=[TXV_NAMES.get(p, p) for p in txv.pathologies])
    ann = vindr_table.assign(image_id=vindr_table['image_id'].astype(str))
    ours = vindr_labels(ann, VINDR_LABELS, 'any')
    assert len(ours) == len(theirs) == 15000 and set(ours.columns) == set(theirs.columns) == set(VINDR_LABELS)
    diff = (ours.loc[theirs.index, list(theirs.columns)] != theirs).sum()
    assert diff.sum() == 0, diff[diff > 0]
    majority = vindr_labels(ann, VINDR_LABELS, 'majority')
    assert (majority <= ours).all().all() and majority.sum().sum() < ours.sum().sum()  # stricter, never looser
    print({l: (int(ours[l].sum()), int(majority[l].sum())) for l in VINDR_LABELS})


def _vindr_folder(root: Path, ann: pd.DataFrame, part: str, size=(2800, 3100)) -> Path:
    (root / 'annotations').mkdir(parents=True, exist_ok=True); (root / part).mkdir(exist_ok=True)
    ann.to_csv(root / 'annotations' / f'annotations_{part}.csv', index=False)
    rng = np.random.default_rng(0)
    for i in ann['image_id'].unique():
        write_test_dicom(root / part / f'{i}.dicom', rng.integers(0, 4096, size[::-1], dtype=np.uint16), bits=12)
    return root


def test_vindr_boxes_are_the_readers_boxes_of_positive_findings(vindr_table, tmp_path):
    "Real rows of 12 images: every box of a positive finding comes back, in the image's pixels or scaled to a size."
    boxed = vindr_table.dropna(subset=['x_min'])
    ids = list(boxed['image_id'].drop_duplicates()[:12])
    ann = vindr_table[vindr_table['image_id'].isin(ids)]
    root = _vindr_folder(tmp_path / 'vindr', ann, 'train', size=(3200, 3400))
    rows = []
    for split in ('train', 'val'):
        for rule in ('any', 'majority'):
            ds = VinDrCXR(root, split, rule=rule, val_frac=0.25)
            b = ds.boxes()
            want = ann[ann['image_id'].isin(set(ds.table['id'])) & ann['class_name'].isin(VINDR_LABELS)].dropna(subset=['x_min'])
            pos = ds.table.set_index('id')
            want = want[[pos.at[i, l] > 0 for i, l in zip(want['image_id'], want['class_name'])]]
            assert len(b) == len(want) and np.allclose(np.sort(b['x'].to_numpy()), np.sort(want['x_min'].to_numpy()))
            s = ds.boxes(size=224)
            assert np.allclose(s['w'].to_numpy(), b['w'].to_numpy() * 224 / 3200)
            assert np.allclose(s['h'].to_numpy(), b['h'].to_numpy() * 224 / 3400)
            rows.append(len(b))
    assert rows[0] > rows[1] > 0  # majority keeps fewer boxes than any


@pytest.fixture(scope='module')
def rsna_table():
    "The RSNA Pneumonia stage-2 training labels (30,227 rows, 26,684 images) from the torchxrayvision wheel."
    from importlib.resources import files
    return pd.read_csv(files('torchxrayvision') / 'data' / 'kaggle_stage_2_train_labels.csv.zip', dtype={'patientId': str})


def _rsna_folder(root: Path, rows: pd.DataFrame, images=(), size=1024) -> Path:
    (root / 'stage_2_train_images').mkdir(parents=True, exist_ok=True)
    rows.to_csv(root / 'stage_2_train_labels.csv', index=False)
    for i in images: write_test_dicom(root / 'stage_2_train_images' / f'{i}.dcm', np.full((size, size), 90, np.uint8))
    return root


def test_rsna_labels_equal_torchxrayvisions_on_every_image(rsna_table, tmp_path):
    import torchxrayvision as xrv
    txv = xrv.datasets.RSNA_Pneumonia_Dataset(imgpath=str(tmp_path), views=['PA', 'AP'])  # every view
    theirs = pd.Series(txv.labels[:, txv.pathologies.index('Pneumonia')], index=txv.csv['patientId'].astype(str))
    rows = read_rsna_labels(_rsna_folder(tmp_path / 'rsna', rsna_table))
    ours = rows.groupby('patientId')['Target'].first()
    assert len(ours) == len(theirs) == 26684 and (ours.loc[theirs.index] == theirs).all()
    ids = list(rsna_table.dropna(subset=['x'])['patientId'].drop_duplicates()[:8]) + list(rsna_table[rsna_table['Target'] == 0]['patientId'][:8])
    root = _rsna_folder(tmp_path / 'rsna8', rsna_table[rsna_table['patientId'].isin(ids)], ids)
    parts = [RSNAPneumonia(root, s, val_frac=0.25, test_frac=0.25) for s in ('train', 'val', 'test')]
    assert sorted(i for d in parts for i in d.table['id']) == sorted(ids)  # every image in exactly one split
    b = pd.concat([d.boxes() for d in parts])
    want = rsna_table[rsna_table['patientId'].isin(ids)].dropna(subset=['x'])
    assert len(b) == len(want) and np.allclose(np.sort(b['w']), np.sort(want['width']))
    bad = rsna_table.head(50).copy(); bad.loc[bad.index[3], 'Target'] = 2
    with pytest.raises(DataError, match='row 5: Target must be 0 or 1'): read_rsna_labels(_rsna_folder(tmp_path / 'bad', bad))
    detail = pd.DataFrame({'patientId': rsna_table['patientId'].head(10), 'class': 'Normal'})
    root = _rsna_folder(tmp_path / 'detail', rsna_table.head(10)); detail.to_csv(root / 'stage_2_detailed_class_info.csv', index=False)
    with pytest.raises(DataError, match="is 'Normal' but Target 1"): read_rsna_labels(root)


def test_vindr_layout_errors_name_the_file(tmp_path):
    (tmp_path / 'v').mkdir()
    with pytest.raises(DataError, match='annotations_train.csv.*neither|neither.*annotations_train.csv'):
        VinDrCXR(tmp_path / 'v')
    pd.DataFrame({'image_id': ['a'], 'class_name': ['Cardiomegaly']}).to_csv(tmp_path / 'v' / 'train.csv', index=False)
    with pytest.raises(DataError, match=r"train.csv: missing column\(s\) \['x_min'"):
        VinDrCXR(tmp_path / 'v')


def _own_folder(root: Path, n: int = 48, split: bool = False) -> Path:
    from PIL import Image
    (root / 'img').mkdir(parents=True)
    rng, rows, boxes = np.random.default_rng(0), [], []
    for k in range(n):
        a = (rng.random((72, 60)) * 60).astype(np.uint8)
        eff = k % 3 == 0
        if eff: a[40:60, 10:30] = 220; boxes.append({'path': f'img/{k}.png', 'label': 'Effusion', 'x_min': 10,
                                                        'y_min': 40, 'x_max': 30, 'y_max': 60})
        Image.fromarray(a).save(root / 'img' / f'{k}.png')
        rows.append({'path': f'img/{k}.png', 'patient': f'p{k // 2}', 'Effusion': int(eff), 'Mass': [0, 1, -1, None][k % 4],
                     **({'split': ['train', 'train', 'val', 'test'][(k // 2) % 4]} if split else {})})
    pd.DataFrame(rows).to_csv(root / 'labels.csv', index=False)
    pd.DataFrame(boxes).to_csv(root / 'boxes.csv', index=False)
    return root


def test_own_data_labels_masks_and_errors(tmp_path):
    root = _own_folder(tmp_path / 'own', split=True)
    parts = {s: OwnData(root, s, policy='ignore') for s in ('train', 'val', 'test')}
    assert [len(d) for d in parts.values()] == [24, 12, 12]  # the split column decides
    raw = pd.read_csv(root / 'labels.csv').set_index('path')
    for d in parts.values():
        m = raw.loc[d.table['id'], 'Mass'].to_numpy()
        j = d.labels.index('Mass')
        assert np.array_equal(d.mask[:, j] == 0, np.isnan(m) | (m == -1))  # blank and uncertain masked
        assert np.array_equal(d.targets[:, j][d.mask[:, j] > 0], m[d.mask[:, j] > 0])
    ones = OwnData(root, 'train', policy='ones')
    assert ones.targets[:, 1][pd.read_csv(root / 'labels.csv').set_index('path').loc[ones.table['id'], 'Mass'].to_numpy() == -1].min() == 1
    bad = pd.read_csv(root / 'labels.csv'); bad.loc[5, 'split'] = 'training'; bad.to_csv(tmp_path / 'bad.csv', index=False)
    with pytest.raises(DataError, match=r"bad.csv: row 7: split 'training'"): read_own_table(tmp_path / 'bad.csv')
    bad = pd.read_csv(root / 'labels.csv'); bad.loc[5, 'patient'] = 'p0'; bad.to_csv(root / 'labels2.csv', index=False)
    with pytest.raises(DataError, match="patient 'p0' has images in two splits"): OwnData(root / 'labels2.csv', 'train')
    bad = pd.read_csv(root / 'labels.csv'); bad.loc[9, 'patient'] = None; bad.to_csv(tmp_path / 'nopatient.csv', index=False)
    with pytest.raises(DataError, match='nopatient.csv: row 11 has no patient'): read_own_table(tmp_path / 'nopatient.csv')
    os.remove(root / 'img' / '0.png')
    with pytest.raises(DataError, match='missing, e.g.'): OwnData(root, 'train')


@pytest.mark.slow
def test_own_data_and_vindr_train_cache_and_localise_end_to_end(tmp_path, vindr_table):
    "`ltvit_cache` and `ltvit_train` take the new names; compare_localisation scores VinDr-CXR's readers' boxes."
    import torch
    from ltvit.checkpoint import load_model
    from ltvit.data import make_transform
    from ltvit.interpret import compare_localisation
    own = _own_folder(tmp_path / 'own')
    env = dict(os.environ, HF_HUB_OFFLINE='1')
    r = subprocess.run([BIN / 'ltvit_cache', '--dataset', 'own', '--data-dir', own, '--size', '32', '--quiet'],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0 and '48 images cached at 32px' in r.stdout, r.stdout + r.stderr[-2000:]
    small = dict(model='ltvit_tiny_patch16_224', model_args='patch_size:8', img_size=32, epochs=1, batch_size=8,
                 pretrained='none', workers=0, augment='none', n_boot=20)
    for name, folder in (('own', own), ('rsna', None), ('vindr', None)):
        if name == 'rsna':
            ids = [f'r{k}' for k in range(40)]
            rows = pd.DataFrame({'patientId': ids, 'x': np.nan, 'y': np.nan, 'width': np.nan, 'height': np.nan,
                                 'Target': [k % 3 == 0 for k in range(40)]}).astype({'Target': int})
            folder = _rsna_folder(tmp_path / 'rsna', rows, ids, size=64)
        if name == 'vindr':
            ids = list(vindr_table.dropna(subset=['x_min'])['image_id'].drop_duplicates()[:40])
            ann = vindr_table[vindr_table['image_id'].isin(ids)]
            folder = _vindr_folder(tmp_path / 'vindr', ann[ann['image_id'].isin(ids[:30])], 'train', size=(300, 340))
            test = ann[ann['image_id'].isin(ids[30:])].drop(columns=['rad_id'])  # the test part: one (consensus) reading
            _vindr_folder(folder, test, 'test', size=(300, 340))
        args = [f'--{k.replace("_", "-")}={v}' for k, v in {**small, 'dataset': name, 'data_dir': folder,
                                                              'out_dir': tmp_path / f'run-{name}'}.items()]
        r = subprocess.run([BIN / 'ltvit_train', *args], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        m = json.loads((tmp_path / f'run-{name}' / 'metrics.json').read_text())
        assert m['n_images'] > 0 and 'mean_auc' in m
    model = load_model(tmp_path / 'run-vindr' / 'best.safetensors').eval()
    ds = VinDrCXR(folder, 'test', transform=make_transform(32), labels=model.label_names)
    res = compare_localisation(model, ds, methods=('attention',), max_images=10)
    assert res.table.shape[0] > 0 and 'LT-ViT attention' in ''.join(res.intervals().index)
    n = len(ds.boxes())
    assert n == sum(len(s) for s in [res.scores['random']]) or n >= len(res.scores['random'])
