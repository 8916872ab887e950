"""A small Hugging Face Hub API server for tests: only what the real `huggingface_hub` client calls.

The Hub cannot be reached from CI and no Hub-compatible server is installable, so publish tests run
the real client (HF_ENDPOINT pointed here, HF_HUB_DISABLE_XET=1) against this server on 127.0.0.1.

Implemented: whoami, repo create (409 when it exists), validate-yaml, preupload, commit (NDJSON,
regular and LFS files), the LFS batch API and object upload, repo info, recursive tree, and resolve
(HEAD and GET) for downloads. Model repos only. Tokens are checked on every request; a private repo
is invisible without its owner's token. `fail_next` injects error statuses per endpoint,
`served_instead` makes downloads of a path return other bytes, and `requests` records
(method, endpoint, status) so tests can see retries.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".png", ".gguf", ".pt")


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


@dataclass
class Repo:
    owner: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)  # paths stored through LFS
    commits: list[str] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


@dataclass
class HubState:
    tokens: dict[str, str]  # token -> user name
    repos: dict[str, Repo] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)
    fail_next: dict[str, list[int]] = field(default_factory=dict)  # endpoint -> statuses to return first
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    served_instead: dict[str, bytes] = field(default_factory=dict)  # path -> bytes downloads get (tampering)
    lock: threading.Lock = field(default_factory=threading.Lock)


ROUTES = [  # (method, pattern, endpoint name); repo ids are OWNER/NAME
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/repos/create", "create"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)", "commit"),
    ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?", "info"),
    ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?P<path>/.*)?", "tree"),
    ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/lfs-objects/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
    ("HEAD", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("GET", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]


class HubError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    state: HubState  # set on the subclass made by `serve`

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        routed = next(((name, match) for route_method, pattern, name in ROUTES
                       if route_method == method and (match := re.fullmatch(pattern, path))), None)
        if routed is None:
            self._send(404, {"error": f"no route for {method} {path}"})
            return
        name, match = routed
        body = self._body()
        with self.state.lock:
            injected = self.state.fail_next.get(name)
            status = injected.pop(0) if injected else None
        if status:
            self._record(name, status)
            self._send(status, {"error": f"injected {status}"})
            return
        try:
            with self.state.lock:
                status, payload, headers = getattr(self, f"_{name}")(match.groupdict(), body, url.query)
        except HubError as error:
            status, payload, headers = error.status, {"error": str(error)}, {}
        self._record(name, status)
        self._send(status, payload, headers, head=method == "HEAD")

    def _record(self, name: str, status: int) -> None:
        with self.state.lock:
            self.state.requests.append((self.command, name, status))

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload, headers: dict | None = None, head: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes)
                         else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    # --- helpers -------------------------------------------------------------------------------

    def _user(self, required: bool = True) -> str | None:
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None
        user = self.state.tokens.get(token) if token else None
        if required and user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _repo(self, repo_id: str, write: bool = False) -> Repo:
        repo = self.state.repos.get(repo_id)
        user = self._user(required=write)
        if repo is None or (repo.private and user != repo.owner):
            raise HubError(404 if not write or repo is None else 403, f"Repository {repo_id} not found")
        if write and user != repo.owner:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    @staticmethod
    def _revision(repo: Repo, rev: str | None) -> str:
        rev = unquote(rev or "main")
        if rev not in ("main", repo.sha):
            raise HubError(404, f"Revision not found: {rev}")
        return repo.sha

    def _file_entry(self, repo: Repo, path: str) -> dict:
        content = repo.files[path]
        entry = {"type": "file", "path": path, "size": len(content)}
        if path in repo.lfs:
            oid = hashlib.sha256(content).hexdigest()
            pointer = lfs_pointer(oid, len(content))
            entry |= {"oid": git_blob_sha1(pointer), "lfs": {"oid": oid, "size": len(content),
                                                              "pointerSize": len(pointer)}}
        else:
            entry["oid"] = git_blob_sha1(content)
        return entry

    # --- endpoints -----------------------------------------------------------------------------

    def _whoami(self, params, body, query):
        user = self._user()
        return 200, {"type": "user", "name": user, "auth": {"type": "access_token",
                                                             "accessToken": {"role": "write"}}}, {}

    def _create(self, params, body, query):
        user = self._user()
        request = json.loads(body)
        repo_id = f"{request.get('organization') or user}/{request['name']}"
        url = f"http://{self.headers['Host']}/{repo_id}"
        if repo_id in self.state.repos:
            return 409, {"error": "You already created this model repo", "url": url}, {}
        if repo_id.split("/")[0] != user:
            raise HubError(403, f"You cannot create repositories under {repo_id.split('/')[0]}")
        self.state.repos[repo_id] = Repo(owner=user, private=request.get("visibility", "private") != "public")
        return 200, {"url": url, "name": repo_id}, {}

    def _validate_yaml(self, params, body, query):
        self._user()
        return 200, {"errors": [], "warnings": []}, {}

    def _preupload(self, params, body, query):
        repo = self._repo(params["repo"], write=True)
        files = []
        for item in json.loads(body)["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["path"].endswith(LFS_SUFFIXES) or b"\0" in sample or item["size"] > 10_000_000
            current = repo.files.get(item["path"])
            oid = self._file_entry(repo, item["path"])["oid"] if current is not None else None
            files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular",
                          "shouldIgnore": False, "oid": oid})
        return 200, {"files": files, "commitOid": repo.sha}, {}

    def _lfs_batch(self, params, body, query):
        self._repo(params["repo"], write=True)
        request = json.loads(body)
        base = f"http://{self.headers['Host']}"
        objects = []
        for item in request["objects"]:
            entry = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.state.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{base}/lfs-objects/{item['oid']}", "header": {}}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {}

    def _lfs_upload(self, params, body, query):
        if hashlib.sha256(body).hexdigest() != params["oid"]:
            raise HubError(400, "uploaded content does not match its sha256")
        self.state.lfs_objects[params["oid"]] = body
        return 200, {}, {}

    def _commit(self, params, body, query):
        repo = self._repo(params["repo"], write=True)
        self._revision(repo, params["rev"])
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                repo.files[value["path"]] = base64.b64decode(value["content"])
                repo.lfs.discard(value["path"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.state.lfs_objects:
                    raise HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                repo.files[value["path"]] = self.state.lfs_objects[value["oid"]]
                repo.lfs.add(value["path"])
            elif line["key"] == "deletedFile":
                repo.files.pop(value["path"], None)
        sha = hashlib.sha1(repo.sha.encode() + body).hexdigest()
        repo.commits.append(sha)
        return 200, {"commitUrl": f"http://{self.headers['Host']}/{params['repo']}/commit/{sha}",
                     "commitOid": sha, "success": True}, {}

    def _info(self, params, body, query):
        repo = self._repo(params["repo"])
        sha = self._revision(repo, params.get("rev"))
        return 200, {"id": params["repo"], "modelId": params["repo"], "sha": sha, "private": repo.private,
                     "siblings": [{"rfilename": path} for path in sorted(repo.files)]}, {}

    def _tree(self, params, body, query):
        repo = self._repo(params["repo"])
        self._revision(repo, params["rev"])
        prefix = (params.get("path") or "").strip("/")
        return 200, [self._file_entry(repo, path) for path in sorted(repo.files)
                     if not prefix or path.startswith(prefix + "/")], {}

    def _resolve(self, params, body, query):
        repo = self._repo(params["repo"])
        sha = self._revision(repo, params["rev"])
        path = params["path"]
        if path not in repo.files:
            raise HubError(404, f"Entry not found: {path}")
        entry = self._file_entry(repo, path)
        etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"'}
        if "lfs" in entry:
            headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(entry["size"])}
        return 200, self.state.served_instead.get(path, repo.files[path]), headers


def serve(tokens: dict[str, str]) -> tuple[ThreadingHTTPServer, HubState]:
    """Start the server on a free port of 127.0.0.1 in a daemon thread; the caller shuts it down."""
    state = HubState(tokens=tokens)
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state
