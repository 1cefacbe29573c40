"""`python -m aed_jax.main --config=configs/<run>.py [--config.<key>=<value> ...] [--workdir DIR]`.

Trains a config end to end; re-running the same command resumes from the workdir's latest
checkpoint. On a cluster, pass --distributed on every host (jax.distributed.initialize reads the
coordinator from SLURM or the JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID variables).
"""
import os

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from aed_jax import checkpoint
from aed_jax import cli
from aed_jax import config as config_lib
from aed_jax import data
from aed_jax import tokenizer
from aed_jax import train


def define_flags() -> None:
    """The command's flags; defined only when run as a command, so importing this module defines none."""
    cli.define_config_flag()
    flags.DEFINE_string("workdir", None, "Run folder (checkpoints, metrics.jsonl, TensorBoard events); "
                        "default: config.workdir, else runs/<config file name>.")
    flags.DEFINE_bool("fresh", False, "Delete the workdir's checkpoints and metrics and start over.")
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host runs).")
    flags.DEFINE_string("compilation_cache_dir", "~/.cache/aed_jax/jax",
                        "JAX's persistent compilation cache, so a resumed run loads its train step instead of "
                        "compiling it again, as does the run after micro_batch_size auto-sizing compiled it; "
                        "'' disables it. The JAX_COMPILATION_CACHE_DIR variable, when set, wins.")


def main(argv):
    cli.no_extra_args(argv)
    c = cli.get_config()
    fv = flags.FLAGS
    if fv.distributed:
        jax.distributed.initialize()
    if fv.compilation_cache_dir and not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(fv.compilation_cache_dir))
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0]
    workdir = fv.workdir or c.workdir or os.path.join("runs", name)
    logging.info("devices: %d x %s (%d processes); workdir %s", jax.device_count(), jax.devices()[0].device_kind,
                 jax.process_count(), workdir)
    try:
        est = train.train_and_evaluate(c, workdir, fresh=fv.fresh)
    except (train.TrainError, data.DataError, tokenizer.TokenizerError, checkpoint.CheckpointError,
            config_lib.ConfigError) as e:
        cli.fail(str(e))
    if est:
        print(f"final: train loss {est['train_loss']:.4f}, val loss {est['val_loss']:.4f} ({workdir})")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
