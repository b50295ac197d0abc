"""tidings: self-hosted notification delivery that never loses one.

A producer hands a notification to tidings over HTTP; tidings answers only once
it is durable, then delivers it signed, retries it, and lets an operator replay
anything that failed.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
