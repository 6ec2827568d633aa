"""Malformed datasets, generated: every one must end in the validation error that names the place, never
in another exception and never in a hang. Each example is a valid dataset folder with one thing broken,
chosen by hypothesis among the ways real files go wrong, in every format nerflow reads (jsonl, json,
parquet, CoNLL, CSV, TSV, and labels.txt beside them)."""

import json
import re
import signal
import string
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nerflow.tasks.ingest import ingest_dataset
from nerflow.tasks.runtime.errors import DatasetValidationError
from nerflow.tasks.settings import DatasetSettings

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
VALID = [
    {"tokens": ["John", "lives", "in", "Paris"], "ner_tags": [1, 0, 0, 3]},
    {"tokens": ["Kuala", "Lumpur"], "ner_tags": [3, 4]},
    {"tokens": ["Anna", "Smith", "."], "ner_tags": [1, 2, 0]},
]
EXAMPLES = 500  # per format
TIME_LIMIT_S = 10  # one example that takes longer counts as a hang
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)

words = st.text(alphabet=string.ascii_letters + "äéßকখ-.'", min_size=1, max_size=8)
not_a_string = st.one_of(
    st.integers(),
    st.floats(allow_nan=True),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)
not_a_list = st.one_of(
    st.integers(), st.text(max_size=5), st.none(), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
bad_tag = st.one_of(
    st.integers().filter(lambda i: not 0 <= i < len(LABELS)),
    st.text(max_size=6).filter(lambda t: t not in LABELS),
    st.floats(allow_nan=True),
    st.none(),
    st.booleans(),
)


@st.composite
def broken_row(draw) -> dict:
    """A row that is wrong in one of the ways rows are: lengths, word types, tags, fields, structure."""
    row = json.loads(json.dumps(draw(st.sampled_from(VALID))))
    n = len(row["tokens"])
    kind = draw(
        st.sampled_from(["lengths", "word", "empty-word", "tag", "no-words", "field", "tokens-type", "tags-type"])
    )
    if kind == "lengths":
        row["ner_tags"] = (
            row["ner_tags"] + [0] * draw(st.integers(1, 3)) if draw(st.booleans()) else row["ner_tags"][: n - 1]
        )
    elif kind == "word":
        row["tokens"][draw(st.integers(0, n - 1))] = draw(not_a_string)
    elif kind == "empty-word":
        row["tokens"][draw(st.integers(0, n - 1))] = draw(st.sampled_from(["", " ", "\t", "\u3000"]))
    elif kind == "tag":
        row["ner_tags"][draw(st.integers(0, n - 1))] = draw(bad_tag)
    elif kind == "no-words":
        row["tokens"], row["ner_tags"] = [], []
    elif kind == "field":
        del row[draw(st.sampled_from(["tokens", "ner_tags"]))]
    elif kind == "tokens-type":
        row["tokens"] = draw(not_a_list)
    else:
        row["ner_tags"] = draw(not_a_list)
    return row


@st.composite
def broken_text(draw, render) -> bytes:
    """A text file with one broken line: a broken row, or bytes that are not UTF-8 / not JSON."""
    rows = [json.loads(json.dumps(r)) for r in VALID]
    kind = draw(st.sampled_from(["row", "not-utf8", "not-json"]))
    if kind == "row":
        rows.insert(draw(st.integers(0, len(rows))), draw(broken_row()))
        return render(rows)
    data = render(rows).split(b"\n")
    at = draw(st.integers(0, max(0, len(data) - 2)))
    if kind == "not-utf8":
        data[at] = (
            data[at][: draw(st.integers(0, len(data[at])))]
            + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80"]))
            + data[at]
        )
    else:
        data[at] = draw(
            st.sampled_from([b"{", b'{"tokens": ["a"]', b"[1, 2", b"tokens: a", b'{"tokens": ["a"], "ner_tags": [0]'])
        )
    return b"\n".join(data)


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def json_file(rows) -> bytes:
    return json.dumps(rows, ensure_ascii=False).encode()


def write_folder(folder: Path, train_file: str, train: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    suffix = Path(train_file).suffix
    (folder / train_file).write_bytes(train)
    for split in ("validation", "test"):
        if suffix == ".parquet":
            pq.write_table(pa.Table.from_pylist(VALID), folder / f"{split}{suffix}")
        elif suffix == ".conll":
            (folder / f"{split}{suffix}").write_bytes(conll(VALID))
        elif suffix in (".csv", ".tsv"):
            (folder / f"{split}{suffix}").write_bytes(delimited(VALID, "," if suffix == ".csv" else "\t"))
        else:
            (folder / f"{split}{suffix}").write_bytes(jsonl(VALID) if suffix == ".jsonl" else json_file(VALID))
    if not (folder / "labels.txt").exists():
        (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return folder


def conll(rows) -> bytes:
    return (
        "\n\n".join("\n".join(f"{w} {LABELS[t]}" for w, t in zip(r["tokens"], r["ner_tags"])) for r in rows).encode()
        + b"\n"
    )


def delimited(rows, delimiter: str, spaced: bool = False) -> bytes:
    """A CSV/TSV with a header; list cells as JSON, or (spaced) as space-separated words and tags."""
    import csv
    import io

    def cell(value):
        if spaced and isinstance(value, list):
            return " ".join(str(v) for v in value)
        return json.dumps(value, ensure_ascii=False)

    out = io.StringIO(newline="")
    writer = csv.DictWriter(
        out, fieldnames=["id", "tokens", "ner_tags"], delimiter=delimiter, restval="", lineterminator="\n"
    )
    writer.writeheader()
    for i, row in enumerate(rows):
        writer.writerow({"id": i} | {k: cell(v) for k, v in row.items()})
    return out.getvalue().encode()


@contextmanager
def time_limit(seconds: int):
    def hang(*_):
        raise TimeoutError(f"ingest took more than {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def expect_validation_error(folder: Path, tmp: Path, **dataset) -> str:
    with time_limit(TIME_LIMIT_S), pytest.raises(DatasetValidationError) as err:
        ingest_dataset(DatasetSettings(source=str(folder), **dataset), tmp / "cache")
    message = str(err.value)
    assert str(folder) in message  # every problem names its file
    return message


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad-input")


@SETTINGS
@given(data=broken_text(jsonl))
def test_broken_jsonl(scratch, data):
    expect_validation_error(write_folder(scratch / "jsonl", "train.jsonl", data), scratch)


@SETTINGS
@given(
    data=st.one_of(
        broken_text(json_file),
        st.sampled_from([b'{"rows": []}', b"42", b'"text"', b"[" * 100000 + b"]" * 100000, b"\xef\xbb\xbf{"]),
    )
)
def test_broken_json(scratch, data):
    expect_validation_error(write_folder(scratch / "json", "train.json", data), scratch)


@st.composite
def broken_table(draw) -> pa.Table:
    """A typed table with one broken cell, column or type, as Arrow can store them."""
    tokens = [list(r["tokens"]) for r in VALID]
    tags = [list(r["ner_tags"]) for r in VALID]
    row = draw(st.integers(0, len(VALID) - 1))
    n = len(tokens[row])
    kind = draw(
        st.sampled_from(
            [
                "lengths",
                "null-word",
                "empty-word",
                "tag-id",
                "tag-name",
                "null-tag",
                "no-words",
                "no-column",
                "int-words",
            ]
        )
    )
    if kind == "lengths":
        tags[row] = tags[row][: n - 1] if draw(st.booleans()) else tags[row] + [0]
    elif kind == "null-word":
        tokens[row][draw(st.integers(0, n - 1))] = None
    elif kind == "empty-word":
        tokens[row][draw(st.integers(0, n - 1))] = draw(st.sampled_from(["", " ", "\t"]))
    elif kind == "tag-id":
        tags[row][draw(st.integers(0, n - 1))] = draw(
            st.integers(-(2**31), 2**31 - 1).filter(lambda i: not 0 <= i < len(LABELS))
        )
    elif kind == "tag-name":
        tags = [[LABELS[t] for t in sentence] for sentence in tags]
        tags[row][draw(st.integers(0, n - 1))] = draw(st.text(max_size=6).filter(lambda t: t not in LABELS))
    elif kind == "null-tag":
        tags[row][draw(st.integers(0, n - 1))] = None
    elif kind == "no-words":
        tokens[row], tags[row] = [], []
    elif kind == "no-column":
        return pa.table({"tokens": tokens})
    else:
        return pa.table({"tokens": list(range(len(tokens))), "ner_tags": tags})
    return pa.table({"tokens": tokens, "ner_tags": tags})


@SETTINGS
@given(table=st.one_of(broken_table(), st.just(None)))
def test_broken_parquet(scratch, table):
    folder = scratch / "parquet"
    if table is None:  # not a parquet file at all
        write_folder(folder, "train.parquet", b"PAR1 this is not a parquet file")
    else:
        write_folder(folder, "train.parquet", b"")
        pq.write_table(table, folder / "train.parquet")
    expect_validation_error(folder, scratch)


@st.composite
def broken_conll(draw) -> bytes:
    lines = conll(VALID).decode().split("\n")
    at = draw(st.integers(0, len(lines) - 1))
    kind = draw(st.sampled_from(["one-column", "unknown-tag", "not-utf8"]))
    if kind == "one-column":
        lines.insert(at, draw(words))
    elif kind == "unknown-tag":
        lines.insert(
            at,
            f"{draw(words)} {draw(st.text(alphabet=string.ascii_uppercase + '-', min_size=1, max_size=6).filter(lambda t: t not in LABELS))}",
        )
    else:
        return ("\n".join(lines[:at])).encode() + b"\xff\xfe" + ("\n".join(lines[at:])).encode()
    return "\n".join(lines).encode()


@SETTINGS
@given(data=broken_conll())
def test_broken_conll(scratch, data):
    expect_validation_error(write_folder(scratch / "conll", "train.conll", data), scratch)


@st.composite
def broken_delimited(draw, delimiter: str) -> bytes:
    """A CSV/TSV with one broken row (its list cells as JSON), or a broken line, header or byte."""
    rows = [json.loads(json.dumps(r)) for r in VALID]
    kind = draw(st.sampled_from(["row", "not-utf8", "ragged", "quote", "header"]))
    if kind == "row":  # cells that hold lists; a cell that is not one is 'tokens-type' of broken_row
        row = draw(broken_row().filter(lambda r: all(isinstance(r.get(k, []), list) for k in ("tokens", "ner_tags"))))
        rows.insert(draw(st.integers(0, len(rows))), row)
    lines = delimited(rows, delimiter).split(b"\n")
    at = draw(st.integers(1, len(lines) - 2))  # a data line
    if kind == "not-utf8":
        lines[at] = lines[at][: draw(st.integers(0, len(lines[at])))] + b"\xff" + lines[at]
    elif kind == "ragged":
        lines[at] = (
            lines[at] + delimiter.encode() + draw(words).encode()
            if draw(st.booleans())
            else lines[at].rsplit(delimiter.encode(), 1)[0]
        )
    elif kind == "quote":
        lines[at] = b'"' + lines[at]
    elif kind == "header":
        lines[0] = lines[0].replace(draw(st.sampled_from([b"tokens", b"ner_tags"])), b"words")
    return b"\n".join(lines)


@SETTINGS
@given(data=broken_delimited(","))
def test_broken_csv(scratch, data):
    expect_validation_error(write_folder(scratch / "csv", "train.csv", data), scratch)


@SETTINGS
@given(data=broken_delimited("\t"))
def test_broken_tsv(scratch, data):
    expect_validation_error(write_folder(scratch / "tsv", "train.tsv", data), scratch)


def test_csv_and_tsv_cells_hold_json_lists_or_space_separated_words(tmp_path):
    rows = VALID + [{"tokens": ["In", "2024", "Paris", "grew"], "ner_tags": [0, 0, 3, 0]}]
    for delimiter, suffix in ((",", ".csv"), ("\t", ".tsv")):
        for spaced in (False, True):
            folder = write_folder(
                tmp_path / f"{suffix[1:]}-{spaced}", f"train{suffix}", delimited(rows, delimiter, spaced)
            )
            ref = ingest_dataset(DatasetSettings(source=str(folder)), tmp_path / "cache")
            train = ref.load()["train"]
            assert ref.num_rows["train"] == 4 and list(train["tokens"]) == [
                r["tokens"] for r in rows
            ]  # "2024" stays a word
            assert list(train["ner_tags"]) == [r["ner_tags"] for r in rows]


@st.composite
def broken_labels(draw) -> bytes:
    names = list(LABELS)
    kind = draw(st.sampled_from(["duplicate", "blank", "not-iob", "no-o", "not-utf8", "empty"]))
    if kind == "duplicate":
        names.insert(draw(st.integers(0, len(names))), draw(st.sampled_from(LABELS)))
    elif kind == "blank":
        names.insert(draw(st.integers(1, len(names) - 1)), draw(st.sampled_from(["", " ", "\t"])))
    elif kind == "not-iob":
        names.insert(
            draw(st.integers(0, len(names))),
            draw(
                st.text(alphabet=string.ascii_letters + "-_ ", min_size=1, max_size=8).filter(
                    lambda t: t.strip() and not re.match(r"^(O|[BIESLU]-.+)$", t.strip())
                )
            ),
        )
    elif kind == "no-o":
        names.remove("O")
    elif kind == "not-utf8":
        return "\n".join(names).encode() + b"\n\xc3\x28\n"
    else:
        return draw(st.sampled_from([b"", b"\n\n", b"   \n"]))
    return "\n".join(names).encode()


@SETTINGS
@given(data=broken_labels())
def test_broken_labels_txt(scratch, data):
    folder = write_folder(scratch / "labels", "train.jsonl", jsonl(VALID))
    (folder / "labels.txt").write_bytes(data)
    message = expect_validation_error(folder, scratch)
    assert "labels.txt" in message


def test_a_byte_order_mark_and_crlf_line_ends_are_fine(tmp_path):
    bom = b"\xef\xbb\xbf"
    folder = write_folder(tmp_path / "bom", "train.jsonl", bom + jsonl(VALID).replace(b"\n", b"\r\n"))
    (folder / "labels.txt").write_bytes(bom + "\r\n".join(LABELS).encode())
    ref = ingest_dataset(DatasetSettings(source=str(folder)), tmp_path / "cache")
    assert ref.num_rows["train"] == 3 and ref.label_names == LABELS


def test_not_utf8_names_the_file_line_and_column(tmp_path):
    text = jsonl(VALID).split(b"\n")
    text[1] = text[1][:12] + b"\xff" + text[1][12:]
    folder = write_folder(tmp_path / "latin1", "train.jsonl", b"\n".join(text))
    message = expect_validation_error(folder, tmp_path)
    assert "train.jsonl, line 2, column 13: not UTF-8 text (byte 0xff)" in message


def test_a_blank_line_inside_labels_txt_would_shift_ids_and_is_refused(tmp_path):
    folder = write_folder(tmp_path / "shift", "train.jsonl", jsonl(VALID))
    (folder / "labels.txt").write_text("O\nB-PER\n\nI-PER\nB-LOC\nI-LOC\nB-PER\n")
    message = expect_validation_error(folder, tmp_path)
    assert "labels.txt, line 3: empty label name" in message and "line 7: label 'B-PER' repeats line 2" in message
