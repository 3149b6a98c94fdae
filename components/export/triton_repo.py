"""The package step: an export folder into a Triton model repository (the pipeline's "package").

Six models, the same names in both flavors: `clip_tokenizer` and `clip_image_preprocess` (Python),
`clip_text_encoder` and `clip_image_encoder`, and the ensembles `clip_embed_text` (TEXT -> EMBEDDING)
and `clip_embed_image` (IMAGE -> EMBEDDING). When the export's tokenizer is a Hugging Face one
(`tokenizer/tokenizer_config.json` type "hf"), the tokenizer also emits `attention_mask`, which the
text encoder takes beside `input_ids` and the text ensemble passes along. Only the encoders differ by
flavor: `gpu` runs them on the ONNX Runtime backend with TensorRT (or as TensorRT plans when the export
has them), `cpu` as Python models running ONNX Runtime, for Triton builds without the ONNX Runtime
backend. `precision` picks the export's ONNX variant the encoders run (int8: the cpu flavor's fast path).
The Python models are self-contained: their code and the tokenizer files are copied into the version folders.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import onnx
from PIL import Image

from kubeclip import model
from kubeclip.components.export.onnx_towers import (IMAGE_ONNX, PRECISIONS, TEXT_INPUTS, TEXT_INPUTS_HF, TEXT_ONNX,
                                                    variant)
from kubeclip.components.lineage import LINEAGE, file_sha256, write_lineage
from kubeclip.components.options import option
from kubeclip.components.serve import model_config as mc
from kubeclip.components.serve.triton_models import SOURCES
from kubeclip.components.serve.triton_models.image_decode import ImagePolicy
from kubeclip.components.storage import local_copy, local_output

TOKENIZER, PREPROCESS = "clip_tokenizer", "clip_image_preprocess"
TEXT_ENCODER, IMAGE_ENCODER = "clip_text_encoder", "clip_image_encoder"
EMBED_TEXT, EMBED_IMAGE = "clip_embed_text", "clip_embed_image"
MODELS = (TOKENIZER, PREPROCESS, TEXT_ENCODER, IMAGE_ENCODER, EMBED_TEXT, EMBED_IMAGE)
FLAVORS = ("gpu", "cpu")
ENSEMBLE_KEEP = "KEEP.txt"  # in each ensemble's version folder, which holds nothing else
PLAN_MAX_BATCH = 64  # the batch profile components/export/tensorrt.py builds plans for
_ONNX_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
               onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.INT64: "TYPE_INT64"}
_TOKENIZER_OUTPUTS = {"clip_bpe": TEXT_INPUTS, "hf": TEXT_INPUTS_HF}  # what the serving tokenizer produces, by type
# each Python model's version folder: file name there -> its source; the tokenizer and the pixels are
# model/'s own files, copied, so serving computes exactly what training and evaluation do
_MODEL_DIR = Path(model.__file__).parent
IMAGES = ImagePolicy()  # the image limits' defaults
_PYTHON_FILES = {
    TOKENIZER: {"model.py": SOURCES / "tokenizer_model.py", "clip_bpe.py": _MODEL_DIR / "tokenizer.py",
                "triton_io.py": SOURCES / "triton_io.py"},
    PREPROCESS: {"model.py": SOURCES / "preprocess_model.py", "image_decode.py": SOURCES / "image_decode.py",
                 "clip_preprocess.py": _MODEL_DIR / "preprocess.py", "triton_io.py": SOURCES / "triton_io.py"},
    "encoder": {"model.py": SOURCES / "onnx_model.py", "triton_io.py": SOURCES / "triton_io.py"},  # cpu flavor
}


class RepositoryError(SystemExit):
    """The export folder cannot be packaged as asked."""


@dataclass(kw_only=True)
class TritonRepoOptions:
    export: str = option(help="export folder (kubeclip export --out): ONNX towers, tokenizer/, config.json, "
                              "lineage.json")
    out: str = option(help="model repository to write (models already there are replaced at this version)")
    flavor: str = option("gpu", "gpu: encoders on the ONNX Runtime backend with TensorRT, or TensorRT plans when the "
                                "export has them; cpu: encoders as Python models running ONNX Runtime")
    precision: str = option("fp32", "the ONNX variant the encoders run: fp32, fp16 (export --fp16) or int8 (export "
                                    "--int8; cpu flavor: ONNX Runtime's int8 CPU kernels, about 3x fp32)")
    version: int = option(1, "the version folder the models are written to")
    max_batch_size: int = option(64, "largest batch of any model; clients send [N, 1] with N up to this")
    dynamic_batching: bool = option(True, "let Triton merge concurrent requests into batches")
    max_queue_delay_us: int = option(1000, "how long an encoder's dynamic batcher may hold a request to fill a "
                                           "batch (the tokenizer and preprocessing batch only what is queued)")
    encoder_instances: int = option(1, "instances of each encoder (per GPU in the gpu flavor)")
    python_instances: int = option(2, "instances of the tokenizer and of the image preprocessing (CPU processes)")
    max_image_bytes: int = option(IMAGES.max_bytes, "largest encoded image accepted, in bytes")
    max_image_pixels: int = option(IMAGES.max_pixels, "largest image accepted, in pixels (width x height), also "
                                                      "once its shorter side is scaled to the model's input")
    max_aspect_ratio: float = option(IMAGES.max_aspect_ratio, "widest aspect ratio accepted (long side / short)")
    image_formats: str = option(",".join(IMAGES.formats), "image formats accepted (Pillow's names, comma-separated)")
    max_text_bytes: int = option(16384, "longest text accepted, in UTF-8 bytes")
    trt_cache_dir: str = option("/tmp/kubeclip-trt-cache", "gpu flavor: where ONNX Runtime caches TensorRT engines "
                                                           "(a writable volume in the serving pod)")


def triton_repo(opts: TritonRepoOptions) -> dict:
    """Write the repository; returns a summary (models with their platform or backend, the model id). A remote
    --export is fetched first; a remote --out is built locally and uploaded, lineage.json last."""
    started = time.time()
    replaced = [f"{name}/{opts.version}" for name in MODELS]  # models already there are replaced at this version
    with (local_copy(opts.export, only=_export_files(opts)) as export,
          local_output(opts.out, last=(LINEAGE,), replace=replaced) as out):
        configs, model_id = _write(opts, Path(export), out, started)
    return {"repository": opts.out, "flavor": opts.flavor, "precision": opts.precision, "version": opts.version,
            "model_id": model_id,
            "models": {name: c.get("backend") or c.get("platform") for name, c in configs.items()}}


def _export_files(opts: TritonRepoOptions) -> tuple[str, ...]:
    """What of the export folder the repository is built from (a remote export is fetched without the other
    precisions' towers, and without the TensorRT plans unless the gpu flavor serves them)."""
    towers = {variant(f, p) for f in (IMAGE_ONNX, TEXT_ONNX) for p in ("fp32", opts.precision)}
    return (*sorted(towers), "config.json", "tokenizer", LINEAGE, *(("trt",) if opts.flavor == "gpu" else ()))


def _write(opts: TritonRepoOptions, export: Path, out: Path, started: float) -> tuple[dict[str, dict], str]:
    """The repository of the local export folder `export` into the local folder `out`: each model's config and
    the model id."""
    _check(opts, export)
    model_id = model_id_of(export)
    t = _Tensors.of(json.loads((export / "config.json").read_text()), _tokenizer_outputs(export))
    text_onnx, image_onnx = variant(TEXT_ONNX, opts.precision), variant(IMAGE_ONNX, opts.precision)
    _check_tower(export / text_onnx, t.ids)
    _check_tower(export / image_onnx, t.pixels)
    scheduling = mc.Scheduling(opts.max_batch_size, opts.dynamic_batching, opts.max_queue_delay_us)
    no_wait = replace(scheduling, max_queue_delay_us=0)  # item-by-item work gains nothing from waiting for a batch
    common = {mc.MODEL_ID_PARAMETER: model_id}

    version_dir = _model_dir(out, TOKENIZER, opts.version, _PYTHON_FILES[TOKENIZER])
    shutil.copytree(export / "tokenizer", version_dir / "tokenizer")
    _model_dir(out, PREPROCESS, opts.version, _PYTHON_FILES[PREPROCESS])
    configs = {
        TOKENIZER: mc.python_model(
            TOKENIZER, no_wait, t.text, t.ids, opts.python_instances,
            {**common, "max_text_bytes": opts.max_text_bytes},
            mc.warmup(t.text, [1], {"TEXT": _warmup_file(out / TOKENIZER, "text", b"a photo of a cat.")})),
        PREPROCESS: mc.python_model(
            PREPROCESS, no_wait, t.image, t.pixels, opts.python_instances,
            {**common, "max_image_bytes": opts.max_image_bytes, "max_image_pixels": opts.max_image_pixels,
             "max_aspect_ratio": opts.max_aspect_ratio, "image_formats": opts.image_formats},
            mc.warmup(t.image, [1], {"IMAGE": _warmup_file(out / PREPROCESS, "image", _warmup_png())})),
        TEXT_ENCODER: _encoder(opts, out, export, TEXT_ENCODER, text_onnx, t.ids, t.embedding, scheduling, common),
        IMAGE_ENCODER: _encoder(opts, out, export, IMAGE_ENCODER, image_onnx, t.pixels, t.embedding, scheduling,
                                common),
        EMBED_TEXT: _ensemble(out, opts.version, EMBED_TEXT, t.text, TOKENIZER, t.ids, TEXT_ENCODER, t.output,
                              scheduling, common),
        EMBED_IMAGE: _ensemble(out, opts.version, EMBED_IMAGE, t.image, PREPROCESS, t.pixels, IMAGE_ENCODER,
                               t.output, scheduling, common),
    }
    for name, config in configs.items():
        (out / name / "config.pbtxt").write_text(mc.render(config) + "\n")

    inputs = {"export": {"url": opts.export, "model_id": model_id}}
    inputs.update({name: {"url": f"{opts.export.rstrip('/')}/{f}", "sha256": file_sha256(str(export / f))}
                   for name, f in (("image_encoder", image_onnx), ("text_encoder", text_onnx))})
    write_lineage(str(out), "triton-repo", inputs, asdict(opts), started)
    return configs, model_id


@dataclass(frozen=True)
class _Tensors:
    """The contract's tensors at this model's sizes (dims without the batch dimension)."""
    text: list[dict]
    image: list[dict]
    ids: list[dict]
    pixels: list[dict]
    embedding: list[dict]
    output: list[dict]

    @classmethod
    def of(cls, config: dict, token_tensors: tuple[str, ...] = TEXT_INPUTS) -> _Tensors:
        """`token_tensors`: what the tokenizer emits and the text encoder takes (`input_ids`, and
        `attention_mask` for a Hugging Face tokenizer), each INT32 [context_length]."""
        size, dim = config["vision_cfg"]["image_size"], config["embed_dim"]
        length = config["text_cfg"]["context_length"]
        return cls(text=[mc.tensor("TEXT", "TYPE_STRING", [1])], image=[mc.tensor("IMAGE", "TYPE_STRING", [1])],
                   ids=[mc.tensor(name, "TYPE_INT32", [length]) for name in token_tensors],
                   pixels=[mc.tensor("pixel_values", "TYPE_FP32", [3, size, size])],
                   embedding=[mc.tensor("embedding", "TYPE_FP32", [dim])],
                   output=[mc.tensor("EMBEDDING", "TYPE_FP32", [dim])])


def model_id_of(export: Path) -> str:
    """The first 12 hex digits of the checkpoint's model.safetensors sha256, from the export's lineage."""
    try:
        return json.loads((export / "lineage.json").read_text())["inputs"]["checkpoint"]["sha256"][:12]
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise RepositoryError(f"{export / 'lineage.json'}: no checkpoint sha256 ({e!r}); the model id comes from "
                              "the lineage that `kubeclip export` writes") from None


def _tokenizer_outputs(export: Path) -> tuple[str, ...]:
    """The tensors the serving tokenizer emits for the export's tokenizer type (clip_bpe or hf)."""
    path = export / "tokenizer" / "tokenizer_config.json"
    try:
        kind = json.loads(path.read_text()).get("type")
    except (OSError, ValueError) as e:
        raise RepositoryError(f"{path}: unreadable ({e!r}); `kubeclip export` writes the model's tokenizer there") \
            from None
    if kind not in _TOKENIZER_OUTPUTS:
        raise RepositoryError(f"{path}: tokenizer type {kind!r}; the serving tokenizer handles "
                              f"{', '.join(_TOKENIZER_OUTPUTS)}")
    return _TOKENIZER_OUTPUTS[kind]


def _check(opts: TritonRepoOptions, export: Path) -> None:
    if opts.flavor not in FLAVORS:
        raise RepositoryError(f"--flavor {opts.flavor!r}: expected one of {', '.join(FLAVORS)}")
    if opts.precision not in PRECISIONS:
        raise RepositoryError(f"--precision {opts.precision!r}: expected one of {', '.join(PRECISIONS)}")
    if opts.flavor == "gpu" and opts.precision == "int8":
        raise RepositoryError("--precision int8 runs ONNX Runtime's int8 CPU kernels: use it with --flavor cpu "
                              "(on GPUs, fp32 or fp16 ONNX runs with TensorRT in fp16)")
    if opts.version < 1 or opts.max_batch_size < 1 or opts.encoder_instances < 1 or opts.python_instances < 1:
        raise RepositoryError("--version, --max-batch-size and the instance counts must be at least 1")
    Image.init()
    if unknown := sorted(set(opts.image_formats.split(",")) - set(Image.OPEN)):
        raise RepositoryError(f"--image-formats: Pillow has no decoder named {', '.join(unknown)} "
                              f"(it has {', '.join(sorted(Image.OPEN))})")
    if opts.max_aspect_ratio < 1:
        raise RepositoryError("--max-aspect-ratio must be at least 1")
    missing = [f for f in (IMAGE_ONNX, TEXT_ONNX, "config.json", "tokenizer") if not (export / f).exists()]
    if missing:
        raise RepositoryError(f"{export}: not an export folder, missing {', '.join(missing)}")
    towers = [variant(f, opts.precision) for f in (IMAGE_ONNX, TEXT_ONNX)]
    if not all((export / f).exists() for f in towers):
        raise RepositoryError(f"{export}: no {' or '.join(towers)}; export with --{opts.precision} to serve "
                              f"--precision {opts.precision}")
    if opts.flavor == "gpu" and _plans(export) and opts.max_batch_size > PLAN_MAX_BATCH:
        raise RepositoryError(f"--max-batch-size {opts.max_batch_size}: the TensorRT plans take batches up to "
                              f"{PLAN_MAX_BATCH}")


def _check_tower(path: Path, expected_inputs: list[dict]) -> None:
    """The ONNX graph has the contract's inputs (names, types, shapes) and its one output, `embedding`."""
    graph = onnx.load(path, load_external_data=False).graph
    found = [mc.tensor(v.name, _ONNX_TYPES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type)),
                       [d.dim_value for d in v.type.tensor_type.shape.dim[1:]]) for v in graph.input]
    if found != expected_inputs or [v.name for v in graph.output] != ["embedding"]:
        expected_names = {t["name"] for t in expected_inputs}
        unsupported = {t["name"] for t in found} - expected_names
        hint = f" (the export's tokenizer does not produce {sorted(unsupported)})" if unsupported and \
            "input_ids" in expected_names else ""
        raise RepositoryError(f"{path}: inputs {found} and outputs {[v.name for v in graph.output]}; the export "
                              f"contract is {expected_inputs} -> ['embedding']{hint}")


