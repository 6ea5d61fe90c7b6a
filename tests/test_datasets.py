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


SMALL = dict(model='ltvit_tiny_patch16_224', model_args='patch_size:8', img_size=32, epochs=1, batch_size=8,
             pretrained='none', workers=0, augment='none', n_boot=20)  # a one-epoch run on 32-px images


def _train(out: Path, **params) -> tuple[subprocess.CompletedProcess, dict]:
    "`ltvit_train` with SMALL and `params` into `out`: its process (which must succeed) and its metrics."
    args = [f'--{k.replace("_", "-")}={v}' for k, v in {**SMALL, **params, 'out_dir': out}.items()]
    r = subprocess.run([BIN / 'ltvit_train', *args], capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE='1'))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = json.loads((out / 'metrics.json').read_text())
    assert m['n_images'] > 0 and 'mean_auc' in m
    return r, m


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
        _train(tmp_path / f'run-{name}', dataset=name, data_dir=folder)
    model = load_model(tmp_path / 'run-vindr' / 'best.safetensors').eval()
    ds = VinDrCXR(folder, 'test', transform=make_transform(32), labels=model.label_names)
    res = compare_localisation(model, ds, methods=('attention',), max_images=10)
    assert res.table.shape[0] > 0 and 'LT-ViT attention' in ''.join(res.intervals().index)
    n = len(ds.boxes())
    assert n == sum(len(s) for s in [res.scores['random']]) or n >= len(res.scores['random'])


def _txv_file(name: str) -> Path:
    from importlib.resources import files
    return Path(str(files('torchxrayvision') / 'data' / name))


@pytest.fixture(scope='module')
def siim_table():
    "SIIM-ACR's stage-1 table (12,954 rows, 12,047 images) from the torchxrayvision wheel, with its ' EncodedPixels'."
    return pd.read_csv(_txv_file('siim-pneumothorax-train-rle.csv.gz'), dtype=str)


def _siim_folder(root: Path, rows: pd.DataFrame, size: int = 1024) -> Path:
    "The release layout: train-rle.csv, and each image at dicom-images-train/<study>/<series>/<ImageId>.dcm."
    root.mkdir(parents=True, exist_ok=True)
    rows.to_csv(root / 'train-rle.csv', index=False)
    for k, i in enumerate(rows['ImageId'].unique()):
        d = root / 'dicom-images-train' / f'1.2.{k}' / f'1.3.{k}'; d.mkdir(parents=True)
        write_test_dicom(d / f'{i}.dcm', np.full((size, size), 20 + k, np.uint8))
    return root


def test_siim_labels_equal_torchxrayvisions_on_every_image(siim_table, tmp_path):
    "Per image, Pneumothorax is torchxrayvision's label (its rows: EncodedPixels != -1) on all 12,047 images."
    import torchxrayvision as xrv
    from ltvit.datasets import read_siim_table, rle_decode
    siim_table.to_csv(tmp_path / 'train-rle.csv', index=False)
    rows = read_siim_table(tmp_path)
    assert rows.attrs['code'] == 'relative' and len(rows) == 12954
    ours = (rows['EncodedPixels'] != '-1').groupby(rows['ImageId']).any()
    txv = xrv.datasets.SIIM_Pneumothorax_Dataset(str(tmp_path / 'none'))
    theirs = pd.Series(txv.labels[:, 0] > 0, index=txv.csv['ImageId']).groupby(level=0).any()
    assert len(ours) == len(theirs) == 12047 and (ours == theirs.loc[ours.index]).all()
    assert int(ours.sum()) == 2669
    # every region's code fits the 1024-px frame as a stage-1 (relative) code, and none reads as an absolute one
    codes = rows.loc[rows['EncodedPixels'] != '-1', 'EncodedPixels']
    assert all(rle_decode(c, 1024, 1024).any() for c in codes)
    for c in codes.iloc[:200]:
        with pytest.raises(ValueError): rle_decode(c, 1024, 1024, relative=False)


