"""The torchrun entry point: `torchrun ... -m kubeclip.components.train --data DIR --out DIR ...` (the flags of
`kubeclip train`); each process trains, and the launcher reports."""

import sys

from kubeclip.components.cli import build_parser
from kubeclip.components.options import options_from_args
from kubeclip.components.train.step import train

if __name__ == "__main__":
    parser = build_parser()
    train(options_from_args(parser.parse_args(["train", *sys.argv[1:]]), parser))