def _plans(export: Path) -> dict[str, Path]:
    return {name: export / "trt" / f"{stem}.plan" for name, stem in ((TEXT_ENCODER, "text_encoder"),
                                                                     (IMAGE_ENCODER, "image_encoder"))
            if (export / "trt" / f"{stem}.plan").is_file()}


def _encoder(opts, out: Path, export: Path, name: str, onnx_file: str, inputs: list[dict], outputs: list[dict],
             scheduling: mc.Scheduling, common: dict) -> dict:
    """One encoder's version folder and config, by flavor."""
    if opts.flavor == "cpu":
        version_dir = _model_dir(out, name, opts.version, _PYTHON_FILES["encoder"])
        shutil.copyfile(export / onnx_file, version_dir / "model.onnx")
        return mc.python_model(name, scheduling, inputs, outputs, opts.encoder_instances,
                               {**common, "intra_op_thread_count": 0}, mc.warmup(inputs, [1]))
    version_dir = _model_dir(out, name, opts.version, {})
    warmup = mc.warmup(inputs, sorted({1, opts.max_batch_size}))
    if plan := _plans(export).get(name):
        shutil.copyfile(plan, version_dir / "model.plan")
        return mc.plan_model(name, scheduling, inputs, outputs, opts.encoder_instances, common, warmup)
    shutil.copyfile(export / onnx_file, version_dir / "model.onnx")
    return mc.onnx_gpu_model(name, scheduling, inputs, outputs, opts.encoder_instances, common, warmup,
                             opts.trt_cache_dir)


