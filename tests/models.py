"""Small models and batches for the training tests (random weights, no downloads)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp():
    return nn.Sequential(*[nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128)) for _ in range(4)],
                         nn.Linear(128, 10))


def mlp_batches(n=8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(32, 128, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(n)]


def classify(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def cnn():
    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
    # Deep enough that a third of the peak holds any single operator.
    return nn.Sequential(block(3, 16), *[block(16, 16) for _ in range(6)], nn.MaxPool2d(2),
                         *[block(16, 16) for _ in range(4)],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


class _Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


def resnet():
    """24 residual blocks: a step whose window of upcoming pages outgrows a tight budget."""
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), *[_Residual(32) for _ in range(24)],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def resnet_batches(n=8):
    g = torch.Generator().manual_seed(4)
    return [(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


def cnn_batches(n=8):
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def gpt2(dropout=0.0):
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=64,
                     resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return GPT2LMHeadModel(cfg)


def token_batches(n=8, vocab=256, batch=4, seq=32, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(n)]


def lm_loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


def bert(dropout=0.0):
    from transformers import BertConfig, BertForMaskedLM
    cfg = BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                     vocab_size=256, max_position_embeddings=64, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    return BertForMaskedLM(cfg)


def mlm_loss(model, ids):
    labels = ids.clone()
    labels[:, ::2] = -100
    return model(input_ids=ids, labels=labels).loss
