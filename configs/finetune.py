"""Short fine-tune of a trained RoPE model at 4x its length, with a context-extension rule.

As in position interpolation (Chen et al. 2023, arXiv:2306.15595): start from the
checkpoint's parameters, train a few hundred steps at the longer length with a lower
learning rate and a short warm-up; the optimizer state starts fresh.

Launch (after the default run, trained at L = 128, is in /tmp/pe_rope):
  python train.py --workdir=/tmp/pe_rope_pi --config=configs/finetune.py \
      --config.init_from=/tmp/pe_rope \
      --config.rope_scaling='{"rope_type": "linear", "factor": 4}'
  python eval.py --workdir=/tmp/pe_rope_pi --lengths=128,256,512,1024

The model keys (pe, d_model, num_layers, num_heads, mlp_ratio) must match the base run's;
a mismatch is refused with the parameter shapes that differ. rope_max_position_embeddings
stays at the base model's length, so the rule scales relative to L = 128 as it did before
the fine-tune; llama3 dicts must name original_max_position_embeddings themselves (the
other rules fall back to rope_max_position_embeddings).

Expected on 2 shared CPU cores: 5-7k tokens/s at 512, so about two to three minutes. In
the extension job (100 of these steps, stdlib data) the loss at 512 fell from 2.79 to
1.95 nats/byte for linear and from 2.31 to 1.76 for plain RoPE (base at 128: 1.76).
"""

from configs import default

BASE_SEQ_LEN = 128  # the base run's training length (configs/default.py)
FACTOR = 4  # fine-tune length / base length


def get_config():
    c = default.get_config()
    c.init_from = ""  # the base workdir: required (set it with --config.init_from)
    c.rope_scaling = ""  # the extension rule, e.g. '{"rope_type": "linear", "factor": 4}'
    c.rope_max_position_embeddings = BASE_SEQ_LEN  # the rules measure against the base length

    # Training at the longer length, same tokens per step as the base run.
    c.seq_len = FACTOR * BASE_SEQ_LEN  # 512 bytes
    c.batch_size = 32 // FACTOR  # 8 sequences: 4096 tokens per step, as in the base run
    c.num_steps = 200  # optimizer steps
    c.learning_rate = 3e-4  # peak, a tenth of the base run's
    c.warmup_steps = 20  # short linear warm-up, then cosine decay to 10% of the peak
    c.checkpoint_every = 200  # one checkpoint, at the end
    return c
