"""`ltvit_predict` and `ltvit_export` as a user runs them, on a small trained LT-ViT: DICOM files as an archive
exports them (MONOCHROME1 and 2, 8 and 16 bits, JPEG-compressed, lateral, without pixels, without suffix), their
pixels against PNGs of the same arrays, the CSV, the statuses, the rerun, the HTML report in headless Chromium,
and the ONNX model in onnxruntime."""
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ltvit.checkpoint import checkpoint_metadata, load_model
from ltvit.predict import MIN_POSITIVES, ExportWrapper, ImageRejected, read_any, read_predictions, write_test_dicom
from ltvit.synthetic import make_synthetic
from ltvit.train import TrainConfig, train

CHROMIUM = next((shutil.which(n) for n in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(n)), None)
TINY = 'depth:2,embed_dim:48,num_heads:2,patch_size:8'


def cli(prog: str, *args) -> subprocess.CompletedProcess:
    code = f'import sys; from ltvit.predict import {prog}; sys.exit({prog}())'
    return subprocess.run([sys.executable, '-c', code, *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A two-epoch LT-ViT on phantoms (its checkpoint stores preprocessing and operating points) and its data."
    d = tmp_path_factory.mktemp('pred')
    syn = make_synthetic(d / 'syn', n_patients=60, progress=False)
    train(TrainConfig(dataset='synthetic', data_dir=str(syn), synthetic_patients=60, img_size=32, epochs=2, warmup_epochs=0.1,
                      batch_size=16, out_dir=str(d / 'run'), n_boot=0, model_args=TINY, n2=1), verbose=False)
    return d / 'run' / 'best.safetensors', syn


def _jpeg_dicom(path: Path, arr: np.ndarray) -> Path:
    "A DICOM with JPEG Baseline pixel data (the archive's usual lossy syntax), encapsulated by pydicom."
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit
    write_test_dicom(path, arr)
    ds = dcmread(path)
    buf = io.BytesIO(); Image.fromarray(arr).save(buf, format='JPEG', quality=95)
    ds.PixelData = encapsulate([buf.getvalue()]); ds['PixelData'].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(path)
    return path


def test_dicom_pixels_match_png_of_the_same_array(tmp_path):
    rng = np.random.default_rng(0)
    a8 = rng.integers(0, 256, (48, 40), dtype=np.uint8)
    a16 = rng.integers(0, 65536, (48, 40), dtype=np.uint16)
    Image.fromarray(a8).save(tmp_path / 'a8.png'); Image.fromarray(a16).save(tmp_path / 'a16.png')
    png8, png16 = read_any(tmp_path / 'a8.png')[0], read_any(tmp_path / 'a16.png')[0]
    assert np.array_equal(read_any(write_test_dicom(tmp_path / 'm2_8.dcm', a8))[0], png8)
    assert np.array_equal(read_any(write_test_dicom(tmp_path / 'm2_16', a16))[0], png16)  # no suffix
    # 12 bits stored in 16: scaled over the 12-bit range, as the 16-bit PNG of the array times 16 (to rounding)
    a12 = rng.integers(0, 4096, (48, 40), dtype=np.uint16)
    Image.fromarray((a12 * 16).astype(np.uint16)).save(tmp_path / 'a12x16.png')
    d12 = read_any(write_test_dicom(tmp_path / 'm2_12.dcm', a12, bits=12))[0]
    assert np.abs(d12.astype(int) - read_any(tmp_path / 'a12x16.png')[0]).max() <= 1 and d12.max() > 250
    # MONOCHROME1 stores the negative: the same picture after inversion
    assert np.array_equal(read_any(write_test_dicom(tmp_path / 'm1_8.dcm', 255 - a8, 'MONOCHROME1'))[0], png8)
    # rescale slope and intercept map stored values linearly; a window saturates outside it
    img, _ = read_any(write_test_dicom(tmp_path / 'w.dcm', a16, rescale=(2.0, -1000.0), window=(64535, 2)))
    assert set(np.unique(img)) <= {0, 255} and (img == 255).any() and (img == 0).any()
    jp = read_any(_jpeg_dicom(tmp_path / 'jpeg.dcm', a8))[0]  # lossy: close, not equal
    assert jp.shape == a8.shape and np.abs(jp.astype(int) - png8).mean() < 12


def test_unusable_inputs_get_a_status(tmp_path):
    a = np.zeros((16, 16), np.uint8)
    cases = {'lateral view': write_test_dicom(tmp_path / 'lat.dcm', a, view='LATERAL'),
             'no pixels': write_test_dicom(tmp_path / 'nopix.dcm', a, with_pixels=False)}
    (tmp_path / 'trunc.png').write_bytes((tmp_path / 'lat.dcm').read_bytes()[:40])
    cases['unreadable'] = tmp_path / 'trunc.png'
    for status, path in cases.items():
        with pytest.raises(ImageRejected) as e: read_any(path)
        assert e.value.status == status and e.value.reason


@pytest.fixture(scope='module')
def predicted(trained, tmp_path_factory):
    "An inbox as an archive export looks, predicted once by the command line: (checkpoint, inbox, out, PNGs, run)."
    ckpt, syn = trained
    tmp = tmp_path_factory.mktemp('inbox')
    inbox = tmp / 'inbox'; (inbox / 'sub').mkdir(parents=True)
    pngs = sorted((syn / 'images').glob('*.png'))[:8]
    for f in pngs[:4]: shutil.copy(f, inbox / f.name)
    arrs = [np.asarray(Image.open(f)) for f in pngs[4:8]]
    write_test_dicom(inbox / 'sub' / 'IM0001', arrs[0])  # no suffix: found by content
    write_test_dicom(inbox / 'sub' / 'neg.dcm', 255 - arrs[1], 'MONOCHROME1')
    write_test_dicom(inbox / 'sub' / 'deep.dcm', arrs[2].astype(np.uint16) * 257)
    _jpeg_dicom(inbox / 'sub' / 'jpeg.dcm', arrs[3])
    write_test_dicom(inbox / 'lateral.dcm', arrs[0], view='LL')
    write_test_dicom(inbox / 'nopix.dcm', arrs[0], with_pixels=False)
    (inbox / 'broken.png').write_bytes(pngs[0].read_bytes()[:100])
    (inbox / 'notes.txt').write_text('ignored: not an image suffix and not DICOM')
    out = tmp / 'report'
    r = cli('main', '--checkpoint', ckpt, '--out', out, inbox, '--top-k', '1', '--workers', '2')
    return ckpt, inbox, out, pngs, r


@pytest.mark.slow
def test_ltvit_predict_end_to_end(predicted, tmp_path):
    ckpt, inbox, out, pngs, r = predicted
    assert r.returncode == 1, r.stderr[-3000:]  # some inputs were unusable: the exit status says so
    assert '8 ok' in r.stdout and '1 lateral view' in r.stdout and '1 no pixels' in r.stdout, r.stdout
    t = read_predictions(out / 'predictions.csv')
    names = t['path'].map(lambda p: Path(p).name)
    assert sorted(names) == sorted([f.name for f in pngs[:4]] + ['IM0001', 'neg.dcm', 'deep.dcm', 'jpeg.dcm',
                                                                 'lateral.dcm', 'nopix.dcm', 'broken.png'])
    st = dict(zip(names, t['status']))
    assert (st['lateral.dcm'], st['nopix.dcm'], st['broken.png']) == ('lateral view', 'no pixels', 'unreadable')
    ok = t[t['status'] == 'ok']
    assert len(ok) == 8 and (ok['sop_instance_uid'].astype(str).str.len() > 0).sum() == 4  # DICOM rows: their UID
    labels = load_model(ckpt).label_names
    ops = checkpoint_metadata(ckpt)['operating_points']
    for _, row in ok.iterrows():  # calls at the stored Youden thresholds
        for l in labels:
            if ops[l] and ops[l]['validation_positives'] >= MIN_POSITIVES:
                assert int(row[f'call_{l}']) == int(float(row[f'prob_{l}']) >= ops[l]['youden'])
            else: assert int(row[f'call_{l}']) == -1  # no threshold, or one set on too few validation positives
    # the DICOM routes give the PNG route's probabilities (lossless ones exactly, JPEG closely)
    ref = cli('main', '--checkpoint', ckpt, '--out', tmp_path / 'ref', *pngs[4:8])
    assert ref.returncode == 0, ref.stderr[-2000:]
    rp = pd.read_csv(tmp_path / 'ref' / 'predictions.csv'); rp.index = rp['path'].map(lambda p: Path(p).name)
    got = t.set_index(pd.Index(list(names)))
    cols = [f'prob_{l}' for l in labels]
    for dcm, src, tol in (('IM0001', pngs[4], 1e-6), ('neg.dcm', pngs[5], 1e-6), ('deep.dcm', pngs[6], 1e-6),
                          ('jpeg.dcm', pngs[7], 0.05)):
        diff = np.abs(got.loc[dcm, cols].astype(float).to_numpy() - rp.loc[src.name, cols].astype(float).to_numpy())
        assert diff.max() < tol, (dcm, diff.max())
    maps = sorted((out / 'maps').glob('*.png'))
    assert len(maps) >= len(ok)  # at least the top-1 map of every image
    # a rerun skips every image (nothing rewritten); --redo predicts them again
    before, stamps = (out / 'predictions.csv').read_bytes(), [m.stat().st_mtime_ns for m in maps]
    again = cli('main', '--checkpoint', ckpt, '--out', out, inbox)
    assert again.returncode == 1 and (out / 'predictions.csv').read_bytes() == before
    assert [m.stat().st_mtime_ns for m in maps] == stamps
    redo = cli('main', '--checkpoint', ckpt, '--out', out, inbox, '--redo', '--top-k', '1')
    assert redo.returncode == 1 and [m.stat().st_mtime_ns for m in maps] != stamps
    html = (out / 'report.html').read_text()
    assert all(f'data-path="{p}"' in html for p in ok['path']) and 'lateral view' in html


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason='Chromium is not installed (apt-get install chromium)')
def test_report_opens_in_chromium_with_every_image(predicted, tmp_path):
    _, _, out, _, r = predicted
    assert r.returncode == 1, r.stderr[-3000:]  # three unusable inputs
    ok = read_predictions(out / 'predictions.csv').query('status == "ok"')
    run = lambda *a: subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', *a,
                                     (out / 'report.html').as_uri()], capture_output=True, text=True, timeout=120)
    dom = run(f'--user-data-dir={tmp_path / "p1"}', '--dump-dom').stdout
    blocks = re.findall(r'<div class="img" data-path="([^"]+)"', dom)
    assert sorted(blocks) == sorted(ok['path']), 'every predicted image has its block in the rendered page'
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,[A-Za-z0-9+/=]{200,}', dom)) >= 2 * len(ok)
    shot = tmp_path / 'shot.png'
    run(f'--user-data-dir={tmp_path / "p2"}', f'--screenshot={shot}', '--window-size=1200,1600')
    assert np.asarray(Image.open(shot).convert('L')).std() > 10  # the images are drawn, not a blank page


