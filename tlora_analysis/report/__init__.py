"""The claims report: the TLoRA paper's claims as a table with null baselines and verdicts."""

from .claims import CLAIM_COLUMNS, Claim, evaluate_claims
from .render import report_html, report_markdown, write_report

__all__ = ["CLAIM_COLUMNS", "Claim", "evaluate_claims", "report_html", "report_markdown", "write_report"]
