"""Test environment: offline Hugging Face, a fresh Prefect home, W&B offline; a tiny random BERT."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before Prefect, transformers or datasets are imported anywhere: these are read at import time.
_PREFECT_HOME = tempfile.mkdtemp(prefix="nerflow-prefect-home-")
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PREFECT_HOME": _PREFECT_HOME,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "TOKENIZERS_PARALLELISM": "false",
        "DO_NOT_TRACK": "1",
    }
)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs three workers on a 2-core box: one math thread each (and in the processes they
    # start) keeps them from fighting over the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("HF_TOKEN", None)
os.environ.pop("PREFECT_API_URL", None)  # tests use their own temporary server

import atexit  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402

from prefect_db import seeded_home  # noqa: E402

seeded_home(Path(_PREFECT_HOME))
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO / "data" / "wikiann_en_sample"


def sample_sentences(n: int | None = None) -> list[list[str]]:
    lines = (SAMPLE_DIR / "train.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["tokens"] for line in lines[:n]]


def build_tiny_bert(folder: Path, vocab_size: int = 600) -> Path:
    """A cased WordPiece tokenizer trained on the sample and a randomly initialised 2-layer BERT."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    wordpiece = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    wordpiece.train_from_iterator(
        [" ".join(s) for s in sample_sentences()], vocab_size=vocab_size, min_frequency=2, show_progress=False
    )
    tokenizer = BertTokenizerFast(
        tokenizer_object=wordpiece._tokenizer,
        do_lower_case=False,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_roberta(folder: Path) -> Path:
    """A RoBERTa-style checkpoint: byte-level BPE trained on the sample (saved without add_prefix_space,
    as many are), a randomly initialised 2-layer model."""
    import torch
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [" ".join(s) for s in sample_sentences()],
        vocab_size=700,
        min_frequency=2,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    bpe._tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>"))
    )
    tok = RobertaTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        add_prefix_space=False,
    )
    torch.manual_seed(0)
    RobertaModel(
        RobertaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=130,
            pad_token_id=tok.pad_token_id,
        )
    ).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_tiny_sentencepiece(folder: Path, kind: str) -> Path:
    """An XLM-R-style (kind "xlm-roberta") or DeBERTa-v2-style checkpoint: a SentencePiece Unigram
    vocabulary trained on the sample, a randomly initialised 2-layer model."""
    import torch
    import transformers as T
    from tokenizers import SentencePieceUnigramTokenizer, processors

    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(
        [" ".join(s) for s in sample_sentences()],
        vocab_size=700,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        unk_token="<unk>",
        show_progress=False,
    )
    cls_id, sep_id = sp.token_to_id("<s>"), sp.token_to_id("</s>")
    sp._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", cls_id), ("</s>", sep_id)]
    )
    # XLM-R's positions start after the padding id, so it needs two more of them for the same length.
    tokenizer, config_class, model, positions = {
        "xlm-roberta": (T.XLMRobertaTokenizerFast, T.XLMRobertaConfig, T.XLMRobertaModel, 130),
        "deberta-v2": (T.DebertaV2TokenizerFast, T.DebertaV2Config, T.DebertaV2Model, 128),
    }[kind]
    specials = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>"}
    tok = tokenizer(tokenizer_object=sp._tokenizer, pad_token="<pad>", mask_token="<mask>", **specials)
    config = config_class(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=positions,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


PEOPLE = ["John", "David", "Peter", "Maria", "Anna", "George"]
PLACES = ["London", "Paris", "Berlin", "Texas", "India", "Canada"]
VERBS = ["lives", "works", "stays"]


def synthetic_rows(n: int, seed: int) -> list[dict]:
    """'<person> <verb> in <place> .' sentences: a pattern a tiny model learns to near-perfect F1."""
    import random

    rng = random.Random(seed)
    return [
        {
            "tokens": [rng.choice(PEOPLE), rng.choice(VERBS), "in", rng.choice(PLACES), "."],
            "ner_tags": ["B-PER", "O", "O", "B-LOC", "O"],
        }
        for _ in range(n)
    ]


def write_synthetic_dataset(folder: Path, n_train: int = 160) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("validation", 20, 1), ("test", 20, 2)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(n, seed)))
    return folder


