"""`kubeclip train`: flags in, the step called here or under a torchrun it launches for local multi-process use."""

from __future__ import annotations

import argparse
import json

from kubeclip.components.options import add_options, options_from_args

DESCRIPTION = ("Contrastive pre-training of CLIP on caption shards, one process per device. On a cluster run "
               "`torchrun --nnodes N --nproc-per-node M -m kubeclip.components.train ...`; locally, --nproc-per-node M "
               "launches torchrun itself.")


def add_parser(subparsers) -> None:
    from kubeclip.components.train.step import TrainOptions

    parser = subparsers.add_parser("train", help="contrastive pre-training (single process, torchrun, DDP)",
                                   description=DESCRIPTION, allow_abbrev=False)
    add_options(parser, TrainOptions, params_section="train")
    launch = parser.add_argument_group("local launch")
    launch.add_argument("--nproc-per-node", type=int, default=1, metavar="M",
                        help="processes on this machine; above 1, torchrun is launched with these flags")
    launch.add_argument("--max-restarts", type=int, default=0, metavar="R",
                        help="with --nproc-per-node: torchrun restarts after a worker failure; add --resume latest "
                             "so restarts continue from the last checkpoint")
    parser.set_defaults(func=lambda args: command(args, parser))


def command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from kubeclip.components.train.run import run

    print(json.dumps(run(options_from_args(args, parser), args.nproc_per_node, args.max_restarts)))
    return 0
