"""A sweep of new users' model families and training-loop habits on the cpu tier.

    python benchmarks/user_sweep_cpu.py [NAME ...]   (from the repository root)

(about 9 minutes for all 24 scenarios on one core; names on the command line
pick scenarios by prefix, e.g. ``s4 x13``). The checkout's ``src`` is put first
on ``sys.path``, so the deepum tested is this one whatever an editable install
points at.

Each scenario (s1-s9: the families and habits the suite lacked; x1-x13: more
habits, GANs, double backward, optimizer-in-backward, resuming from a
checkpoint, from_pretrained, MAML...) trains a small model for 6-12 steps,
seeded, with a fresh host batch each step: twice plain (to show the plain run
is deterministic), once under a session whose budget never binds (budget=1.0,
dormant=False, recompute_blocks=False: its ``peak_managed_bytes`` is the
unconstrained peak, as tests/test_parking.py's ``_budget`` measures it), and
under sessions with the default options at 1/2, 1/3 and 1/4 of that peak.
Each run's losses, final parameters and extra values (EMA weights, saved and
reloaded state dicts, gradient norms, optimizer state) are compared with the
plain run's bit for bit (``torch.equal``).

Checked besides the bits: that ``peak_managed_bytes`` stays within
``budget_bytes`` (the cpu tier has no reserve: the budget is the limit), and
that the probe's ``max_working_set_bytes`` (``deepum estimate``'s smallest
budget) is not above its peak; a run that breaks either carries a note.

A budget deepum refuses with an error naming the cause (BudgetTooSmallError,
UnmanagedMemoryError, BudgetError) is recorded as ``refused: ...``; where 1/2
or 1/3 is refused the scenario is retried at 3/4. A scenario none of whose
shares evicted, set regions or parked anything is run again at 1/6, 1/10, 1/20
of the peak until one does or the session refuses. Any other exception is
recorded with its traceback's last lines. The table at the end has one row per
run, and the details after it every run with an error, a note, a difference or
an overshoot.
"""

from __future__ import annotations

import contextlib
import copy
import io
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# This checkout's deepum, whatever an editable install elsewhere points at.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import deepum  # noqa: E402

VOCAB = 512
KEYS = ("evictions", "faults", "paging_stops", "regions", "parked_bytes", "overshoots", "dormant",
        "unpageable_pages", "unpageable_bytes", "budget_bytes")


class Ctx:
    """What a scenario enters: nothing (plain), or a cpu session with ``budget`` and ``opts``."""

    def __init__(self, budget: int | float | None = None, **opts) -> None:
        self.budget, self.opts, self.session = budget, opts, None

    def __call__(self):
        if self.budget is None:
            return contextlib.nullcontext()
        self.session = deepum.oversubscribe(self.budget, device="cpu", **self.opts)
        return self.session


@dataclass
class Run:
    losses: list = field(default_factory=list)
    params: list = field(default_factory=list)
    extra: list = field(default_factory=list)


def _snap(ts) -> list[torch.Tensor]:
    return [t.detach().clone() for t in ts]


def _fresh(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(1, VOCAB, shape, generator=g)


# --- models ----------------------------------------------------------------------------------------

def _llama(layers=4, tie=False):
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, hidden_size=128, intermediate_size=352,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                        max_position_embeddings=128, tie_word_embeddings=tie))


def _gpt2(layers=4):
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=128, n_head=4, vocab_size=VOCAB, n_positions=128))


