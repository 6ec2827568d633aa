"""`nerflow hooks`: dataset changes pushed by the places datasets live, as Prefect events.

A small HTTP receiver for Hugging Face Hub webhooks (POST /hub) and S3 event notifications (POST /s3:
AWS S3 through SNS or EventBridge, MinIO's webhook target). A delivery for a source the operator mapped
to a dataset becomes `nerflow.dataset.updated` for that dataset with the new revision (the Hub commit;
the object's version id or ETag), sent to the Prefect API and confirmed, so the training deployment's
trigger starts the run. A revision delivered before is acknowledged and not sent again (sources
deliver at least once and retry). Unmapped sources, wrong secrets and malformed bodies get 4xx and send
nothing; a failed send gets 502, so the source delivers again. One log line per delivery, never a secret.

Self-hosted Prefect has no inbound webhooks (Prefect Cloud does); the watcher stays the fallback for
sources that cannot push. It listens on 127.0.0.1: put a reverse proxy with TLS in front of it
(docs/deployments.md).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nerflow.flows.watcher import check_name
from nerflow.tasks.runtime.errors import InputError
from nerflow.tasks.runtime.files import atomic_write_json
from nerflow.tasks.runtime.secrets import resolve_secret

log = logging.getLogger("nerflow.hooks")

HUB_SECRET_ENV = "NERFLOW_HUB_WEBHOOK_SECRET"
S3_SECRET_ENV = "NERFLOW_S3_WEBHOOK_SECRET"
SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
KEPT_REVISIONS = 1000  # per dataset: enough to recognise any redelivery a source makes


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HubHooks(_Config):
    """Hub dataset repositories whose pushes train a dataset."""

    secret_block: str | None = Field(
        None, description=f"Prefect Secret block with the webhook secret (else {HUB_SECRET_ENV})."
    )
    branch: str = Field("main", description="The branch whose new commits count.")
    datasets: dict[str, str] = Field(default_factory=dict, description="Hub dataset repo id -> nerflow dataset name.")


class S3Source(_Config):
    bucket: str
    prefix: str = ""
    suffix: str | None = Field(None, description="Only objects ending so count (e.g. a _SUCCESS marker).")
    dataset: str


class S3Hooks(_Config):
    """Buckets and prefixes whose object changes train a dataset."""

    secret_block: str | None = Field(
        None, description=f"Prefect Secret block with the shared secret (else {S3_SECRET_ENV})."
    )
    sns_topics: list[str] = Field(default_factory=list, description="SNS topic ARNs whose subscription to confirm.")
    sns_hosts: list[str] = Field(
        default_factory=list, description="Hosts besides sns.REGION.amazonaws.com that may confirm."
    )
    datasets: list[S3Source] = Field(default_factory=list)


class HooksConfig(_Config):
    hub: HubHooks = Field(default_factory=HubHooks)
    s3: S3Hooks = Field(default_factory=S3Hooks)
    max_body_bytes: int = Field(1 << 20, ge=1024, le=64 << 20)
    state_file: str = Field("hooks-delivered.json", description="Revisions delivered so far, per dataset.")


def load_config(path: Path) -> HooksConfig:
    try:
        config = HooksConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (OSError, yaml.YAMLError, ValidationError) as e:
        raise InputError(f"{path}: not a nerflow hooks configuration: {str(e).splitlines()[0]}") from e
    for name in [*config.hub.datasets.values(), *(s.dataset for s in config.s3.datasets)]:
        check_name(name)
    return config


class Refused(Exception):
    """A delivery answered with a 4xx (or 502) and nothing sent."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


# ------------------------------------------------------------------------------------------- reading


def hub_updates(body: dict, cfg: HubHooks) -> tuple[list[tuple[str, str, str]], str | None]:
    """([(dataset, revision, source)], why ignored) of a Hub webhook payload."""
    try:
        event, repo = body["event"], body["repo"]
        scope, kind, name = event["scope"], repo["type"], repo["name"]
    except (KeyError, TypeError) as e:
        raise Refused(400, f"not a Hub webhook payload (missing {e})") from None
    if kind != "dataset":
        return [], f"a {kind} repository ({name}), not a dataset"
    if not str(scope).startswith("repo.content") or event.get("action") == "delete":
        return [], f"{scope} {event.get('action')} on {name} changes no data"
    if name not in cfg.datasets:
        raise Refused(422, f"the Hub dataset {name} is not mapped to a nerflow dataset")
    refs = body.get("updatedRefs")
    if refs:
        matching = [r for r in refs if r.get("ref") == f"refs/heads/{cfg.branch}"]
        if not matching:
            return [], f"{name}: no new commit on {cfg.branch}"
        revision = matching[-1].get("newSha")
    else:
        revision = repo.get("headSha")
    if not isinstance(revision, str) or not revision:
        raise Refused(400, f"{name}: the payload names no commit")
    return [(cfg.datasets[name], revision, f"hub:{name}")], None


