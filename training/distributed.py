"""DistributedDataParallel training on CPU (gloo), started by torchrun:

    torchrun --nproc_per_node 2 -m training.distributed nbp --workdir DIR [--config FILE]

Rank 0 pulls the training set from Feast once and shares it as parquet; every process trains
on its share of each global batch; rank 0 evaluates, logs to MLflow and registers the model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from nextbest.config import load_train_config
from nextbest.settings import Paths
from nextbest.training.pipeline import Prepared, prepare, train_model
from nextbest.training.train import World


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["nbp", "churn"])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--config", default=None, type=Path)
    args = parser.parse_args(argv)

    dist.init_process_group("gloo")
    world = World(dist.get_rank(), dist.get_world_size())
    # Each process uses its share of the cores.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.size))
    paths = Paths.from_workdir(args.workdir)
    cfg = load_train_config(args.task, args.config)
    share = paths.root / "tmp" / f"ddp-{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}-{args.task}"
    try:
        if world.rank == 0:
            prepare(paths, args.task, cfg).save(share)
        dist.barrier()
        prep = Prepared.load(share, cfg)
        result = train_model(paths, args.task, cfg, prepared=prep, world=world)
        dist.barrier()
    finally:
        if world.rank == 0:
            shutil.rmtree(share, ignore_errors=True)
        dist.destroy_process_group()
    if result is not None:
        print(json.dumps({"task": result.task, "version": result.version, "run_id": result.run_id,
                          "promoted": result.promoted, "metrics": result.metrics, "world_size": world.size,
                          "stage_seconds": result.stage_seconds, "epochs": len(result.history)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