class _Expert(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.up, self.down = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        return self.down(torch.nn.functional.silu(self.up(x)))


class _MoE(nn.Module):
    """Top-2 routing over 4 experts: index_select in, index_add_ out."""

    def __init__(self, d=128, h=256, experts=4, k=2):
        super().__init__()
        self.k = k
        self.norm = nn.LayerNorm(d)
        self.router = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList(_Expert(d, h) for _ in range(experts))

    def forward(self, x):
        b, t, d = x.shape
        flat = self.norm(x).reshape(-1, d)
        probs = torch.softmax(self.router(flat), dim=-1)
        weight, chosen = probs.topk(self.k, dim=-1)
        weight = weight / weight.sum(-1, keepdim=True)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = (chosen == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            y = expert(flat.index_select(0, rows)) * weight[rows, slot].unsqueeze(-1)
            out = out.index_add(0, rows, y)
        return x + out.reshape(b, t, d)


class _MoENet(nn.Module):
    def __init__(self, layers=3):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 128)
        self.blocks = nn.ModuleList(_MoE() for _ in range(layers))
        self.head = nn.Linear(128, VOCAB)

    def forward(self, ids):
        x = self.emb(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class _LSTMLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 128)
        self.rnn = nn.LSTM(128, 256, num_layers=2, batch_first=True, dropout=0.1)
        self.head = nn.Linear(256, VOCAB)

    def forward(self, ids):
        out, _ = self.rnn(self.emb(ids))
        return self.head(out)


def _gn_block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class _UNet(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.inc = _gn_block(3, c)
        self.down1 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _gn_block(2 * c, 2 * c))
        self.down2 = nn.Sequential(nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), _gn_block(4 * c, 4 * c))
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
        self.dec2 = _gn_block(4 * c, 2 * c)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.dec1 = _gn_block(2 * c, c)
        self.out = nn.Conv2d(c, 3, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        y = self.dec2(torch.cat([self.up2(x3), x2], dim=1))
        y = self.dec1(torch.cat([self.up1(y), x1], dim=1))
        return self.out(y)


def _mlp():
    return nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 1024), nn.GELU(),
                         nn.Linear(1024, 1024), nn.GELU(), nn.Linear(1024, 10))


class _EncoderLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 128)
        layer = nn.TransformerEncoderLayer(128, 4, 256, dropout=0.1, batch_first=True)
        self.body = nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False)
        self.head = nn.Linear(128, VOCAB)

    def forward(self, ids):
        return self.head(self.body(self.emb(ids)))


def _ce(logits, ids):
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _lm(model, ids):
    return model(input_ids=ids, labels=ids).loss


def _next_token(model, ids):
    return _ce(model(ids), ids)


def _steps(run: Run, model, opt, batch, loss_of, steps: int = 8) -> None:
    """The plain loop: a fresh batch, zero_grad, backward, step, each loss kept; the parameters last."""
    for _ in range(steps):
        ids = batch()
        opt.zero_grad(set_to_none=True)
        loss = loss_of(model, ids)
        loss.backward()
        opt.step()
        run.losses.append(loss.detach().clone())
    run.params = _snap(model.parameters())


# --- scenarios ---------------------------------------------------------------------------------------

def s1_llama_grad_accum(ctx: Ctx) -> Run:
    """HF Llama (4 layers, d=128), 4 micro-batches per AdamW(foreach=False) step, 6 steps."""
    run = Run()
    g = torch.Generator().manual_seed(1)
    with ctx():
        torch.manual_seed(0)
        model = _llama()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
        for _ in range(6):
            opt.zero_grad(set_to_none=True)
            for _ in range(4):
                ids = _fresh(g, 4, 64)
                loss = model(input_ids=ids, labels=ids).loss / 4
                loss.backward()
                run.losses.append(loss.detach().clone())
            opt.step()
        run.params = _snap(model.parameters())
    return run


def s2_gpt2_clip_sched(ctx: Ctx) -> Run:
    """HF GPT-2 (4 layers, d=128, dropout on), clip_grad_norm_(1.0), AdamW, OneCycleLR, 8 steps."""
    run = Run()
    g = torch.Generator().manual_seed(2)
    with ctx():
        torch.manual_seed(0)
        model = _gpt2()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=8)
        for _ in range(8):
            ids = _fresh(g, 8, 64)
            opt.zero_grad(set_to_none=True)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            run.losses.append(loss.detach().clone())
            run.extra.append(norm.detach().clone())
        run.params = _snap(model.parameters())
    return run


def s3_moe(ctx: Ctx) -> Run:
    """Plain-torch MoE (3 layers, 4 experts, top-2 routing, index_select/index_add), Adam, 8 steps."""
    run = Run()
    g = torch.Generator().manual_seed(3)
    with ctx():
        torch.manual_seed(0)
        model = _MoENet()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        _steps(run, model, opt, lambda: _fresh(g, 8, 64), _next_token)
    return run


