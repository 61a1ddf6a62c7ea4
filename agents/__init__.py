"""The built-in agents: distributed primitives folded from the log.

``Memory`` is the key-value memory: versions are log positions, compare-and-swap is decided
by the fold, TTL runs on event time, every read chooses its consistency, and every key can be
observed as a reactivex Observable.
"""

from agents._errors import RecordRejectedError, ViewFailedError
from agents._kv_batch import Batch, BatchResult
from agents._kv_check import Exported
from agents._kv_consistency import CausalContext, Consistency
from agents._kv_fold import Change, ChangeOp, Entry
from agents._kv_write import WriteResult
from agents._memory import Memory

__all__ = (
    "Batch",
    "BatchResult",
    "CausalContext",
    "Change",
    "ChangeOp",
    "Consistency",
    "Entry",
    "Exported",
    "Memory",
    "RecordRejectedError",
    "ViewFailedError",
    "WriteResult",
)
