"""The config's keys of the run as a whole: seed, logging and checkpoint
cadence, gradient accumulation and recomputation (`train` section), device loop, precision
and determinism (`runtime`), which the trainer, the loops and the drivers
apply."""

from effnetv2_tf import settings
from effnetv2_tf.settings import Setting


def _divides_batch(value, section):
  """A `Setting` check of train.grad_accum_steps: >= 1 and a divisor of
  train.batch_size (the per-replica batch's, with the replicas known, is
  the trainer's `check_batches`)."""
  if value < 1:
    return False
  if section.batch_size % value:
    raise ValueError(f"a divisor of train.batch_size={section.batch_size} "
                     "(equal micro-batches on every replica)")
  return True


TRAIN_SETTINGS = (
    Setting("seed", 0, int, "seed of the input order, augmentation and "
            "random-resize draws (of every random op with deterministic)"),
    Setting("keep_checkpoints", 5, int, "checkpoints kept",
            **settings.at_least(1)),
    Setting("checkpoint_every", None, int, "steps between checkpoints",
            fills="once per stage",
            **settings.at_least(1, ", or null (once per stage)")),
    Setting("checkpoint_minutes", 10.0, float, "minutes of wall time "
            "between checkpoints (saved at the first device call's end past "
            "them), besides stage ends and checkpoint_every; 0: off",
            **settings.at_least(0)),
    Setting("keep_best", False, bool, "also keep the checkpoint of the best "
            "evaluation so far (top-1) in <model_dir>/best/, for "
            "--checkpoint=best (eval, export)"),
    Setting("log_every", 100, int, "steps between progress lines, at "
            "most (fewer in a short run or a slow one: "
            "run_log.progress_due)",
            **settings.at_least(1)),
    Setting("grad_accum_steps", 1, int, "micro-batches per optimizer step "
            "(gradient accumulation, timm's --grad-accum-steps): "
            "train.batch_size stays each step's global batch; activation "
            "memory and batch norm's statistics are a micro-batch's "
            "(batch_size / replicas / grad_accum_steps images)",
            valid=">= 1, dividing train.batch_size / replicas",
            check=_divides_batch),
    Setting("recompute", False, bool, "recompute the stem's and each "
            "block's activations in the backward pass instead of keeping "
            "them (gradient checkpointing, models/recompute.py): the same "
            "gradients, batch-norm and stochastic-depth updates, for about "
            "one more forward pass (benchmarks/README.md, memory)"),
)
RUNTIME_SETTINGS = (
    Setting("steps_per_loop", 100, int, "train steps per device call "
            "(--steps_per_loop)", **settings.at_least(1)),
    Setting("mixed_precision", False, bool, "bfloat16 (TPU, CPU) or float16 "
            "(GPU) compute (--mixed_precision)"),
    Setting("deterministic", False, bool, "seeded randomness and "
            "deterministic ops (--deterministic)"),
)
