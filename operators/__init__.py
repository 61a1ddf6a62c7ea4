"""Reactive and stream operators: the asyncio <-> reactivex boundary, and what streams need.

``feed_observable`` turns a change feed into a reactivex Observable (every reactivex operator
works on it); ``ChangeBuffer`` is the bounded async side, with a named overflow policy.
"""

from operators._bridge import BufferOverflowError, ChangeBuffer, OverflowPolicy, feed_observable

__all__ = ("BufferOverflowError", "ChangeBuffer", "OverflowPolicy", "feed_observable")
