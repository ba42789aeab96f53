"""healerd as a cluster on PostgreSQL (docs/cluster.md): one leader with fencing, checks sharded over the live
nodes, confirmation from several vantage points, takeover from the journal."""

from .confirm import Confirmer, Verdict, probe
from .node import Cluster

__all__ = ["Cluster", "Confirmer", "Verdict", "probe"]
