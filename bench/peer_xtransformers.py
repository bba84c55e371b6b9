"""x-transformers' training step at the reference config: the peer pe_jax is timed against.

  bench/.peer_venv/bin/python bench/peer_xtransformers.py [--schemes=none,rope] [--steps=10]
  bench/.peer_venv/bin/python bench/peer_xtransformers.py --serve   (a worker of bench/run.py)

Runs in its own virtual environment (``bench/run.py`` creates it: torch 2.13.0 CPU,
then x-transformers). One ``TransformerWrapper`` + ``Decoder`` per scheme, each set up
with the library's own flags, at the shapes of ``timing.REFERENCE``:

- ``none``: no absolute embedding;
- ``learned``: its learned absolute embedding (the wrapper's default);
- ``sinusoidal``: its scaled sinusoidal embedding with the learned scale frozen, so that
  the code is fixed as pe_jax's is;
- ``rope``: rotary embedding over the whole head (``rotary_emb_dim = head width``; the
  library's default rotates half of it), as pe_jax's default does;
- ``alibi``: its ALiBi bias, absolute embedding off;
- ``t5``: its T5 relative bias (32 buckets, distance 128, pe_jax's defaults).

Pre-RMSNorm (``use_rmsnorm``) like pe_jax's blocks; the rest are the library's defaults
(GELU MLP with biases, bias-free attention projections, untied output head). A step is
what pe_jax's step does: forward, cross-entropy, backward, global-norm clipping, AdamW
(betas 0.9/0.95, decoupled weight decay) and a warm-up/cosine learning-rate schedule.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
from x_transformers import Decoder, TransformerWrapper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timing  # noqa: E402

REF = timing.REFERENCE

# pe_jax scheme name -> x-transformers flags (Decoder, TransformerWrapper).
SCHEMES = {
    "none": ({}, {"use_abs_pos_emb": False}),
    "learned": ({}, {}),
    "sinusoidal": ({}, {"scaled_sinu_pos_emb": True}),
    "rope": ({"rotary_pos_emb": True,
              "rotary_emb_dim": REF["d_model"] // REF["num_heads"]}, {}),
    "alibi": ({"alibi_pos_bias": True}, {"use_abs_pos_emb": False}),
    "t5": ({"rel_pos_bias": True, "rel_pos_num_buckets": 32, "rel_pos_max_distance": 128}, {}),
}


def build_model(scheme: str) -> torch.nn.Module:
    if scheme not in SCHEMES:
        raise ValueError(f"x-transformers has no counterpart of {scheme!r}; known: "
                         f"{', '.join(SCHEMES)}")
    decoder_flags, wrapper_flags = SCHEMES[scheme]
    model = TransformerWrapper(
        num_tokens=REF["vocab_size"],
        max_seq_len=REF["seq_len"],
        attn_layers=Decoder(
            dim=REF["d_model"], depth=REF["num_layers"], heads=REF["num_heads"],
            ff_mult=REF["mlp_ratio"], use_rmsnorm=True, **decoder_flags,
        ),
        **wrapper_flags,
    )
    if scheme == "sinusoidal":
        model.pos_emb.scale.requires_grad_(False)  # a fixed code, as in pe_jax
    return model


def lr_lambda(step: int) -> float:
    """pe_jax's schedule as a multiple of the peak rate (optax's warmup_cosine_decay)."""
    warmup, total = REF["warmup_steps"], REF["num_steps"]
    if step < warmup:
        return step / warmup
    progress = min(1.0, (step - warmup) / (total - warmup))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


class Peer:
    """One model, optimizer and fixed batch per scheme, built on first use."""

    def __init__(self, warmup: int = 3):
        self.warmup = warmup
        self.models: dict[str, tuple] = {}

    def prepare(self, scheme: str) -> None:
        if scheme in self.models:
            return
        torch.manual_seed(0)
        model = build_model(scheme)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=REF["learning_rate"], betas=(REF["beta1"], REF["beta2"]),
            weight_decay=REF["weight_decay"],
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
        tokens = torch.randint(0, REF["vocab_size"], (REF["batch_size"], REF["seq_len"] + 1))
        inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

        def step() -> None:
            logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, REF["vocab_size"]), targets.reshape(-1)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, REF["grad_clip"])
            optimizer.step()
            schedule.step()

        for _ in range(self.warmup):
            step()
        self.models[scheme] = (model, step)

    def run(self, scheme: str, steps: int, cpu: list[float] | None = None) -> list[float]:
        self.prepare(scheme)
        return timing.time_steps(self.models[scheme][1], steps, cpu)


def peak() -> float:
    a = torch.randn(timing.PEAK_SIZE, timing.PEAK_SIZE)
    b = torch.randn(timing.PEAK_SIZE, timing.PEAK_SIZE)
    return timing.time_peak(lambda: torch.mm(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--serve", action="store_true", help="worker mode for bench/run.py")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    peer = Peer()
    if args.serve:
        timing.serve(peer.prepare, peer.run, peak)
        return
    names = args.schemes.split(",")
    for name in names:
        if name not in SCHEMES:
            build_model(name)  # raises, naming the known schemes
    print(f"x-transformers (torch {torch.__version__}, {torch.get_num_threads()} threads), "
          f"{timing.TOKENS_PER_STEP} tokens/step")
    for name in names:
        timing.print_row(name, peer.run(name, args.steps))
    print(f"  torch float32 matmul: {peak() / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
