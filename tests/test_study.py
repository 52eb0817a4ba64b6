"""The study command: the TOML schema and its errors, the plan (selection on a held-out part of
train, replicates at the chosen rate, shards), the tables, and the committed smoke study run end to
end on the bundled default (resumed and re-run without retraining)."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tlora_analysis.cli import main
from tlora_analysis.experiments.config import TrainConfig
from tlora_analysis.experiments.data import hold_out, load_rotten_tomatoes
from tlora_analysis.study import StudyError, final_runs, load_study, selection_runs, shard
from tlora_analysis.study.plan import PlannedRun, lr_text
from tlora_analysis.study.results import check_recorded_lrs, choose_learning_rates, summary_table

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "studies" / "smoke" / "study.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


MINIMAL = """
[train]
max_steps = 4
[tasks.rotten_tomatoes]
[[arms]]
method = "tlora"
ranks = [4, 8]
lrs = [1e-2, 2e-2, 5e-2]
[[arms]]
method = "lora"
ranks = [4]
lrs = [1e-3]
[[arms]]
name = "full"
method = "full"
lrs = [2e-5, 5e-5]
[replicates]
seeds = [0, 1, 2]
"""


def test_plan_selects_on_held_out_train_then_replicates(tmp_path):
    study = load_study(_write(tmp_path, MINIMAL))
    select = selection_runs(study)
    assert len(select) == 2 * 3 + 2  # tlora 2 ranks × 3 lrs, full 2 lrs; lora has one lr: no selection
    assert all(r.fields["holdout"] == 0.1 and r.seed == 0 for r in select)
    assert select[0].name == "select/rotten_tomatoes/tlora-r4-lr1e-2"
    chosen = {("rotten_tomatoes", "tlora", 4): 2e-2, ("rotten_tomatoes", "tlora", 8): 1e-2,
              ("rotten_tomatoes", "full", None): 5e-5}
    final = final_runs(study, chosen)
    assert len(final) == (2 + 1 + 1) * 3
    assert {r.fields["lr"] for r in final if r.arm == "tlora" and r.rank == 4} == {2e-2}
    assert {r.fields["lr"] for r in final if r.arm == "lora"} == {1e-3}
    assert all(r.fields["holdout"] is None for r in final)
    config = final[0].config(study.runs_dir)
    assert isinstance(config, TrainConfig) and config.run_dir.endswith(final[0].name)
    assert len(final_runs(study, {})) == 3  # only the arm without a choice to make
    shards = [shard(final, i, 3) for i in (1, 2, 3)]
    assert sorted(r.name for s in shards for r in s) == sorted(r.name for r in final)
    assert not set(r.name for r in shards[0]) & set(r.name for r in shards[1])
    assert lr_text(2e-2) == "2e-2" and lr_text(5e-05) == "5e-5" and lr_text(1.5e-3) == "1.5e-3"


@pytest.mark.parametrize("text, message", [
    ("[tasks.rotten_tomatoes]\n", "no \\[\\[arms\\]\\]"),
    ("[[arms]]\nmethod='tlora'\nranks=[4]\nlrs=[1e-2]\n", "no \\[tasks.NAME\\]"),
    (MINIMAL.replace("max_steps = 4", "max_step = 4"), "train.max_step is not a training setting"),
    (MINIMAL.replace("max_steps = 4", "lr = 0.1"), "train.lr is set by the study itself"),
    (MINIMAL.replace("ranks = [4]\nlrs = [1e-3]", "lrs = [1e-3]"), "needs `ranks"),
    (MINIMAL.replace("lrs = [2e-5, 5e-5]", "lrs = [2e-5, 2e-5]"), "lists a value twice"),
    (MINIMAL.replace("lrs = [1e-3]", "lrs = []"), "non-empty list"),
    (MINIMAL.replace("max_steps = 4", "batch_size = 0"), "would be invalid: batch_size must be a positive"),
    (MINIMAL + "[extra]\n", "unknown key"),
    (MINIMAL + "[selection]\nholdot = 0.3\n", "unknown key.*holdot.*in \\[selection\\]"),
    (MINIMAL.replace("seeds = [0, 1, 2]", "seeds = [0, 1, 2]\nsead = 5"), "unknown key.*sead.*in \\[replicates\\]"),
    ("selection = 0.3\n" + MINIMAL, "`selection` must be a table"),
    (MINIMAL.replace("[tasks.rotten_tomatoes]", "[tasks.mrpc]\ndata_dir = '${NO_SUCH_VAR_FOR_TESTS}/MRPC'"),
     "NO_SUCH_VAR_FOR_TESTS.*not set"),
    ("name = [", "not valid TOML"),
    (MINIMAL.replace("lrs = [1e-3]", "lrs = [1e-3]\ntasks = ['mrpc']"), "no \\[tasks.NAME\\] table for"),
    (MINIMAL.replace("lrs = [1e-3]", "lrs = [1e-3]\ntasks = 'rotten_tomatoes'"), "list of task names"),
])
def test_bad_study_files_are_named(tmp_path, text, message):
    with pytest.raises(StudyError, match=message):
        load_study(_write(tmp_path, text))


def test_an_arm_runs_only_on_its_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUE_FOR_TEST", str(tmp_path / "glue"))
    text = MINIMAL.replace("[tasks.rotten_tomatoes]", "[tasks.rotten_tomatoes]\n[tasks.mrpc]\n"
                           "data_dir = '${GLUE_FOR_TEST}/MRPC'").replace("ranks = [4, 8]", "ranks = [4, 8]\n"
                                                                        "tasks = ['mrpc']")
    study = load_study(_write(tmp_path, text))
    select = selection_runs(study)
    assert {(r.task, r.arm) for r in select if r.arm == "tlora"} == {("mrpc", "tlora")}
    assert len(select) == 2 * 3 + 2 * 2  # tlora on mrpc only; full on both tasks
    final = final_runs(study, {("mrpc", "tlora", 4): 1e-2, ("mrpc", "tlora", 8): 1e-2,
                               ("rotten_tomatoes", "tlora", 4): 1e-2})
    assert {r.task for r in final if r.arm == "tlora"} == {"mrpc"}
    more_ranks = text + "[[arms]]\nmethod = 'lora'\nranks = [16]\nlrs = [1e-3]\ntasks = ['mrpc']\n"
    runs = final_runs(load_study(_write(tmp_path, more_ranks)), {})
    assert {(r.task, r.rank) for r in runs if r.arm == "lora"} == {("rotten_tomatoes", 4), ("mrpc", 4), ("mrpc", 16)}
    for extra, message in (("ranks = [4]\nlrs = [1e-3]\n", "plans rotten_tomatoes at rank 4 twice"),
                           ("ranks = [16]\nlrs = [1e-3]\ndropout = 0.1\n", "differ in method or settings")):
        with pytest.raises(StudyError, match=message):
            load_study(_write(tmp_path, text + "[[arms]]\nmethod = 'lora'\n" + extra))


def test_environment_variables_expand(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUE_FOR_TEST", str(tmp_path / "glue"))
    text = MINIMAL.replace("[tasks.rotten_tomatoes]", "[tasks.mrpc]\ndata_dir = '${GLUE_FOR_TEST}/MRPC'")
    study = load_study(_write(tmp_path, text))
    assert study.tasks["mrpc"]["data_dir"] == str(tmp_path / "glue" / "MRPC")


def test_hold_out_takes_whole_movies_and_leaves_validation_out():
    """Rotten Tomatoes is split by movie: the held-out part is whole movies of train, as validation is."""
    task = load_rotten_tomatoes()
    held = hold_out(task, 0.1, seed=3)
    train, val, rest = task.splits["train"], held.splits["validation"], held.splits["train"]
    assert set(held.splits) == {"train", "validation"} and len(rest) + len(val) == len(train)
    assert not set(val["movie_name"]) & set(rest["movie_name"])
    per_movie = train["movie_name"].value_counts()
    held_counts = val["movie_name"].value_counts()
    assert (held_counts == per_movie[held_counts.index]).all()  # whole movies
    assert abs(len(val) - 0.1 * len(train)) <= per_movie.max()  # cut at a movie's edge
    assert held.info["holdout"]["grouped_by"] == "movie_name"
    assert hold_out(task, 0.1, seed=3).splits["validation"].equals(val)
    with pytest.raises(ValueError, match="holdout must be a fraction"):
        TrainConfig(holdout=1.5)


def test_hold_out_without_groups_keeps_each_class_s_share():
    task = load_rotten_tomatoes()
    plain = dataclasses.replace(task, info={k: v for k, v in task.info.items() if k != "grouped_by"})
    held = hold_out(plain, 0.1, seed=3)
    train, val = task.splits["train"], held.splits["validation"]
    assert abs(len(val) - 0.1 * len(train)) <= 2
    for label, count in train["label"].value_counts().items():  # each class rounded on its own
        assert (val["label"] == label).sum() == round(0.1 * count)
    assert held.info["holdout"]["grouped_by"] is None


def _planned(rank: int, lr: float, phase: str = "select", seed: int = 0) -> PlannedRun:
    name = f"{phase}/t/a-r{rank}-lr{lr_text(lr)}" if phase == "select" else f"final/t/a-r{rank}-s{seed}"
    return PlannedRun(phase, "t", "a", "tlora", rank, lr, seed, name, {})


def test_learning_rate_choice_and_summary_intervals():
    planned = [_planned(4, lr) for lr in (1e-2, 2e-2, 5e-2)] + [_planned(8, 1e-2)]
    selection = pd.DataFrame({"task": "t", "arm": "a", "rank": [4, 4, 4, 8], "lr": [1e-2, 2e-2, 5e-2, 1e-2],
                              "run": [p.name for p in planned], "best_value": [0.70, 0.75, 0.75, np.nan]})
    chosen, table = choose_learning_rates(selection, planned)
    assert chosen == {("t", "a", 4): 2e-2}  # the tie goes to the smaller rate; rank 8 has no finite value
    assert table["chosen"].tolist() == [False, True, False, False]
    # a group whose planned runs have not all finished is not chosen, even when the finished ones agree
    waiting, _ = choose_learning_rates(selection.iloc[[0, 1, 3]], planned)
    assert waiting == {}
    final = pd.DataFrame({"task": "t", "arm": "a", "method": "tlora", "rank": 4, "lr": 2e-2, "metric": "accuracy",
                          "trainable_params": 100, "majority_baseline": 0.5, "best_value": [0.7, 0.8, 0.75],
                          "last_value": [0.6, 0.7, 0.65], "step_seconds": [0.1, 0.2, 0.3],
                          "peak_memory_gib": np.nan, "seed": [0, 1, 2]})
    row = summary_table(final).iloc[0]
    lo, hi = stats.t.interval(0.95, 2, loc=0.75, scale=stats.sem([0.7, 0.8, 0.75]))
    assert row["best_value_mean"] == pytest.approx(0.75) and (row["best_value_ci_lo"], row["best_value_ci_hi"]) == \
        pytest.approx((lo, hi))
    assert row["seeds"] == 3 and row["step_seconds_median"] == pytest.approx(0.2)


def test_tables_phase_remakes_the_tables_from_results_csv_alone(tmp_path, capsys):
    from tlora_analysis.study.results import RESULT_COLUMNS

    toml = _write(tmp_path, MINIMAL)
    study = load_study(toml)
    assert main(["study", str(toml), "--phase", "tables"]) == 1  # nothing summarised yet: named, no traceback
    assert "results.csv does not exist" in capsys.readouterr().err
    rng = np.random.default_rng(0)
    select = selection_runs(study)
    rows = [{"phase": "select", "task": r.task, "arm": r.arm, "method": r.method, "rank": r.rank, "lr": r.lr,
             "seed": r.seed, "run": r.name, "metric": "accuracy", "best_value": rng.uniform(0.6, 0.8)} for r in select]
    final = final_runs(study, {(r.task, r.arm, r.rank): r.lr for r in select})  # names do not depend on the rate
    rows += [{"phase": "final", "task": r.task, "arm": r.arm, "method": r.method, "rank": r.rank, "lr": r.lr,
              "seed": r.seed, "run": r.name, "metric": "accuracy", "trainable_params": 100, "best_value": v + 0.01,
              "last_value": v, "majority_baseline": 0.5, "step_seconds": 0.1}
             for r, v in zip(final, rng.uniform(0.6, 0.8, len(final)))]
    results_dir = study.runs_dir.parent / "results"
    results_dir.mkdir()
    pd.DataFrame(rows, columns=list(RESULT_COLUMNS)).to_csv(results_dir / "results.csv", index=False)
    assert main(["study", str(toml), "--phase", "tables"]) == 0
    contrasts = pd.read_csv(results_dir / "contrasts.csv")
    assert set(contrasts["test"]) == {"paired t"} and len(contrasts) == 2 * 4  # tlora r4 vs lora r4; 3 vs full
    summary = (results_dir / "summary.md").read_text()
    assert "Incomplete" not in summary and "final, mean [95% CI]" in summary
    assert "held out (selection.csv) where an arm lists several" in summary  # lora's one rate is the file's
    assert (results_dir / "figures" / "metric_vs_parameters.png").is_file() and not study.runs_dir.exists()
    pd.DataFrame(rows[:-1], columns=list(RESULT_COLUMNS)).to_csv(results_dir / "results.csv", index=False)
    assert main(["study", str(toml), "--phase", "tables"]) == 0
    assert "Incomplete" in (results_dir / "summary.md").read_text()


def test_a_replicate_trained_at_another_rate_is_refused(tmp_path):
    run = tmp_path / "final/t/a-r4-s0"
    run.mkdir(parents=True)
    (run / "run.json").write_text('{"status": "complete", "hyperparameters": {"lr": 0.02}}')
    check_recorded_lrs(tmp_path, [_planned(4, 2e-2, "final")])  # the same rate: nothing to say
    with pytest.raises(StudyError, match=r"final/t/a-r4-s0 \(trained at 0.02, chosen now 0.05\).*delete"):
        check_recorded_lrs(tmp_path, [_planned(4, 5e-2, "final")])


@pytest.mark.slow
def test_smoke_study_runs_end_to_end_and_continues(tmp_path):
    """The committed smoke study: selection, replicates, tables, figures and the claims report; a second
    call trains nothing; a deleted run is trained again; a shard trains only its share."""
    folder = tmp_path / "smoke"
    folder.mkdir()
    shutil.copy(SMOKE, folder / "study.toml")
    assert main(["study", str(folder / "study.toml")]) == 0
    results = folder / "results"
    table = pd.read_csv(results / "results.csv")
    assert set(table["phase"]) == {"select", "final"} and len(table[table["phase"] == "final"]) == 4
    selection = pd.read_csv(results / "selection.csv")
    assert selection["chosen"].sum() == 1
    summary = pd.read_csv(results / "summary.csv")
    assert set(summary["arm"]) == {"tlora", "lora"} and (summary["seeds"] == 2).all()
    assert (results / "figures" / "metric_vs_parameters.png").exists()
    assert (results / "figures" / "reachable_cosine_reachable.png").exists()
    # the runs kept their outputs: the contrast again over seeds × the validation examples, same point estimate
    examples, by_seeds = pd.read_csv(results / "contrasts_examples.csv"), pd.read_csv(results / "contrasts.csv")
    last = by_seeds[by_seeds["value"] == "last"].iloc[0]
    assert len(examples) == 1 and (examples["seeds"].iloc[0], examples["examples"].iloc[0]) == (2, 64)
    assert examples["difference"].iloc[0] == pytest.approx(last["difference"], abs=1e-12)
    assert "seeds × examples" in (results / "summary.md").read_text()
    claims = pd.read_csv(results / "claims" / "rotten_tomatoes" / "tlora-vs-lora-r4" / "claims.csv")
    assert "Needs replicate" not in claims.set_index("claim_id").loc["stable_norms", "detail"]  # two seeds each
    for claim in ("eigen_merged_faithful", "cosine_merged_faithful"):  # W0 referenced, read from the bundled model
        assert "Needs W0" not in str(claims.set_index("claim_id").loc[claim, "detail"])
    frozen = [folder / "runs" / p / "frozen.safetensors" for p in ("select/rotten_tomatoes/tlora-r4-lr1e-2",
                                                                    "select/rotten_tomatoes/tlora-r4-lr2e-2",
                                                                    "final/rotten_tomatoes/tlora-r4-s0")]
    assert frozen[0].stat().st_nlink == 3 and all(os.path.samefile(frozen[0], f) for f in frozen)  # seed 0: one file
    runs = folder / "runs" / "final" / "rotten_tomatoes"
    assert not (runs / "tlora-r4-s0" / "trainer_state").exists()  # weights are not kept by default
    before = (runs / "tlora-r4-s0" / "run.json").stat().st_mtime_ns
    shutil.rmtree(runs / "lora-r4-s1")
    assert main(["study", str(folder / "study.toml"), "--phase", "final"]) == 0
    assert (runs / "lora-r4-s1" / "run.json").exists()
    assert (runs / "tlora-r4-s0" / "run.json").stat().st_mtime_ns == before  # finished runs are skipped
    # claims reports in parallel processes are the reports written one after another
    from tlora_analysis.study.outputs import _claims

    final = table[table["phase"] == "final"]
    twice = pd.concat([final, final.assign(task="again")], ignore_index=True)
    study = load_study(folder / "study.toml")
    one = _claims(study, twice, tmp_path / "one", n_null=100, note=lambda _: None, jobs=1)
    two = _claims(study, twice, tmp_path / "two", n_null=100, note=lambda _: None, jobs=2)
    assert [p.relative_to(tmp_path / "two") for p in two] == [p.relative_to(tmp_path / "one") for p in one]
    for a, b in zip(one, two):
        pd.testing.assert_frame_equal(pd.read_csv(a.parent / "claims.csv"), pd.read_csv(b.parent / "claims.csv"))


def test_no_run_starts_after_the_deadline(tmp_path):
    from tlora_analysis.study.execute import execute

    study = load_study(_write(tmp_path, MINIMAL))
    outcomes = execute(study, selection_runs(study)[:2], deadline=0.0, report=lambda _: None)
    assert [o.status for o in outcomes] == ["postponed", "postponed"]
    assert not (study.runs_dir / "select").exists()


def test_contrasts_pair_shared_seeds_and_match_by_hand():
    from tlora_analysis.study.contrasts import contrast_table

    rows = []
    values = {("tlora", 8.0, "tlora"): [0.70, 0.72, 0.71], ("lora-xs", 8.0, "lora-xs"): [0.75, 0.79, 0.74],
              ("lora", 16.0, "lora"): [0.80, 0.82, 0.81, 0.83], ("full", math.nan, "full"): [0.80, 0.80, 0.86]}
    seeds = {"full": [5, 6, 7]}  # full fine-tuning shares no seed with the others: Welch
    for (arm, rank, method), vals in values.items():
        rows += [{"task": "t", "arm": arm, "rank": rank, "method": method, "seed": s, "best_value": v,
                  "last_value": v - 0.01} for s, v in zip(seeds.get(arm, range(len(vals))), vals)]
    table = contrast_table(pd.DataFrame(rows))
    best = table[table["value"] == "best"]
    # equal ranks (tlora r8 vs lora-xs r8) and every arm against full; lora r16 has no equal-rank partner
    assert {(r.first, r.second) for r in best.itertuples()} == {
        ("tlora r8", "lora-xs r8"), ("tlora r8", "full"), ("lora-xs r8", "full"), ("lora r16", "full")}
    # seeds 0, 1, 2 in both arms: the paired t over seed-matched differences
    row = best[(best["first"] == "tlora r8") & (best["second"] == "lora-xs r8")].iloc[0]
    d = np.array(values[("tlora", 8.0, "tlora")]) - np.array(values[("lora-xs", 8.0, "lora-xs")])
    se = d.std(ddof=1) / math.sqrt(3)
    assert row["test"] == "paired t" and row["difference"] == pytest.approx(d.mean(), abs=1e-12)
    assert (row["ci_lo"], row["ci_hi"]) == pytest.approx((d.mean() - stats.t.ppf(0.975, 2) * se,
                                                           d.mean() + stats.t.ppf(0.975, 2) * se))
    assert row["p_value"] == pytest.approx(2 * stats.t.sf(abs(d.mean() / se), 2))
    # no shared seed: Welch over all runs
    row = best[(best["first"] == "lora r16") & (best["second"] == "full")].iloc[0]
    a, b = np.array(values[("lora", 16.0, "lora")]), np.array(values[("full", math.nan, "full")])
    va, vb = a.var(ddof=1) / 4, b.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)  # Welch–Satterthwaite
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    assert row["test"] == "Welch" and (row["first_seeds"], row["second_seeds"]) == (4, 3)
    assert row["difference"] == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    assert (row["ci_lo"], row["ci_hi"]) == pytest.approx((a.mean() - b.mean() - half, a.mean() - b.mean() + half))
    assert row["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), df))
    ps = best["p_value"].to_numpy()
    order = np.argsort(ps)
    holm_by_hand = np.minimum(np.maximum.accumulate((4 - np.arange(4)) * ps[order]), 1)
    assert best["p_holm"].to_numpy()[order] == pytest.approx(holm_by_hand)
    assert set(table["value"]) == {"best", "last"}


def test_paired_contrasts_keep_their_false_positive_rate_when_a_seed_moves_both_arms():
    """Both arms share each seed's effect (head, batch order) and differ by nothing else: at α = 0.05 the paired
    test rejects in 5% of studies; Welch's, which takes the shared effect for noise, rejects far less often."""
    from tlora_analysis.study.contrasts import contrast_table

    rng = np.random.default_rng(0)
    rows, welch = [], []
    for study in range(400):  # one task per simulated study
        seed_effect = rng.normal(0, 0.02, 3)
        runs = {arm: 0.7 + seed_effect + rng.normal(0, 0.005, 3) for arm in ("tlora", "lora")}
        rows += [{"task": study, "arm": arm, "rank": 8.0, "method": arm, "seed": s, "best_value": v[s]}
                 for arm, v in runs.items() for s in range(3)]
        welch.append(stats.ttest_ind(runs["tlora"], runs["lora"], equal_var=False).pvalue < 0.05)
    table = contrast_table(pd.DataFrame(rows), values=("best_value",))
    assert len(table) == 400 and set(table["test"]) == {"paired t"}
    rejected = table["p_value"].to_numpy() < 0.05
    assert abs(np.mean(rejected) - 0.05) < 3 * math.sqrt(0.05 * 0.95 / 400)
    assert np.mean(welch) < 0.01


