"""The claims report: each of the TLoRA paper's claims as a stated test at one level α, with
method-aware nulls and replicate runs as the run-to-run null (docs/statistics.md)."""

from .claims import CLAIM_IDS, ClaimsReport, evaluate_claims
from .render import report_html, report_markdown, write_report
from .replicates import ReplicateError
from .verdict import CLAIM_COLUMNS, DECISIONS, LAYER_COLUMNS

__all__ = ["CLAIM_COLUMNS", "CLAIM_IDS", "ClaimsReport", "DECISIONS", "LAYER_COLUMNS", "ReplicateError",
           "evaluate_claims", "report_html", "report_markdown", "write_report"]
