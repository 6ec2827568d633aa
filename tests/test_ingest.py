import json
import shutil
from pathlib import Path

import pytest

from nerflow.tasks.data.checks import derive_label_names, entity_types
from nerflow.tasks.ingest import ingest_dataset
from nerflow.tasks.runtime.errors import DatasetValidationError
from nerflow.tasks.settings import DatasetSettings

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
GOOD = [
    {"tokens": ["Karl", "Ove", "visited", "Oslo"], "ner_tags": [1, 2, 0, 5]},
    {"tokens": ["NATO", "met"], "ner_tags": [3, 0]},
]


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def make_folder(tmp_path: Path, train=GOOD, validation=GOOD, test=GOOD, labels=True) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    for name, rows in (("train", train), ("validation", validation), ("test", test)):
        write_jsonl(folder / f"{name}.jsonl", rows)
    if labels:
        (folder / "labels.txt").write_text("\n".join(LABELS))
    return folder


def ingest(tmp_path, folder, **cfg):
    return ingest_dataset(DatasetSettings(source=str(folder), **cfg), tmp_path / "cache")


def test_good_folder_is_normalised_and_profiled(tmp_path):
    ref = ingest(tmp_path, make_folder(tmp_path))
    assert ref.label_names == LABELS
    assert ref.num_rows == {"train": 2, "validation": 2, "test": 2}
    dd = ref.load()
    assert dd["train"].features["ner_tags"].feature.names == LABELS
    assert dd["train"][0]["tokens"] == ["Karl", "Ove", "visited", "Oslo"]
    train = next(p for p in ref.profile if p["split"] == "train")
    assert (train["sentences"], train["words"]) == (2, 6)
    assert (train["entities_PER"], train["entities_ORG"], train["entities_LOC"]) == (1, 1, 1)
    assert train["len_max"] == 4


def test_fingerprint_follows_content_not_location(tmp_path):
    a = ingest(tmp_path, make_folder(tmp_path))
    moved = shutil.copytree(tmp_path / "data", tmp_path / "elsewhere")
    assert ingest(tmp_path, moved).fingerprint == a.fingerprint
    changed = GOOD[:1] + [{"tokens": ["NATO", "met"], "ner_tags": [0, 0]}]
    write_jsonl(moved / "test.jsonl", changed)
    assert ingest(tmp_path, moved).fingerprint != a.fingerprint


@pytest.mark.parametrize(
    "bad_row, expected",
    [
        ({"tokens": ["a", "b"]}, "split 'train', row 1 (line 2), field 'ner_tags': missing"),
        ({"words": ["a"], "ner_tags": [0]}, "row 1 (line 2), field 'tokens': missing"),
        ({"tokens": ["a", "b"], "ner_tags": [0]}, "row 1 (line 2), field 'ner_tags': 1 tags for 2 words"),
        ({"tokens": ["a"], "ner_tags": [9]}, "field 'ner_tags'[0]: unknown tag id 9"),
        ({"tokens": ["a", ""], "ner_tags": [0, 0]}, "field 'tokens'[1]: empty word ''"),
        ({"tokens": ["a", 5], "ner_tags": [0, 0]}, "field 'tokens'[1]: word is int, not a string"),
        ({"tokens": [], "ner_tags": []}, "field 'tokens': sentence has no words"),
        ({"tokens": "a b", "ner_tags": [0, 0]}, "field 'tokens': expected a list of words"),
        ({"tokens": ["a"], "ner_tags": ["B-XYZ"]}, "field 'ner_tags'[0]: unknown tag 'B-XYZ'"),
    ],
)
def test_bad_rows_name_file_split_row_and_field(tmp_path, bad_row, expected):
    folder = make_folder(tmp_path, train=[GOOD[0], bad_row])
    with pytest.raises(DatasetValidationError) as err:
        ingest(tmp_path, folder)
    message = str(err.value)
    assert expected in message
    assert str(folder / "train.jsonl") in message
    assert not (tmp_path / "cache" / "datasets").exists()  # nothing saved for a bad dataset


def test_empty_split_and_invalid_json(tmp_path):
    folder = make_folder(tmp_path, validation=[])
    with pytest.raises(DatasetValidationError, match="split 'validation': split is empty"):
        ingest(tmp_path, folder)
    (folder / "test.jsonl").write_text('{"tokens": ["a"], "ner_tags": [0]}\n{"tokens": [\n')
    write_jsonl(folder / "validation.jsonl", GOOD)
    with pytest.raises(DatasetValidationError, match=r"test.jsonl, line 2: not valid JSON"):
        ingest(tmp_path, folder)