def test_example_contrasts_pair_seeds_and_examples_and_need_one_split(monkeypatch, tmp_path):
    """Runs' final outputs (value, pseudo-values, labels) stand in for run folders: pairs with two shared seeds whose
    runs all kept outputs are tested by crossed_t on seed-matched differences, Holm within the task; a run scored on
    other labels is refused by name."""
    from tlora_analysis.stats import crossed_t
    from tlora_analysis.study import contrasts

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 20)
    kept = {}
    rows = []
    for arm, method, rank, seeds in (("tlora", "tlora", 8.0, [0, 1, 2]), ("lora", "lora", 8.0, [0, 1, 2]),
                                     ("lora-xs", "lora-xs", 8.0, [0, 1]), ("full", "full", math.nan, [0, 1, 2])):
        for seed in seeds:
            name = f"final/t/{arm}-s{seed}"
            right = (rng.uniform(size=20) < 0.7).astype(float)
            kept[name] = None if (arm, seed) == ("lora-xs", 1) else (right.mean(), right, labels)
            rows.append({"task": "t", "arm": arm, "rank": rank, "method": method, "seed": seed, "run": name,
                         "metric": "accuracy", "last_value": right.mean()})
    monkeypatch.setattr(contrasts, "_final_outputs", lambda run_dir, metric: kept[str(run_dir.relative_to(tmp_path))])
    table = contrasts.example_contrast_table(pd.DataFrame(rows), tmp_path)
    # lora-xs kept outputs for one seed only: its pairs are left out
    assert [(r.first, r.second) for r in table.itertuples()] == [("tlora r8", "lora r8"), ("tlora r8", "full"),
                                                                 ("lora r8", "full")]
    row = table.iloc[0]
    first = np.stack([kept[f"final/t/tlora-s{s}"][1] for s in range(3)])
    second = np.stack([kept[f"final/t/lora-s{s}"][1] for s in range(3)])
    expected = crossed_t((first - second).mean(axis=1), first - second)
    assert (row["seeds"], row["examples"], row["metric"]) == (3, 20, "accuracy")
    assert (row["difference"], row["se"], row["p_value"]) == pytest.approx((expected.estimate, expected.se,
                                                                            expected.p_value))
    ps = table["p_value"].to_numpy()
    order = np.argsort(ps)
    assert table["p_holm"].to_numpy()[order] == pytest.approx(np.minimum(np.maximum.accumulate((3 - np.arange(3))
                                                                                               * ps[order]), 1))
    kept["final/t/full-s2"] = (0.5, np.zeros(20), 1 - labels)
    with pytest.raises(StudyError, match="final/t/full-s2 was scored on other validation labels"):
        contrasts.example_contrast_table(pd.DataFrame(rows), tmp_path)