@pytest.mark.slow
def test_onnx_export_matches_pytorch(trained, tmp_path):
    import onnxruntime as ort
    ckpt, _ = trained
    for maps in (False, True):
        path = tmp_path / f'm{int(maps)}.onnx'
        r = cli('export_main', '--checkpoint', ckpt, '--onnx', path, *(['--maps'] if maps else []))
        assert r.returncode == 0, r.stderr[-3000:]
        sess = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
        x = torch.randn(5, 3, 32, 32)  # another batch size than the export's
        got = sess.run(None, {'image': x.numpy()})
        with torch.no_grad(): want = ExportWrapper(load_model(ckpt), maps)(x)
        want = want if isinstance(want, tuple) else (want,)
        assert len(got) == len(want)
        for g, w in zip(got, want): assert np.abs(g - w.numpy()).max() < 1e-4
        props = sess.get_modelmeta().custom_metadata_map  # the file says what its outputs mean and how to feed it
        assert json.loads(props['labels']) == load_model(ckpt).label_names
        assert json.loads(props['preprocessing']) == checkpoint_metadata(ckpt)['preprocessing']
        assert json.loads(props['operating_points']) == checkpoint_metadata(ckpt)['operating_points']


# --- every input accounted for; only chest films predicted; one checkpoint and rule per folder (issue 22) --------
def test_every_input_gets_one_row_and_the_exit_status_counts_failures(trained, tmp_path):
    import os
    from ltvit.predict import predict_files
    ckpt, syn = trained
    good = sorted((syn / 'images').glob('*.png'))[:2]
    odd = Path(os.fsdecode(bytes(tmp_path) + b'/caf\xe9-\xff.png'))  # a name that is not UTF-8
    odd.write_bytes(good[1].read_bytes())
    t = predict_files(ckpt, [good[0], tmp_path / 'gone.png', odd], tmp_path / 'out', workers=0, progress=False)
    assert len(t) == 3 and sorted(t['status']) == ['missing', 'ok', 'ok']
    assert any('\\xe9-\\xff' in p for p in t['path'])  # the bytes survive, escaped, in the CSV
    again = predict_files(ckpt, [good[0], tmp_path / 'gone.png', odd], tmp_path / 'out', workers=0, progress=False)
    assert len(again) == 3  # the rerun finds every row done, the odd name included
    r = cli('main', '--checkpoint', ckpt, '--out', tmp_path / 'cli', good[0], tmp_path / 'gone.png', '--workers', '0')
    assert r.returncode == 1 and '1 ok' in r.stdout and '1 missing' in r.stdout, r.stdout + r.stderr[-2000:]
    assert cli('main', '--checkpoint', ckpt, '--out', tmp_path / 'cli2', good[0], '--workers', '0').returncode == 0