@pytest.mark.slow
def test_siim_masks_equal_torchxrayvisions_decoder_on_every_positive_image(siim_table, tmp_path):
    "Our mask of each positive image is torchxrayvision's union... where it keeps one region, its last region."
    import torchxrayvision as xrv
    from ltvit.datasets import read_siim_table, rle_decode
    siim_table.to_csv(tmp_path / 'train-rle.csv', index=False)
    rows = read_siim_table(tmp_path)
    txv = xrv.datasets.SIIM_Pneumothorax_Dataset(str(tmp_path / 'none'), pathology_masks=True)
    regions = rows[rows['EncodedPixels'] != '-1'].groupby('ImageId')['EncodedPixels'].apply(list)
    several = 0
    for i, codes in regions.items():
        ms = [rle_decode(c, 1024, 1024) for c in codes]
        theirs = txv.get_pathology_mask_dict(i, 1024)[0][0] > 0
        assert np.array_equal(ms[-1], theirs), i  # torchxrayvision keeps the last region of an image (not the union)
        several += len(ms) > 1
    assert len(regions) == 2669 and several == 624


def test_siim_boxes_and_masks_from_real_rows(siim_table, tmp_path):
    "Real rows of 8 images (one with several regions): label, union mask, one box per region at the image's scale."
    from ltvit.datasets import SIIMPneumothorax, rle_decode
    pos = siim_table[siim_table[' EncodedPixels'].str.strip() != '-1']
    multi = pos['ImageId'].value_counts().index[0]
    ids = [multi, *pos['ImageId'].drop_duplicates()[:4], *siim_table.loc[siim_table[' EncodedPixels'].str.strip() == '-1', 'ImageId'][:3]]
    rows = siim_table[siim_table['ImageId'].isin(ids)]
    root = _siim_folder(tmp_path / 'siim', rows)
    parts = [SIIMPneumothorax(root, s, val_frac=0.25, test_frac=0.25) for s in ('train', 'val', 'test')]
    assert sorted(i for p in parts for i in p.table['id']) == sorted(set(ids))
    boxes = pd.concat([p.boxes() for p in parts])
    assert len(boxes) == int((rows[' EncodedPixels'].str.strip() != '-1').sum())
    for p in parts:
        for i, y in zip(p.table['id'], p.targets[:, 0]):
            codes = [c.strip() for c in rows.loc[rows['ImageId'] == i, ' EncodedPixels'] if c.strip() != '-1']
            assert y == (len(codes) > 0)
            union = np.logical_or.reduce([rle_decode(c, 1024, 1024) for c in codes]) if codes else np.zeros((1024, 1024), bool)
            assert np.array_equal(p.segmentation(i), union)
            b = boxes[boxes['id'] == i]
            if codes:
                yy, xx = np.nonzero(union)
                assert b['x'].min() == xx.min() and b['y'].min() == yy.min() and (b['x'] + b['w']).max() == xx.max() + 1
    small = pd.concat([p.boxes(size=256) for p in parts])
    assert np.allclose(small[['x', 'y', 'w', 'h']].to_numpy() * 4, boxes[['x', 'y', 'w', 'h']].to_numpy())


def test_siim_codes_that_do_not_fit_are_errors_and_stage_2_codes_are_absolute(tmp_path):
    "A run past the image is an error naming the table and image; stage 2's absolute codes count from 1."
    from ltvit.datasets import SIIMPneumothorax
    ids = list('abcdef')
    rows = pd.DataFrame({'ImageId': ids, 'EncodedPixels': ['100 5 2000 3', '-1', '-1', '-1', '-1', '-1']})
    root = _siim_folder(tmp_path / 's', rows, size=32)
    parts = [SIIMPneumothorax(root, s, val_frac=0.2, test_frac=0.2) for s in ('train', 'val', 'test')]
    with pytest.raises(DataError, match=r'train-rle.csv: the code of image a .*past the 32 x 32 image'):
        next(p for p in parts if 'a' in set(p.table['id'])).boxes()
    (root / 'train-rle.csv').unlink()
    pd.DataFrame({'ImageId': ids, 'EncodedPixels': ['33 2', '-1', '-1', '-1', '-1', '-1']}).to_csv(root / 'stage_2_train.csv', index=False)
    p = next(p for p in (SIIMPneumothorax(root, s, val_frac=0.2, test_frac=0.2) for s in ('train', 'val', 'test')) if 'a' in set(p.table['id']))
    m = p.segmentation('a')
    assert m.sum() == 2 and m[0, 1] and m[1, 1]  # pixels 33 and 34 counted from 1: the top of the second column
    pd.DataFrame({'ImageId': ['a', 'a', 'b'], 'EncodedPixels': ['3 4', '-1', '-1']}).to_csv(root / 'stage_2_train.csv', index=False)
    with pytest.raises(DataError, match='stage_2_train.csv: image a has a region and a -1 row'): SIIMPneumothorax(root, 'train')