def _ensemble(out: Path, version: int, name: str, inputs: list[dict], first: str, middle: list[dict], encoder: str,
              outputs: list[dict], scheduling: mc.Scheduling, common: dict) -> dict:
    """`first` turns the ensemble's input into the encoder's inputs `middle` (ids, and a Hugging Face
    tokenizer's attention mask); the encoder's `embedding` becomes EMBEDDING. Tensors keep their names
    from kubeclip.model to model."""
    (_model_dir(out, name, version, {}) / ENSEMBLE_KEEP).write_text(
        "An ensemble has no files of its own, but Triton needs its version folder, and object stores hold no empty "
        "folders (KServe's storage initializer also skips empty objects): this file keeps the folder.\n")
    source, between = inputs[0]["name"], {t["name"]: t["name"] for t in middle}
    return mc.ensemble(name, scheduling, inputs, outputs, [
        (first, {source: source}, between),
        (encoder, between, {"embedding": "EMBEDDING"})], common)


def _model_dir(out: Path, name: str, version: int, files: dict[str, Path]) -> Path:
    """`out/name/version/` (emptied beforehand by `local_output`) holding `files` (name there -> source file)."""
    version_dir = out / name / str(version)
    version_dir.mkdir(parents=True)
    for target, source in files.items():
        shutil.copyfile(source, version_dir / target)
    return version_dir


def _warmup_file(model_dir: Path, name: str, data: bytes) -> str:
    """`model_dir/warmup/name`: one BYTES element as Triton's warm-up reads it (a 4-byte little-endian length,
    then the bytes); returns `name`."""
    (model_dir / "warmup").mkdir(parents=True, exist_ok=True)
    (model_dir / "warmup" / name).write_bytes(struct.pack("<I", len(data)) + data)
    return name


def _warmup_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (128, 64, 32)).save(buffer, "PNG")
    return buffer.getvalue()