def test_dicom_files_pydicom_ships_are_refused_for_their_real_reason(trained, tmp_path):
    "None of pydicom's 190-odd test files is a chest film: every one gets a row, none is predicted, each says why."
    import pydicom
    from pydicom.data import get_testdata_file, get_testdata_files
    from ltvit.predict import predict_files
    files = get_testdata_files()
    for f in files:
        try: read_any(f); raise AssertionError(f'{f} was read as a chest film')
        except ImageRejected as e: assert e.reason and '\n' not in e.reason
    status = lambda name: pytest.raises(ImageRejected, read_any, get_testdata_file(name)).value.status
    assert status('CT_small.dcm') == 'wrong modality' and status('MR_small.dcm') == 'wrong modality'
    cr = [f for f in files if Path(f).name in ('6154', '6247', '6278')]
    assert cr and all(pydicom.dcmread(f).BodyPartExamined == 'CSPINE' for f in cr)
    for f in cr:
        with pytest.raises(ImageRejected, match='CSPINE'): read_any(f)
        arr, info = read_any(f, allow=['body_part', 'view'])  # a lateral cervical-spine CR passes only when asked for
        assert arr.ndim == 2 and info['modality'] == 'CR' and info['body_part'] == 'CSPINE'
    from ltvit.predict import ALLOW
    for f in files:  # with every check that can be switched off switched off: still nothing but a clear status
        try: read_any(f, allow=ALLOW)
        except ImageRejected as e: assert e.status and '\n' not in e.reason
    for name, st, why in (('examples_palette.dcm', 'colour image', 'PALETTE COLOR'), ('rtdose_rle.dcm', 'multi-frame', '15'),
                          ('SC_rgb_rle.dcm', 'colour image', 'RGB')):
        with pytest.raises(ImageRejected, match=why) as e: read_any(get_testdata_file(name), allow=ALLOW)
        assert e.value.status == st
    folder = Path(get_testdata_file('CT_small.dcm')).parent
    t = predict_files(trained[0], [folder], tmp_path / 'out', workers=0, progress=False)
    found = [p for p in folder.rglob('*') if p.is_file() and (p.suffix.lower() in ('.dcm', '.png', '.jpg') or is_dicom_(p))]
    assert len(t) == len(found) and not (t['status'] == 'ok').any()
    wrong = t[t['status'] == 'wrong modality']
    assert all(f"Modality is {m or 'missing'}" in r for m, r in zip(wrong['modality'], wrong['reason']))
    assert (wrong['modality'] == 'CT').sum() > 50 and (wrong['sop_instance_uid'] != '').mean() > 0.8  # rows keep their identifiers


