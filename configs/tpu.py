"""A bigger run on a Colab TPU (v2-8 or v5e-8): bfloat16 compute, the batch split over
all 8 devices.

Launch (in a Colab TPU runtime, from the repository root):
  python train.py --workdir=/content/pe_tpu --config=configs/tpu.py --config.pe=rope
  python eval.py --workdir=/content/pe_tpu --lengths=512,1024,2048,4096,8192

Mesh: pure data parallelism (``mesh_data=-1`` takes every device), which suits a model
of this size (about 25M parameters, a few hundred MB of state). To try the other axes,
e.g. ``--config.mesh_data=2 --config.mesh_fsdp=2 --config.mesh_tensor=2``: fsdp splits
parameters and optimizer state along ``embed``, tensor splits heads, MLP and vocabulary
(see pe_jax/sharding.py). Parameters and optimizer state stay float32.

Not measured here (no TPU was available while writing it): time per step and the final
loss are to be filled in from a first run.
"""

from configs import default


def get_config():
    c = default.get_config()

    # Sharding and precision.
    c.mesh_data = -1  # all 8 devices (TPU v2-8: 8 cores; v5e-8: 8 chips)
    c.mesh_fsdp = 1
    c.mesh_tensor = 1
    c.compute_dtype = "bfloat16"  # TPU matrix units are bfloat16; no loss scaling needed

    # Model: 8 layers of width 512, head size 64.
    c.d_model = 512
    c.num_layers = 8
    c.num_heads = 8
    c.mlp_ratio = 4

    # Training: 64 sequences of 512 bytes per step, 8 per device.
    c.seq_len = 512
    c.batch_size = 64
    c.num_steps = 5000
    c.learning_rate = 1e-3
    c.warmup_steps = 200
    c.checkpoint_every = 1000
    c.log_every = 100

    # Evaluation.
    c.eval_tokens = 1 << 18  # a multiple of every length up to 2^18
    c.eval_batch_tokens = 1 << 16
    return c
