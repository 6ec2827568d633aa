"""`nerflow hooks`: Hub webhooks and S3 event notifications (as AWS, SNS, EventBridge and MinIO send
them) become dataset-update events for the mapped dataset, each revision once; everything else gets a
4xx and sends nothing. A real HTTP receiver; the Prefect API send is recorded here (the end-to-end run
against a server, deployments and trigger is in test_deployments.py)."""

import base64
import json
import logging
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nerflow.flows.cli.hooks import Deliveries, HooksConfig, Receiver, make_handler

SECRET = "s3cr3t-" + "x" * 20
CONFIG = {
    "hub": {"datasets": {"unimelb-nlp/wikiann": "wikiann-bn"}},
    "s3": {
        "datasets": [{"bucket": "datasets", "prefix": "wikiann-bn/", "dataset": "wikiann-bn"}],
        "sns_topics": ["arn:aws:sns:eu-west-1:123456789012:datasets"],
        "sns_hosts": ["127.0.0.1"],
    },
    "max_body_bytes": 4096,
}


def hub_payload(name="unimelb-nlp/wikiann", kind="dataset", sha="c379e821c9c95d613899e8c4343e4bfee2b0c600", **event):
    """A Hub webhook (payload version 3) for a push to main, as the Hub documents it."""
    return {
        "event": {"action": "update", "scope": "repo.content", **event},
        "repo": {
            "type": kind,
            "name": name,
            "id": "621ffdc036468d709f17434d",
            "private": False,
            "url": {
                "web": f"https://huggingface.co/datasets/{name}",
                "api": f"https://huggingface.co/api/datasets/{name}",
            },
            "headSha": sha,
            "owner": {"id": "628b753283ef59b5be89e937"},
        },
        "updatedRefs": [
            {"ref": "refs/heads/main", "oldSha": "ce9a4674fa833a68d5a73ec355f0ea95eedd60b7", "newSha": sha}
        ],
        "webhook": {"id": "6390e855e30d9209411de93b", "version": 3},
    }


def s3_record(key="wikiann-bn/train.jsonl", bucket="datasets", etag="d41d8cd98f00b204e9800998ecf8427e", **obj):
    """One record of an S3 event notification (the shape AWS and MinIO share)."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "eu-west-1",
        "eventTime": "2026-12-02T10:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "nerflow",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": key, "size": 1024, "eTag": etag, "sequencer": "0055AED6DCD90281E5", **obj},
        },
    }


def minio_payload(*records):
    """MinIO's webhook target body: its own EventName and Key beside the S3 Records."""
    first = records[0]["s3"]
    return {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{first['bucket']['name']}/{first['object']['key']}",
        "Records": list(records),
    }


@pytest.fixture
def receiver(tmp_path):
    sent, failing = [], []

    def send(dataset, revision, source):
        if failing:
            raise ConnectionError("the API went away")
        sent.append((dataset, revision, source))
        return "event-id"

    config = HooksConfig.model_validate(CONFIG)
    deliveries = Deliveries(tmp_path / "delivered.json", send)
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), make_handler(Receiver(config, deliveries, {"hub": SECRET, "s3": SECRET}), 4096)
    )
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield {
        "url": f"http://127.0.0.1:{server.server_address[1]}",
        "sent": sent,
        "failing": failing,
        "state": tmp_path / "delivered.json",
    }
    server.shutdown()
    server.server_close()


