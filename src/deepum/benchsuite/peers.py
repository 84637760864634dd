"""What users pick today instead of deepum: checkpointing, torch.compile, offloading.

Each peer prepares a Workload for its method and returns what the step needs;
a peer that cannot run here raises ``Skip`` with the reason for the row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from .models import MODELS, Workload


class Skip(Exception):
    """A method this model or this machine cannot do; the row says why."""


@dataclass
class Prepared:
    """What a peer changes in the standard step."""

    wrap: Any = None  # a context manager factory around the forward
    opt: torch.optim.Optimizer | None = None
    model: torch.nn.Module | None = None  # replaces work.model in the forward
    note: str = ""


class _Blocks(torch.nn.Module):
    """Runs a block under torch.utils.checkpoint (for models with no switch of their own)."""

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        from torch.utils.checkpoint import checkpoint

        return checkpoint(self.block, *args, use_reentrant=False, **kwargs)


def enable_checkpointing(model: torch.nn.Module) -> str:
    """Turn on the model's activation checkpointing; returns which kind, or raises Skip."""
    if hasattr(model, "gradient_checkpointing_enable"):  # transformers
        model.gradient_checkpointing_enable()
        return "HF gradient_checkpointing_enable"
    if hasattr(model, "set_grad_checkpointing"):  # timm
        model.set_grad_checkpointing(True)
        return "timm set_grad_checkpointing"
    wrapped = 0
    # torchvision: ResNet's layer1-4 hold the bottleneck blocks, ViT's encoder.layers the encoder blocks.
    for name in ("layer1", "layer2", "layer3", "layer4"):
        seq = getattr(model, name, None)
        if isinstance(seq, torch.nn.Sequential):
            for i in range(len(seq)):
                seq[i] = _Blocks(seq[i])
                wrapped += 1
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if isinstance(layers, torch.nn.Sequential):
        for i in range(len(layers)):
            layers[i] = _Blocks(layers[i])
            wrapped += 1
    if not wrapped:
        raise Skip("the model has no activation-checkpointing switch")
    return f"torch.utils.checkpoint around {wrapped} blocks"


def _compiler_missing(device: torch.device) -> str | None:
    """Why torch.compile cannot run here, or None."""
    import shutil

    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "torch.compile needs triton on CUDA, which is not installed"
        return None
    if not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
        return "torch.compile on the CPU needs a C++ compiler, and none is on PATH"
    return None


def compiled(work: Workload, device: torch.device, budget: float | None) -> Prepared:
    """torch.compile of the model; with ``budget``, the partitioner's activation memory budget."""
    why = _compiler_missing(device)
    if why:
        raise Skip(why)
    note = "torch.compile"
    if budget is not None:
        import torch._functorch.config as fconfig

        if not hasattr(fconfig, "activation_memory_budget"):
            raise Skip(f"torch {torch.__version__} has no activation_memory_budget")
        fconfig.activation_memory_budget = budget  # a child process of its own: no need to restore
        note += f", activation_memory_budget={budget}"
    return Prepared(model=torch.compile(work.model), note=note)


def prepare(method: str, work: Workload, device: torch.device) -> Prepared:
    """The changes ``method`` makes to the standard step (plain and the paged methods change nothing)."""
    if method == "ckpt":
        return Prepared(note=enable_checkpointing(work.model))
    if method == "compile":
        return compiled(work, device, None)
    if method == "compile-budget":
        return compiled(work, device, 0.5)
    if method == "save_on_cpu":
        def wrap():
            return torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda")
        return Prepared(wrap=wrap)
    if method == "torchao-offload":
        try:
            from torchao.optim import CPUOffloadOptimizer
        except ImportError as e:
            raise Skip(f"torchao is not installed ({e})") from e
        opt = CPUOffloadOptimizer(work.model.parameters(), torch.optim.AdamW, lr=1e-4, fused=True)
        return Prepared(opt=opt, note="optimizer states and step on the CPU")
    return Prepared()


def _deepspeed_config(method: str) -> dict:
    offload = {"device": "cpu", "pin_memory": True}
    zero = {"stage": 2, "offload_optimizer": offload}
    if method.startswith("zero3"):
        zero = {"stage": 3, "offload_optimizer": offload, "offload_param": offload}
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
            "bf16": {"enabled": True}, "zero_optimization": zero,
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.01}},
            "steps_per_print": 10**9, "wall_clock_breakdown": False}


def _deepspeed_workload(deepspeed, name: str, method: str, device: torch.device, config: dict):
    """The workload, its model partitioned at creation for ZeRO-3; and a note."""
    if not method.startswith("zero3"):
        return Workload(name, device), ""  # built on the host; the engine moves it in bf16
    # Parameters are partitioned (and offloaded) as they are created, so
    # the whole model never sits on the GPU; the batches are made outside,
    # where DeepSpeed's patched tensor constructors do not reach.
    try:
        with deepspeed.zero.Init(config_dict_or_path=config):
            torch.manual_seed(0)
            built = MODELS[name][0]()
        return Workload(name, device, make_model=lambda: built), ""
    except IndexError:
        # transformers' BERT initialisation indexes the padding row of a
        # weight that zero.Init has already partitioned to nothing (seen
        # with transformers 5.17, DeepSpeed 0.19.8). Built on the host
        # instead, the model is partitioned by deepspeed.initialize.
        return Workload(name, device), "; built outside zero.Init (the model's own initialisation fails under it)"


def deepspeed_step(name: str, method: str, device: torch.device):
    """A DeepSpeed engine for ``method`` and its step (taking a host batch); raises Skip without it."""
    if device.type != "cuda":
        raise Skip("DeepSpeed's offload needs CUDA")
    import socket

    try:
        import deepspeed
    except ImportError as e:
        raise Skip(f"DeepSpeed is not installed ({e})") from e
    with socket.socket() as s:  # a free port for the one-process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                 ("MASTER_PORT", str(port))):
        os.environ.setdefault(k, v)
    deepspeed.init_distributed(dist_backend="nccl", verbose=False)
    config = _deepspeed_config(method)
    work, extra = _deepspeed_workload(deepspeed, name, method, device, config)
    config["train_micro_batch_size_per_gpu"] = work.batch
    if method.endswith("-ckpt"):
        enable_checkpointing(work.model)
    engine, _, _, _ = deepspeed.initialize(model=work.model, model_parameters=work.model.parameters(),
                                           config=config)
    if work.task == "image":  # no autocast under DeepSpeed's bf16: the inputs must match the weights
        work.input_dtype = torch.bfloat16

    def step(batch):
        loss = work.loss(batch, engine)
        engine.backward(loss)
        engine.step()
        return loss.detach()

    return step, work, "DeepSpeed bf16 and its CPU AdamW" + extra