def s4_lstm_sgd(ctx: Ctx) -> Run:
    """nn.LSTM language model (2 layers, 256 hidden, dropout), SGD momentum 0.9, 8 steps."""
    run = Run()
    g = torch.Generator().manual_seed(4)
    with ctx():
        torch.manual_seed(0)
        model = _LSTMLM()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        _steps(run, model, opt, lambda: _fresh(g, 8, 48), _next_token)
    return run


def s5_unet_adam(ctx: Ctx) -> Run:
    """UNet-like conv net (GroupNorm, SiLU, ConvTranspose2d, torch.cat skips), Adam, MSE, 8 steps."""
    run = Run()
    g = torch.Generator().manual_seed(5)
    with ctx():
        torch.manual_seed(0)
        model = _UNet()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(8):
            x = torch.randn(8, 3, 32, 32, generator=g)
            noise = torch.randn(8, 3, 32, 32, generator=g)
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x + noise), noise)
            loss.backward()
            opt.step()
            run.losses.append(loss.detach().clone())
        run.params = _snap(model.parameters())
    return run


def s6_tied_llama(ctx: Ctx) -> Run:
    """HF Llama with tie_word_embeddings=True (3 layers), AdamW, 8 steps."""
    run = Run()
    g = torch.Generator().manual_seed(6)
    with ctx():
        torch.manual_seed(0)
        model = _llama(layers=3, tie=True)
        assert model.lm_head.weight is model.model.embed_tokens.weight
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        _steps(run, model, opt, lambda: _fresh(g, 8, 64), _lm)
        run.extra.append(torch.tensor(model.lm_head.weight is model.model.embed_tokens.weight))
    return run


def _ema_run(ctx: Ctx, foreach: bool) -> Run:
    run = Run()
    g = torch.Generator().manual_seed(7)
    with ctx():
        torch.manual_seed(0)
        model = _gpt2(layers=3)
        ema = copy.deepcopy(model).requires_grad_(False)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for step in range(9):
            ids = _fresh(g, 8, 64)
            opt.zero_grad(set_to_none=True)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            with torch.no_grad():
                if foreach:
                    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 0.01)
                else:
                    for pe, p in zip(ema.parameters(), model.parameters()):
                        pe.lerp_(p, 0.01)
            run.losses.append(loss.detach().clone())
            if step % 3 == 2:  # checkpoint, reload, resume from the reloaded values
                buf = io.BytesIO()
                torch.save(model.state_dict(), buf)
                buf.seek(0)
                loaded = torch.load(buf)
                run.extra.extend(v.clone() for v in loaded.values())
                model.load_state_dict(loaded)
        run.params = _snap(model.parameters())
        run.extra.extend(_snap(ema.parameters()))
    return run


def s7a_ema_foreach_save(ctx: Ctx) -> Run:
    """GPT-2 (3 layers) + EMA copy via torch._foreach_lerp_, torch.save/load/load_state_dict every 3 steps."""
    return _ema_run(ctx, foreach=True)


def s7b_ema_loop_save(ctx: Ctx) -> Run:
    """As 7a with a loop of p_ema.lerp_(p, 0.01)."""
    return _ema_run(ctx, foreach=False)


def _loader_run(ctx: Ctx, build_inside: bool) -> Run:
    run = Run()

    def build():
        torch.manual_seed(0)
        model = _mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gd = torch.Generator().manual_seed(8)
        x, y = torch.randn(192, 256, generator=gd), torch.randint(0, 10, (192,), generator=gd)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True,
                                             num_workers=0, generator=torch.Generator().manual_seed(9))
        return model, opt, loader

    built = None if build_inside else build()
    with ctx():
        model, opt, loader = built if built is not None else build()
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            run.losses.append(loss.detach().clone())
        run.params = _snap(model.parameters())
    return run


def s8a_built_before_loader(ctx: Ctx) -> Run:
    """MLP (256-1024-1024-1024-10), Adam, model/optimizer/data built BEFORE the session; DataLoader over a
    TensorDataset (shuffle, num_workers=0), 12 steps."""
    return _loader_run(ctx, build_inside=False)


def s8b_built_inside_loader(ctx: Ctx) -> Run:
    """As 8a with the model, optimizer and data built inside the session."""
    return _loader_run(ctx, build_inside=True)