def test_band_curves_colour_by_arm_dash_by_rank_and_legend_every_panel():
    from tlora_analysis.figures.study import band_curves

    rows = []
    for panel, line, group, method in (("a", "tlora r8", "tlora", "tlora"), ("a", "tlora r16", "tlora", "tlora"),
                                       ("a", "lora r8", "lora", "lora"), ("b", "vera r256", "vera", "vera")):
        rows += [{"panel": panel, "line": line, "group": group, "method": method, "step": s, "mean": 0.5 + s / 100,
                  "lo": 0.4, "hi": 0.6} for s in (1, 2, 3)]
    fig = band_curves(pd.DataFrame(rows), "accuracy", "title")
    lines = {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines()}
    assert lines["tlora r8"].get_color() == lines["tlora r16"].get_color() != lines["lora r8"].get_color()
    assert lines["tlora r8"].get_linestyle() != lines["tlora r16"].get_linestyle()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["tlora r8", "tlora r16", "lora r8", "vera r256"]


def test_metric_vs_parameters_labels_ranks_once():
    from tlora_analysis.figures.study import metric_vs_parameters

    rows = [{"task": t, "arm": arm, "method": method, "rank": rank, "metric": "accuracy", "trainable_params": n,
             "last_value_mean": 0.7, "last_value_ci_lo": 0.6, "last_value_ci_hi": 0.8, "majority_baseline": 0.5}
            for t in ("a", "b") for arm, method, rank, n in (("tlora", "tlora", 8, 1550), ("tlora", "tlora", 16, 3854),
                                                           ("vera", "vera", 256, 8450), ("full", "full", math.nan, 2e7))]
    fig = metric_vs_parameters(pd.DataFrame(rows))
    assert sorted(t.get_text() for t in fig.legends[0].get_texts()) == ["full", "majority class", "tlora", "vera r256"]
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["r16", "r8"]  # only the arm with several ranks
    assert sorted(t.xyann[1] for t in fig.axes[0].texts) == [-3, 3]  # neighbouring ranks: one above, one below
    assert fig.axes[0].get_ylabel() == "final validation accuracy"  # the end of training, not a picked evaluation


