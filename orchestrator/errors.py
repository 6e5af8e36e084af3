"""The sweep's errors, in a module that imports nothing else (no Ray), so that the code that runs
without Ray (``points``, ``gpucheck``'s in-process evaluator) can raise and catch them; everyone imports
them from here."""

from __future__ import annotations


class SweepError(RuntimeError):
    """The sweep could not finish; the message says which item or point and why."""


class WorkFailed(SweepError):
    """One model's work (an item or its profile) failed after its retries; other models can still run."""
