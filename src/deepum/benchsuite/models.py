"""Bench models built from configs (nothing is downloaded) and the batches a real loop feeds them."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

# A model builder returns (module, (task, classes, batch, seq)).
Spec = tuple[str, int, int, int | None]


def _hf_gpt2(layers, d, heads, vocab, seq, batch, attn="sdpa"):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=layers, n_embd=d, n_head=heads, vocab_size=vocab, n_positions=seq,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation=attn)
    return GPT2LMHeadModel(cfg), ("lm", vocab, batch, seq)


def _hf_bert(layers, d, heads, vocab, seq, batch):
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(num_hidden_layers=layers, hidden_size=d, num_attention_heads=heads,
                     intermediate_size=4 * d, vocab_size=vocab, max_position_embeddings=seq,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForMaskedLM(cfg), ("mlm", vocab, batch, seq)


def _hf_llama(layers, d, ff, heads, kv_heads, vocab, seq, batch, attn="sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(num_hidden_layers=layers, hidden_size=d, intermediate_size=ff,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                      max_position_embeddings=seq, hidden_act="silu", tie_word_embeddings=False,
                      attn_implementation=attn)
    return LlamaForCausalLM(cfg), ("lm", vocab, batch, seq)


def _hf_t5(layers, d, ff, heads, vocab, seq, batch):
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(d_model=d, d_ff=ff, d_kv=d // heads, num_layers=layers, num_decoder_layers=layers,
                   num_heads=heads, vocab_size=vocab, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                   decoder_start_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    return T5ForConditionalGeneration(cfg), ("seq2seq", vocab, batch, seq)


def _vit(size: str, image: int, patch: int, layers: int, d: int, heads: int, batch: int):
    """A ViT from timm, else torchvision, else transformers (the CPU tests' fallback)."""
    try:
        import timm

        if size == "large":
            model = timm.create_model("vit_large_patch16_224", pretrained=False)
        else:
            model = timm.models.vision_transformer.VisionTransformer(
                img_size=image, patch_size=patch, embed_dim=d, depth=layers, num_heads=heads, num_classes=1000)
    except ImportError:
        try:
            from torchvision.models.vision_transformer import VisionTransformer
        except ImportError:
            from transformers import ViTConfig, ViTForImageClassification

            cfg = ViTConfig(image_size=image, patch_size=patch, hidden_size=d, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=4 * d, num_labels=1000,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            return _Logits(ViTForImageClassification(cfg)), ("image", 1000, batch, image)
        model = VisionTransformer(image_size=image, patch_size=patch, num_layers=layers, num_heads=heads,
                                  hidden_dim=d, mlp_dim=4 * d)
    return model, ("image", 1000, batch, image)


class _Logits(torch.nn.Module):
    """An HF image classifier that returns its logits, as timm's and torchvision's models do."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(pixel_values=x).logits

    def gradient_checkpointing_enable(self) -> None:
        self.inner.gradient_checkpointing_enable()


def _mlp():
    from torch import nn

    layers = [nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256)) for _ in range(6)]
    return nn.Sequential(*layers, nn.Linear(256, 10)), ("cls", 256, 64, None)


class _Residual(torch.nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (a ResNet basic block, stride 1)."""

    def __init__(self, c: int) -> None:
        from torch import nn

        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class _TinyResNet(torch.nn.Module):
    """A small ResNet in plain torch (the cpu tier has no torchvision): BatchNorm, residual adds,
    many short operators; ``layer1``-``layer3`` as torchvision names them, for per-block checkpointing."""

    def __init__(self, classes: int = 10) -> None:
        from torch import nn

        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(_Residual(16), _Residual(16))
        self.layer2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), _Residual(32))
        self.layer3 = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), _Residual(64))
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.head(x.mean((2, 3)))


def _resnet(batch):
    import torchvision

    return torchvision.models.resnet152(), ("image", 1000, batch, 224)


