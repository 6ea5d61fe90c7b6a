"""LT-ViT vs the plain timm ViT of the same size: training step and inference time, parameters, FLOPs.

Same batch, same threads, interleaved runs, median of several. Prints numbers; it is not a test.

    python benchmarks/bench_model.py                       # ViT-S/16 at 224, n2=4, 14 labels, CPU fp32
    python benchmarks/bench_model.py --device cuda --precision bf16 --batch 128
"""
import argparse
import statistics

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import ltvit  # noqa: F401  (registers ltvit_*)
from ltvit.core import get_device
from ltvit.experiments import time_models


def build(args):
    kw = dict(img_size=args.img_size, drop_path_rate=0.0)
    vit = timm.create_model(f'vit_{args.size}_patch16_224', num_classes=args.labels, **kw)
    lt = {f'LT-ViT {impl}': timm.create_model(f'ltvit_{args.size}_patch16_224', num_classes=args.labels, n2=args.n2,
                                              attn_impl=impl, **kw) for impl in ('mask', 'split')}
    return {'ViT': vit, **lt}


def flops(model, x):
    with FlopCounterMode(display=False) as fc:
        model(x).sum().backward()
    return fc.get_total_flops()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--size', default='small', choices=['tiny', 'small', 'base'])
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--n2', type=int, default=4)
    p.add_argument('--labels', type=int, default=14)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--reps', type=int, default=7)
    p.add_argument('--device', default='cpu')
    p.add_argument('--precision', default='fp32', choices=['fp32', 'bf16'])
    p.add_argument('--compile', action='store_true')
    args = p.parse_args()
    dev = get_device(args.device)
    torch.manual_seed(0)
    models = {k: m.to(dev) for k, m in build(args).items()}
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=dev)
    y = (torch.rand(args.batch, args.labels, device=dev) > 0.8).float()
    print(f'{args.size} patch16 @ {args.img_size}px, n2={args.n2}, {args.labels} labels, batch {args.batch}, '
          f'{dev} {args.precision}, torch threads {torch.get_num_threads()}, torch {torch.__version__}, timm {timm.__version__}')
    for k, m in models.items():
        n = sum(p.numel() for p in m.parameters())
        f = flops(m.train(), x[:1]) * args.batch
        m.zero_grad(set_to_none=True)
        print(f'{k:14s} params {n / 1e6:7.3f} M   train-step FLOPs/batch {f / 1e9:8.2f} G')
    if args.compile: models = {k: torch.compile(m) for k, m in models.items()}
    times = time_models(models, x, y, args.reps, args.precision)  # the same timing as the grid's speed run
    for name, phase in (('train step', 'train'), ('inference', 'inference')):
        med = {k: statistics.median(v) for k, v in times[phase].items()}
        for k in models:
            print(f'{name:10s} {k:14s} median {med[k] * 1e3:9.1f} ms  ({args.batch / med[k]:8.1f} img/s)  '
                  f'runs: {" ".join(f"{t * 1e3:.0f}" for t in times[phase][k])}')
        for k in models:
            if k != 'ViT': print(f'{name:10s} ratio {k} / ViT = {med[k] / med["ViT"]:.3f}')
    if dev.type == 'cuda': print(f'peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB')


if __name__ == '__main__':
    main()
