"""Decisions of the claims reports under the report's current tests, from the committed tables alone.

The reports in results/claims/ were written by an earlier version of two tests, and the seed 1 and 2
runs they read are not in the repository, so they cannot be rerun here. Both decisions can be
recomputed exactly from what the reports kept:

- the alignment claims (`update_cosine`, `reachable_cosine`, `reachable_fraction`,
  `subspace_overlap`, `cosine_merged_faithful`) from claims_layers.csv: each layer's Monte-Carlo
  p = (k + 1)/(N + 1) gives its mid-rank z (continuous statistics have no ties), each pair's
  Stouffer Z over its layers, and the random-effects test over the pairs (docs/statistics.md);
  the pooled Stouffer p recomputed the same way must equal the report's own p, which checks the
  reconstruction;
- `stable_norms` from claims.csv: the report's interval is the t interval of the mean log change
  over the 3 seeds (2 df), so it gives the mean and its standard error, hence the t test.

Run as a script, it writes results/claims_recomputed.csv and prints it (tests/test_study.py checks
the committed file against `recompute()`):

    .venv/bin/python studies/minilm-glue/recompute_claims.py
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from tlora_analysis.stats import random_effects, stouffer

HERE = Path(__file__).resolve().parent
N_NULL = 2000  # the null draws per layer the study's reports used
ALPHA = 0.05
ALIGNMENT = ("update_cosine", "reachable_cosine", "reachable_fraction", "subspace_overlap", "cosine_merged_faithful")


def alignment_row(layers: pd.DataFrame, reported: pd.Series) -> dict:
    finite = layers[np.isfinite(layers["p_value"])]
    z = finite.assign(z=stats.norm.isf(finite["p_value"] - 0.5 / (N_NULL + 1)))
    pooled = stouffer(z["z"])
    if not math.isclose(pooled.pvalue, reported["p_value"], rel_tol=1e-6):
        raise ValueError(f"{reported['claim_id']}: pooled p {pooled.pvalue:.6g} does not reproduce the report's "
                         f"{reported['p_value']:.6g}")
    pairs = z.groupby("run_tlora", sort=False)["z"].apply(lambda x: stouffer(x).statistic)
    test = random_effects(pairs)
    rule = (f"random effects over the pairs' Stouffer Z ({', '.join(f'{v:.2f}' for v in pairs)}), Hartung–Knapp t "
            f"on {test.n - 1} df")
    return {"statistic": test.statistic, "p_value": test.pvalue, "rule": rule, "pooled_p": pooled.pvalue,
            "decision": "supported" if test.pvalue <= ALPHA else "not supported"}


def norms_row(reported: pd.Series, seeds: int = 3) -> dict:
    mean = math.log1p(reported["estimate"])
    se = (math.log1p(reported["ci_hi"]) - math.log1p(reported["ci_lo"])) / (2 * stats.t.ppf(0.975, seeds - 1))
    t = mean / se
    p = 2 * stats.t.sf(abs(t), seeds - 1)
    return {"statistic": t, "p_value": p, "rule": f"Student's t over the seeds' mean log changes, {seeds - 1} df",
            "pooled_p": math.nan, "decision": "not supported" if p <= ALPHA else "supported"}


def recompute() -> pd.DataFrame:
    """One row per (report, claim) of the alignment claims and stable_norms, beside what the report said."""
    rows = []
    for folder in sorted((HERE / "results" / "claims").glob("*/*")):
        claims = pd.read_csv(folder / "claims.csv").set_index("claim_id", drop=False)
        layers = pd.read_csv(folder / "claims_layers.csv")
        for claim in (*ALIGNMENT, "stable_norms"):
            reported = claims.loc[claim]
            new = (norms_row(reported) if claim == "stable_norms"
                   else alignment_row(layers[layers["claim_id"] == claim], reported))
            rows.append({"report": folder.relative_to(HERE / "results" / "claims").as_posix(), "claim_id": claim,
                         "estimate": reported["estimate"], "ci_lo": reported["ci_lo"], "ci_hi": reported["ci_hi"],
                         **new, "reported_p": reported["p_value"], "reported_decision": reported["decision"]})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    table = recompute()
    table.to_csv(HERE / "results" / "claims_recomputed.csv", index=False)
    with pd.option_context("display.width", 200, "display.max_colwidth", 30):
        print(table.drop(columns=["rule"]).to_string(index=False))