def s9_two_optimizers(ctx: Ctx) -> Run:
    """nn.TransformerEncoder LM: Adam on embedding+body, SGD(momentum) on the head, 8 steps."""
    run = Run()
    g = torch.Generator().manual_seed(10)
    with ctx():
        torch.manual_seed(0)
        model = _EncoderLM()
        body = list(model.emb.parameters()) + list(model.body.parameters())
        opts = [torch.optim.Adam(body, lr=1e-3), torch.optim.SGD(model.head.parameters(), lr=0.05, momentum=0.9)]
        for _ in range(8):
            ids = _fresh(g, 8, 64)
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss = _ce(model(ids), ids)
            loss.backward()
            for o in opts:
                o.step()
            run.losses.append(loss.detach().clone())
        run.params = _snap(model.parameters())
    return run


# --- further habits (beyond the brief's list) --------------------------------------------------------

def _gan_nets():
    g = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 784), nn.Tanh())
    d = nn.Sequential(nn.Linear(784, 256), nn.LeakyReLU(0.2), nn.Linear(256, 256), nn.LeakyReLU(0.2),
                      nn.Linear(256, 1))
    return g, d


def x1_gan(ctx: Ctx) -> Run:
    """GAN: two root modules, G(z).detach() for D's step, two Adam optimizers, 8 steps."""
    run = Run()
    gen = torch.Generator().manual_seed(11)
    bce = nn.functional.binary_cross_entropy_with_logits
    with ctx():
        torch.manual_seed(0)
        g, d = _gan_nets()
        og = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
        od = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
        for _ in range(8):
            real = torch.randn(64, 784, generator=gen)
            z = torch.randn(64, 64, generator=gen)
            fake = g(z)
            od.zero_grad(set_to_none=True)
            real_logits, fake_logits = d(real), d(fake.detach())
            d_loss = bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits))
            d_loss.backward()
            od.step()
            og.zero_grad(set_to_none=True)
            out = d(fake)
            g_loss = bce(out, torch.ones_like(out))
            g_loss.backward()
            og.step()
            run.losses += [d_loss.detach().clone(), g_loss.detach().clone()]
        run.params = _snap([*g.parameters(), *d.parameters()])
    return run


def x2_wgan_gp(ctx: Ctx) -> Run:
    """WGAN-GP: gradient penalty through autograd.grad(create_graph=True) (double backward), 5 critic
    steps per generator step, 4 generator steps."""
    run = Run()
    gen = torch.Generator().manual_seed(12)
    with ctx():
        torch.manual_seed(0)
        g, d = _gan_nets()
        og = torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.0, 0.9))
        od = torch.optim.Adam(d.parameters(), lr=1e-4, betas=(0.0, 0.9))
        for _ in range(4):
            for _ in range(5):
                real = torch.randn(64, 784, generator=gen)
                fake = g(torch.randn(64, 64, generator=gen)).detach()
                eps = torch.rand(64, 1, generator=gen)
                mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
                grad, = torch.autograd.grad(d(mix).sum(), mix, create_graph=True)
                gp = ((grad.norm(2, dim=1) - 1) ** 2).mean()
                loss = d(fake).mean() - d(real).mean() + 10 * gp
                od.zero_grad(set_to_none=True)
                loss.backward()
                od.step()
                run.losses.append(loss.detach().clone())
            g_loss = -d(g(torch.randn(64, 64, generator=gen))).mean()
            og.zero_grad(set_to_none=True)
            g_loss.backward()
            og.step()
            run.losses.append(g_loss.detach().clone())
        run.params = _snap([*g.parameters(), *d.parameters()])
    return run


def x3_optimizer_in_backward(ctx: Ctx) -> Run:
    """GPT-2 (3 layers): one AdamW per parameter, stepped in register_post_accumulate_grad_hook, 8 steps."""
    run = Run()
    gen = torch.Generator().manual_seed(13)
    with ctx():
        torch.manual_seed(0)
        model = _gpt2(layers=3)
        opts = {p: torch.optim.AdamW([p], lr=1e-3, foreach=False) for p in model.parameters()}

        def hook(p):
            opts[p].step()
            opts[p].zero_grad(set_to_none=True)

        handles = [p.register_post_accumulate_grad_hook(hook) for p in model.parameters()]
        for _ in range(8):
            ids = _fresh(gen, 8, 64)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            run.losses.append(loss.detach().clone())
        for h in handles:
            h.remove()
        run.params = _snap(model.parameters())
    return run


