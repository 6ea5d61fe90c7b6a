"""How the quick preset's layer decay was chosen: the ViT baseline and LT-ViT fine-tuned from the supervised
stand-in with each candidate decay, on the quick preset's data and recipe (both arms' readouts at the head's
rate). Prints validation and test mean AUC per run and the decay with the best validation mean AUC over the two
arms; the test AUC is printed, never used. Not a test. About 6 minutes on 2 cores.

    python benchmarks/layer_decay.py [--decays 0.166,0.55,0.75,1.0] [--seed 0] [--epochs 20] [--jobs 2]

0.166 is 0.55 ** (12 / 4): the same ratio between the first and the last layer's learning rate that ViT-S's 0.55
gives over 12 blocks.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ltvit.experiments import PRESETS, synthetic_data_task
from ltvit.pretrain import pretrain_images_task, pretrain_task

TRAIN = """
import json, sys
from ltvit.train import TrainConfig, train
m = train(TrainConfig.for_dataset(**json.loads(sys.argv[1])), verbose=False)
print(json.dumps({'val': m['best_val_mean_auc'], 'test': m['mean_auc']}))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--decays', default='0.166,0.55,0.75,1.0', help='layer decays to try, comma-separated')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--epochs', type=int, default=20, help='fine-tuning epochs (the choice was measured with 20)')
    p.add_argument('--jobs', type=int, default=2, help='training runs at once (one core each)')
    a = p.parse_args()
    P, tmp = PRESETS['quick'], Path(tempfile.mkdtemp())
    pretrain_images_task(tmp / 'pre', P['pretrain']['images'], 1, P['img_size'])
    synthetic_data_task(tmp / 'data', P['patients'], 0, P['img_size'])
    pt = P['pretrain']
    pretrain_task(tmp / 'sup', 'supervised', str(tmp / 'pre'), 'vit_tiny_patch16_224', P['model_args'], P['img_size'],
                  pt['epochs']['supervised'], pt['batch_size'], pt['lr']['supervised'], a.seed)
    jobs = []
    for ld in [float(x) for x in a.decays.split(',')]:
        for arch in ('vit', 'ltvit'):
            cfg = dict(dataset='synthetic', data_dir=str(tmp / 'data'), synthetic_patients=P['patients'],
                       model=f'{arch}_tiny_patch16_224', model_args=P['model_args'], img_size=P['img_size'],
                       epochs=a.epochs, batch_size=P['batch_size'], lr=P['lr'], augment='none', drop_path=0.0,
                       workers=0, preload=True, n_boot=0, pretrained=str(tmp / 'sup' / 'model.safetensors'),
                       layer_decay=ld, seed=a.seed, out_dir=str(tmp / f'{arch}-{ld}'))
            if arch == 'ltvit': cfg['n2'] = P['n2']
            jobs.append((ld, arch, cfg))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    run = lambda j: json.loads(subprocess.run([sys.executable, '-c', TRAIN, json.dumps(j[2])], env=env, check=True,
                                              capture_output=True, text=True).stdout.strip().splitlines()[-1])
    with ThreadPoolExecutor(a.jobs) as ex: res = list(ex.map(run, jobs))
    print(f'{"layer decay":>12} {"model":>7} {"val AUC":>8} {"test AUC":>9}')
    by = {}
    for (ld, arch, _), r in zip(jobs, res):
        print(f'{ld:12.3f} {arch:>7} {r["val"]:8.4f} {r["test"]:9.4f}')
        by.setdefault(ld, []).append(r['val'])
    best = max(by, key=lambda ld: sum(by[ld]) / len(by[ld]))
    print('mean validation AUC of the two arms: ' + ', '.join(f'{ld}: {sum(v) / len(v):.4f}' for ld, v in by.items()))
    print(f'chosen on validation: layer decay {best}')


if __name__ == '__main__':
    main()