def is_dicom_(p):
    from ltvit.predict import is_dicom
    return is_dicom(p)


def test_dicom_without_preamble_and_truncated_copies(tmp_path):
    a = np.tile(np.arange(0, 256, 2, dtype=np.uint8), (96, 1))
    full, bare = write_test_dicom(tmp_path / 'a.dcm', a), write_test_dicom(tmp_path / 'bare', a, preamble=False)
    assert bare.read_bytes()[128:132] != b'DICM' and np.array_equal(read_any(bare)[0], read_any(full)[0])
    data = full.read_bytes()
    for cut in (140, 400, len(data) - 100):
        (tmp_path / f'cut{cut}.dcm').write_bytes(data[:cut])
        with pytest.raises(ImageRejected) as e: read_any(tmp_path / f'cut{cut}.dcm')
        assert e.value.status == 'truncated', (cut, e.value)
    for modality, status in (('CT', 'wrong modality'), ('MR', 'wrong modality')):
        with pytest.raises(ImageRejected) as e: read_any(write_test_dicom(tmp_path / f'{modality}.dcm', a, modality=modality))
        assert e.value.status == status and e.value.info['modality'] == modality
    with pytest.raises(ImageRejected, match='ABDOMEN'): read_any(write_test_dicom(tmp_path / 'abd.dcm', a, body_part='ABDOMEN'))


