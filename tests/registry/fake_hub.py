"""A tiny in-process Hugging Face Hub for offline tests of the hf:// backend.

It implements exactly the endpoints huggingface_hub 2.x uses for what scope-hub does
(read from the installed huggingface_hub source): repo create / info, preupload, NDJSON commits
with ``parentCommit`` optimistic concurrency (412 when the branch moved), tags, refs, tree and
commit listings, and ``resolve`` HEAD/GET with the headers ``hf_hub_download`` needs (ETag,
X-Repo-Commit, Content-Length; X-Linked-Etag / X-Linked-Size for LFS files; X-Error-Code on
404s). State lives in memory; every request is recorded in ``hub.requests`` so tests can count
them.

Uploads follow the Hub's two paths. Files under :attr:`FakeHub.lfs_threshold` (10 MiB, the
Hub's) are "regular": they travel base64 inside the commit. Larger ones take the LFS batch
path: preupload answers ``lfs``, the client POSTs ``{repo}.git/info/lfs/objects/batch``, PUTs
the object to the href it was given (the server checks its sha256), and the commit then names
it by ``lfsFile`` oid; a commit naming an object never uploaded is refused, as on the Hub.
huggingface_hub sends LFS files through Xet instead whenever ``hf_xet`` is installed; the Xet
protocol (a content-addressed chunk store behind a token service) is not reproduced here, so
tests that push LFS-sized files set ``huggingface_hub.constants.HF_HUB_DISABLE_XET`` (the
client's documented switch, ``HF_HUB_DISABLE_XET=1``), which makes it use the LFS path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, bytes]
    title: str
    date: str
    lfs: set[str] = field(default_factory=set)
    """Paths whose bytes were committed as LFS objects."""


LFS_THRESHOLD = 10 * 1024 * 1024
"""Files at least this big are uploaded through LFS (the Hub's threshold for regular files)."""


@dataclass
class Repo:
    repo_id: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    private: bool | None = None

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision) or self.tags.get(revision) or revision
        return self.commits.get(oid)


