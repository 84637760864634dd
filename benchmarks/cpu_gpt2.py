"""The small HF GPT-2 training step the cpu-tier scripts of this folder measure."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def gpt2_step(n_embd: int = 256, vocab: int = 2048, seq: int = 256, batch: int = 8, autocast: bool = False):
    """A 4-layer GPT-2 (sdpa, no dropout) and AdamW; returns ``step(i)``, which
    trains on batch ``i`` (tokens from a generator seeded with ``i``)."""
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=4, n_embd=n_embd, n_head=4, vocab_size=vocab, n_positions=seq, resid_pdrop=0,
                     embd_pdrop=0, attn_pdrop=0, attn_implementation="sdpa")
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

    def step(i: int) -> None:
        x = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(i))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step
