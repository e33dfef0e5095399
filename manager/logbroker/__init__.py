"""The log broker: service and task logs read on the nodes that run the tasks, through the leader."""

from manager.logbroker.broker import LogBroker, SessionMessenger, Subscription
from manager.logbroker.channel import ChannelEnded
from manager.logbroker.types import LogItem, LogOptions, LogRecord, LogSelector, LogWarning

__all__ = ["ChannelEnded", "LogBroker", "LogItem", "LogOptions", "LogRecord", "LogSelector", "LogWarning",
           "SessionMessenger", "Subscription"]
