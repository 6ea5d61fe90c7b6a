"""`ltvit_predict` and `ltvit_export` as a user runs them, on a small trained LT-ViT: DICOM files as an archive
exports them (MONOCHROME1 and 2, 8 and 16 bits, JPEG-compressed, lateral, without pixels, without suffix), their
pixels against PNGs of the same arrays, the CSV, the statuses, the rerun, the HTML report in headless Chromium,
and the ONNX model in onnxruntime."""
import io
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
from ltvit.predict import ExportWrapper, ImageRejected, read_any, read_predictions, write_test_dicom
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
    assert r.returncode == 0, r.stderr[-3000:]
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
            if ops[l]: assert int(row[f'call_{l}']) == int(float(row[f'prob_{l}']) >= ops[l]['youden'])
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
    assert again.returncode == 0 and (out / 'predictions.csv').read_bytes() == before
    assert [m.stat().st_mtime_ns for m in maps] == stamps
    redo = cli('main', '--checkpoint', ckpt, '--out', out, inbox, '--redo', '--top-k', '1')
    assert redo.returncode == 0 and [m.stat().st_mtime_ns for m in maps] != stamps
    html = (out / 'report.html').read_text()
    assert all(f'data-path="{p}"' in html for p in ok['path']) and 'lateral view' in html


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason='Chromium is not installed (apt-get install chromium)')
def test_report_opens_in_chromium_with_every_image(predicted, tmp_path):
    _, _, out, _, r = predicted
    assert r.returncode == 0, r.stderr[-3000:]
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
