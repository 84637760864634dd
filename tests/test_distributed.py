"""DDP over gloo, two processes, each rank under its own budget: bit-identical to plain DDP."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from . import models


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wide_mlp():
    # On CUDA the allocator works in MiB, so the model is wider than models.mlp().
    return torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.GELU())
                                 for _ in range(8)], torch.nn.Linear(2048, 10))


def _worker(rank: int, world: int, port: int, budget, out: str, device: str = "cpu") -> None:
    import deepum

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        if device == "cuda":
            torch.cuda.set_device(rank)
            dev = torch.device("cuda", rank)
            model = torch.nn.parallel.DistributedDataParallel(_wide_mlp().to(dev), device_ids=[rank])
            g = torch.Generator().manual_seed(1)
            batches = [(torch.randn(256, 2048, generator=g).to(dev), torch.randint(0, 10, (256,), generator=g).to(dev))
                       for _ in range(8)][rank::world][:4]
        else:
            dev = "cpu"
            model = torch.nn.parallel.DistributedDataParallel(models.mlp())
            batches = models.mlp_batches(8)[rank::world][:4]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)

        def loop():
            for batch in batches:
                opt.zero_grad()
                models.classify(model, batch).backward()
                opt.step()

        stats = {}
        if budget is None:
            loop()
        else:
            with deepum.oversubscribe(budget, device=dev) as session:
                loop()
            stats = session.stats()
        torch.save({"params": [p.detach().cpu() for p in model.parameters()], "stats": stats},
                   f"{out}_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_ddp_gloo_two_ranks(tmp_path):
    plain, paged = str(tmp_path / "plain"), str(tmp_path / "paged")
    mp.spawn(_worker, args=(2, _free_port(), None, plain), nprocs=2)
    # The budget holds one DDP bucket (about 1 MiB) and little else.
    mp.spawn(_worker, args=(2, _free_port(), 2_000_000, paged), nprocs=2)
    for rank in range(2):
        a = torch.load(f"{plain}_{rank}.pt")
        b = torch.load(f"{paged}_{rank}.pt")
        assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"]))
        assert b["stats"]["evictions"] > 0 and b["stats"]["faults"] > 0
        assert b["stats"]["peak_device_bytes"] <= 2_000_000


@pytest.mark.skipif(not (dist.is_available() and dist.is_nccl_available() and torch.cuda.device_count() >= 2),
                    reason="needs two CUDA devices and NCCL")
def test_ddp_nccl_two_gpus(tmp_path):
    plain, paged = str(tmp_path / "plain"), str(tmp_path / "paged")
    mp.spawn(_worker, args=(2, _free_port(), None, plain, "cuda"), nprocs=2)
    # Parameters, gradients and AdamW states take about 540 MiB a rank, and
    # DDP's reducer about 135 MiB more for its flat gradient buckets, which it
    # allocates in C++ when the model is wrapped: memory no operator shows
    # deepum, so it sits in the budget unpaged.
    budget = 448 << 20
    mp.spawn(_worker, args=(2, _free_port(), budget, paged, "cuda"), nprocs=2)
    for rank in range(2):
        a = torch.load(f"{plain}_{rank}.pt")
        b = torch.load(f"{paged}_{rank}.pt")
        assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"]))
        assert b["stats"]["evictions"] > 0 and b["stats"]["faults"] > 0
        assert b["stats"]["peak_device_bytes"] <= budget
