"""The folder recipe labelled another way: a CSV of file names and labels (--labels), or the file names
themselves (--label-re). Real training on tiny drawn images, and each bad CSV or pattern refused in one line."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import SignalAt, draw, interrupted_fit, one_line_error, run_dir_of

FAST = ["--no-pretrained", "--epochs", "1", "--bs", "8", "--arch", "resnet18", "--size", "32"]
CLASSES = ["fern", "moss", "oak"]


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """Images of 3 classes in one folder (and one nested), named without their class; labels.csv lists them,
    every fourth image marked is_valid."""
    root = tmp_path_factory.mktemp("flat")
    rows = []
    for i in range(36):
        k = i % 3
        name = f"photos/{i:02d}.png" if i % 5 else f"photos/more/{i:02d}.png"
        draw(root / name, k, 3, size=(32, 32), mode="RGB", seed=i)
        rows.append([name, CLASSES[k], "True" if i % 4 == 0 else "False"])
    write_csv(root / "labels.csv", ["file", "species", "is_valid"], rows)
    return root, rows


def test_a_csv_with_a_validation_column_trains_interprets_and_predicts(trainer, flat, isolated):
    root, rows = flat
    out = isolated / "runs"
    run_dir = run_dir_of(trainer("fit", "folder", "--data", root, "--labels", "labels.csv", *FAST, "--out", out))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["classes"] == CLASSES and config["options"]["labels"] == "labels.csv"
    assert config["data"]["multi_label"] is False and config["options"]["threshold"] is None
    split = {r["path"]: (r["split"], r["label"]) for r in read_csv(run_dir / "split.csv")}
    assert split == {name: ("valid" if valid == "True" else "train", label) for name, label, valid in rows}
    assert config["data"]["n_valid"] == 9
    assert json.loads((run_dir / "model.json").read_text())["multi_label"] is False

    interpreted = read_csv(run_dir / "top_losses.csv")  # fit's own interpretation: the CSV's validation images
    assert {r["path"] for r in interpreted} <= {str(root / n) for n, _, v in rows if v == "True"}
    trainer("interpret", run_dir)  # rebuilt from config.json: the same split, so it is not refused
    table = json.loads((run_dir / "per_class.json").read_text())
    assert [c["class"] for c in table["classes"]] == CLASSES and table["n"] == 9

    predicted = json.loads(trainer("predict", run_dir, root / "photos" / "01.png", "--json", "--top-k", "3").stdout)
    assert sorted(p["label"] for p in predicted[0]["predictions"]) == CLASSES

    lr_dir = run_dir_of(trainer("lr-find", "folder", "--data", root, "--labels", "labels.csv", "--no-pretrained",
                                "--arch", "resnet18", "--size", "32", "--bs", "8", "--out", out))
    assert "valley" in json.loads((lr_dir / "lr_find.json").read_text())["suggestions"]


def test_a_csv_run_resumes_with_its_labels(trainer, flat, isolated, monkeypatch):
    root, _ = flat
    out = isolated / "runs"
    args = ["fit", "folder", "--data", root, "--labels", "labels.csv", "--no-pretrained", "--arch", "resnet18",
            "--size", "32", "--bs", "8", "--epochs", "2", "--no-interpret", "--out", out]
    run_dir = interrupted_fit(trainer, monkeypatch, args, SignalAt(epoch=2, training=True), out)
    trainer("fit", "--resume", run_dir)
    assert len(read_csv(run_dir / "metrics.csv")) == 2
    assert json.loads((run_dir / "config.json").read_text())["options"]["labels"] == "labels.csv"


def test_a_csv_outside_the_data_is_recorded_by_its_full_path_and_a_random_split(trainer, flat, isolated):
    root, rows = flat
    labels = isolated / "mine.csv"
    write_csv(labels, ["file", "species"], [r[:2] for r in rows])  # no is_valid: fastai's random 20%
    run_dir = run_dir_of(trainer("fit", "folder", "--data", root, "--labels", labels, *FAST, "--no-interpret",
                                 "--out", isolated / "runs"))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["options"]["labels"] == str(labels.resolve())
    assert config["data"]["n_valid"] == 7  # fastai's RandomSplitter: int(0.2 * 36)


def test_file_names_labelled_by_a_regex(trainer, isolated):
    root = isolated / "named"
    for i in range(24):
        k = i % 2
        draw(root / ("a" if i % 3 else "b") / f"{['cat', 'dog'][k]}_{i}.png", k, 2, size=(32, 32), mode="RGB", seed=i)
    run_dir = run_dir_of(trainer("fit", "folder", "--data", root, "--label-re", r"^([a-z]+)_\d+\.png$", *FAST,
                                 "--out", isolated / "runs"))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["classes"] == ["cat", "dog"] and config["data"]["n_valid"] == 4
    assert all(r["path"].split("/")[-1].startswith(r["label"]) for r in read_csv(run_dir / "split.csv"))
    trainer("interpret", run_dir)

    (root / "b" / "Cat-9.png").write_bytes((root / "b" / "cat_0.png").read_bytes())
    line = one_line_error(trainer("fit", "folder", "--data", root, "--label-re", r"^([a-z]+)_\d+\.png$", *FAST,
                                  expect=2))
    assert "gives no label for b/Cat-9.png" in line


BAD = {
    "missing file": ([["photos/01.png", "fern"], ["photos/nope.png", "moss"]], [], "line 3: no file photos/nope.png"),
    "duplicate row": ([["photos/01.png", "fern"], ["photos/02.png", "moss"], ["photos/01.png", "oak"]], [],
                      "line 4 repeats photos/01.png (first on line 2)"),
    "empty label": ([["photos/01.png", "fern"], ["photos/02.png", " "]], [], "line 3: photos/02.png has no label"),
    "outside the data": ([["../elsewhere.png", "fern"]], [], "line 2: ../elsewhere.png is outside --data"),
    "unknown column": ([["photos/01.png", "fern"]], ["--label-col", "kind"], "--label-col 'kind' is not a column"),
    "bad is_valid": ([["photos/01.png", "fern", "maybe"]], [], "line 2: 'maybe' in column 'is_valid' is not true"),
    "unseen validation label": ([["photos/01.png", "fern", "0"], ["photos/02.png", "moss", "0"],
                                 ["photos/03.png", "oak", "1"]], [], "label 'oak' of validation image 03.png"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_csv_is_one_line_naming_the_row(trainer, flat, isolated, case):
    root, _ = flat
    rows, extra, expected = BAD[case]
    labels = isolated / "bad.csv"
    write_csv(labels, ["file", "species", "is_valid"][:len(rows[0])], rows)
    line = one_line_error(trainer("fit", "folder", "--data", root, "--labels", labels, *extra, *FAST, expect=2))
    assert expected in line, line
    assert not (isolated / "runs").exists()


@pytest.mark.parametrize("args, expected", [
    (["fit", "digits", "--labels", "x.csv"], "--labels labels your own images: it is for the folder recipe"),
    (["fit", "folder", "--data", ".", "--label-delim", " "], "--label-delim reads the --labels CSV"),
    (["fit", "folder", "--data", ".", "--labels", "a.csv", "--label-re", "(x)"], "give one of them"),
    (["fit", "folder", "--data", ".", "--label-re", "(unclosed"], "is not a regular expression"),
    (["fit", "folder", "--data", ".", "--label-re", "nogroup"], "has no group"),
    (["fit", "folder", "--data", ".", "--labels", "a.csv", "--threshold", "0.3"], "--threshold is for multi-label"),
    (["fit", "folder", "--data", ".", "--labels", "absent.csv"], "no absent.csv in"),
])
def test_labelling_options_refused_in_one_line(trainer, isolated, args, expected):
    from helpers import draw as drawn

    drawn(isolated / "x.png", 0, 2)
    assert expected in one_line_error(trainer(*args, expect=2))