MODELS: dict[str, tuple[Callable, str]] = {
    # name: (builder, description)
    "tiny-mlp": (_mlp, "MLP, 6 blocks of 256-1024-256, batch 64 (the harness test)"),
    "tiny-gpt2": (lambda: _hf_gpt2(2, 64, 4, 256, 64, 4), "HF GPT-2, 2 layers, d=64, batch 4 x 64"),
    "tiny-llama": (lambda: _hf_llama(2, 64, 176, 4, 2, 256, 64, 4),
                   "HF Llama, 2 layers, d=64, SwiGLU 176, 4/2 heads (GQA), batch 4 x 64"),
    "tiny-t5": (lambda: _hf_t5(2, 64, 128, 4, 256, 32, 4),
                "HF T5 encoder-decoder, 2+2 layers, d=64, gated-GELU 128, batch 4 x 32"),
    "tiny-vit": (lambda: _vit("tiny", 32, 8, 2, 64, 4, 8),
                 "ViT (timm, else torchvision, else HF), 2 layers, d=64, 32x32 images, patch 8, batch 8"),
    "tiny-bert": (lambda: _hf_bert(2, 64, 4, 256, 64, 4), "HF BERT MLM, 2 layers, d=64, batch 4 x 64"),
    "tiny-cnn": (lambda: (_TinyResNet(10), ("image", 10, 8, 32)),
                 "a small ResNet in plain torch (BatchNorm, residual blocks), 32x32 images, batch 8"),
    "gpt2-check": (lambda: _hf_gpt2(12, 768, 12, 50304, 512, 8, attn="eager"),
                   "HF GPT-2, 12 layers, d=768, eager attention, batch 8 x 512 (the CUDA bit-identity check)"),
    "llama-check": (lambda: _hf_llama(8, 1024, 2816, 16, 4, 32000, 1024, 4, attn="eager"),
                    "HF Llama, 8 layers, d=1024, SwiGLU 2816, 16/4 heads, eager attention, batch 4 x 1024 "
                    "(the CUDA bit-identity check)"),
    "gpt2-medium": (lambda: _hf_gpt2(24, 1024, 16, 50304, 1024, 16), "HF GPT-2 medium, batch 16 x 1024"),
    "bert-large": (lambda: _hf_bert(24, 1024, 16, 30522, 512, 32), "HF BERT-large MLM, batch 32 x 512"),
    "llama-1b": (lambda: _hf_llama(16, 2048, 5632, 16, 4, 32000, 2048, 4),
                 "HF Llama, 16 layers, d=2048, SwiGLU 5632, 16/4 heads (GQA), RMSNorm, RoPE, sdpa, "
                 "0.85B parameters, batch 4 x 2048"),
    "vit-l16": (lambda: _vit("large", 224, 16, 24, 1024, 16, 128),
                "ViT-L/16 (timm vit_large_patch16_224, else torchvision vit_l_16 shape), batch 128"),
    "t5-large": (lambda: _hf_t5(24, 1024, 2816, 16, 32128, 512, 12),
                 "HF T5 encoder-decoder, 24+24 layers, d=1024, gated-GELU 2816, 0.75B parameters, batch 12 x 512 (128 decoder tokens)"),
    "wide-gpt": (lambda: _hf_gpt2(4, 4096, 32, 50304, 2048, 4), "HF GPT-2, 4 layers, d=4096, batch 4 x 2048"),
    "resnet152": (lambda: _resnet(128), "torchvision ResNet-152, batch 128, channels_last"),
    # The model-dominated ladder: parameters, gradients and AdamW states
    # (16 bytes a parameter in fp32) are most of the footprint.
    "gpt-2b": (lambda: _hf_gpt2(8, 4096, 32, 50304, 1024, 4), "HF GPT-2, 8 layers, d=4096, 1.8B parameters, batch 4 x 1024"),
    "gpt-4b": (lambda: _hf_gpt2(18, 4096, 32, 50304, 1024, 4), "HF GPT-2, 18 layers, d=4096, 3.8B parameters, batch 4 x 1024"),
    "gpt-6b": (lambda: _hf_gpt2(28, 4096, 32, 50304, 1024, 4), "HF GPT-2, 28 layers, d=4096, 5.9B parameters, batch 4 x 1024"),
}


