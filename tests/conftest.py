"""Test-wide settings: CPU only, strict rank promotion (shape bugs fail loudly), and a persistent
compilation cache shared with the subprocesses that tests start, since XLA's CPU compiles of the
train step dominate the suite's time and many tests compile the same small models."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
