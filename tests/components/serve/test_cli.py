"""The serve commands' flags are the contract's and reach the functions as typed options."""

import argparse
import json

from kubeclip.components.export.triton_repo import TritonRepoOptions
from kubeclip.components.options import options_from_args
from kubeclip.components.serve import cli, commands
from kubeclip.components.serve.triton_server import ServeOptions


def parse(argv):
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    return parser.parse_args(argv)


def test_flags_become_options():
    args = parse(["triton-repo", "--export", "e", "--out", "r", "--flavor", "cpu", "--version", "2",
                  "--no-dynamic-batching"])
    assert options_from_args(args) == TritonRepoOptions(export="e", out="r", flavor="cpu", version=2,
                                                        dynamic_batching=False)
    args = parse(["serve", "--repo", "r", "--http-port", "0", "--grpc-port", "9001", "--metrics-port", "9002"])
    assert options_from_args(args) == ServeOptions(repo="r", http_port=0, grpc_port=9001, metrics_port=9002)
    args = parse(["client", "classify", "--url", "h:1", "--protocol", "http", "--labels", "cat", "dog", "--",
                  "a.jpg", "b.png"])
    assert options_from_args(args) == commands.ClassifyOptions(url="h:1", protocol="http", labels=["cat", "dog"],
                                                               images=["a.jpg", "b.png"])
    args = parse(["client", "embed-text", "--url", "h:1", "a cat", "a dog"])
    assert options_from_args(args) == commands.EmbedTextOptions(url="h:1", texts=["a cat", "a dog"])


def test_triton_repo_command_prints_its_summary(exported, tmp_path, capsys):
    args = parse(["triton-repo", "--export", str(exported), "--out", str(tmp_path / "repo"), "--flavor", "cpu"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["flavor"] == "cpu" and summary["models"]["clip_embed_text"] == "ensemble"
