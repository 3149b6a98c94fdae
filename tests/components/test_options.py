"""Step options: flags, the params file and the defaults, in that order of precedence; and back to flags."""

import argparse

from kubeclip.components.options import add_options, options_from_args, to_argv
from kubeclip.components.train.step import TrainOptions


def parse(argv: list[str]) -> TrainOptions:
    parser = argparse.ArgumentParser()
    add_options(parser, TrainOptions, params_section="train")
    return options_from_args(parser.parse_args(argv), parser)


def test_flags_win_over_the_params_file_which_wins_over_defaults(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  steps: 50\n  lr: 0.01\nprepare:\n  samples: 3\n")
    opts = parse(["--data", "d", "--out", "o", "--params", str(params), "--lr", "0.5"])
    assert (opts.steps, opts.lr, opts.batch_size) == (50, 0.5, TrainOptions.batch_size)


def test_to_argv_recreates_the_options():
    opts = TrainOptions(data="s3://b/d", out="o", steps=7, compile=True, resume="latest", metrics_port=9090)
    argv = to_argv(opts)
    assert "--compile" in argv and "--steps=7" in argv and not any(a.startswith("--lr") for a in argv)
    assert parse(argv) == opts