def post(receiver, path, body, headers=None, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(
        receiver["url"] + path, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


HUB = {"X-Webhook-Secret": SECRET}
BEARER = {"Authorization": f"Bearer {SECRET}"}


def test_a_hub_push_to_a_mapped_dataset_is_sent_once_with_its_commit(receiver, caplog):
    caplog.set_level(logging.INFO, logger="nerflow.hooks")
    status, answer = post(receiver, "/hub", hub_payload(), HUB)
    assert status == 200 and answer["deliveries"][0]["outcome"] == "sent"
    assert receiver["sent"] == [("wikiann-bn", "c379e821c9c95d613899e8c4343e4bfee2b0c600", "hub:unimelb-nlp/wikiann")]
    again = post(receiver, "/hub", hub_payload(), HUB)  # the Hub's replay, or a retry after a lost answer
    assert (
        again[0] == 200 and again[1]["deliveries"][0]["outcome"] == "already delivered" and len(receiver["sent"]) == 1
    )
    lines = [r.getMessage() for r in caplog.records]
    assert (
        len(lines) == 2
        and "sent: wikiann-bn revision c379e821" in lines[0]
        and not any(SECRET in line for line in lines)
    )


@pytest.mark.parametrize(
    "case, body, headers, status",
    [
        ("no secret", hub_payload(), {}, 401),
        ("wrong secret", hub_payload(), {"X-Webhook-Secret": "guess"}, 401),
        ("unmapped repo", hub_payload(name="someone/other-data"), HUB, 422),
        ("not a webhook", {"hello": "world"}, HUB, 400),
        (
            "no commit",
            {**hub_payload(), "updatedRefs": [], "repo": {**hub_payload()["repo"], "headSha": None}},
            HUB,
            400,
        ),
    ],
)
def test_refused_hub_deliveries_send_nothing(receiver, case, body, headers, status):
    assert post(receiver, "/hub", body, headers)[0] == status, case
    assert receiver["sent"] == []


@pytest.mark.parametrize(
    "case, body",
    [
        ("a model repo", hub_payload(name="unimelb-nlp/wikiann", kind="model")),
        ("a discussion", hub_payload(scope="discussion", action="create")),
        ("another branch", {**hub_payload(), "updatedRefs": [{"ref": "refs/heads/dev", "newSha": "abc"}]}),
        ("a deleted repo", hub_payload(action="delete", scope="repo")),
    ],
)
def test_hub_events_that_change_no_mapped_data_are_acknowledged_and_ignored(receiver, case, body):
    status, answer = post(receiver, "/hub", body, HUB)
    assert status == 200 and "ignored" in answer and receiver["sent"] == [], case


def test_the_hub_secret_may_come_in_the_url_as_the_hub_allows(receiver):
    assert post(receiver, f"/hub?secret={SECRET}", hub_payload())[0] == 200 and len(receiver["sent"]) == 1


def test_malformed_and_oversized_bodies_are_refused_before_anything_is_read_into_an_event(receiver):
    assert post(receiver, "/hub", None, HUB, raw=b"{not json")[0] == 400
    assert post(receiver, "/hub", None, HUB, raw=b"[1, 2]")[0] == 400
    status, answer = post(receiver, "/hub", None, HUB, raw=b"{" + b" " * 5000 + b"}")
    assert status == 413 and "4096-byte limit" in answer["error"]
    assert post(receiver, "/elsewhere", hub_payload(), HUB)[0] == 404 and receiver["sent"] == []


def test_minio_and_s3_notifications_send_each_object_version_once(receiver):
    status, answer = post(receiver, "/s3", minio_payload(s3_record()), BEARER)
    assert status == 200 and receiver["sent"] == [
        ("wikiann-bn", "d41d8cd98f00b204e9800998ecf8427e", "s3://datasets/wikiann-bn/train.jsonl")
    ]
    versioned = {"Records": [s3_record(key="wikiann-bn/test+split.jsonl", versionId="3HL4kqtJlcpXroDTDmjVBH40Nrjfkd")]}
    assert post(receiver, "/s3", versioned, {"Authorization": SECRET})[0] == 200  # MinIO's raw auth_token
    assert receiver["sent"][-1] == (
        "wikiann-bn",
        "3HL4kqtJlcpXroDTDmjVBH40Nrjfkd",
        "s3://datasets/wikiann-bn/test split.jsonl",
    )
    assert (
        post(receiver, "/s3", minio_payload(s3_record()), BEARER)[1]["deliveries"][0]["outcome"] == "already delivered"
    )
    assert len(receiver["sent"]) == 2


def test_sns_notifications_and_eventbridge_events_are_read(receiver):
    basic = {
        "Authorization": "Basic " + base64.b64encode(f"sns:{SECRET}".encode()).decode()
    }  # https://sns:SECRET@host/s3
    sns = {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": CONFIG["s3"]["sns_topics"][0],
        "Message": json.dumps({"Records": [s3_record(etag="aaaa")]}),
        "Timestamp": "2026-12-02T10:00:01.000Z",
    }
    assert post(receiver, "/s3", sns, basic)[0] == 200
    eventbridge = {
        "version": "0",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "detail": {"bucket": {"name": "datasets"}, "object": {"key": "wikiann-bn/validation.jsonl", "etag": "bbbb"}},
    }
    assert post(receiver, f"/s3?token={SECRET}", eventbridge)[0] == 200
    assert [r for _, r, _ in receiver["sent"]] == ["aaaa", "bbbb"]


def test_unmapped_buckets_wrong_secrets_and_broken_records_send_nothing(receiver):
    assert post(receiver, "/s3", minio_payload(s3_record(bucket="elsewhere")), BEARER)[0] == 422
    assert post(receiver, "/s3", minio_payload(s3_record(key="other/train.jsonl")), BEARER)[0] == 422
    assert post(receiver, "/s3", minio_payload(s3_record()), {"Authorization": "Bearer nope"})[0] == 401
    assert post(receiver, "/s3", {"Records": [{"eventName": "ObjectCreated:Put"}]}, BEARER)[0] == 400
    assert post(receiver, "/s3", hub_payload(), BEARER)[0] == 400
    assert receiver["sent"] == []


def test_an_sns_subscription_is_confirmed_only_for_an_allowed_topic_and_host(receiver):
    confirmed = []

    class SNS(BaseHTTPRequestHandler):
        def do_GET(self):
            confirmed.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    sns = ThreadingHTTPServer(("127.0.0.1", 0), SNS)
    threading.Thread(target=sns.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{sns.server_address[1]}/?Action=ConfirmSubscription&Token=2336412f37"
    body = {
        "Type": "SubscriptionConfirmation",
        "TopicArn": CONFIG["s3"]["sns_topics"][0],
        "SubscribeURL": url,
        "Token": "2336412f37",
    }
    try:
        assert post(receiver, f"/s3?token={SECRET}", body)[0] == 200 and len(confirmed) == 1
        other_topic = {**body, "TopicArn": "arn:aws:sns:eu-west-1:999999999999:someone-else"}
        assert post(receiver, f"/s3?token={SECRET}", other_topic)[0] == 422
        elsewhere = {**body, "SubscribeURL": "http://169.254.169.254/latest/meta-data/"}  # not SNS: never fetched
        assert post(receiver, f"/s3?token={SECRET}", elsewhere)[0] == 400 and len(confirmed) == 1
    finally:
        sns.shutdown()
        sns.server_close()
    assert receiver["sent"] == []


def test_a_failed_send_is_a_502_and_the_next_delivery_sends_it(receiver):
    receiver["failing"].append(True)
    assert post(receiver, "/hub", hub_payload(), HUB)[0] == 502 and not receiver["state"].exists()
    receiver["failing"].clear()
    assert post(receiver, "/hub", hub_payload(), HUB)[1]["deliveries"][0]["outcome"] == "sent"
    assert json.loads(receiver["state"].read_text()) == {"wikiann-bn": ["c379e821c9c95d613899e8c4343e4bfee2b0c600"]}


def test_without_a_secret_every_delivery_is_refused(tmp_path):
    config = HooksConfig.model_validate(CONFIG)
    receiver = Receiver(config, Deliveries(tmp_path / "d.json", lambda *a: "id"), {"hub": None, "s3": None})
    from nerflow.flows.cli.hooks import Refused

    with pytest.raises(Refused) as refused:
        receiver.handle("/hub", {}, json.dumps(hub_payload()).encode())
    assert refused.value.status == 503
