"""`kubeclip triton-repo`, `kubeclip serve` and `kubeclip client ...`: flags in, the functions called,
JSON out. Heavy imports wait until a command runs (tritonclient.grpc and kserve cannot share a process)."""

from __future__ import annotations

import json

from kubeclip.components.options import add_options, options_from_args


def add_parser(subparsers) -> None:
    from kubeclip.components.export.triton_repo import TritonRepoOptions
    from kubeclip.components.serve import commands
    from kubeclip.components.serve.triton_server import ServeOptions

    parser = subparsers.add_parser(
        "triton-repo", help="package an export folder as a Triton model repository (tokenizer, preprocessing, "
                            "encoders, ensembles)",
        description="Write a Triton model repository from an export folder: clip_embed_text (TEXT -> EMBEDDING) "
                    "and clip_embed_image (IMAGE -> EMBEDDING) ensembles over a tokenizer, image preprocessing "
                    "and the two encoders; --flavor gpu (ONNX Runtime + TensorRT, or TensorRT plans) or cpu "
                    "(Python models running ONNX Runtime).", allow_abbrev=False)
    add_options(parser, TritonRepoOptions, params_section="triton_repo")
    parser.set_defaults(func=lambda args: _triton_repo(args, parser))

    parser = subparsers.add_parser(
        "serve", help="run Triton (the nvidia-pytriton wheel's server) on a repository, or the KServe "
                      "transformer in front of it, on this machine",
        description="Start the tritonserver that ships in the nvidia-pytriton wheel on a cpu-flavor repository, "
                    "wait until it is ready, and stop it cleanly on SIGTERM or Ctrl-C. With --transformer, run "
                    "the KServe transformer (the InferenceService's JSON API: embeddings and zero-shot labels) "
                    "against that Triton instead.", allow_abbrev=False)
    add_options(parser, ServeOptions)
    parser.set_defaults(func=lambda args: _serve(args, parser))

    parser = subparsers.add_parser("client", help="embed texts and images, or classify images, through Triton",
                                   description="Call the served ensembles with tritonclient; prints JSON lines.")
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    for name, options_type, function, help_text in (
            ("embed-text", commands.EmbedTextOptions, commands.embed_text, "embeddings of texts"),
            ("embed-image", commands.EmbedImageOptions, commands.embed_image, "embeddings of image files"),
            ("classify", commands.ClassifyOptions, commands.classify, "zero-shot classification of image files")):
        sub = actions.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        add_options(sub, options_type)
        sub.set_defaults(func=_client(function, sub))


def _triton_repo(args, parser) -> int:
    from kubeclip.components.export.triton_repo import triton_repo

    print(json.dumps(triton_repo(options_from_args(args, parser))))
    return 0


def _serve(args, parser) -> int:
    from kubeclip.components.serve.triton_server import serve

    return serve(options_from_args(args, parser))


def _client(function, parser):
    def command(args) -> int:
        from tritonclient.utils import InferenceServerException

        try:
            records = function(options_from_args(args, parser))
        except InferenceServerException as e:
            parser.exit(1, f"kubeclip client: Triton answered: {e}\n")
        for record in records:
            print(json.dumps(record))
        return 0
    return command
