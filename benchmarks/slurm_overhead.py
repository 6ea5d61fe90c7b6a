"""What a Slurm job costs a grid run: the same trivial task runs N times with the local launcher and as N Slurm
jobs (one after another: each waits for the previous, as dependent runs do), on a one-node Slurm started here
(or the cluster SLURM_CONF names). Prints seconds per run for both and the difference; not a test.

    python benchmarks/slurm_overhead.py [--n 5] [--poll 1]
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

from ltvit.grid import Grid, Run, run_grid
from ltvit.slurm import SlurmOptions, local_cluster, stop_cluster, submit_grid


def chain(n: int) -> Grid:
    "n example tasks, each after the previous one."
    return Grid('bench', [Run(f't{k}', {'n_patients': k}, 'task', 'ltvit.grid:example_task',
                              after=[f't{k - 1}'] if k else []) for k in range(n)])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n', type=int, default=5, help='runs (a chain of dependent tasks)')
    p.add_argument('--poll', type=float, default=1.0, help='seconds between looks at the queue')
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    t = time.time(); run_grid(chain(a.n), tmp / 'local', log=lambda s: None); local = (time.time() - t) / a.n
    env = None
    if 'SLURM_CONF' not in os.environ:
        t = time.time(); env = local_cluster(tmp / 'cluster', port=16857); os.environ['SLURM_CONF'] = env['SLURM_CONF']
        print(f'one-node Slurm up in {time.time() - t:.1f} s')
    try:
        t = time.time()
        submit_grid(chain(a.n), tmp / 'slurm', SlurmOptions(gpus=0, cpus=1, time='10:00'), poll_s=a.poll, log=lambda s: None)
        slurm = (time.time() - t) / a.n
    finally:
        if env: stop_cluster(env)
    print(f'{a.n} dependent runs of a trivial task: local {local:.1f} s per run, Slurm {slurm:.1f} s per run '
          f'(overhead {slurm - local:.1f} s per job, polling every {a.poll:g} s)')


if __name__ == '__main__':
    main()