@pytest.fixture(scope='module')
def padchest_table(tmp_path_factory):
    "PadChest's full table (160,861 films) from the torchxrayvision wheel, read by ltvit."
    from ltvit.datasets import PADCHEST_CSV, read_padchest_table
    root = tmp_path_factory.mktemp('padchest')
    (root / (PADCHEST_CSV + '.gz')).symlink_to(_txv_file(PADCHEST_CSV + '.gz'))
    return read_padchest_table(root)


def test_padchest_terms_of_every_row_are_known_and_common_labels_match_torchxrayvision(padchest_table, tmp_path):
    "Every film's terms are among the 174 findings and 19 diagnoses; the common labels are torchxrayvision's on every"
    " film it keeps, except the three terms its name matching takes for another finding (counted)."
    import torchxrayvision as xrv
    from ltvit.datasets import PADCHEST_COMMON, PADCHEST_DIAGNOSES, PADCHEST_FINDINGS
    t = padchest_table
    assert len(t) == 160861 and int(t['terms'].isna().sum()) == 103
    used = set().union(*t['terms'].dropna())
    assert used == set(PADCHEST_FINDINGS) | set(PADCHEST_DIAGNOSES) and len(PADCHEST_FINDINGS) == 174
    (tmp_path / 'img').mkdir()
    txv = xrv.datasets.PC_Dataset(str(tmp_path / 'img'), csvpath=str(_txv_file('PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz')),
                                  views=['PA', 'AP', 'AP Supine'], unique_patients=False)
    theirs = pd.DataFrame(txv.labels, index=txv.csv['ImageID'], columns=txv.pathologies)
    assert set(theirs.columns) == set(PADCHEST_COMMON)
    terms = t.set_index('ImageID').loc[theirs.index, 'terms']
    removed = {'Nodule': 'pseudonodule', 'Emphysema': 'subcutaneous emphysema', 'Effusion': 'pericardial effusion'}
    diffs = {}
    for label, ts in PADCHEST_COMMON.items():
        ours = np.array([bool(x & set(ts)) for x in terms])
        differ = ours != (theirs[label].to_numpy() > 0)
        if label not in removed: assert not differ.any(), label; continue
        only = np.array([removed[label] in x and not (x & set(ts)) for x in terms])
        assert np.array_equal(differ, only), label  # exactly the films with the removed term and none of the kept
        diffs[label] = int(differ.sum())
    assert all(n > 0 for n in diffs.values()), diffs
    print(len(theirs), diffs)


def test_padchest_reads_real_rows_from_numbered_folders(padchest_table, tmp_path):
    "Real rows of 30 films (frontal and lateral) in <ImageDir>/: the frontal ones, their terms, 12 bits at full contrast."
    from ltvit.datasets import PADCHEST_CSV, PadChest
    rows = padchest_table[padchest_table['terms'].notna()].groupby('Projection').head(6).drop(columns='terms')
    root = tmp_path / 'pc'
    for _, r in rows.iterrows():
        (root / str(r['ImageDir'])).mkdir(parents=True, exist_ok=True)
        from PIL import Image
        Image.fromarray(np.full((48, 40), 3000, np.uint16)).save(root / str(r['ImageDir']) / r['ImageID'])
    rows.to_csv(root / PADCHEST_CSV, index=False)
    parts = [PadChest(root, s, labels='all', val_frac=0.2, test_frac=0.2) for s in ('train', 'val', 'test')]
    got = pd.concat([p.table for p in parts]).set_index('id')
    frontal = rows[rows['Projection'].isin(['PA', 'AP', 'AP_horizontal'])]
    assert sorted(got.index) == sorted(frontal['ImageID'])
    from ltvit.datasets import parse_padchest_labels
    for i, terms in zip(frontal['ImageID'], parse_padchest_labels(frontal['Labels'])):
        assert {c for c in parts[0].labels if got.at[i, c] == 1} == terms
    assert abs(float(parts[0][0]['image'].mean()) - 3000 / 4095) < 0.01  # the film's 12-bit value, not 3000/65535
    with pytest.raises(DataError, match='PadChest has no term'): PadChest(root, 'train', labels=['Nodules'])