def x4_eval_pass_item_logging(ctx: Ctx) -> Run:
    """GPT-2 (4 layers, dropout): loss.item() logged each step, a model.eval()/no_grad validation pass on a
    larger batch every 2 steps, 8 steps."""
    run = Run()
    gen = torch.Generator().manual_seed(14)
    with ctx():
        torch.manual_seed(0)
        model = _gpt2()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        log = []
        for step in range(8):
            ids = _fresh(gen, 8, 64)
            opt.zero_grad(set_to_none=True)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            log.append(loss.item())
            run.losses.append(loss.detach().clone())
            if step % 2 == 1:
                model.eval()
                with torch.no_grad():
                    val = _fresh(gen, 16, 64)
                    run.extra.append(model(input_ids=val, labels=val).loss.clone())
                model.train()
        run.extra.append(torch.tensor(log, dtype=torch.float64))
        run.params = _snap(model.parameters())
    return run


class _NoisyBlock(nn.Module):
    def __init__(self, d=256):
        super().__init__()
        self.norm, self.fc1, self.fc2, self.drop = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d), \
            nn.Dropout(0.1)

    def forward(self, x):
        x = x + self.drop(self.fc2(nn.functional.gelu(self.fc1(self.norm(x)))))
        if self.training:
            x = x + 0.01 * torch.randn_like(x)  # noise from the global generator inside the block
        return x


def x5_noisy_blocks(ctx: Ctx) -> Run:
    """Plain-torch residual MLP blocks (ModuleList of 6) with dropout and randn_like noise in forward,
    diffusion-style timesteps from the global generator in the loop, Adam, 8 steps."""
    run = Run()
    gen = torch.Generator().manual_seed(15)
    with ctx():
        torch.manual_seed(0)
        blocks = nn.ModuleList(_NoisyBlock() for _ in range(6))
        temb = nn.Embedding(100, 256)
        model = nn.ModuleDict({"blocks": blocks, "temb": temb})
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(8):
            x = torch.randn(16, 64, 256, generator=gen)
            t = torch.randint(0, 100, (16,))  # global generator, as diffusion loops do
            noise = torch.randn_like(x)
            h = x + noise + temb(t)[:, None]
            for b in blocks:
                h = b(h)
            loss = nn.functional.mse_loss(h, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run.losses.append(loss.detach().clone())
        run.params = _snap(model.parameters())
    return run


def x6_hf_gradient_checkpointing(ctx: Ctx) -> Run:
    """GPT-2 (4 layers, dropout) with model.gradient_checkpointing_enable() (the user's own checkpointing),
    AdamW, 8 steps."""
    run = Run()
    gen = torch.Generator().manual_seed(16)
    with ctx():
        torch.manual_seed(0)
        model = _gpt2()
        model.gradient_checkpointing_enable()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        _steps(run, model, opt, lambda: _fresh(gen, 8, 64), _lm)
    return run


def x7_frozen_zero_grad_keep(ctx: Ctx) -> Run:
    """HF Llama (3 layers): embeddings and layer 0 frozen, optimizer over the trainable rest,
    zero_grad(set_to_none=False) (grads kept and zeroed in place), AdamW, 8 steps."""
    run = Run()
    gen = torch.Generator().manual_seed(17)
    with ctx():
        torch.manual_seed(0)
        model = _llama(layers=3)
        model.model.embed_tokens.requires_grad_(False)
        model.model.layers[0].requires_grad_(False)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        for _ in range(8):
            ids = _fresh(gen, 8, 64)
            opt.zero_grad(set_to_none=False)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            run.losses.append(loss.detach().clone())
        run.params = _snap(model.parameters())
        run.extra = _snap(p.grad for p in model.parameters() if p.grad is not None)
    return run


def x8_autocast_bf16(ctx: Ctx) -> Run:
    """HF Llama (3 layers) under torch.autocast("cpu", bfloat16), AdamW, 8 steps."""
    run = Run()
    gen = torch.Generator().manual_seed(18)
    with ctx():
        torch.manual_seed(0)
        model = _llama(layers=3)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(8):
            ids = _fresh(gen, 8, 64)
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            run.losses.append(loss.detach().clone())
        run.params = _snap(model.parameters())
    return run


def x9_lbfgs(ctx: Ctx) -> Run:
    """MLP regression with LBFGS (closure, history 5, max_iter 4), 6 steps."""
    run = Run()
    gen = torch.Generator().manual_seed(19)
    with ctx():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(128, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 1))
        opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4, history_size=5)
        for _ in range(6):
            x = torch.randn(256, 128, generator=gen)
            y = x[:, :1].sin()

            def closure(x=x, y=y):
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                return loss

            run.losses.append(opt.step(closure).detach().clone())
        run.params = _snap(model.parameters())
    return run


