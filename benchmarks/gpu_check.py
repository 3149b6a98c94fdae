"""The GPU checks, as one script for a machine with PyTorch and ONNX Runtime but no TensorRT.

  towers    embeddings/s of the image and text towers at each --batches size, in fp32 (TF32 off), fp16 and
            bf16 (the towers cast to the dtype, as a half-precision serving engine runs them), and each
            low-precision tower's parity with fp32 on the same inputs: the minimum cosine of the
            normalised embeddings (the export gate for fp16 is 0.999). ONNX Runtime's CUDA provider on the
            exported fp32 and fp16 towers, when this ONNX Runtime has it.
  train     samples/s per GPU of kubeclip's own training step (components/train/step.py: bf16 autocast,
            ClipLoss, AdamW) on --model at --train-batch, random pixels and ids (no loader), and model FLOPs
            utilisation: 3 x the forward FLOPs (torch.utils.flop_counter) per sample x samples/s over the
            GPU's dense bf16 peak. open_clip's published ViT-B-32 runs imply about 770 samples/s on an A100.

Each figure is the median of --rounds timed rounds after a warm-up, with CUDA synchronised around each round.
Low-precision rows carry their ratio to fp32 measured in the same run.

    benchmarks/gpu_check.sh                                                # ViT-B-32, on cuda, from the source tree
    benchmarks/gpu_check.sh --device cpu --model tiny-vit --batches 1 4 --train-batch 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from kubeclip import model
from kubeclip.components.export.step import ExportOptions, export
from kubeclip.components.train.step import param_groups, train_step
from kubeclip.model.losses import ClipLoss

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by a substring of the device name.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def timed(run, rounds: int, seconds: float, device: torch.device) -> float:
    """Median calls/s over `rounds` rounds of at least `seconds` each, after one warm-up round."""
    rates = []
    for r in range(rounds + 1):
        sync(device)
        start, calls = time.perf_counter(), 0
        while calls == 0 or time.perf_counter() - start < seconds:
            run()
            calls += 1
        sync(device)
        if r:  # round 0 warms up: allocation, kernel selection, cuDNN autotuning
            rates.append(calls / (time.perf_counter() - start))
    return statistics.median(rates)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def towers(clip: model.CLIP, args, device: torch.device) -> list[dict]:
    rows = []
    size, length = clip.image_size, clip.context_length
    for batch in args.batches:
        generator = torch.Generator().manual_seed(batch)
        pixels = torch.randn(batch, 3, size, size, generator=generator).to(device)
        ids = torch.randint(1, clip.config.text.vocab_size - 1, (batch, length), generator=generator)
        ids[:, -1] = clip.config.text.vocab_size - 1  # end of text: pooled from the highest id, as the tokenizer ends
        ids = ids.to(device)
        reference = {}
        for name, dtype in DTYPES.items():
            tower = clip.to(dtype).eval()
            inputs = {"image": (tower.encode_image, pixels.to(dtype)), "text": (tower.encode_text, ids)}
            for which, (encode, x) in inputs.items():
                with torch.inference_mode():
                    out = F.normalize(encode(x).float(), dim=-1)
                    rate = batch * timed(lambda: encode(x), args.rounds, args.seconds, device)
                row = {"tower": which, "backend": "torch", "dtype": name, "batch": batch, "per_s": rate}
                if name == "fp32":
                    reference[which] = (out, rate)
                else:
                    row["cosine_min"] = (out * reference[which][0]).sum(-1).min().item()
                    row["vs_fp32"] = rate / reference[which][1]
                rows.append(row)
                print(json.dumps(row), flush=True)
    clip.float()
    return rows


def onnx_towers(clip: model.CLIP, args, device: torch.device) -> list[dict]:
    """ONNX Runtime's CUDA provider on the exported towers, or nothing where it is missing."""
    import onnxruntime as ort

    if device.type != "cuda" or "CUDAExecutionProvider" not in ort.get_available_providers():
        print(json.dumps({"onnxruntime": f"skipped: providers {ort.get_available_providers()}"}), flush=True)
        return []
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    model.save(clip.cpu(), work / "checkpoint")
    clip.to(device)
    export(ExportOptions(checkpoint=str(work / "checkpoint"), out=str(work / "export"), fp16=True, parity_images=8))
    rows = []
    for batch in args.batches:
        feeds = {"image": {"pixel_values": torch.randn(batch, 3, clip.image_size, clip.image_size).numpy()},
                 "text": {"input_ids": torch.randint(1, clip.config.text.vocab_size, (batch, clip.context_length),
                                                     dtype=torch.int32).numpy()}}
        for which, feed in feeds.items():
            for suffix in ("", ".fp16"):
                session = ort.InferenceSession(str(work / "export" / f"{which}_encoder{suffix}.onnx"),
                                               providers=["CUDAExecutionProvider"])
                rate = batch * timed(lambda: session.run(None, feed), args.rounds, args.seconds, device)
                row = {"tower": which, "backend": "onnxruntime-cuda", "dtype": suffix[1:] or "fp32", "batch": batch,
                       "per_s": rate}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def training(args, device: torch.device) -> dict:
    clip = model.build(args.model).to(device).train()
    optimizer = torch.optim.AdamW(param_groups(clip, 0.2), lr=5e-4, betas=(0.9, 0.98), eps=1e-6,
                                  fused=device.type == "cuda")
    loss_fn = ClipLoss()
    batch = args.train_batch
    images = torch.randn(batch, 3, clip.image_size, clip.image_size, device=device)
    ids = torch.randint(1, clip.config.text.vocab_size, (batch, clip.context_length), device=device)
    dtype = DTYPES[args.train_precision] if args.train_precision != "fp32" else None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        train_step(clip, loss_fn, [(images, ids)], dtype, device, None, [clip.logit_scale])
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None), torch.no_grad():
            clip(images[:1], ids[:1])
    flops_per_sample = 3 * counter.get_total_flops()  # forward + backward (about twice the forward)
    rate = batch * timed(step, args.rounds, args.seconds * 2, device)
    peak = next((p for name, p in PEAK_BF16.items() if name in device_name(device)), None)
    result = {"train": args.model, "precision": args.train_precision, "batch": batch, "samples_per_s": rate,
              "model_tflops_per_sample": flops_per_sample / 1e12, "achieved_tflops": rate * flops_per_sample / 1e12,
              "mfu": rate * flops_per_sample / peak if peak else None, "device": device_name(device),
              "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    print(json.dumps(result), flush=True)
    return result


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="(default: %(default)s)")
    p.add_argument("--model", default="ViT-B-32", help="built-in config (default: %(default)s)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128], help="tower batch sizes (default: 1 32 128)")
    p.add_argument("--train-batch", type=int, default=256, help="training batch per GPU (default: %(default)s)")
    p.add_argument("--train-precision", default="bf16", choices=list(DTYPES), help="(default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per figure (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=1.0, help="least seconds per round (default: %(default)s)")
    p.add_argument("--out", type=Path, help="also write every row to this JSON file")
    p.add_argument("--skip", nargs="*", default=[], choices=["towers", "onnx", "train"], help="parts to leave out")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run on a GPU machine, or pass --device cpu for a smoke run")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    torch.manual_seed(0)
    clip = model.build(args.model).to(device)
    print(json.dumps({"device": device_name(device), "torch": torch.__version__, "model": args.model}), flush=True)
    results = {"towers": [] if "towers" in args.skip else towers(clip, args, device),
               "onnx": [] if "onnx" in args.skip else onnx_towers(clip, args, device),
               "train": None if "train" in args.skip else training(args, device)}
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
