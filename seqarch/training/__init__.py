"""Training and matched-budget comparison with Lightning (the ``seqarch`` command line).

``seqarch train CONFIG`` trains one model; ``seqarch compare CONFIG`` trains every
architecture a config lists at the same parameter count or training FLOPs.  The names
below load on first use (see :mod:`seqarch.lazy`): the command line parses its
arguments before Lightning is imported.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "plan_comparison": ".compare", "ConfigError": ".config", "RunConfig": ".config",
    "load_config": ".config", "validate": ".config", "RunResult": ".result", "train_run": ".run",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = list(_EXPORTS)
