"""Training and matched-budget comparison with Lightning (the ``seqarch`` command line).

``seqarch train CONFIG`` trains one model; ``seqarch compare CONFIG`` trains every
architecture a config lists at the same parameter count or training FLOPs.
"""

from .compare import compare, plan_comparison
from .config import ConfigError, RunConfig, load_config, validate
from .result import RunResult
from .run import train_run

__all__ = ["ConfigError", "RunConfig", "RunResult", "compare", "load_config", "plan_comparison", "train_run",
           "validate"]
