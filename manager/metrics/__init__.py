"""What a manager reports to Prometheus: event-fed families (raft, scheduler, dispatcher) and a
scrape-time collector of the replicated state. Both register into a registry the daemon owns."""

from manager.metrics.collector import ManagerCollector, ManagerView
from manager.metrics.families import ManagerMetrics, TimedProposer

__all__ = ["ManagerCollector", "ManagerMetrics", "ManagerView", "TimedProposer"]
