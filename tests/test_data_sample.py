"""The NIH loader on the real 500-image sample in ../shared/data (skipped with a reason where absent)."""
import numpy as np
import pandas as pd
import pytest
from torch.utils.data import DataLoader

from ltvit.core import NIH_LABELS
from ltvit.data import NIHChestXray14, make_transform, read_nih_boxes, load_image


@pytest.fixture(scope='module')
def splits(nih_sample):
    return {s: NIHChestXray14(nih_sample, s, subset=True, verbose=False) for s in ('train', 'val', 'test')}


def test_counts(splits):
    assert len(splits['train']) + len(splits['val']) == 440
    assert len(splits['test']) == 60
    assert sum(len(d) for d in splits.values()) == 500


def test_labels_equal_finding_labels(splits, nih_sample):
    raw = pd.read_csv(nih_sample / 'Data_Entry_2017.csv').set_index('Image Index')['Finding Labels']
    for ds in splits.values():
        for i, row in ds.table.iterrows():
            names = set(raw[row['id']].split('|')) - {'No Finding'}
            got = {l for l, v in zip(NIH_LABELS, ds.targets[i]) if v == 1}
            assert got == names, row['id']


def test_no_patient_in_two_splits(splits):
    p = {s: set(d.table['patient']) for s, d in splits.items()}
    assert not (p['train'] & p['val']) and not (p['train'] & p['test']) and not (p['val'] & p['test'])


def test_boxes_land_at_the_right_pixels_at_256(splits, nih_sample):
    ds = splits['test']
    boxes = read_nih_boxes(nih_sample, ds.table, size=256)
    assert len(boxes) > 0
    raw = pd.read_csv(nih_sample / 'BBox_List_2017.csv')
    raw.columns = ['id', 'label', 'x', 'y', 'w', 'h'] + list(raw.columns[6:])
    for _, b in boxes.iterrows():
        r = raw[(raw['id'] == b['id']) & (raw['label'].replace({'Infiltrate': 'Infiltration'}) == b['label'])]
        assert np.isclose(r[['x', 'y', 'w', 'h']].to_numpy() * 256 / 1024, b[['x', 'y', 'w', 'h']].to_numpy(float)).all(1).any()
    # the sample's PNGs are 256 px: scaling to each image's own size gives the same boxes
    own = read_nih_boxes(nih_sample, ds.table)
    assert (own['img_w'] == 256).all() and np.allclose(own[['x', 'y', 'w', 'h']], boxes[['x', 'y', 'w', 'h']])


def test_rgba_images_load_as_grey(splits):
    from PIL import Image
    table = pd.concat([d.table for d in splits.values()])
    modes = {p: Image.open(p).mode for p in table['path']}
    rgba = [p for p, m in modes.items() if m == 'RGBA']
    assert rgba, 'the sample has RGBA images'
    a = load_image(rgba[0])
    assert a.ndim == 2 and a.dtype == np.uint8 and a.std() > 0


def test_multi_worker_loader(splits):
    ds = splits['train']; ds.transform = make_transform(64)
    batches = list(DataLoader(ds, batch_size=50, num_workers=2))
    ids = [i for b in batches for i in b['id']]
    assert sorted(ids) == sorted(ds.table['id']) and batches[0]['image'].shape == (50, 3, 64, 64)


def test_table_columns_and_partial_folders(nih_sample):
    from ltvit.data import read_nih_table, nih_split_table, SPLITS
    t = read_nih_table(nih_sample)
    assert len(t) == 500 and list(t.columns[4:]) == list(NIH_LABELS)
    with pytest.raises(Exception, match='pass subset=True'): nih_split_table(nih_sample, 'test')
    parts = {s: nih_split_table(nih_sample, s, subset=True, verbose=False) for s in SPLITS}
    assert len(parts['train']) + len(parts['val']) == 440 and len(parts['test']) == 60
    a = nih_split_table(nih_sample, 'val', subset=True, seed=1, verbose=False)
    b = nih_split_table(nih_sample, 'val', subset=True, seed=2, verbose=False)
    assert set(a['id']) != set(b['id'])  # the validation carve-out follows the seed


def test_items_views_and_box_names(nih_sample):
    ds = NIHChestXray14(nih_sample, 'test', subset=True, transform=make_transform(64), verbose=False)
    item = ds[0]
    assert item['image'].shape == (3, 64, 64) and item['labels'].shape == (14,) and isinstance(item['id'], str)
    pa = NIHChestXray14(nih_sample, 'train', subset=True, views=['PA'], verbose=False)
    assert len(pa.table) > 0 and (pa.table['view'] == 'PA').all()
    assert 'Infiltrate' not in set(read_nih_boxes(nih_sample)['label'])
    assert 'Infiltrate' in set(pd.read_csv(nih_sample / 'BBox_List_2017.csv').iloc[:, 1])  # the release's spelling
