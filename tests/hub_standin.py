"""A small local stand-in for the Hugging Face Hub API, enough for the real huggingface_hub client to
create a repo, validate a card, preupload, commit (to main with a parent-commit check, or as a pull
request), list commits, files and pull requests, tag, read repo info and download files (so a model
repo can serve a tokenizer to transformers).

It listens on 127.0.0.1 only, keeps repos in memory, checks a bearer token, and can be told to fail
the next N requests to an endpoint with a status code, or to drop the next N connections without an
answer (to test retries).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import yaml


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    title: str
    message: str
    files: dict[str, bytes]
    date: str


@dataclass
class PullRequest:
    title: str
    date: str
    commits: list[Commit] = field(default_factory=list)  # pushed to refs/pr/N

    def summary(self, repo_id: str, num: int) -> dict:
        return {"num": num, "title": self.title, "status": "open", "isPullRequest": True, "author": {"name": "nerflow"},
                "createdAt": self.date, "repo": {"name": repo_id, "type": "model"}}  # fmt: skip

    def details(self, repo_id: str, num: int) -> dict:
        return self.summary(repo_id, num) | {
            "events": [],
            "changes": {"base": "refs/heads/main"},
            "filesWithConflicts": [],
            "diff": "",
        }


@dataclass
class Repo:
    private: bool
    gated: bool = False  # answers as the Hub does a gated repo whose terms the token's user has not accepted
    commits: list[Commit] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: list[PullRequest] = field(default_factory=list)

    def discussions(self, repo_id: str) -> list[dict]:
        return [pr.summary(repo_id, n) for n, pr in enumerate(self.pull_requests, start=1)]

    @property
    def files(self) -> dict[str, bytes]:
        return self.commits[-1].files if self.commits else {}

    @property
    def sha(self) -> str:
        return self.commits[-1].oid if self.commits else "0" * 40


class HubStandIn:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str] = []
        self._failures: list[list] = []  # [method, path fragment, status, remaining]
        self._drops = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail_next(self, method: str, fragment: str, status: int, times: int) -> None:
        with self._lock:
            self._failures.append([method, fragment, status, times])

    def drop_next_connections(self, times: int) -> None:
        """The next `times` requests get no answer: the connection is closed after the request line."""
        with self._lock:
            self._drops = times

    def add_model_repo(self, repo_id: str, files: dict[str, bytes]) -> Repo:
        """A repo with one commit holding files (a model checkpoint to download)."""
        repo = self.repos[repo_id] = Repo(private=False)
        repo.commits.append(
            Commit(oid=uuid.uuid4().hex + uuid.uuid4().hex[:8], title="init", message="", files=files, date=_now())
        )
        return repo

    def commits(self, repo_id: str) -> list[Commit]:
        return self.repos[repo_id].commits

    # ------------------------------------------------------------------------------------------------

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _send(self, status: int, payload=None, raw: bytes | None = None, headers: dict | None = None):
                body = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, status: int, message: str):
                self._send(status, {"error": message}, headers={"X-Error-Message": message})

            def _no_repo(self):
                # The real Hub says which 404 this is; huggingface_hub raises RepositoryNotFoundError on it.
                self._send(
                    404,
                    {"error": "Repository not found"},
                    headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
                )

            def _injected_failure(self) -> bool:
                with hub._lock:
                    for failure in hub._failures:
                        method, fragment, status, remaining = failure
                        if remaining > 0 and self.command == method and fragment in self.path:
                            failure[3] -= 1
                            self._error(status, "injected failure")
                            return True
                return False

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization", "")
                hub.authorizations.append(auth)
                return auth == f"Bearer {hub.token}"

            def _dropped(self) -> bool:
                with hub._lock:
                    if hub._drops <= 0:
                        return False
                    hub._drops -= 1
                self.close_connection = True
                self.connection.close()
                return True

            def _route(self):
                if self._dropped():
                    return
                body = self._body() if self.command == "POST" else b""
                hub.requests.append((self.command, self.path))
                if self._injected_failure():
                    return
                if not self._authorized():
                    return self._error(401, "Invalid credentials in Authorization header")
                path = unquote(urlparse(self.path).path)
                parts = path.strip("/").split("/")
                if path == "/api/repos/create":
                    return self._create(json.loads(body))
                if path == "/api/validate-yaml":
                    return self._validate_yaml(json.loads(body))
                if parts[:2] == ["api", "models"] and len(parts) == 4:
                    parts.append("revision")  # model_info without a revision: the default branch
                if parts[:2] == ["api", "models"] and len(parts) >= 5:
                    repo_id, action, rest = f"{parts[2]}/{parts[3]}", parts[4], parts[5:]
                    repo = hub.repos.get(repo_id)
                    if repo is None:
                        return self._no_repo()
                    if repo.gated:
                        message = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it."
                        return self._send(
                            403, {"error": message}, headers={"X-Error-Code": "GatedRepo", "X-Error-Message": message}
                        )
                    return self._repo_api(repo_id, repo, action, rest, body)
                if len(parts) >= 4 and parts[2] == "resolve":
                    repo = hub.repos.get(f"{parts[0]}/{parts[1]}")
                    if repo is None:
                        return self._no_repo()
                    name = "/".join(parts[4:])
                    if name not in repo.files:
                        return self._send(404, {"error": "Entry not found"}, headers={"X-Error-Code": "EntryNotFound"})
                    data = repo.files[name]
                    return self._send(
                        200,
                        raw=data,
                        headers={"X-Repo-Commit": repo.sha, "ETag": f'"{git_blob_sha1(data)}"'},
                    )
                return self._error(404, f"no route for {self.command} {path}")

            do_GET = do_POST = do_HEAD = do_DELETE = _route

            def _create(self, payload):
                repo_id = (
                    f"{payload.get('organization') or 'user'}/{payload['name']}"
                    if "/" not in payload["name"]
                    else payload["name"]
                )
                if repo_id in hub.repos:
                    return self._send(
                        409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"}
                    )
                # Newer clients send "visibility", older ones "private".
                private = payload.get("visibility", "private" if payload.get("private") else "public") == "private"
                hub.repos[repo_id] = Repo(private=private)
                return self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

            def _validate_yaml(self, payload):
                text = payload.get("content", "")
                try:
                    meta = yaml.safe_load(text.split("---")[1]) if text.startswith("---") else None
                except yaml.YAMLError as e:
                    return self._send(400, {"errors": [{"message": str(e)}]})
                if not isinstance(meta, dict) or "model-index" not in meta:
                    return self._send(400, {"errors": [{"message": "model-index missing"}]})
                return self._send(200, {"warnings": []})

            def _repo_api(self, repo_id, repo: Repo, action, rest, body):
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._send(
                        200,
                        {
                            "files": [
                                {
                                    "path": f["path"],
                                    "uploadMode": "regular",
                                    "shouldIgnore": False,
                                    "oid": git_blob_sha1(repo.files[f["path"]]) if f["path"] in repo.files else None,
                                }
                                for f in files
                            ]
                        },
                    )
                if action == "commit":
                    return self._commit(repo_id, repo, body, rest)
                if action == "discussions":
                    return self._discussions(repo_id, repo, rest, body)
                if action == "commits":
                    return self._send(
                        200,
                        [
                            {
                                "id": c.oid,
                                "title": c.title,
                                "message": c.message,
                                "authors": [{"user": "nerflow"}],
                                "date": c.date,
                            }
                            for c in reversed(repo.commits)
                        ],
                    )
                if action == "revision":
                    return self._send(
                        200,
                        {
                            "id": repo_id,
                            "sha": repo.sha,
                            "private": repo.private,
                            "siblings": [{"rfilename": p} for p in repo.files],
                        },
                    )
                if action == "tree":
                    return self._send(
                        200,
                        [
                            {"type": "file", "path": p, "size": len(d), "oid": git_blob_sha1(d)}
                            for p, d in sorted(repo.files.items())
                        ],
                    )
                if action == "refs":
                    return self._send(200, {
                        "branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.sha}], "converts": [],
                        "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": oid} for t, oid in repo.tags.items()],
                    })  # fmt: skip
                if action == "tag" and self.command == "DELETE":
                    if repo.tags.pop(rest[0], None) is None:
                        return self._error(404, "Tag not found")
                    return self._send(200, {})
                if action == "tag":
                    tag = json.loads(body)["tag"]
                    if tag in repo.tags:
                        return self._error(409, "Tag already exists")
                    repo.tags[tag] = rest[0] if rest else repo.sha
                    return self._send(200, {})
                return self._error(404, f"no repo action {action}")

            def _discussions(self, repo_id, repo: Repo, rest, body: bytes):
                if self.command == "POST" and not rest:  # open a pull request (commits follow to refs/pr/N)
                    payload = json.loads(body)
                    repo.pull_requests.append(PullRequest(title=payload["title"], date=_now()))
                    n = len(repo.pull_requests)
                    return self._send(
                        200,
                        {
                            "num": n,
                            "pullRequest": payload.get("pullRequest", False),
                            "url": f"{hub.url}/{repo_id}/discussions/{n}",
                        },
                    )
                if rest:
                    n = int(rest[0])
                    if not 1 <= n <= len(repo.pull_requests):
                        return self._error(404, f"no discussion {n}")
                    return self._send(200, repo.pull_requests[n - 1].details(repo_id, n))
                found = repo.discussions(repo_id)
                return self._send(
                    200, {"discussions": found, "count": len(found), "start": 0, "numClosedDiscussions": 0}
                )

            def _commit(self, repo_id, repo: Repo, body: bytes, revision: list[str]):
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                header = next(item["value"] for item in lines if item["key"] == "header")
                parent = header.get("parentCommit")
                if parent and parent != repo.sha and "create_pr=1" not in self.path:
                    return self._error(412, f"A commit has happened since {parent}; the branch head is {repo.sha}")
                files = dict(repo.files)
                for item in lines:
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    elif item["key"] in ("deletedFile", "deletedFolder"):
                        files.pop(item["value"]["path"], None)
                    elif item["key"] == "lfsFile":
                        return self._error(400, "this stand-in takes regular files only")
                commit = Commit(
                    oid=uuid.uuid4().hex + uuid.uuid4().hex[:8],
                    title=header["summary"],
                    message=header.get("description", ""),
                    files=files,
                    date=_now(),
                )
                url = {"commitUrl": f"{hub.url}/{repo_id}/commit/{commit.oid}", "commitOid": commit.oid}
                if revision[:2] == ["refs", "pr"]:  # a commit pushed to an open pull request
                    n = int(revision[2])
                    repo.pull_requests[n - 1].commits.append(commit)
                    return self._send(200, url)
                if "create_pr=1" in self.path:  # older clients: the commit opens the pull request itself
                    repo.pull_requests.append(PullRequest(title=commit.title, date=commit.date, commits=[commit]))
                    return self._send(
                        200, url | {"pullRequestUrl": f"{hub.url}/{repo_id}/discussions/{len(repo.pull_requests)}"}
                    )
                repo.commits.append(commit)
                return self._send(200, url)

        return Handler