def x10_resume_from_checkpoint(ctx: Ctx) -> Run:
    """GPT-2 (3 layers): 2 plain steps saved (model + AdamW state) before the session; inside it a fresh
    model and optimizer load both state dicts and train 6 more steps."""
    run = Run()
    gen = torch.Generator().manual_seed(20)
    torch.manual_seed(0)
    model = _gpt2(layers=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        ids = _fresh(gen, 8, 64)
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    del model, opt
    with ctx():
        buf.seek(0)
        ckpt = torch.load(buf)
        torch.manual_seed(1)
        model = _gpt2(layers=3)
        model.load_state_dict(ckpt["model"])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        opt.load_state_dict(ckpt["opt"])
        for _ in range(6):
            ids = _fresh(gen, 8, 64)
            opt.zero_grad(set_to_none=True)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            run.losses.append(loss.detach().clone())
        run.params = _snap(model.parameters())
        run.extra = _snap(v for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
    return run


def x11_sparse_embedding(ctx: Ctx) -> Run:
    """nn.Embedding(sparse=True) with SparseAdam, Adam on the MLP head, 8 steps."""
    run = Run()
    gen = torch.Generator().manual_seed(21)
    with ctx():
        torch.manual_seed(0)
        emb = nn.Embedding(20000, 64, sparse=True)
        head = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))
        o1, o2 = torch.optim.SparseAdam(emb.parameters(), lr=1e-3), torch.optim.Adam(head.parameters(), lr=1e-3)
        for _ in range(8):
            ids = torch.randint(0, 20000, (64, 16), generator=gen)
            y = torch.randint(0, 10, (64,), generator=gen)
            loss = nn.functional.cross_entropy(head(emb(ids).mean(1)), y)
            o1.zero_grad(set_to_none=True)
            o2.zero_grad(set_to_none=True)
            loss.backward()
            o1.step()
            o2.step()
            run.losses.append(loss.detach().clone())
        run.params = _snap([*emb.parameters(), *head.parameters()])
    return run


_SAVED: dict[str, str] = {}


def _pretrained_dir() -> str:
    """A small GPT-2 written once with save_pretrained (safetensors), as a downloaded checkpoint would be."""
    if "gpt2" not in _SAVED:
        torch.manual_seed(0)
        path = tempfile.mkdtemp(prefix="user_sweep_gpt2_")
        from transformers import GPT2Config, GPT2LMHeadModel
        GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=4096, n_positions=128)
                        ).save_pretrained(path)
        _SAVED["gpt2"] = path
    return _SAVED["gpt2"]


def x12_from_pretrained(ctx: Ctx) -> Run:
    """Fine-tune GPT-2 (4 layers, d=256, vocab 4096: parameters about a quarter of the peak) loaded with
    from_pretrained inside the session (safetensors on disk), AdamW, 8 steps."""
    from transformers import GPT2LMHeadModel
    run = Run()
    gen = torch.Generator().manual_seed(22)
    path = _pretrained_dir()
    with ctx():
        torch.manual_seed(0)
        model = GPT2LMHeadModel.from_pretrained(path)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        _steps(run, model, opt, lambda: torch.randint(0, 4096, (4, 64), generator=gen), _lm)
    return run