def test_images_that_are_not_chest_films_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (96, 96), dtype=np.uint8)
    Image.fromarray(grey).convert('RGB').save(tmp_path / 'grey_rgb.png')  # greyscale stored as RGB: fine
    assert read_any(tmp_path / 'grey_rgb.png')[0].shape == (96, 96)
    Image.fromarray(np.full((96, 96), 128, np.uint8)).save(tmp_path / 'blank.png')
    Image.fromarray(grey[:20, :20]).save(tmp_path / 'tiny.png')
    Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(tmp_path / 'photo.png')
    for name, status in (('blank.png', 'blank'), ('tiny.png', 'too small'), ('photo.png', 'colour image')):
        with pytest.raises(ImageRejected) as e: read_any(tmp_path / name)
        assert e.value.status == status, (name, e.value)


def test_a_folder_belongs_to_one_checkpoint_and_one_rule(trained, tmp_path):
    from ltvit.predict import _key, predict_files
    ckpt, syn = trained
    (tmp_path / 'a').mkdir()
    pngs = sorted((syn / 'images').glob('*.png'))[:3]
    x = tmp_path / 'a' / 'x.png'; shutil.copy(pngs[0], x)
    out = tmp_path / 'out'
    run = lambda inputs, **kw: predict_files(ckpt, inputs, out, workers=0, progress=False, **kw)
    t = run([x, tmp_path / 'a' / '..' / 'a' / 'x.png'], top_k=2)
    assert len(t) == 1  # one file, however its path is written
    assert len(list((out / 'maps').glob(f'{_key(x)}__*.png'))) >= 2
    with pytest.raises(ValueError, match='one checkpoint and one decision rule'): run([x], threshold=1.0)
    t = run([x], threshold=1.0, redo=True)  # recomputes under the new rule; nothing of the old one stays
    assert list(t['decision']) == ['threshold 1 (given)'] and (t['findings'] == 'none called').all()
    assert not list((out / 'maps').glob('*.png'))  # no call, no top-k: the old overlays are gone
    shutil.copy(pngs[1], x)  # the file changes in place: predicted again, not kept
    t2 = run([x], threshold=1.0)
    assert len(t2) == 1 and t2['file_sha'].iat[0] != t['file_sha'].iat[0]
    assert t2['prob_Effusion'].iat[0] != t['prob_Effusion'].iat[0]


