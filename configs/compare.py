"""The main job: every core scheme, same model, data, seed and steps, then evaluated at
1, 2, 4, 8 and 16 times the training length.

Launch:
  python train.py --workdir=/tmp/pe_compare --config=configs/compare.py
  (choose schemes with --config.schemes=rope,alibi ; any registered name works)

Writes W/<scheme>/ (checkpoints, metrics, eval.json) and W/comparison.{md,json,png}.
A rerun with the same workdir resumes unfinished schemes and skips finished ones.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.job = "compare"
    c.schemes = "none,sinusoidal,learned,rope,alibi,t5"  # comma-separated registry names
    c.eval_multiples = "1,2,4,8,16"  # evaluation lengths, as multiples of seq_len
    return c
