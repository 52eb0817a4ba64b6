"""Recording: when to look at an adapter during training, and writing what was seen.

``SnapshotRecorder`` hooks any optimizer; ``RecorderCallback`` drives one from a Hugging Face
``Trainer``. Files follow docs/run-format.md and open with :class:`tlora_analysis.Run`.
"""

from .background import RecorderWriteError
from .recorder import SnapshotRecorder
from .schedule import EveryN, Explicit, LogSpaced, Schedule, as_schedule

__all__ = ["SnapshotRecorder", "RecorderCallback", "RecorderWriteError", "Schedule", "EveryN", "LogSpaced", "Explicit",
           "as_schedule"]


def __getattr__(name: str):
    if name == "RecorderCallback":  # transformers is imported only when the callback is wanted
        from .callback import RecorderCallback

        return RecorderCallback
    raise AttributeError(name)