def test_a_model_saved_without_preprocessing_predicts_from_its_pretrained_cfg(tmp_path, capsys):
    "timm's per-channel mean and std (its pretrained_cfg) are read, said aloud, and used; bad values fail clearly."
    import timm
    from ltvit.checkpoint import save_model
    from ltvit.data import make_transform
    from ltvit.predict import Predictor
    model = timm.create_model('ltvit_tiny_patch16_224', img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, n2=1)
    save_model(model, tmp_path / 'plain.safetensors')  # no preprocessing, no operating points
    pred = Predictor(tmp_path / 'plain.safetensors', threshold=0.5)
    assert 'pretrained_cfg' in capsys.readouterr().out and pred.preprocessing['img_size'] == 32
    assert len(pred.preprocessing['mean']) == 3
    probs, maps = pred(torch.randn(1, 3, 32, 32))
    assert probs.shape == (1, 14) and maps.shape == (1, 14, 32, 32)
    with pytest.raises(ValueError, match='one finite number or 3'): make_transform(32, mean=(0.5, 0.5))


def test_compressed_dicom_decodes_with_the_declared_plugins():
    "JPEG 2000, JPEG-LS and RLE files pydicom ships decode (plug-ins declared, RLE in pydicom); checks switched off."
    from pydicom.data import get_testdata_file
    from ltvit.predict import ALLOW
    for name in ('JPEG2000.dcm', 'JPEGLSNearLossless_08.dcm', '693_J2KI.dcm', 'MR_small_RLE.dcm'):
        arr, _ = read_any(get_testdata_file(name), allow=ALLOW)
        assert arr.dtype == np.uint8 and arr.ndim == 2 and arr.std() > 0, name


def test_report_pages_and_rebuilds_only_when_rows_change(trained, tmp_path):
    from ltvit.predict import Predictor, predict_files, write_report
    ckpt, syn = trained
    pngs = sorted((syn / 'images').glob('*.png'))[:5]
    out = tmp_path / 'out'
    t = predict_files(ckpt, pngs, out, workers=0, progress=False, top_k=1)
    stamp = (out / 'report.html').stat().st_mtime_ns
    predict_files(ckpt, pngs, out, workers=0, progress=False)  # nothing new: the report is not rebuilt
    assert (out / 'report.html').stat().st_mtime_ns == stamp
    predict_files(ckpt, pngs[:1] + [tmp_path / 'gone.png'], out, workers=0, progress=False)  # a new row: rebuilt
    assert (out / 'report.html').stat().st_mtime_ns != stamp and 'gone.png' in (out / 'report.html').read_text()
    write_report(read_predictions(out / 'predictions.csv'), Predictor(ckpt), out, per_page=2)
    pages = [out / 'report.html', out / 'report-2.html', out / 'report-3.html']
    assert all(p.is_file() for p in pages) and not (out / 'report-4.html').exists()
    text = [p.read_text() for p in pages]
    assert all('research use only, not for diagnosis' in x for x in text) and 'report-3.html' in text[0]
    for p in t['path']: assert sum(f'data-path="{p}"' in x for x in text) == 1  # each image on exactly one page
    assert re.search(r'<figcaption>\w+ 0\.\d\d</figcaption>', text[0])  # each map shows its probability


