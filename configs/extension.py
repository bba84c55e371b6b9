"""RoPE context extension: one model trained at L = 128, evaluated at 1, 2, 4, 8 x L under
each scaling rule (none, linear, ntk, dynamic, yarn, llama3, longrope; factor 4), without
training and after a short fine-tune at 4 x L with the rule applied (configs/finetune.py's
learning rate, warm-up and tokens per step).

Launch:
  python train.py --workdir=/tmp/pe_ext --config=configs/extension.py
  (CPU smoke run: add --config.extension_quick=True)

Writes W/base (the RoPE model, with eval.json and eval_<rule>.json), W/ft_<method> (the
fine-tunes) and W/extension.{md,json}; logs the rules that beat plain RoPE at 4 x L. A
rerun resumes unfinished runs and skips finished ones.

Expected on 2 shared CPU cores: about 16 minutes (base training 5, each fine-tune with its
evaluation 1-1.5, zero-shot evaluations 3). Measured on stdlib: at 4 x L without
fine-tune, plain RoPE 2.31 nats/byte; ntk, dynamic, yarn, llama3, longrope 1.87-1.99;
linear 2.79. After the fine-tune every rule but linear is near 1.74 at 4 x L.
"""

from configs import default, finetune


def get_config():
    c = default.get_config()
    c.job = "extension"
    c.pe = "rope"  # the base model: plain RoPE (rope_scaling stays "")

    # Extension.
    c.extension_methods = "none,linear,ntk,dynamic,yarn,llama3,longrope"  # see pe_jax/extension.py
    c.extension_factor = finetune.FACTOR  # s: scaling factor and fine-tune length / L
    c.extension_multiples = "1,2,4,8"  # evaluation lengths, as multiples of seq_len
    c.extension_quick = False  # True: tiny model and a few steps (a smoke run, seconds)

    # Fine-tune (per method), from configs/finetune.py except the step count.
    ft = finetune.get_config()
    c.finetune_steps = 100  # optimizer steps at extension_factor x seq_len
    c.finetune_batch_size = ft.batch_size  # sequences per step (same tokens as the base run)
    c.finetune_learning_rate = ft.learning_rate  # peak learning rate
    c.finetune_warmup_steps = ft.warmup_steps  # linear warm-up steps
    return c