def x13_maml(ctx: Ctx) -> Run:
    """MAML-style meta-learning on an MLP: an inner step through torch.func.functional_call and
    autograd.grad(create_graph=True), fast weights kept until the next step, Adam on the outer loss, 6 steps."""
    run = Run()
    gen = torch.Generator().manual_seed(23)
    with ctx():
        torch.manual_seed(0)
        model = _mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(6):
            x, y = torch.randn(32, 256, generator=gen), torch.randint(0, 10, (32,), generator=gen)
            params = dict(model.named_parameters())
            inner = nn.functional.cross_entropy(torch.func.functional_call(model, params, (x,)), y)
            grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
            fast = {k: v - 0.1 * g for (k, v), g in zip(params.items(), grads)}
            outer = nn.functional.cross_entropy(torch.func.functional_call(model, fast, (x,)), y)
            opt.zero_grad(set_to_none=True)
            outer.backward()
            opt.step()
            run.losses.append(outer.detach().clone())
        run.params = _snap(model.parameters())
    return run


SCENARIOS: list[Callable[[Ctx], Run]] = [
    s1_llama_grad_accum, s2_gpt2_clip_sched, s3_moe, s4_lstm_sgd, s5_unet_adam, s6_tied_llama,
    s7a_ema_foreach_save, s7b_ema_loop_save, s8a_built_before_loader, s8b_built_inside_loader, s9_two_optimizers,
    x1_gan, x2_wgan_gp, x3_optimizer_in_backward, x4_eval_pass_item_logging, x5_noisy_blocks,
    x6_hf_gradient_checkpointing, x7_frozen_zero_grad_keep, x8_autocast_bf16, x9_lbfgs, x10_resume_from_checkpoint,
    x11_sparse_embedding, x12_from_pretrained, x13_maml,
]


# --- the sweep ---------------------------------------------------------------------------------------

REFUSALS = (deepum.BudgetTooSmallError, deepum.UnmanagedMemoryError, deepum.BudgetError)
SHARES = (0.5, 1 / 3, 0.25)
TIGHTER = (1 / 6, 0.1, 0.05)
STAT_KEYS = KEYS + ("peak_managed_bytes", "optimizer_steps", "paging_starts", "drops", "recomputes",
                    "overshoot_max_bytes", "max_working_set_bytes", "max_working_set_op")


def compare(ref: Run, got: Run) -> str:
    """"" when every value is equal bit for bit, else where the first difference is."""
    for name in ("losses", "params", "extra"):
        a, b = getattr(ref, name), getattr(got, name)
        if len(a) != len(b):
            return f"{name}: {len(a)} values against {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            if x.shape != y.shape or x.dtype != y.dtype:
                return f"{name}[{i}]: {tuple(x.shape)}/{x.dtype} against {tuple(y.shape)}/{y.dtype}"
            if not torch.equal(x, y):
                diff = (x.double() - y.double()).abs().max().item() if x.is_floating_point() else "-"
                return f"{name}[{i}] differs (max abs {diff})"
    return ""


def _tail(exc: BaseException, lines: int = 6) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-lines:]).rstrip()


@dataclass
class Row:
    scenario: str
    label: str
    budget: int | None = None
    identical: str = "-"
    stats: dict = field(default_factory=dict)
    error: str = ""
    notes: list = field(default_factory=list)


def attempt(fn, ref: Run, label: str, budget, **opts) -> Row:
    ctx = Ctx(budget, **opts)
    row = Row(fn.__name__, label, budget if isinstance(budget, int) else None)
    try:
        got = fn(ctx)
    except REFUSALS as e:
        row.error = f"refused: {type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - a sweep records every failure and goes on
        row.error = f"EXCEPTION {type(e).__name__}\n{_tail(e)}"
    else:
        diff = compare(ref, got)
        row.identical = "yes" if not diff else f"NO ({diff})"
    if ctx.session is not None:
        try:
            st = ctx.session.stats()
            row.stats = {k: st.get(k) for k in STAT_KEYS}
        except Exception as e:  # noqa: BLE001
            row.error += f" (stats failed: {e!r})"
    st = row.stats
    if st and st.get("budget_bytes") and st.get("peak_managed_bytes", 0) > st["budget_bytes"]:
        row.notes.append(f"peak {st['peak_managed_bytes']} > budget {st['budget_bytes']} "
                         f"({st['peak_managed_bytes'] / st['budget_bytes']:.2f}x) with {st.get('overshoots')} overshoots")
    return row


