"""``python -m tlora_analysis.study.worker REQUEST.json``: train one planned run in its own process.

The request holds the run's TrainConfig fields and whether to keep its weights; the study's
executor starts one worker per run when it trains several runs at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .execute import train_planned


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tlora_analysis.study.worker REQUEST.json", file=sys.stderr)
        return 2
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    train_planned(request["fields"], bool(request["keep_weights"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