def test_identical_curves_are_drawn_once_under_both_names():
    """Two arms with the same curve in a panel (LoRA's reachable fraction for TLoRA arms sharing A and C)
    become one line named after both; curves that differ anywhere, or sit in other panels, stay apart."""
    from tlora_analysis.study.dynamics import _merge_identical_lines

    def curve(panel, line, means):
        return [{"panel": panel, "line": line, "group": line.split()[0], "method": "tlora", "step": s, "mean": m,
                 "lo": m - 0.1, "hi": m + 0.1, "seeds": 3} for s, m in zip((1, 2, 3), means)]

    frame = pd.DataFrame(curve("a", "tlora r8 vs lora", [1.0, 0.9, 1.1])
                         + curve("a", "tlora-drop0.5 r8 vs lora", [1.0, 0.9, 1.1])
                         + curve("a", "tlora r16 vs lora", [1.0, 0.9, 1.1000001])
                         + curve("b", "tlora-drop0.5 r8 vs lora", [1.0, 0.9, 1.1]))
    merged = _merge_identical_lines(frame)
    lines = merged.groupby("panel")["line"].unique().map(list).to_dict()
    assert lines == {"a": ["tlora r8 vs lora = tlora-drop0.5 r8 vs lora", "tlora r16 vs lora"],
                     "b": ["tlora-drop0.5 r8 vs lora"]}
    assert len(merged) == 9 and merged[merged["line"].str.contains("=")]["group"].unique().tolist() == ["tlora"]