def prepare(settings):
    """ingest + tokenize, the pipeline's plain functions: (DatasetRef, TokenizedRef)."""
    from nerflow.flows.pipeline import PLAIN, run_steps
    from nerflow.tasks.refs import RunContext

    out = run_steps(settings, RunContext.for_run(settings, "prepare"), PLAIN, until="tokenize")
    return out.dataset, out.tokenized


def train_job(settings, tokenized, run_dir: Path, run_name: str | None = None):
    """The train step's job, as the pipeline builds it, for a run folder of the test's choosing."""
    from nerflow.flows.pipeline import Outputs, train_job
    from nerflow.tasks.refs import RunContext, TrackingRef

    ctx = RunContext.for_run(settings, run_name or Path(run_dir).name, run_dir)
    return train_job(settings, Outputs(tracking=TrackingRef(), tokenized=tokenized), ctx)


def train(settings, tokenized, run_dir: Path, run_name: str | None = None):
    """The train step's plain function on a job built from settings: the ModelRef."""
    from nerflow.tasks.train import train_model

    return train_model(train_job(settings, tokenized, run_dir, run_name))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


def tiny_run_settings(tiny_bert: Path, runs_root: Path, /, **sections):
    """Run settings for a seconds-long run: tiny BERT, 64 train / 32 eval sentences of the sample;
    `sections` override (a dict updates a section, anything else replaces the field)."""
    from nerflow.tasks.settings import RunSettings

    data = {
        "dataset": {"source": str(SAMPLE_DIR), "max_train_samples": 64, "max_eval_samples": 32, "language": "en"},
        "base_model": {"name": str(tiny_bert)},
        "tokenize": {"max_length": 64},
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 5e-3},
        "compute": {"eval_batch_size": 16},
        "records": {"logging_steps": 4},
        "output_dir": str(runs_root),
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return RunSettings.model_validate(data)


@pytest.fixture
def tiny_settings(tiny_bert, tmp_path):
    """tiny_run_settings with this test's own output folder."""
    return lambda **sections: tiny_run_settings(tiny_bert, tmp_path / "runs", **sections)


# The longest test files first (their measured wall time, longest first): with --no-loadscope-reorder
# (the Makefile's) pytest-xdist hands files to workers in collection order, so a long file collected
# last would run alone at the end.
LONGEST_FIRST = [
    "test_faults.py",
    "test_deployments.py",
    "test_security.py",
    "test_cli_guards.py",
    "test_bench_smoke.py",
    "test_flow.py",
    "test_distributed.py",
    "test_sweep.py",
    "test_export.py",
    "test_publish.py",
    "test_ui.py",
    "test_tracking.py",
    "test_first_contact.py",
    "test_bad_input.py",
    "test_reliability.py",
    "test_scheme_equivalence.py",
    "test_model_families.py",
    "test_watcher.py",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item) -> int:  # a file that shares another's stack comes right after it (SAME_WORKER_AS)
        return rank.get(SAME_WORKER_AS.get(item.path.name, item.path.name), len(rank))

    items.sort(key=key)  # stable: within a file, as written


# Files whose tests use a session fixture of another file's, and so must run in its worker.
SAME_WORKER_AS = {"test_ui.py": "test_security.py"}  # secured_stack


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` (the Makefile's): a file at a time per worker, SAME_WORKER_AS's files together."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesWithSharedServers(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = Path(super()._split_scope(nodeid))
            return str(file.with_name(SAME_WORKER_AS.get(file.name, file.name)))

    return FilesWithSharedServers(config, log)


_SECURED: list = []  # the running secured stack: [(its context manager, the stack)]
SECURED_FILES = {"test_security.py", *SAME_WORKER_AS}


@pytest.fixture
def secured_stack(tmp_path_factory, tiny_bert):
    """One `nerflow serve` stack for test_security.py and test_ui.py (serve_stack.py): started by the
    first test that asks for it and stopped after the last test of those files, which run in one
    worker, one after the other (SAME_WORKER_AS). A session fixture would keep its server and worker
    polling on an idle stack, about 3.5 CPU seconds a minute, for the rest of the worker's session."""
    if not _SECURED:
        from serve_stack import secured_stack as start

        stack = start(tmp_path_factory.mktemp("secured"), tiny_bert)
        _SECURED.append((stack, stack.__enter__()))
    return _SECURED[0][1]


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    if _SECURED and (nextitem is None or nextitem.path.name not in SECURED_FILES):
        stack, _ = _SECURED.pop()
        stack.__exit__(None, None, None)
