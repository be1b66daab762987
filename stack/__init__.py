"""The full stack as native processes on loopback, under one supervisor (``lookalike stack``)."""

from stack.services import StackConfig, StackError
from stack.supervisor import Stack

__all__ = ["Stack", "StackConfig", "StackError"]
