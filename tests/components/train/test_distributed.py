"""The distributed tricks are exact: gathered features with gradients and the local loss, over two
gloo processes, give the gradients of one process on the whole batch; so does accumulation."""

import contextlib
from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from kubeclip import model
from kubeclip.components.train.step import train_step
from kubeclip.model.losses import ClipLoss, SigLipLoss

LOSSES = {"clip": ClipLoss, "clip-smoothed": partial(ClipLoss, label_smoothing=0.1), "siglip": SigLipLoss}


def global_batch(size: int):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(size, 3, 64, 64, generator=generator)
    ids = model.tokenize([f"a photo of {i} {'red' if i % 2 else 'blue'} circles" for i in range(size)])
    return images, ids


def gradients(world_size: int, rank: int, accum: int, loss: str, total: int) -> tuple[float, dict]:
    """Loss and gradients of this process's share of `total` pairs, in `accum` micro-batches."""
    torch.manual_seed(0)
    clip = model.build("tiny-vit")
    loss_fn = LOSSES[loss](rank, world_size)
    net = DistributedDataParallel(clip) if world_size > 1 else clip
    no_sync = net.no_sync if world_size > 1 else contextlib.nullcontext
    images, ids = global_batch(total)
    share = total // world_size
    images, ids = images[rank * share:(rank + 1) * share], ids[rank * share:(rank + 1) * share]
    micro = share // accum
    batches = [(images[i * micro:(i + 1) * micro], ids[i * micro:(i + 1) * micro]) for i in range(accum)]
    loss_value = train_step(net, loss_fn, batches, None, torch.device("cpu"), no_sync,
                            [clip.logit_scale, *loss_fn.parameters()])
    return loss_value.item(), {k: p.grad.clone() for k, p in clip.named_parameters()}


def _worker(rank: int, world_size: int, tmp: str, accum: int, loss: str, total: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world_size)
    try:
        loss_value, grads = gradients(world_size, rank, accum, loss, total)
        tensor = torch.tensor([loss_value])
        dist.all_reduce(tensor)  # the mean of the processes' losses is the global batch's loss
        if rank == 0:
            torch.save((tensor.item() / world_size, grads), f"{tmp}/result.pt")
    finally:
        dist.destroy_process_group()


def distributed_gradients(world_size: int, accum: int, loss: str, total: int, tmp_path):
    mp.start_processes(_worker, args=(world_size, str(tmp_path), accum, loss, total), nprocs=world_size,
                       start_method="spawn")
    return torch.load(tmp_path / "result.pt", weights_only=True)


def assert_same(a, b):
    loss_a, grads_a = a
    loss_b, grads_b = b
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for key in grads_a:
        assert (grads_a[key] - grads_b[key]).abs().max() <= 1e-5, key


@pytest.mark.parametrize("loss", LOSSES)
def test_two_processes_equal_one_on_the_global_batch(loss, tmp_path):
    one = gradients(1, 0, 1, loss, total=16)
    assert_same(distributed_gradients(2, 1, loss, 16, tmp_path), one)


@pytest.mark.parametrize("loss", LOSSES)
def test_accumulation_equals_one_batch_of_k_times_b(loss):
    assert_same(gradients(1, 0, 4, loss, total=16), gradients(1, 0, 1, loss, total=16))


def test_accumulation_across_processes(tmp_path):
    assert_same(distributed_gradients(2, 2, "clip", 16, tmp_path), gradients(1, 0, 1, "clip", total=16))
