"""A mid-sized run on one GPU: bfloat16 compute, float32 parameters and optimizer state.

Launch:
  python train.py --workdir=/tmp/pe_gpu --config=configs/gpu.py --config.pe=rope
  python eval.py --workdir=/tmp/pe_gpu --lengths=256,512,1024,2048,4096

For float16 instead (older GPUs without bfloat16), add
``--config.compute_dtype=float16 --config.loss_scale=dynamic``; a new workdir is needed
(dynamic loss scaling adds a field to the checkpoint). Several GPUs on one host:
``--config.mesh_data=-1`` splits the batch over all of them.
"""

from configs import default


def get_config():
    c = default.get_config()

    # Sharding and precision.
    c.mesh_data = 1  # one device
    c.compute_dtype = "bfloat16"

    # Model: 4 layers of width 256, head size 64.
    c.d_model = 256
    c.num_layers = 4
    c.num_heads = 4

    # Training.
    c.seq_len = 256
    c.batch_size = 64
    c.num_steps = 3000
    c.learning_rate = 2e-3
    c.warmup_steps = 100
    c.checkpoint_every = 500
    c.log_every = 100

    # Evaluation.
    c.eval_tokens = 1 << 16
    c.eval_batch_tokens = 1 << 15
    return c