def test_all_problems_reported_together(tmp_path):
    bad = [{"tokens": ["a"], "ner_tags": [99]}] * 30
    with pytest.raises(DatasetValidationError) as err:
        ingest(tmp_path, make_folder(tmp_path, train=bad))
    # One line for the 30 like problems: how many names there are, which ids the tags use, the first.
    assert "(30 problem(s))" in str(err.value) and len(str(err.value).splitlines()) == 2
    assert "labels.txt has 7 names (ids 0..6); the tags use ids up to 99: 30 tag(s) without a name, the first: " in str(
        err.value
    )


def test_iob_violations_are_counted_not_fatal(tmp_path):
    rows = GOOD + [
        {"tokens": ["the", "Oslo", "Fjord"], "ner_tags": [0, 6, 6]},
        {"tokens": ["A", "B"], "ner_tags": [1, 4]},
    ]
    ref = ingest(tmp_path, make_folder(tmp_path, train=rows))
    assert ref.iob_violations == {"train": 2, "validation": 0, "test": 0}
    train = next(p for p in ref.profile if p["split"] == "train")
    assert train["iob_violations"] == 2
    assert entity_types(["O", "I-LOC", "I-LOC"]) == ["LOC"]
    assert entity_types(["B-PER", "I-ORG"]) == ["PER", "ORG"]


def test_missing_split_file_and_unknown_label_names(tmp_path):
    folder = make_folder(tmp_path, labels=False)
    with pytest.raises(DatasetValidationError, match="no label names are known"):
        ingest(tmp_path, folder)
    (folder / "test.jsonl").unlink()
    with pytest.raises(DatasetValidationError, match="no file for split 'test'"):
        ingest(tmp_path, folder, label_names=LABELS)


def test_conll_with_string_tags_and_dev_alias(tmp_path):
    folder = tmp_path / "conll"
    folder.mkdir()
    text = "-DOCSTART- -X- O\n\nKarl NNP B-PER\nOve NNP I-PER\nvisited VBD O\nOslo NNP B-LOC\n\nNATO NNP B-ORG\n"
    for name in ("train", "dev", "test"):
        (folder / f"{name}.conll").write_text(text)
    ref = ingest(tmp_path, folder)
    assert ref.label_names == derive_label_names({"B-PER", "I-PER", "B-LOC", "B-ORG"})
    assert ref.label_names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert ref.num_rows["validation"] == 2
    dd = ref.load()
    assert dd["train"][1] == {"tokens": ["NATO"], "ner_tags": [3]}


def test_parquet_and_sample_limits(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "pq"
    folder.mkdir()
    rows = GOOD * 5
    for name in ("train", "validation", "test"):
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{name}.parquet")
    ref = ingest(tmp_path, folder, label_names=LABELS, max_train_samples=3, max_eval_samples=1)
    assert ref.num_rows == {"train": 3, "validation": 1, "test": 1}


def test_bundled_sample_is_valid(tmp_path, sample_dir):
    ref = ingest(tmp_path, sample_dir)
    assert ref.num_rows == {"train": 2000, "validation": 1000, "test": 1000}
    assert ref.label_names == LABELS


def test_s3_source_through_moto_server(tmp_path, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="ner-data")
        folder = make_folder(tmp_path)
        for f in folder.iterdir():
            s3.upload_file(str(f), "ner-data", f"wikiann/v1/{f.name}")
        ref = ingest(tmp_path, "s3://ner-data/wikiann/v1")
        local = ingest(tmp_path, folder)
        assert ref.fingerprint == local.fingerprint
        assert ref.revision.startswith("s3-etags:")
        s3.put_object(Bucket="ner-data", Key="wikiann/v1/train.jsonl", Body=b'{"tokens": ["x"], "ner_tags": [7]}\n')
        with pytest.raises(DatasetValidationError, match=r"s3://ner-data/wikiann/v1/train.jsonl, split 'train', row 0"):
            ingest(tmp_path, "s3://ner-data/wikiann/v1")
    finally:
        server.stop()


def test_hub_loader_reads_classlabel_names(tmp_path):
    """The Hub code path (datasets.load_dataset), fed a local repository-shaped folder offline."""
    import datasets

    features = datasets.Features(
        {
            "tokens": datasets.List(datasets.Value("string")),
            "ner_tags": datasets.List(datasets.ClassLabel(names=LABELS)),
        }
    )
    repo = tmp_path / "hub-repo"
    repo.mkdir()
    for split in ("train", "validation", "test"):
        datasets.Dataset.from_list(GOOD, features=features).to_parquet(str(repo / f"{split}.parquet"))
    ref = ingest_dataset(DatasetSettings(source=str(repo), format="hub", config=None), tmp_path / "cache")
    assert ref.label_names == LABELS  # from the ClassLabel feature, no labels.txt needed
    assert ref.revision == "unresolved"  # offline: the Hub sha cannot be looked up, and it says so
    assert ref.num_rows == {"train": 2, "validation": 2, "test": 2}
