"""`raysegment train`: train a UNet on Ray Train (also `python jobs/train.py`, for `ray job submit`).

    raysegment train --config configs/train-small.yaml --data DATA_DIR --epochs 3
    raysegment train --config configs/train-small.yaml --data DATA_DIR --set model.base_channels=16
    raysegment train --config FILE --name my-run            # again with the same name: resumes my-run
    raysegment train --config configs/anatomy-cpu.yaml      # lungs, heart, clavicles from two sources

Settings come from the dataclass defaults, then --config FILE (YAML), then --set KEY=VALUE, then the
explicit flags below; the effective config is printed with --print-config and saved as RUN_DIR/config.yaml.
The schema is in raysegment/train/config.py. Ray and torch are imported only when training runs.
"""

from __future__ import annotations

import argparse

from raysegment.cli import common

# flag dest -> config key
FLAG_KEYS = {
    "data": "data.path",
    "epochs": "optim.epochs",
    "batch_size": "optim.batch_size",
    "lr": "optim.lr",
    "loss": "optim.loss",
    "size": "preprocess.size",
    "num_workers": "scaling.num_workers",
    "use_gpu": "scaling.use_gpu",
    "device": "scaling.device",
    "name": "run.name",
    "storage": "run.storage_path",
    "max_failures": "run.max_failures",
    "seed": "run.seed",
    "address": "cluster.address",
    "wait_for_capacity": "cluster.wait_for_capacity",
    "no_wait": "cluster.no_wait",
}


def add_parser(subparsers) -> None:
    """Register the `train` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "train", help="train a UNet on Ray Train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    settings = p.add_argument_group("config")
    settings.add_argument("--config", metavar="FILE",
                          help="YAML config (local or s3://), e.g. configs/train-small.yaml")
    settings.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override any config key, e.g. --set model.base_channels=8 (repeatable)")
    settings.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    data = p.add_argument_group("data and model")
    data.add_argument("--data", metavar="URI", help="dataset folder, s3:// prefix or manifest (data.path)")
    data.add_argument("--size", type=int, help="preprocess.size: model input side in pixels")
    optim = p.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, help="optim.epochs")
    optim.add_argument("--batch-size", type=int, help="optim.batch_size, per worker")
    optim.add_argument("--lr", type=float, help="optim.lr")
    optim.add_argument("--loss", choices=["dice", "bce", "bce_dice"], help="optim.loss")
    outputs = p.add_argument_group("run (outputs and resume)")
    outputs.add_argument("--name", help="run.name (the same name resumes that run)")
    outputs.add_argument("--storage", metavar="URI", help="run.storage_path: local folder or s3:// prefix")
    outputs.add_argument("--max-failures", type=int, help="run.max_failures: worker deaths to recover from")
    outputs.add_argument("--seed", type=int, help="run.seed")
    _add_scaling_arguments(p.add_argument_group(common.CLUSTER_GROUP))
    common.add_s3_arguments(p)
    p.set_defaults(func=run, no_wait=None)  # None: --no-wait not given, cluster.no_wait from --config/--set


def _add_scaling_arguments(scaling) -> None:
    """Workers, GPU/CPU, device, and the cluster to run on."""
    scaling.add_argument("--num-workers", type=int, help="scaling.num_workers")
    gpu = scaling.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", dest="use_gpu", action="store_const", const=True, help="require GPUs")
    gpu.add_argument("--no-gpu", dest="use_gpu", action="store_const", const=False, help="train on CPUs")
    scaling.add_argument("--device", choices=["cpu", "cuda"],
                         help="scaling.device: where workers run the model (default: cuda on GPU workers). "
                         "cpu keeps the GPU plan (workers ask for GPUs; bf16, channels_last) but computes on "
                         "the CPU")
    common.add_cluster_arguments(scaling)


def run(args: argparse.Namespace) -> int:
    common.apply_s3_arguments(args)  # before Ray starts: workers inherit the endpoint through the environment
    from raysegment.train.config import TrainConfig, load_config, parse_override

    overrides = dict(parse_override(text) for text in args.overrides)
    overrides.update({key: getattr(args, dest) for dest, key in FLAG_KEYS.items()
                      if getattr(args, dest) is not None})
    config: TrainConfig = load_config(args.config, overrides)  # ConfigError: exit 2, naming the key
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0

    from raysegment.io.storage import join
    from raysegment.outputs.report import format_summary
    from raysegment.train.driver import train

    result = train(config)
    test = result.test_metrics
    if test:
        print(f"test split, best checkpoint (epoch {test['epoch']}), scored as `raysegment evaluate` does:")
        print(format_summary(test, test["worst"]))
        print(f"  -> {join(result.run_dir, 'test_metrics.json')}")
    print(f"done: {len(result.history)} epoch(s) in this run's history, best epoch {result.best_epoch}; "
          f"model at {result.best_dir}")
    return 0