class HostBatches:
    """A fresh batch for every step, made on the host as a data loader makes it.

    [Note: batches are a function of the step]
    Batch ``i`` comes from a generator seeded with ``i`` alone, so two runs of
    the same workload (the identity check's plain and paged runs) see the same
    bits whatever else each run drew from the global generator.
    """

    def __init__(self, task: str, classes: int, batch: int, seq: int | None, pin: bool) -> None:
        self.task, self.classes, self.batch, self.seq, self.pin = task, classes, batch, seq, pin

    def __call__(self, i: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(1000 + i)
        b, n, s = self.batch, self.classes, self.seq
        if self.task in ("lm", "mlm"):
            out = (torch.randint(0, n, (b, s), generator=g),)
        elif self.task == "seq2seq":
            out = (torch.randint(0, n, (b, s), generator=g), torch.randint(0, n, (b, max(1, s // 4)), generator=g))
        elif self.task == "image":
            out = (torch.randn(b, 3, s, s, generator=g), torch.randint(0, n, (b,), generator=g))
        else:
            out = (torch.randn(b, n, generator=g), torch.randint(0, 10, (b,), generator=g))
        return tuple(t.pin_memory() for t in out) if self.pin else out


class Workload:
    """A model, its batches and its loss, independent of how it is trained.

    ``host_batch(i)`` makes step ``i``'s batch on the host (pinned for CUDA);
    ``loss(batch)`` copies it in with ``non_blocking=True`` and computes the
    loss, as a training loop over a DataLoader does.
    """

    def __init__(self, name: str, device: torch.device, model_device: torch.device | None = None,
                 make_model: Callable | None = None) -> None:
        torch.manual_seed(0)
        build = make_model or (lambda: MODELS[name][0]())
        if model_device is not None and model_device.type == "cuda":
            with torch.device(model_device):  # initialised on the GPU: seconds, not minutes
                self.model, (task, classes, batch, seq) = build()
        else:
            self.model, (task, classes, batch, seq) = build()
            if model_device is not None:
                self.model = self.model.to(model_device)
        if task == "image" and model_device is not None:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.task, self.batch, self.device = task, batch, device
        self.input_dtype: torch.dtype | None = None  # DeepSpeed's bf16 wants bf16 images
        self.host_batch = HostBatches(task, classes, batch, seq, pin=device.type == "cuda")

    def to_device(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        out = [t.to(self.device, non_blocking=True) for t in batch]
        if self.task == "image":
            out[0] = out[0].to(dtype=self.input_dtype or out[0].dtype, memory_format=torch.channels_last)
        return tuple(out)

    def loss(self, batch: tuple[torch.Tensor, ...], model: torch.nn.Module | None = None) -> torch.Tensor:
        model = self.model if model is None else model
        x, *rest = self.to_device(batch)
        if self.task == "lm":
            return model(input_ids=x, labels=x).loss
        if self.task == "mlm":
            labels = x.clone()
            labels[:, ::2] = -100
            return model(input_ids=x, labels=labels).loss
        if self.task == "seq2seq":
            return model(input_ids=x, labels=rest[0]).loss
        return torch.nn.functional.cross_entropy(model(x), rest[0])


def standard_step(work: Workload, opt: torch.optim.Optimizer, wrap=None, mark=None, model=None):
    """One step as users write it: bf16 autocast on CUDA, backward, optimizer step.

    The step takes the host batch (``work.host_batch(i)``). ``mark(phase)``,
    if given, is called as each phase ends (on the CPU: the GPU may still be
    working on it). ``model`` replaces ``work.model`` in the forward (a
    compiled wrapper).
    """
    amp = torch.autocast(work.device.type, dtype=torch.bfloat16, enabled=work.device.type == "cuda")

    def step(batch):
        with amp:
            if wrap is None:
                loss = work.loss(batch, model)
            else:
                with wrap():
                    loss = work.loss(batch, model)
        if mark:
            mark("forward")
        loss.backward()
        if mark:
            mark("backward")
        opt.step()
        opt.zero_grad(set_to_none=True)
        if mark:
            mark("optimizer")
        return loss.detach()

    return step


def adamw_kind(device: torch.device) -> str:
    """The bench's AdamW: "fused" on CUDA and "foreach" on the cpu device, unless the
    environment's ``DEEPUM_BENCH_ADAMW`` names one of "fused", "foreach" or "single" (one
    tensor at a time) for every case of a run (plain ones too, so they compare)."""
    kind = os.environ.get("DEEPUM_BENCH_ADAMW") or ("fused" if device.type == "cuda" else "foreach")
    if kind not in ("fused", "foreach", "single"):
        raise ValueError(f"DEEPUM_BENCH_ADAMW={kind!r}: give fused, foreach or single")
    return kind


def adamw(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    kind = adamw_kind(device)
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=kind == "fused", foreach=kind == "foreach")
