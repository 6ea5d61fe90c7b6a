"""GPU check: train the plain ViT-S/16 and LT-ViT-S/16 at 224 px (batch 256, bf16) on synthetic data, LT-ViT
with each attention implementation: `mask` (one masked attention call; the mask keeps PyTorch's
scaled-dot-product attention off its flash kernel) and `split` (image queries over image keys unmasked,
then label queries over all keys, both flash-eligible). Prints training images per second for each, the
ratio to the ViT, peak memory, whether torch.compile worked, and which implementation is faster here (the
library's default, `mask`, should be the faster one where it was measured). One command, a few minutes:

    python benchmarks/gpu_check.py                 # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --steps 3 --batch 4 --img-size 64   # a dry run anywhere

Prints numbers; it is not a test.
"""
import argparse
import tempfile
import time

import timm
import torch
import torch.nn.functional as F

import ltvit  # noqa: F401
from ltvit.core import autocast, get_device, get_precision
from ltvit.data import NIHChestXray14, make_transform
from ltvit.synthetic import FINDINGS, make_synthetic


def run(name, model, x, y, steps, warmup, dev, precision, compile_):
    model = model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == 'cuda')
    fwd, compiled = model, None
    if compile_:
        try:
            fwd = torch.compile(model)
            with autocast(dev, precision): F.binary_cross_entropy_with_logits(fwd(x).float(), y).backward()
            opt.zero_grad(set_to_none=True); compiled = True
        except Exception as e:
            print(f'  {name}: torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}')
            fwd, compiled = model, False
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(); torch.cuda.synchronize()
    for i in range(warmup + steps):
        if i == warmup:
            if dev.type == 'cuda': torch.cuda.synchronize()
            t = time.perf_counter()
        with autocast(dev, precision): loss = F.binary_cross_entropy_with_logits(fwd(x).float(), y)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    if dev.type == 'cuda': torch.cuda.synchronize()
    secs = time.perf_counter() - t
    mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == 'cuda' else float('nan')
    ok = torch.isfinite(loss).item()
    print(f'{name:24s} {steps * x.shape[0] / secs:9.0f} img/s   {secs / steps * 1e3:7.1f} ms/step   peak memory {mem:6.2f} GiB'
          f'   compile: {"yes" if compiled else ("failed" if compiled is False else "off")}   loss finite: {ok}')
    return steps * x.shape[0] / secs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='auto'); p.add_argument('--precision', default='auto')
    p.add_argument('--batch', type=int, default=256); p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--steps', type=int, default=30); p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--no-compile', action='store_true')
    a = p.parse_args()
    dev = get_device(a.device); precision = get_precision(a.precision, dev)
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f'device {dev} ({torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}), {precision}, torch {torch.__version__}, '
          f'timm {timm.__version__}, batch {a.batch}, {a.img_size} px')
    root = make_synthetic(tempfile.mkdtemp(), n_patients=max(8, a.batch // 2 + 4), size=128, progress=False)
    ds = NIHChestXray14(root, 'train', labels=FINDINGS, transform=make_transform(a.img_size), val_frac=0.1, verbose=False)
    idx = [i % len(ds) for i in range(a.batch)]
    x = torch.stack([ds[i]['image'] for i in idx]).to(dev); y = torch.stack([ds[i]['labels'] for i in idx]).to(dev)
    kw = dict(img_size=a.img_size, drop_path_rate=0.1)
    rates = {}
    for compile_ in ([False] if a.no_compile else [False, True]):
        suffix = ' +compile' if compile_ else ''
        torch.manual_seed(0)
        rates['vit' + suffix] = run('ViT-S/16' + suffix, timm.create_model('vit_small_patch16_224', num_classes=len(FINDINGS), **kw),
                                    x, y, a.steps, a.warmup, dev, precision, compile_)
        for impl in ('mask', 'split'):
            torch.manual_seed(0)
            model = timm.create_model('ltvit_small_patch16_224', label_names=FINDINGS, n2=4, attn_impl=impl, **kw)
            rates[impl + suffix] = run(f'LT-ViT-S/16 {impl}' + suffix, model, x, y, a.steps, a.warmup, dev, precision, compile_)
            print(f'  LT-ViT ({impl}) / ViT training throughput{suffix}: {rates[impl + suffix] / rates["vit" + suffix]:.3f}')
        best = max(('mask', 'split'), key=lambda k: rates[k + suffix])
        print(f'  faster LT-ViT attention{suffix}: {best} ({rates[best + suffix] / rates[min(("mask", "split"), key=lambda k: rates[k + suffix]) + suffix]:.3f}x)')


if __name__ == '__main__':
    main()