def s3_records(body: dict) -> list[dict]:
    """The S3 event records of a delivery: MinIO's or S3's own body, an SNS Notification, EventBridge."""
    if body.get("Type") == "Notification":
        try:
            body = json.loads(body["Message"])
        except (KeyError, TypeError, ValueError):
            raise Refused(400, "an SNS notification whose Message is not an S3 event") from None
        if body.get("Event") == "s3:TestEvent":
            return []
    if body.get("detail-type") in ("Object Created", "Object Deleted"):  # EventBridge
        detail = body.get("detail") or {}
        obj = detail.get("object") or {}
        return [
            {
                "eventName": body["detail-type"],
                "s3": {"bucket": {"name": (detail.get("bucket") or {}).get("name")}, "object": obj},
            }
        ]
    records = body.get("Records")
    if not isinstance(records, list):
        raise Refused(400, "no S3 event Records in the body")
    return records


def _revision(obj: dict, event: str) -> str | None:
    version = obj.get("versionId") or obj.get("version-id") or obj.get("eTag") or obj.get("etag")
    return version or (f"deleted-{obj.get('sequencer')}" if "Remov" in event or "Delet" in event else None)


def s3_updates(records: list[dict], cfg: S3Hooks) -> list[tuple[str, str, str]]:
    """[(dataset, revision, source)] of the records that touch a mapped bucket and prefix."""
    updates, unmapped = [], []
    for record in records:
        try:
            event, bucket = record["eventName"], record["s3"]["bucket"]["name"]
            obj = record["s3"]["object"]
            key = urllib.parse.unquote_plus(obj["key"])
        except (KeyError, TypeError):
            raise Refused(400, "an S3 event record without eventName, bucket or object key") from None
        source = next(
            (
                s
                for s in cfg.datasets
                if s.bucket == bucket and key.startswith(s.prefix) and key.endswith(s.suffix or "")
            ),
            None,
        )
        if source is None:
            unmapped.append(f"s3://{bucket}/{key}")
            continue
        revision = _revision(obj, str(event))
        if not revision:
            raise Refused(400, f"s3://{bucket}/{key}: the record names no version, ETag or sequencer")
        updates.append((source.dataset, str(revision).strip('"'), f"s3://{bucket}/{key}"))
    if unmapped and not updates:
        raise Refused(422, f"{unmapped[0]} is under no mapped bucket and prefix")
    return updates


# ------------------------------------------------------------------------------------------ checking


def presented_secret(headers, query: dict[str, list[str]]) -> str | None:
    """The secret a delivery carries: Hub's X-Webhook-Secret, a bearer or raw Authorization header
    (MinIO's auth_token), basic-auth's password (an SNS subscription URL with user:secret@), or the Hub's
    ?secret= (or ?token=) in the URL."""
    if headers.get("X-Webhook-Secret"):
        return headers["X-Webhook-Secret"]
    auth = headers.get("Authorization") or ""
    if auth.startswith("Basic "):
        try:
            return base64.b64decode(auth[6:]).decode().partition(":")[2]
        except ValueError:
            return None
    if auth:
        return auth.removeprefix("Bearer ").strip()
    return (query.get("secret") or query.get("token") or [None])[0]


def check_secret(presented: str | None, expected: str | None, what: str) -> None:
    if not expected:
        raise Refused(503, f"no {what} secret is configured: every {what} delivery is refused")
    if not presented or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Refused(401, f"wrong or missing {what} secret")


def confirm_subscription(body: dict, cfg: S3Hooks) -> str:
    """Confirm an SNS subscription of an allowed topic by fetching its SubscribeURL (an SNS host only)."""
    topic, url = body.get("TopicArn"), body.get("SubscribeURL") or ""
    if topic not in cfg.sns_topics:
        raise Refused(422, f"SNS topic {topic} is not one of s3.sns_topics")
    host = urllib.parse.urlsplit(url).hostname or ""
    if not (SNS_HOST.match(host) or host in cfg.sns_hosts):
        raise Refused(400, f"SubscribeURL host {host!r} is not SNS")
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - an SNS host, checked above
        answer.read()
    return f"confirmed the SNS subscription of {topic}"


# -------------------------------------------------------------------------------------------- sending