def test_nih_expert_labels_equal_torchxrayvisions_and_test_films_are_nih_test_films(tmp_path):
    "On every film of both sets the labels are torchxrayvision's; the test set lies in NIH's test list (by patient too)."
    import torchxrayvision as xrv
    from ltvit.datasets import NIH_EXPERT_LABELS, read_nih_expert_labels
    (tmp_path / 'google2019_nih-chest-xray-labels.csv.gz').symlink_to(_txv_file('google2019_nih-chest-xray-labels.csv.gz'))
    sets = {s: read_nih_expert_labels(tmp_path, s) for s in ('test', 'val')}
    assert (len(sets['test']), len(sets['val'])) == (1962, 2414)
    txv = xrv.datasets.NIH_Google_Dataset(str(tmp_path), views=['PA', 'AP'], unique_patients=False)
    names = {'Lung Opacity': 'Airspace opacity', 'Nodule/Mass': 'Nodule or mass'}
    theirs = pd.DataFrame(txv.labels, index=txv.csv['Image Index'], columns=[names.get(p, p) for p in txv.pathologies])
    ours = pd.concat(sets.values()).set_index('Image Index')[list(NIH_EXPERT_LABELS)]
    assert len(theirs) == len(ours) == 4376 and (ours.loc[theirs.index, theirs.columns] == theirs).all().all()
    sample = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'nih-sample'
    if not (sample / 'test_list.txt').is_file(): pytest.skip('the NIH sample (its split lists) is not beside the checkout')
    test_list = set((sample / 'test_list.txt').read_text().split()); tv = set((sample / 'train_val_list.txt').read_text().split())
    assert sets['test']['Image Index'].isin(test_list).all() and sets['val']['Image Index'].isin(tv).all()
    tv_patients = {int(n.split('_')[0]) for n in tv}
    assert not set(sets['test']['Patient ID']) & tv_patients  # no film of a training patient in the expert test set


