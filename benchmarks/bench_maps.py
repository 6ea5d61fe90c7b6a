"""Time to produce a map for every label of a batch: LT-ViT attention (one forward pass) vs Grad-CAM
(grad-cam package; one backward pass per label). Prints numbers; it is not a test.

    python benchmarks/bench_maps.py            # ViT-S/16 at 224 px, 14 labels, batch 8, CPU
"""
import argparse
import statistics
import time

import timm
import torch

import ltvit  # noqa: F401
from ltvit.interpret import attention_maps, gradcam_maps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--size', default='small', choices=['tiny', 'small', 'base'])
    p.add_argument('--img-size', type=int, default=224); p.add_argument('--labels', type=int, default=14)
    p.add_argument('--batch', type=int, default=8); p.add_argument('--reps', type=int, default=3)
    a = p.parse_args()
    torch.manual_seed(0)
    model = timm.create_model(f'ltvit_{a.size}_patch16_224', num_classes=a.labels, img_size=a.img_size, n2=4).eval()
    x = torch.randn(a.batch, 3, a.img_size, a.img_size)
    print(f'LT-ViT-{a.size[0].upper()}/16 at {a.img_size} px, {a.labels} labels, batch {a.batch}, '
          f'{torch.get_num_threads()} threads, torch {torch.__version__}')
    t_att, t_cam = [], []
    attention_maps(model, x); gradcam_maps(model, x[:1])  # warm-up
    for _ in range(a.reps):  # interleaved
        t = time.perf_counter(); attention_maps(model, x); t_att.append(time.perf_counter() - t)
        t = time.perf_counter(); gradcam_maps(model, x); t_cam.append(time.perf_counter() - t)
    ma, mc = statistics.median(t_att), statistics.median(t_cam)
    print(f'LT-ViT attention maps (1 forward)          median {ma:7.2f} s   runs {" ".join(f"{v:.2f}" for v in t_att)}')
    print(f'Grad-CAM maps ({a.labels} forward+backward)      median {mc:7.2f} s   runs {" ".join(f"{v:.2f}" for v in t_cam)}')
    print(f'speed-up of attention maps over Grad-CAM: {mc / ma:.1f}x')


if __name__ == '__main__':
    main()
