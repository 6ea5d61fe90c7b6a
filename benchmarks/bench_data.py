"""Data throughput on this machine: decoding and resizing original-size PNGs, reading from the
preprocessing cache, and generating synthetic phantoms. Prints images per second; not a test.

    python benchmarks/bench_data.py [--n 64] [--size 224] [--nih ../shared/data/nih-sample]
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ltvit.cache import ImageCache, build_cache, resize_square
from ltvit.data import load_image, make_transform
from ltvit.synthetic import Anatomy, render, sample_findings


def rate(n, secs): return f'{n / secs:9.1f} img/s ({secs * 1e3 / n:7.2f} ms/img)'


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n', type=int, default=64, help='1024-px PNGs to make and decode')
    p.add_argument('--size', type=int, default=224, help='training resolution')
    p.add_argument('--nih', default=str(Path(__file__).resolve().parents[2] / 'shared/data/nih-sample'),
                   help='real NIH PNGs to upsample into 1024-px originals (else phantoms are used)')
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    src = sorted(Path(a.nih, 'images').glob('*.png'))[:a.n]
    paths = []
    for k in range(a.n):  # 1024-px 8-bit PNGs, as in the NIH release
        if src: im = Image.fromarray(load_image(src[k % len(src)])).resize((1024, 1024), Image.Resampling.BICUBIC)
        else:
            rng = np.random.default_rng(k); img, _ = render(sample_findings(rng), Anatomy.sample(rng), rng, 1024)
            im = Image.fromarray((img * 255).astype(np.uint8))
        paths.append(tmp / f'{k:08d}_000.png'); im.save(paths[-1])
    mb = sum(p.stat().st_size for p in paths) / len(paths) / 2**20
    print(f'{a.n} PNGs of 1024x1024 ({mb:.2f} MB each, from {"real NIH images" if src else "phantoms"}); '
          f'{os.cpu_count()} cores; training size {a.size}px')
    t = time.perf_counter()
    for q in paths: resize_square(load_image(q), a.size)
    dec = time.perf_counter() - t
    print(f'decode + resize original PNG (1 process)   {rate(a.n, dec)}')
    t = time.perf_counter()
    build_cache([q.name for q in paths], paths, tmp / 'cache', a.size, progress=False)
    print(f'build cache ({os.cpu_count()} processes, incl. verify) {rate(a.n, time.perf_counter() - t)}')
    c = ImageCache.open(tmp / 'cache'); ids = [q.name for q in paths]
    reps = max(1, 20000 // a.n)
    t = time.perf_counter()
    for _ in range(reps):
        for i in ids: c.get(i)
    rd = (time.perf_counter() - t) / reps
    print(f'read from cache (1 process)                {rate(a.n, rd)}   -> {dec / rd:.0f}x faster than decoding')
    tf = make_transform(a.size, train=True)
    t = time.perf_counter()
    for i in ids: tf(Image.fromarray(c.get(i)))
    aug = time.perf_counter() - t
    print(f'cache read + train transform (1 process)   {rate(a.n, aug)}   -> x16 cores ~ {16 * a.n / aug:,.0f} img/s')
    rng = np.random.default_rng(0)
    for size in (128, 256):
        m = 50
        t = time.perf_counter()
        for _ in range(m): render(sample_findings(rng), Anatomy.sample(rng), rng, size)
        print(f'synthetic phantom at {size}px (1 process)     {rate(m, time.perf_counter() - t)}')


if __name__ == '__main__':
    main()