class Deliveries:
    """Revisions already sent, per dataset, kept on disk: a redelivery is acknowledged, not sent again."""

    def __init__(self, path: Path, send: Callable[[str, str, str], str]) -> None:
        self.path, self.send, self.lock = path, send, threading.Lock()
        self.seen: dict[str, list[str]] = json.loads(path.read_text()) if path.is_file() else {}

    def deliver(self, dataset: str, revision: str, source: str) -> str:
        with self.lock:
            if revision in self.seen.get(dataset, []):
                return "already delivered"
            try:
                self.send(dataset, revision, source)
            except Exception as e:
                raise Refused(502, f"the Prefect API did not take the event ({type(e).__name__})") from None
            self.seen[dataset] = [*self.seen.get(dataset, []), revision][-KEPT_REVISIONS:]
            atomic_write_json(self.path, self.seen)  # recorded only once the API accepted it
            return "sent"


def send_event(dataset: str, revision: str, source: str) -> str:
    from nerflow.flows.watcher import send_dataset_updated

    return send_dataset_updated(dataset, revision, source)


class Receiver:
    """What the HTTP handler asks: a delivery's path, headers and body in, (status, answer) out."""

    def __init__(self, config: HooksConfig, deliveries: Deliveries, secrets: dict[str, str | None]) -> None:
        self.config, self.deliveries, self.secrets = config, deliveries, secrets

    def handle(self, path: str, headers, raw: bytes) -> tuple[int, dict[str, Any]]:
        url = urllib.parse.urlsplit(path)
        if url.path not in ("/hub", "/s3"):
            raise Refused(404, f"no such endpoint {url.path}")
        kind = url.path[1:]
        check_secret(presented_secret(headers, urllib.parse.parse_qs(url.query)), self.secrets[kind], kind)
        try:
            body = json.loads(raw)
        except ValueError:
            raise Refused(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise Refused(400, "the body is not a JSON object")
        if kind == "s3" and body.get("Type") == "SubscriptionConfirmation":
            return 200, {"ignored": confirm_subscription(body, self.config.s3)}
        updates, ignored = (
            hub_updates(body, self.config.hub)
            if kind == "hub"
            else (s3_updates(s3_records(body), self.config.s3), None)
        )
        if ignored or not updates:
            return 200, {"ignored": ignored or "no object changes"}
        results = [
            {"dataset": d, "revision": r, "source": s, "outcome": self.deliveries.deliver(d, r, s)}
            for d, r, s in updates
        ]
        return 200, {"deliveries": results}


def _describe(status: int, answer: dict) -> str:
    if "deliveries" in answer:
        return "; ".join(
            f"{d['outcome']}: {d['dataset']} revision {d['revision']} ({d['source']})" for d in answer["deliveries"]
        )
    return f"ignored: {answer['ignored']}" if "ignored" in answer else f"refused {status}: {answer.get('error')}"


def make_handler(receiver: Receiver, max_body: int):
    class Handler(BaseHTTPRequestHandler):
        server_version = "nerflow-hooks"

        def do_GET(self):
            status, answer = (200, {"ok": True}) if self.path == "/health" else (405, {"error": "POST deliveries"})
            self._answer(status, answer, log_it=status != 200)

        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length") or -1)
                if length < 0:
                    raise Refused(411, "a Content-Length is required")
                if length > max_body:
                    raise Refused(413, f"body of {length} bytes is over the {max_body}-byte limit")
                status, answer = receiver.handle(self.path, self.headers, self.rfile.read(length))
            except Refused as r:
                status, answer = r.status, {"error": r.reason}
            except ValueError:
                status, answer = 400, {"error": "a malformed request"}
            self._answer(status, answer)

        def _answer(self, status: int, answer: dict, log_it: bool = True) -> None:
            if log_it:  # before answering: the line is there once the source has its answer
                where = urllib.parse.urlsplit(self.path).path  # never the query: it may hold a token
                log.info("%s %s: %s", self.command, where, _describe(status, answer))
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # one line per delivery is ours (above), not http.server's
            pass

    return Handler


def serve_hooks(config_path: Path, host: str, port: int, state_dir: Path) -> ThreadingHTTPServer:
    """The receiver, bound and ready to serve_forever()."""
    config = load_config(config_path)
    secrets = {
        "hub": resolve_secret(config.hub.secret_block, HUB_SECRET_ENV),
        "s3": resolve_secret(config.s3.secret_block, S3_SECRET_ENV),
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    deliveries = Deliveries(state_dir / config.state_file, send_event)
    server = ThreadingHTTPServer(
        (host, port), make_handler(Receiver(config, deliveries, secrets), config.max_body_bytes)
    )
    for kind, secret in secrets.items():
        if not secret:
            log.warning("no %s secret configured: %s deliveries are refused (503)", kind, kind)
    return server