def exercised(row: Row) -> bool:
    s = row.stats
    return bool(s) and (s.get("evictions", 0) > 0 or s.get("regions", 0) > 0 or s.get("parked_bytes", 0) > 0)


def sweep(fn) -> list[Row]:
    print(f"\n== {fn.__name__}: {' '.join(fn.__doc__.split())}", flush=True)
    rows: list[Row] = []
    ref = fn(Ctx())
    again = compare(ref, fn(Ctx()))
    rows.append(Row(fn.__name__, "plain x2", identical="yes" if not again else f"NO ({again})"))
    probe = attempt(fn, ref, "probe budget=1.0", 1.0, dormant=False, recompute_blocks=False)
    rows.append(probe)
    peak = probe.stats.get("peak_managed_bytes") if probe.stats else None
    if not peak:
        print("   no peak measured; skipping the budgets", flush=True)
        return rows
    probe.budget = peak
    probe.notes = [n for n in probe.notes if not n.startswith("peak ")]  # (a budget of the whole host)
    ws = probe.stats.get("max_working_set_bytes") or 0
    if ws > peak:
        probe.notes.append(f"max_working_set_bytes {ws} (what `deepum estimate` gives as the smallest budget) "
                           f"is above the unconstrained peak {peak}, set by {probe.stats.get('max_working_set_op')}")
    if probe.stats.get("evictions"):
        probe.notes.append(f"{probe.stats['evictions']} evictions under a budget of the whole host")

    def at(share: float, note: str = "") -> Row:
        row = attempt(fn, ref, f"{share:.3g} of peak{note}", int(peak * share))
        rows.append(row)
        print(f"   {row.label}: identical {row.identical}; {row.stats}"
              f"{'; ' + row.error.splitlines()[0] if row.error else ''}"
              f"{'; ' + '; '.join(row.notes) if row.notes else ''}", flush=True)
        return row

    tried = [at(share) for share in SHARES]
    if any(r.error.startswith("refused") for r in tried[:2]):
        at(0.75, " (retry)")
    if not any(exercised(r) for r in tried) and not any(r.error for r in tried):
        for share in TIGHTER:
            row = at(share, " (tighter)")
            if exercised(row) or row.error:
                break
    return rows


def _fmt(row: Row) -> str:
    s = row.stats or {}
    ratio = f"{s['peak_managed_bytes'] / s['budget_bytes']:.2f}" if s.get("budget_bytes") and row.budget and \
        "probe" not in row.label else "-"
    cells = [row.scenario[:26], row.label[:20], str(row.budget or "-"), row.identical.split(" (")[0]]
    cells += [str(s.get(k, "-")) for k in ("evictions", "paging_stops", "regions", "parked_bytes", "overshoots")]
    cells += [ratio, str(s.get("unpageable_bytes", "-"))]
    cells.append((row.error.splitlines()[0][:90] if row.error else "") + (" [note]" if row.notes else ""))
    return " | ".join(cells)


def main() -> None:
    torch.set_num_threads(1)  # the same kernels' split in every run, whatever else shares the CPU
    print(f"deepum from {deepum.__file__}, torch {torch.__version__}", flush=True)
    picked = [f for f in SCENARIOS if not sys.argv[1:] or any(f.__name__.startswith(a) for a in sys.argv[1:])]
    rows: list[Row] = []
    for fn in picked:
        rows.extend(sweep(fn))
    print("\nscenario | run | budget | identical | evictions | paging_stops | regions | parked_bytes | overshoots | "
          "peak/budget | unpageable_bytes | error")
    for row in rows:
        print(_fmt(row))
    notes = [r for r in rows if r.error or r.notes or r.identical.startswith("NO") or (r.stats.get("overshoots") or 0) > 0]
    if notes:
        print("\ndetails:")
    for r in notes:
        print(f"-- {r.scenario} / {r.label}: identical {r.identical}; stats {r.stats}")
        for n in r.notes:
            print(f"   note: {n}")
        if r.error:
            print("   " + r.error.replace("\n", "\n   "))
    for fn in picked:
        mine = [r for r in rows if r.scenario == fn.__name__ and r.budget and "probe" not in r.label]
        if mine and not any(exercised(r) for r in mine):
            print(f"!! {fn.__name__}: no budget tried evicted, set regions or parked anything")


if __name__ == "__main__":
    main()
