"""Studies: a grid of training runs chosen and replicated properly, then summarised (docs/study.md).

``tlora-analysis study STUDY.toml`` reads the grid (:mod:`.spec`), plans the learning-rate
selection and replicate runs (:mod:`.plan`), trains what is not finished (:mod:`.execute`), and
writes the tables, figures and claims reports (:mod:`.results`, :mod:`.dynamics`, :mod:`.outputs`).
"""

from .plan import PlannedRun, final_runs, selection_runs, shard
from .spec import Arm, Study, StudyError, load_study

__all__ = ["Arm", "PlannedRun", "Study", "StudyError", "final_runs", "load_study", "selection_runs", "shard"]
