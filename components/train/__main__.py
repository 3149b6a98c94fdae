"""The torchrun entry point: `torchrun ... -m components.train --data DIR --out DIR ...`."""

import sys

from components.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