def test_thresholds_on_too_few_validation_positives_are_not_used_and_the_report_says_what_the_model_is(trained, tmp_path):
    from ltvit.checkpoint import save_model
    from ltvit.predict import Predictor, predict_files
    ckpt, syn = trained
    meta, model = checkpoint_metadata(ckpt), load_model(ckpt)
    ops = {l: {'youden': 0.3, 'sens90': 0.1, 'validation_positives': 50 if i % 2 else 3, 'validation_images': 200}
           for i, l in enumerate(model.label_names)}
    save_model(model, tmp_path / 'm.safetensors', preprocessing=meta['preprocessing'], operating_points=ops,
               trained_on=meta['trained_on'])
    pred = Predictor(tmp_path / 'm.safetensors')
    assert set(pred.unstable) == {l for i, l in enumerate(model.label_names) if i % 2 == 0}
    probs = np.tile(np.linspace(0.05, 0.95, len(model.label_names)), (2, 1))
    calls = pred.calls(probs)
    for i, l in enumerate(model.label_names):
        assert calls[0, i] == (-1 if l in pred.unstable else int(probs[0, i] >= 0.3))
    assert (Predictor(tmp_path / 'm.safetensors', threshold=0.5).calls(probs) >= 0).all()  # a given threshold: all called
    png = sorted((syn / 'images').glob('*.png'))[:1]
    predict_files(tmp_path / 'm.safetensors', png, tmp_path / 'out', workers=0, progress=False)
    page = (tmp_path / 'out' / 'report.html').read_text()
    assert f'unstable: 3 validation positives' in page and 'Trained on synthetic' in page and 'test mean AUC' in page
    assert meta['trained_on']['dataset'] == 'synthetic' and set(meta['trained_on']['split_sizes']) == {'train', 'val', 'test'}


def test_onnx_maps_at_image_size_are_the_reports_maps(trained, tmp_path):
    import onnxruntime as ort
    from ltvit.interpret import attention_maps
    from ltvit.predict import export_onnx
    ckpt, _ = trained
    path = export_onnx(ckpt, tmp_path / 'img.onnx', maps=True, image_size_maps=True)
    sess = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    assert [o.name for o in sess.get_outputs()] == ['logits', 'maps'] and sess.get_outputs()[1].shape[0] == 'batch'
    x = torch.randn(3, 3, 32, 32)
    logits, maps = sess.run(None, {'image': x.numpy()})
    want, _ = attention_maps(load_model(ckpt).eval(), x)
    assert maps.shape == (3, len(load_model(ckpt).label_names), 32, 32)
    assert np.abs(maps - want.numpy()).max() < 1e-5


def test_a_folder_that_cannot_be_listed_gets_its_row(trained, tmp_path, monkeypatch):
    "os.walk's error (a folder without read permission) becomes a row; as root, where permissions do not bite, the "
    "error is raised by a patched scandir, the call os.walk makes."
    import os
    from ltvit.predict import predict_files
    ckpt, syn = trained
    locked = tmp_path / 'inbox' / 'locked'; locked.mkdir(parents=True)
    shutil.copy(sorted((syn / 'images').glob('*.png'))[0], tmp_path / 'inbox' / 'x.png')
    shutil.copy(sorted((syn / 'images').glob('*.png'))[1], locked / 'y.png')
    if os.geteuid() == 0:
        real = os.scandir
        def scandir(p='.'):
            if Path(p) == locked: raise PermissionError(13, 'Permission denied', str(p))
            return real(p)
        monkeypatch.setattr(os, 'scandir', scandir)
    else: locked.chmod(0)
    try: t = predict_files(ckpt, [tmp_path / 'inbox'], tmp_path / 'out', workers=0, progress=False)
    finally: locked.chmod(0o755)
    st = dict(zip(t['path'].map(lambda p: Path(p).name), t['status']))
    assert st == {'x.png': 'ok', 'locked': 'unreadable folder'}, st



def test_an_undecodable_reason_names_the_missing_plugin_only_when_one_is_missing(monkeypatch):
    import pydicom.pixels.decoders.base as base
    from pydicom.data import get_testdata_file
    from ltvit.predict import _undecodable
    ds = pydicom_read(get_testdata_file('JPEG2000.dcm'))
    assert 'corrupt' in _undecodable(ds, RuntimeError('bad stream')).reason  # its plug-in is installed
    class Missing:
        is_available, missing_dependencies = False, ['pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0']
    monkeypatch.setattr(base, 'get_decoder', lambda uid: Missing())
    r = _undecodable(ds, RuntimeError('x')).reason
    assert 'JPEG 2000' in r and 'pylibjpeg-openjpeg' in r


def pydicom_read(f):
    import pydicom
    return pydicom.dcmread(f)