def test_mimic_labels_follow_the_policies_and_agree_with_torchxrayvision(tmp_path):
    "A MIMIC-CXR-JPG folder in the release schema: official splits, frontal views, CheXpert policies; where"
    " torchxrayvision has a label ours equals it (it keeps -1 and blank as missing: ours masks -1 and reads blank as 0),"
    " except that it zeroes Support Devices on a study whose No Finding is 1."
    import torchxrayvision as xrv
    from PIL import Image
    from ltvit.core import get_label_set
    from ltvit.datasets import MIMIC_TABLES, MIMICCXR
    rng = np.random.default_rng(0)
    c14 = list(get_label_set('chexpert14'))
    lab, spl, meta = [], [], []
    for k in range(60):
        subj, study = 10000000 + k // 2, 50000000 + k
        row = {l: rng.choice([1.0, 0.0, -1.0, np.nan]) for l in c14}
        if k % 4 == 0:  # the labeller's No Finding: nothing else positive or uncertain (a support device allowed)
            row = {l: np.nan for l in c14} | {'No Finding': 1.0, 'Support Devices': [1.0, np.nan][k % 8 // 4]}
        elif row['No Finding'] == 1: row['No Finding'] = np.nan
        lab.append({'subject_id': subj, 'study_id': study, **row})
        for v, view in enumerate(('PA', 'AP', 'LATERAL')):
            did = f'{k:04d}-{v}'
            f = tmp_path / 'files' / f'p{str(subj)[:2]}' / f'p{subj}' / f's{study}'; f.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((24, 24), k, np.uint8)).save(f / f'{did}.jpg')
            spl.append({'dicom_id': did, 'study_id': study, 'subject_id': subj, 'split': ['train', 'validate', 'test'][(k // 2) % 3]})
            meta.append({'dicom_id': did, 'subject_id': subj, 'study_id': study, 'ViewPosition': view,
                         'StudyDate': 21800101 + k, 'Rows': 24, 'Columns': 24})
    for name, rows in (('labels', lab), ('split', spl), ('metadata', meta)):
        pd.DataFrame(rows).to_csv(tmp_path / (MIMIC_TABLES[name] + '.gz'), index=False)
    parts = {s: MIMICCXR(tmp_path, s, labels='chexpert14', policy='ignore') for s in ('train', 'val', 'test')}
    assert sum(len(p) for p in parts.values()) == 120  # PA and AP of 60 studies
    patients = [set(p.table['patient']) for p in parts.values()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    txv = xrv.datasets.MIMIC_Dataset(str(tmp_path / 'files'), str(tmp_path / (MIMIC_TABLES['labels'] + '.gz')),
                                     str(tmp_path / (MIMIC_TABLES['metadata'] + '.gz')), views=['PA', 'AP'], unique_patients=False)
    names = {'Effusion': 'Pleural Effusion'}
    theirs = pd.DataFrame(txv.labels, index=txv.csv['dicom_id'], columns=[names.get(p, p) for p in txv.pathologies])
    quirks = 0
    for p in parts.values():
        ids = [i.rsplit('/', 1)[1][:-4] for i in p.table['id']]
        y, m = pd.DataFrame(p.targets, index=ids, columns=p.labels), pd.DataFrame(p.mask, index=ids, columns=p.labels)
        t = theirs.loc[ids, [c for c in theirs.columns if c in p.labels]]
        known = t.notna()
        same = (y[t.columns] == t) | ~known  # where torchxrayvision has a label, the same, but for one quirk:
        raw = pd.DataFrame(lab).set_index('study_id')
        nf = np.array([raw.at[int(i.split('/s')[1].split('/')[0]), 'No Finding'] == 1 for i in p.table['id']])
        assert same.drop(columns='Support Devices').all().all() and same['Support Devices'][~nf].all()
        quirk = nf & (y['Support Devices'] == 1).to_numpy()
        assert not same['Support Devices'][quirk].any(); quirks += int(quirk.sum())  # it zeroes a device there
        for j, i in enumerate(p.table['id']):
            study = int(i.split('/s')[1].split('/')[0])
            for l in t.columns:
                v = raw.at[study, l]
                if v == -1: assert m.iat[j, p.labels.index(l)] == 0
                elif np.isnan(v) and raw.at[study, 'No Finding'] != 1: assert np.isnan(t.iat[j, list(t.columns).index(l)]) and y.iat[j, p.labels.index(l)] == 0
    assert quirks > 0


def _mimic_folder(root: Path, n: int = 40) -> Path:
    from PIL import Image
    from ltvit.core import get_label_set
    from ltvit.datasets import MIMIC_TABLES
    rng, lab, spl, meta = np.random.default_rng(1), [], [], []
    for k in range(n):
        subj, study, did = 10000000 + k, 50000000 + k, f'{k:04d}'
        lab.append({'subject_id': subj, 'study_id': study, **{l: rng.choice([1.0, 0.0, -1.0, np.nan]) for l in get_label_set('chexpert14')}})
        f = root / 'files' / f'p{str(subj)[:2]}' / f'p{subj}' / f's{study}'; f.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(f / f'{did}.jpg')
        spl.append({'dicom_id': did, 'study_id': study, 'subject_id': subj, 'split': ['train', 'train', 'train', 'validate', 'test'][k % 5]})
        meta.append({'dicom_id': did, 'subject_id': subj, 'study_id': study, 'ViewPosition': 'PA'})
    for name, rows in (('labels', lab), ('split', spl), ('metadata', meta)):
        pd.DataFrame(rows).to_csv(root / (MIMIC_TABLES[name] + '.gz'), index=False)
    return root


@pytest.mark.slow
def test_siim_padchest_mimic_and_nih_expert_labels_end_to_end(tmp_path, siim_table, padchest_table):
    "`ltvit_cache` and `ltvit_train` take siim, padchest and mimic; compare_localisation scores SIIM's region boxes;"
    " an NIH run with --expert-test also tests on the expert labels of the films it has."
    from PIL import Image
    from ltvit.checkpoint import load_model
    from ltvit.data import make_transform
    from ltvit.datasets import PADCHEST_CSV, SIIMPneumothorax
    from ltvit.interpret import compare_localisation
    env = dict(os.environ, HF_HUB_OFFLINE='1')
    pos = siim_table[siim_table[' EncodedPixels'].str.strip() != '-1']['ImageId'].drop_duplicates()[:20]
    neg = siim_table[siim_table[' EncodedPixels'].str.strip() == '-1']['ImageId'][:20]
    siim = _siim_folder(tmp_path / 'siim', siim_table[siim_table['ImageId'].isin(set(pos) | set(neg))], size=1024)
    rows = padchest_table[padchest_table['terms'].notna() & (padchest_table['Projection'] == 'PA')].head(40).drop(columns='terms')
    pc = tmp_path / 'padchest'
    for _, r in rows.iterrows():
        (pc / str(r['ImageDir'])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(len(r['ImageID'])).integers(0, 4096, (64, 64), dtype=np.uint16)).save(pc / str(r['ImageDir']) / r['ImageID'])
    rows.to_csv(pc / PADCHEST_CSV, index=False)
    mimic = _mimic_folder(tmp_path / 'mimic')
    for name, folder, n in (('siim', siim, 40), ('padchest', pc, 40), ('mimic', mimic, 40)):
        r = subprocess.run([BIN / 'ltvit_cache', '--dataset', name, '--data-dir', folder, '--size', '32', '--quiet'],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 0 and f'{n} images cached at 32px' in r.stdout, r.stdout + r.stderr[-2000:]
        _train(tmp_path / f'run-{name}', dataset=name, data_dir=folder)
    assert len(json.loads((tmp_path / 'run-padchest' / 'metrics.json').read_text())['per_class_auc']) == 28
    model = load_model(tmp_path / 'run-siim' / 'best.safetensors').eval()
    ds = SIIMPneumothorax(siim, 'train', transform=make_transform(32))
    res = compare_localisation(model, ds, methods=('attention',), max_images=10)
    assert res.table.shape[0] > 0 and len(res.scores['random']) > 0
    # NIH with the expert labels: the sample's films that are in the expert test set
    sample = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'nih-sample'
    if not sample.is_dir(): pytest.skip('the NIH sample is not beside the checkout')
    nih = tmp_path / 'nih'; nih.mkdir()
    for f in sample.iterdir(): (nih / f.name).symlink_to(f)
    g = pd.read_csv(_txv_file('google2019_nih-chest-xray-labels.csv.gz'))
    (nih / 'four_findings_expert_labels').mkdir()
    g[g['Set Id'] == 'test'].to_csv(nih / 'four_findings_expert_labels' / 'test_labels.csv', index=False)
    have = g[(g['Set Id'] == 'test') & g['Image Index'].isin(os.listdir(sample / 'images'))]
    r, m = _train(tmp_path / 'run-nih', dataset='nih', data_dir=nih, subset=True, expert_test=True)
    e = m['expert_test']
    assert e['n_images'] == len(have) > 0 and set(e['per_class_auc']) == {'Airspace opacity', 'Nodule or mass', 'Pneumothorax'}
    assert 'On the expert labels (NIH test films' in r.stdout
    r = subprocess.run([BIN / 'ltvit_train', '--dataset=siim', f'--data-dir={siim}', '--expert-test=True'], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and 'expert_test=True tests a model trained on nih' in r.stderr, r.stderr[-1000:]
