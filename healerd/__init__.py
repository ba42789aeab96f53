"""healerd: a self-healing monitoring daemon.

The names a check plugin author needs are re-exported here.
"""

from ._version import __version__
from .checks.base import Check, CheckEnv, CheckOptions
from .results import CheckResult, PerfDatum, Status
from .targets import Target

__all__ = ["Check", "CheckEnv", "CheckOptions", "CheckResult", "PerfDatum", "Status", "Target", "__version__"]