def test_the_committed_study_s_recomputed_claims_match_their_script():
    """results/claims_recomputed.csv (the README's claims rows) is what recompute_claims.py gives from the
    reports' own tables with the package's current tests; the script also checks it reproduces each
    report's pooled p-value, so a reconstruction error fails here."""
    import importlib.util

    folder = Path(__file__).resolve().parents[1] / "studies" / "minilm-glue"
    spec = importlib.util.spec_from_file_location("recompute_claims", folder / "recompute_claims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = pd.read_csv(folder / "results" / "claims_recomputed.csv")
    pd.testing.assert_frame_equal(module.recompute(), committed, check_exact=False, rtol=1e-9)
    cell = committed.set_index(["report", "claim_id"]).loc[("mrpc/tlora-vs-lora-r16", "reachable_fraction")]
    assert cell["reported_decision"] == "supported" and cell["decision"] == "not supported"


def test_the_committed_seed_study_parses_and_its_two_tests_share_their_estimate():
    folder = ROOT / "studies" / "minilm-rt-seeds"
    study = load_study(folder / "study.toml")
    assert [r.name for r in selection_runs(study)] == []  # one rate per arm: nothing to choose
    assert len(final_runs(study, {})) == 6
    by_seeds = pd.read_csv(folder / "results" / "contrasts.csv").query("value == 'last'").iloc[0]
    examples = pd.read_csv(folder / "results" / "contrasts_examples.csv").iloc[0]
    assert (examples["seeds"], examples["examples"]) == (3, 1278)
    assert examples["difference"] == pytest.approx(by_seeds["difference"], abs=1e-12)
    assert examples["ci_hi"] - examples["ci_lo"] > by_seeds["ci_hi"] - by_seeds["ci_lo"]
