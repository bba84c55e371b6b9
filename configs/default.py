"""Train one small byte-level decoder with one positional scheme.

Launch:
  python train.py --workdir=/tmp/pe_rope --config=configs/default.py --config.pe=rope
  python eval.py --workdir=/tmp/pe_rope --lengths=128,256,512,1024,2048

Expected on 2 idle CPU cores: about a minute and a half of training (~28K tokens/s);
training loss near 1.5 and held-out loss near 1.76 nats/byte for RoPE at the training
length on the standard-library corpus (the unigram baseline is 3.40 on the same bytes).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # Job.
    c.job = "train"  # "train": one model; "compare": the main job (configs/compare.py);
    # "extension": RoPE context extension (configs/extension.py)
    c.seed = 0  # parameter init and batch sampling
    c.init_from = ""  # workdir whose latest params start a fresh run (fine-tune); "" = random init

    # Data.
    c.data = "stdlib"  # "stdlib", "text:PATH" or "tfds:NAME"
    c.data_text_key = "text"  # tfds feature holding the text
    c.data_dir = ""  # tfds data_dir ("" = tfds default)

    # Positional scheme: one key picks it; the options below belong to single schemes.
    c.pe = "rope"  # see `pe_jax.schemes.names()`
    c.rope_theta = 10000.0  # RoPE base
    c.rope_layout = "half"  # "half" (NeoX) or "interleaved" (GPT-J)
    c.rope_fraction = 1.0  # fraction of each head's dims that rotate
    c.rope_scaling = ""  # Hugging Face rope_scaling dict as JSON ("" = plain RoPE)
    c.rope_max_position_embeddings = 0  # context the scaling rules measure against (0 = seq_len)
    c.sin_base = 10000.0  # sinusoidal base
    c.sin_layout = "interleaved"  # "interleaved" (paper) or "concat"
    # rope / sinusoidal: "float32" always; "bfloat16" builds angles and tables in bfloat16,
    # a fault other code has shipped, kept only to measure it (report.py, claim 24).
    c.pe_table_dtype = "float32"
    c.learned_max_len = 0  # rows of the learned table (0 = seq_len)
    c.t5_num_buckets = 32  # T5 relative buckets
    c.t5_max_distance = 128  # T5: distances past this share the last bucket
    c.shaw_clip = 128  # Shaw: k, relative distances beyond +-k share the edge row
    c.shaw_values = False  # Shaw: also add relative value embeddings a^V
    c.deberta_buckets = 64  # DeBERTa: S buckets (exact up to S/2); table has 2S rows
    c.deberta_max_position = 512  # DeBERTa: distance where log buckets reach S
    c.cope_npos = 64  # CoPE: rows of e; counted positions are capped at cope_npos - 1
    c.xpos_scale_base = 512.0  # xPos: B, per-pair q.k factor zeta^((n - m) / B); also reads rope_*
    c.sin_gain_init = 1.0  # scaled_sinusoidal: initial learned gain (x-transformers: d_model**-0.5)
    c.fire_init_L = 0.0  # FIRE: threshold L at init, in positions (0 = seq_len; reference 512)
    c.fire_mlp_width = 32  # FIRE: hidden units of the 1 -> width -> heads MLP
    c.mrope_section = ""  # M-RoPE: "t,h,w" rotary pairs per axis ("" = 1/4, 3/8, 3/8 split)

    c.random_positions = False  # train on sorted random positions (Ruoss et al. 2023)
    c.random_positions_max = 1024  # ... drawn from 0..random_positions_max-1 (>= seq_len)

    # Model.
    c.d_model = 128  # width
    c.num_layers = 2  # decoder blocks
    c.num_heads = 4  # attention heads (head size d_model / num_heads)
    c.mlp_ratio = 4  # MLP width / d_model
    c.compute_dtype = "float32"  # float32, bfloat16 or float16 (params stay float32)

    # Sharding (pe_jax/sharding.py) and loss scaling.
    c.mesh_data = 1  # devices on the data axis: batch split (-1: all the others leave)
    c.mesh_fsdp = 1  # devices on the fsdp axis: batch and parameters' embed dim split
    c.mesh_tensor = 1  # devices on the tensor axis: heads, MLP units, vocabulary split
    c.logical_axis_rules = ()  # (logical name, mesh axes) pairs; () = sharding.DEFAULT_RULES
    c.multihost = False  # jax.distributed.initialize() first (also if JAX_NUM_PROCESSES > 1)
    c.loss_scale = "none"  # "dynamic": scale the loss for float16, skip non-finite steps
    c.loss_scale_init = 2.0**15  # initial dynamic loss scale
    c.loss_scale_period = 2000  # finite steps before the dynamic scale doubles

    # Training.
    c.seq_len = 128  # training length L, in bytes
    c.batch_size = 32  # sequences per step
    c.num_steps = 500  # optimizer steps
    c.learning_rate = 3e-3  # peak AdamW learning rate
    c.warmup_steps = 50  # linear warm-up, then cosine decay to 10% of the peak
    c.weight_decay = 0.01  # AdamW decoupled weight decay
    c.grad_clip = 1.0  # global gradient-norm clip
    c.checkpoint_every = 200  # steps between orbax checkpoints (and one at the end)
    c.log_every = 50  # steps between metric lines

    # Evaluation.
    c.eval_tokens = 32768  # held-out targets scored at every length (multiple of each)
    c.eval_batch_tokens = 16384  # tokens per evaluation batch
    return c
