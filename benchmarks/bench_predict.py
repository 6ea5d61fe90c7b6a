"""Images per second of `ltvit_predict` (decode, preprocess, one forward pass with every label's map, CSV, overlays
and report) for PNG and for DICOM input, and of the decoding alone. Prints numbers; it is not a test.

    python benchmarks/bench_predict.py                     # ViT-S/16 at 224 px, 64 images of 1024 px, CPU
    python benchmarks/bench_predict.py --device cuda       # on a GPU

The model has random weights (the speed does not depend on them); it is saved with `save_model` and the
metadata training writes (preprocessing, operating points), so the command runs as on a trained checkpoint.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

import ltvit  # noqa: F401
from ltvit.core import CXR_MEAN, CXR_STD, NIH_LABELS
from ltvit.checkpoint import save_model
from ltvit.predict import find_inputs, predict_files, read_any, write_test_dicom


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--size', default='small', choices=['tiny', 'small', 'base'])
    p.add_argument('--img-size', type=int, default=224); p.add_argument('--n', type=int, default=64)
    p.add_argument('--src-size', type=int, default=1024, help='pixels of the input files (NIH: 1024)')
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--workers', type=int, default=2 * (os.cpu_count() or 1), help='decoding processes (2 per core)')
    p.add_argument('--device', default='auto')
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    model = timm.create_model(f'ltvit_{a.size}_patch16_224', img_size=a.img_size, n2=4, label_names=list(NIH_LABELS))
    ops = {l: {'youden': 0.5, 'sens90': 0.3} for l in NIH_LABELS}
    ckpt = save_model(model, tmp / 'best.safetensors', operating_points=ops,
                      preprocessing=dict(img_size=a.img_size, channels=3, mean=CXR_MEAN, std=CXR_STD, interpolation='bicubic'))
    rng = np.random.default_rng(0)
    (tmp / 'png').mkdir(); (tmp / 'dcm').mkdir()
    for i in range(a.n):
        arr = (rng.random((a.src_size, a.src_size)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp / 'png' / f'{i:04d}.png')
        write_test_dicom(tmp / 'dcm' / f'{i:04d}.dcm', arr.astype(np.uint16) * 16, bits=12)
    print(f'LT-ViT-{a.size[0].upper()}/16 at {a.img_size} px, {a.n} inputs of {a.src_size} px, batch {a.batch}, '
          f'{a.workers} decoding workers, {torch.get_num_threads()} threads, torch {torch.__version__}')
    for kind in ('png', 'dcm'):
        files = find_inputs([tmp / kind])
        t = time.perf_counter()
        for f in files: read_any(f)
        dec = len(files) / (time.perf_counter() - t)
        t = time.perf_counter()
        predict_files(ckpt, [tmp / kind], tmp / f'out_{kind}', batch_size=a.batch, workers=a.workers, device=a.device,
                      progress=False)
        rate = len(files) / (time.perf_counter() - t)
        print(f'{kind.upper():4s} decoding alone (1 process): {dec:7.1f} images/s   '
              f'ltvit_predict end to end: {rate:6.1f} images/s')


if __name__ == '__main__':
    main()
