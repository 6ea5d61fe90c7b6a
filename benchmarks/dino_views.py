"""Why the quick preset's DINO stand-in uses a cold teacher and mild views: DINO pre-trained on the quick preset's
3,000 phantoms (4-block, width-96 ViT at 64 px, 10 epochs, batch 64) under several settings. For each it prints
the teacher's final entropy per image (collapse to the uniform distribution: near log 256 = 5.55) and over the
batch (collapse onto one prototype: near 0), and a linear probe of the teacher's frozen features on the findings
of 1,000 held-out pre-training phantoms (mean AUC; the random initialisation's features are printed as the
floor). Not a test. About 75 s per setting on one core (two settings run at once by default).

    python benchmarks/dino_views.py [--settings dino,cold,'quick preset'] [--seed 0] [--jobs 2]
"""
import argparse
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SETTINGS = {  # name -> pretrain_dino's arguments
    'dino': dict(lr=1.25e-4, warmup_teacher_temp=0.04, teacher_temp=0.07, crop_scale=(0.35, 1.0), augment_strength=1.0),
    'cold': dict(lr=1.25e-4, warmup_teacher_temp=0.02, teacher_temp=0.02, crop_scale=(0.35, 1.0), augment_strength=1.0),
    'cold + crops 0.6-1': dict(lr=2.5e-4, warmup_teacher_temp=0.02, teacher_temp=0.02, crop_scale=(0.6, 1.0),
                              augment_strength=1.0),
    'crops 0.7-1': dict(lr=1.25e-4, warmup_teacher_temp=0.04, teacher_temp=0.04, crop_scale=(0.7, 1.0),
                        augment_strength=1.0),
    'cold + mild views (no warm-up)': dict(lr=2.5e-4, warmup_teacher_temp=0.02, teacher_temp=0.02,
                                          crop_scale=(0.6, 1.0), augment_strength=0.4),
    'quick preset': dict(lr=2.5e-4, warmup_teacher_temp=0.01, teacher_temp=0.02, crop_scale=(0.6, 1.0),
                         augment_strength=0.4),
}

RUN = """
import json, sys
import numpy as np, pandas as pd, torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
import ltvit.pretrain as P
from ltvit.core import seed_everything
torch.set_num_threads(1)
kw, folder, seed = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
kw['crop_scale'] = tuple(kw['crop_scale'])
x, tab = np.load(folder + '/images.npy'), pd.read_csv(folder + '/attributes.csv')
args = 'embed_dim:96,depth:4,num_heads:3,patch_size:16'
seed_everything(seed)
make = lambda: P.MultiCropWrapper(P.make_backbone('vit_tiny_patch16_224', args, 64), P.DINOHead(96))
student, teacher = make(), make()
hist, _, _ = P.pretrain_dino(student, teacher, x, epochs=10, seed=seed, log=lambda m: None, **kw)
labels = sorted({f for v in tab.findings for f in v.split('|')} - {'No Finding'})
y = np.array([[l in v.split('|') for l in labels] for v in tab.findings], int)
n = len(x) - 1000
def probe(net):
    f = P.frozen_features(net, P._to_input(torch.from_numpy(x)))
    s = StandardScaler().fit(f[:n]); a, b = s.transform(f[:n]), s.transform(f[n:])
    return float(np.mean([roc_auc_score(y[n:, j], LogisticRegression(max_iter=2000).fit(a, y[:n, j]).predict_proba(b)[:, 1])
                          for j in range(len(labels)) if 0 < y[n:, j].sum() < 1000 and 0 < y[:n, j].sum() < n]))
seed_everything(seed)
floor = probe(P.make_backbone('vit_tiny_patch16_224', args, 64))
print(json.dumps({'entropy': hist.teacher_entropy.iloc[-1], 'batch': hist.batch_entropy.iloc[-1],
                  'probe': probe(teacher.backbone), 'random': floor}))
"""

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--settings', default=','.join(SETTINGS), help='names of SETTINGS, comma-separated')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--jobs', type=int, default=2)
    a = ap.parse_args()
    names = a.settings.split(',')
    if unknown := [n for n in names if n not in SETTINGS]: ap.error(f'unknown settings {unknown}; known: {list(SETTINGS)}')
    from ltvit.pretrain import pretrain_images_task
    with tempfile.TemporaryDirectory() as tmp:
        pretrain_images_task(Path(tmp), n=3000, seed=1, img_size=64)  # the quick preset's pre-training phantoms
        def one(name):
            out = subprocess.run([sys.executable, '-c', RUN, json.dumps(SETTINGS[name]), tmp, str(a.seed)],
                                 capture_output=True, text=True, check=True).stdout
            return name, json.loads(out.strip().splitlines()[-1])
        print(f'{"setting":32s} {"entropy/image":>13s} {"over batch":>10s} {"probe AUC":>9s} {"random":>7s}', flush=True)
        with ThreadPoolExecutor(a.jobs) as ex:
            for name, r in ex.map(one, names):
                print(f'{name:32s} {r["entropy"]:13.2f} {r["batch"]:10.2f} {r["probe"]:9.3f} {r["random"]:7.3f}', flush=True)

if __name__ == '__main__':
    main()