class FakeHub:
    """Start with :meth:`start`, point ``HF_ENDPOINT`` at :attr:`url`, stop with :meth:`stop`."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.counter = 0
        self.server: ThreadingHTTPServer | None = None
        self.lfs_threshold = LFS_THRESHOLD
        self.lfs_objects: dict[str, bytes] = {}
        """sha256 hex -> bytes uploaded through the LFS path."""

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def new_commit(self, repo: Repo, parent: str | None, files: dict[str, bytes], title: str) -> Commit:
        self.counter += 1
        oid = hashlib.sha1(f"{repo.repo_id}/{self.counter}/{parent}".encode()).hexdigest()
        date = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        commit = Commit(oid, parent, files, title, date)
        repo.commits[oid] = commit
        return commit

    def commit_files(self, repo_id: str, files: dict[str, bytes | None], title: str, branch: str = "main") -> str:
        """Commit ``files`` (None deletes a path) on top of ``branch``, creating the repo if needed;
        returns the new commit id (for seeding repos the way a publisher would)."""
        with self.lock:
            repo = self.repos.get(repo_id) or self.create_repo(repo_id)
            head = repo.branches.get(branch) or repo.branches["main"]
            merged = dict(repo.commits[head].files)
            for path, data in files.items():
                if data is None:
                    merged.pop(path, None)
                else:
                    merged[path] = data
            commit = self.new_commit(repo, head, merged, title)
            repo.branches[branch] = commit.oid
            return commit.oid

    def downloaded(self, repo_id: str) -> set[str]:
        """Paths of ``repo_id`` whose bytes were requested (``resolve`` GET or HEAD), any revision."""
        out = set()
        for _, path in self.requests:
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if parts[0] == "datasets":
                parts = parts[1:]
            if len(parts) >= 4 and parts[2] == "resolve" and f"{parts[0]}/{parts[1]}" == repo_id:
                out.add("/".join(parts[4:]))
        return out

    def create_repo(self, repo_id: str, private: bool | None = None) -> Repo:
        repo = Repo(repo_id, private=private)
        first = self.new_commit(
            repo, None, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, "initial commit"
        )
        repo.branches["main"] = first.oid
        self.repos[repo_id] = repo
        return repo


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without NODELAY, delayed ACKs add ~40 ms each
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- plumbing -------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(
        self, status: int, code: str | None, message: str, head: bool = False, extra: dict | None = None
    ) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # a streamed PUT
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _route(self, method: str) -> None:
        split = urlsplit(self.path)
        self.hub.requests.append((method, split.path))
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        query = parse_qs(split.query)
        with self.hub.lock:
            if parts[0] == "lfs-upload" and method == "PUT":
                return self._lfs_put(parts[1])
            if len(parts) >= 6 and parts[-4:] == ["info", "lfs", "objects", "batch"]:
                return self._lfs_batch(json.loads(self._body()))
            if parts[:3] == ["api", "repos", "create"]:
                return self._create(json.loads(self._body()))
            if parts[0] == "api" and len(parts) >= 4 and parts[1] in ("models", "datasets"):
                return self._api(method, f"{parts[2]}/{parts[3]}", parts[4:], query)
            if parts[0] == "datasets":
                parts = parts[1:]
            if len(parts) >= 4 and parts[2] == "resolve":
                return self._resolve(method, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        self._error(404, None, f"no route for {self.path}")

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    # -- endpoints ------------------------------------------------------------------------
    def _create(self, payload: dict) -> None:
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if repo_id in self.hub.repos:
            return self._error(409, None, "You already created this model repo")
        visibility = payload.get("visibility")  # huggingface_hub 2.x; older clients sent "private"
        private = visibility == "private" if visibility is not None else payload.get("private")
        self.hub.create_repo(repo_id, private=private)
        self._json(200, {"url": f"{self.hub.url}/{repo_id}"})

    def _api(self, method: str, repo_id: str, rest: list[str], query: dict) -> None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._body()
            return self._error(404, "RepoNotFound", "Repository not found")
        action = rest[0] if rest else "revision"
        revision = rest[1] if len(rest) > 1 else "main"
        if action == "refs":
            return self._json(
                200,
                {
                    "branches": [
                        {"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in repo.branches.items()
                    ],
                    "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": o} for t, o in repo.tags.items()],
                    "converts": [],
                },
            )
        commit = repo.resolve(revision)
        if commit is None:
            self._body()
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if action == "revision":
            return self._json(
                200, {"id": repo_id, "sha": commit.oid, "siblings": [{"rfilename": p} for p in sorted(commit.files)]}
            )
        if action == "preupload":
            files = json.loads(self._body())["files"]
            mode = lambda f: "lfs" if f["size"] >= self.hub.lfs_threshold else "regular"  # noqa: E731
            return self._json(
                200, {"files": [{"path": f["path"], "uploadMode": mode(f), "shouldIgnore": False} for f in files]}
            )
        if action == "commit":
            return self._commit(repo, revision, self._body())
        if action == "tag":
            return self._tag(repo, commit, json.loads(self._body()))
        if action == "tree":
            return self._tree(commit, "/".join(rest[2:]), query)
        if action == "commits":
            return self._commits(repo, commit)
        self._error(404, None, f"unknown action {action}")

    def _commit(self, repo: Repo, branch: str, body: bytes) -> None:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = lines[0]["value"]
        head = repo.branches.get(branch)
        if head is None:
            return self._error(404, "RevisionNotFound", f"branch {branch} not found")
        parent = header.get("parentCommit")
        if parent is not None and parent != head:
            return self._error(412, None, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[head].files)
        lfs = set(repo.commits[head].lfs)
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                lfs.discard(value["path"])
            elif line["key"] == "lfsFile":
                data = self.hub.lfs_objects.get(value["oid"])
                if data is None or len(data) != value["size"]:
                    return self._error(400, None, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = data
                lfs.add(value["path"])
            elif line["key"] == "deletedFile":
                files.pop(value["path"], None)
            elif line["key"] == "deletedFolder":
                files = {p: b for p, b in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                return self._error(400, None, f"unsupported operation {line['key']} (this fake hub has no LFS)")
        commit = self.hub.new_commit(repo, head, files, header["summary"])
        repo.branches[branch] = commit.oid
        commit.lfs = lfs & set(files)
        self._json(200, {"commitUrl": f"{self.hub.url}/{repo.repo_id}/commit/{commit.oid}", "commitOid": commit.oid})

    def _lfs_batch(self, payload: dict) -> None:
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.hub.lfs_objects:  # already stored: no actions, nothing to send
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects})

    def _lfs_put(self, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, None, "uploaded bytes do not match the LFS oid")
        self.hub.lfs_objects[oid] = data
        self._send(200)

    def _tag(self, repo: Repo, commit: Commit, payload: dict) -> None:
        if payload["tag"] in repo.tags:
            return self._error(409, None, "Tag already exists")
        repo.tags[payload["tag"]] = commit.oid
        self._json(200, {})

    def _tree(self, commit: Commit, prefix: str, query: dict) -> None:
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        base = prefix.strip("/") + "/" if prefix.strip("/") else ""
        entries, folders = [], set()
        for path, data in sorted(commit.files.items()):
            if not path.startswith(base):
                continue
            tail = path[len(base) :]
            if "/" in tail and not recursive:
                folders.add(base + tail.split("/")[0])
                continue
            entries.append({"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()})
        entries += [{"type": "directory", "path": f, "oid": "0" * 40} for f in sorted(folders)]
        self._json(200, entries)

    def _commits(self, repo: Repo, commit: Commit) -> None:
        out = []
        while commit is not None:
            out.append(
                {
                    "id": commit.oid,
                    "title": commit.title,
                    "message": "",
                    "authors": [{"user": "test"}],
                    "date": commit.date,
                }
            )
            commit = repo.commits.get(commit.parent) if commit.parent else None
        self._json(200, out)

    def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> None:
        head = method == "HEAD"
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found", head=head)
        commit = repo.resolve(revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
        data = commit.files.get(path)
        if data is None:
            return self._error(
                404, "EntryNotFound", f"{path} does not exist", head=head, extra={"X-Repo-Commit": commit.oid}
            )
        etag = hashlib.sha1(
            b"blob %d\0" % len(data) + data
        ).hexdigest()  # git blob id, as the Hub sends for regular files
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": commit.oid, "Content-Type": "application/octet-stream"}
        if path in commit.lfs:
            sha = hashlib.sha256(data).hexdigest()  # LFS files are named by their sha256, as on the Hub
            headers.update({"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
        self._send(200, data, headers, head=head)
