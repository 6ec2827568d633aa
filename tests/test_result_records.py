"""Result records are data: a forged record that would run code when Prefect deserializes it is refused
by JsonResultStorage before Prefect reads it, through Prefect's own ResultStore code path."""

from __future__ import annotations

import base64
import json
import pickle

import pytest
from prefect.results import ResultStore
from prefect.serializers import JSONSerializer

from nerflow.tasks.refs import CardRef
from nerflow.tasks.runtime.caching import JSON_SERIALIZER, JsonResultStorage, UnsafeResultRecord, record_problem


class Payload:
    """Pickles to a call of os.system: what a forged record carries."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def record(serializer: dict, result: str) -> bytes:
    return json.dumps(
        {
            "metadata": {
                "storage_key": "k",
                "expiration": None,
                "serializer": serializer,
                "prefect_version": "3",
                "storage_block_id": None,
            },
            "result": result,
        }
    ).encode()


def forgeries(marker) -> dict[str, bytes]:
    touch = f"touch {marker}"
    pickled = base64.b64encode(pickle.dumps(Payload(touch))).decode()
    return {
        "pickle": record({"type": "pickle", "picklelib": "cloudpickle", "picklelib_version": None}, pickled),
        "json with jsonlib pickle": record(
            {**JSON_SERIALIZER, "jsonlib": "pickle"}, base64.b64decode(pickled).decode("latin-1")
        ),
        "json with os.system as object decoder": record(
            {**JSON_SERIALIZER, "object_decoder": "os.system"}, json.dumps({"x": touch})
        ),
        "a class outside nerflow": record(
            JSON_SERIALIZER, json.dumps({"__class__": "subprocess.getoutput", "data": touch})
        ),
        "not a record": pickle.dumps(Payload(touch)),
    }


@pytest.fixture
def store(tmp_path):
    return ResultStore(
        result_storage=JsonResultStorage(basepath=str(tmp_path / "results")), serializer=JSONSerializer()
    )


def test_a_record_nerflow_wrote_reads_back(store):
    ref = CardRef(path="/runs/r/model/README.md", widget_examples=["a"], images=["training_curves.png"])
    store.persist_result_record(store.create_result_record(ref, key="card"))
    assert record_problem((store.result_storage._resolve_path("card")).read_bytes()) is None
    assert store.exists("card") and store.read("card").result == ref


@pytest.mark.parametrize(
    "kind",
    [
        "pickle",
        "json with jsonlib pickle",
        "json with os.system as object decoder",
        "a class outside nerflow",
        "not a record",
    ],
)
def test_a_forged_record_is_refused_and_never_deserialized(store, tmp_path, kind):
    marker = tmp_path / "payload-ran"
    path = store.result_storage._resolve_path("tokenize-key")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(forgeries(marker)[kind])
    # Prefect's cache lookup: a record it cannot read is a miss, so the step runs again...
    assert store.exists("tokenize-key") is False
    assert not marker.exists()
    # ...and the forged record is kept aside for whoever investigates; a direct read is an error.
    assert not path.exists() and path.with_name("tokenize-key.refused").is_file()
    path.write_bytes(forgeries(marker)[kind])
    with pytest.raises(UnsafeResultRecord, match="refused, not deserialized"):
        store.read("tokenize-key")
    assert not marker.exists()
