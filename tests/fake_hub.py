"""A stand-in for the Hugging Face Hub on 127.0.0.1, for tests/test_download.py (no test reaches the internet).

It answers the calls huggingface_hub makes for download_weights.py, the way huggingface.co does:
  GET  /api/models/{repo}[/revision/{rev}]   model info: sha, gated, siblings with size, blobId and LFS sha256
  HEAD/GET /{repo}/resolve/{rev}/{path}      small files: 200, ETag = git blob sha1, X-Repo-Commit;
                                             LFS files: 302 to the "CDN" with X-Linked-Size / X-Linked-Etag
  HEAD/GET /cdn/{sha256}                     the LFS bytes, Range requests answered with 206, served on
                                             http://localhost:PORT: another origin, as the real CDN is
Access as on the Hub: a gated repo answers 401 GatedRepo without a token and 403 GatedRepo to a valid token
without access; an unknown token gets 401 "Invalid credentials"; an unknown repo 401/404 RepoNotFound.
Faults for the tests, on the first CDN file longer than the offset: `cut_at` (close the connection at that byte,
then stay down: `outage`), `stall_at` (send up to that byte, then hang until `release` is set); and `corrupt`
(flip the first byte of every CDN file).
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

GRANTED_TOKEN = "hf_fakeGrantedToken0123456789abcdef"  # has accepted the license
PENDING_TOKEN = "hf_fakePendingToken0123456789abcdef"  # valid account, access not granted (yet)
LFS_SUFFIXES = (".pth", ".safetensors", ".model", ".bin")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    files: dict[str, bytes]
    gated: bool = False
    advertised_size: dict[str, int] = field(default_factory=dict)  # lie about sizes (disk-space test)
    sha: str = "0123456789abcdef0123456789abcdef01234567"

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def size(self, path: str) -> int:
        return self.advertised_size.get(path, len(self.files[path]))

    def sibling(self, path: str) -> dict:
        data = self.files[path]
        s = {"rfilename": path, "size": self.size(path)}
        if self.is_lfs(path):
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            s["blobId"] = git_blob_sha1(pointer.encode())
            s["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": self.size(path), "pointerSize": 134}
        else:
            s["blobId"] = git_blob_sha1(data)
        return s


@dataclass
class Request:
    method: str
    path: str
    host: str
    auth: str | None
    range: str | None


class FakeHub:
    """Start with `with FakeHub(repos) as hub:`; `hub.endpoint` is the HF_ENDPOINT to use."""

    def __init__(self, repos: dict[str, Repo]):
        self.repos = repos
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.hub = self
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.stalled, self.release = threading.Event(), threading.Event()
        self.reset()

    def reset(self) -> None:
        self.log: list[Request] = []
        self.cut_at = self.stall_at = None
        self.outage = self.corrupt = False
        self.stalled.clear()
        self.release.clear()

    def lfs_blob(self, sha256: str) -> bytes | None:
        for repo in self.repos.values():
            for path, data in repo.files.items():
                if repo.is_lfs(path) and hashlib.sha256(data).hexdigest() == sha256:
                    return data
        return None

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real Hub

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self.route(head=True)

    def do_GET(self):
        self.route(head=False)

    # --- plumbing ---

    def reply(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def error(self, status: int, code: str | None, message: str, head: bool):
        headers = {"X-Error-Message": message, "Content-Type": "application/json"}
        if code:
            headers["X-Error-Code"] = code
        self.reply(status, json.dumps({"error": message}).encode(), headers, head)

    def who(self) -> str | None:
        """None (no token), the token if the Hub knows it, or 'invalid'."""
        auth = self.headers.get("Authorization")
        if auth is None:
            return None
        token = auth.removeprefix("Bearer ")
        return token if token in (GRANTED_TOKEN, PENDING_TOKEN) else "invalid"

    def route(self, head: bool):
        hub: FakeHub = self.server.hub
        path = unquote(urlsplit(self.path).path)
        hub.log.append(Request(self.command, path, self.headers.get("Host", ""), self.headers.get("Authorization"),
                               self.headers.get("Range")))
        if hub.outage:  # the network is down: drop the connection without an answer
            self.close_connection = True
            return
        if path.startswith("/cdn/"):
            return self.cdn(path.removeprefix("/cdn/"), head)
        if self.who() == "invalid":
            return self.error(401, None, "Invalid credentials in Authorization header", head)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            return self.model_info(m[1], head)
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self.resolve(m[1], m[2], m[3], head)
        self.error(404, None, "Not found", head)

    def find_repo(self, repo_id: str, head: bool) -> Repo | None:
        repo = self.server.hub.repos.get(repo_id)
        if repo is None:  # the Hub answers 401 to anonymous requests, so as not to reveal private repos
            self.error(401 if self.who() is None else 404, "RepoNotFound", "Repository not found", head)
        return repo

    # --- endpoints ---

    def model_info(self, repo_id: str, head: bool):
        if (repo := self.find_repo(repo_id, head)) is None:
            return
        info = {"_id": "fake", "id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                "gated": "manual" if repo.gated else False, "disabled": False,
                "siblings": [repo.sibling(p) for p in sorted(repo.files)]}
        self.reply(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)

    def resolve(self, repo_id: str, revision: str, path: str, head: bool):
        if (repo := self.find_repo(repo_id, head)) is None:
            return
        if revision not in ("main", repo.sha):
            return self.error(404, "RevisionNotFound", "Invalid rev id", head)
        if repo.gated and self.who() is None:
            return self.error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it "
                              "and be authenticated to access it. Please log in.", head)
        if repo.gated and self.who() == PENDING_TOKEN:
            return self.error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the "
                              f"authorized list. Visit {self.server.hub.endpoint}/{repo_id} to ask for access.", head)
        if path not in repo.files:
            return self.error(404, "EntryNotFound", "Entry not found", head)
        data, common = repo.files[path], {"X-Repo-Commit": repo.sha}
        if repo.is_lfs(path):
            sha256 = hashlib.sha256(data).hexdigest()
            location = f"http://localhost:{self.server.hub.port}/cdn/{sha256}?Expires=9999999999&Signature=fake"
            return self.reply(302, b"", {**common, "Location": location, "ETag": f'"{repo.sibling(path)["blobId"]}"',
                                         "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": repo.size(path)}, head)
        self.serve(data, {**common, "ETag": f'"{git_blob_sha1(data)}"'}, head)

    def cdn(self, sha256: str, head: bool):
        hub: FakeHub = self.server.hub
        data = hub.lfs_blob(sha256)
        if data is None:
            return self.error(404, None, "NoSuchKey", head)
        if hub.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        self.serve(data, {"ETag": f'"{sha256}"'}, head, faults=True)

    def serve(self, data: bytes, headers: dict, head: bool, faults: bool = False):
        """200 with the whole body, or 206 for `Range: bytes=START-[END]`; applies the hub's faults."""
        hub: FakeHub = self.server.hub
        start, end, status = 0, len(data) - 1, 200
        if m := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):
            start, end, status = int(m[1]), int(m[2]) if m[2] else len(data) - 1, 206
            if start >= len(data):
                return self.error(416, None, "Range Not Satisfiable", head)
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
        body = data[start:end + 1]
        self.send_response(status)
        for k, v in {**headers, "Accept-Ranges": "bytes", "Content-Length": len(body)}.items():
            self.send_header(k, str(v))
        self.end_headers()
        if head:
            return
        if faults and hub.cut_at is not None and start < hub.cut_at < len(data):
            self.wfile.write(body[:hub.cut_at - start])
            self.wfile.flush()
            hub.cut_at, hub.outage = None, True  # the line goes down and stays down
            self.close_connection = True
            return
        if faults and hub.stall_at is not None and start < hub.stall_at < len(data):
            self.wfile.write(body[:hub.stall_at - start])
            self.wfile.flush()
            hub.stall_at = None
            hub.stalled.set()
            hub.release.wait(60)
            self.close_connection = True
            return
        self.wfile.write(body)
