"""A stand-in for the Kubernetes API server's InferenceService resource, on loopback, for the real `kubernetes` and
`kserve` clients: GET (one or the list), POST, PATCH, PUT and DELETE under
/apis/serving.kserve.io/v1beta1/namespaces/NS/inferenceservices[/NAME].

It keeps what the rollout depends on: a PATCH applies JSON merge patch (RFC 7386) with the json-merge-patch library,
an implementation independent of the deploy step's, and answers 415 to any other patch type; `metadata.generation`
moves when the spec changes, `metadata.resourceVersion` on every write; a PUT or PATCH naming a stale resourceVersion
gets 409; `status` is a subresource, so writes to the object leave it alone. The test plays the controller: the
`on_write` hook may set the status of each object just written, and `set_status` moves it at any time. `history`
keeps each object as written, for a test to check the order of the writes.
"""

from __future__ import annotations

import copy
import http.server
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import json_merge_patch
import yaml

PATH = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices(?:/([^/]+))?$")
MERGE_PATCH = "application/merge-patch+json"


class Refused(Exception):
    """An answer other than success: the HTTP status, the Kubernetes reason and the message."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason = code, reason


class ApiServer:
    """The stored InferenceServices by (namespace, name), served on 127.0.0.1 while used as a context manager."""

    def __init__(self, on_write: Callable[[dict], None] | None = None):
        self.objects: dict[tuple[str, str], dict] = {}
        self.history: list[dict] = []
        self.on_write = on_write
        self.lock = threading.Lock()
        self.versions = itertools.count(1)
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_port}"

    def __enter__(self) -> ApiServer:
        threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.http.shutdown()
        self.http.server_close()

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig file whose current context is this server, as `kubectl` and the clients read it."""
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "stand-in", "user": {"token": "stand-in"}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "stand-in"}}]}))
        return path

    def stored(self, namespace: str, name: str) -> dict | None:
        with self.lock:
            return copy.deepcopy(self.objects.get((namespace, name)))

    def set_status(self, namespace: str, name: str, status: dict) -> None:
        """What the controller reports (a write to the status subresource)."""
        with self.lock:
            isvc = self.objects[(namespace, name)]
            isvc["status"] = copy.deepcopy(status)
            isvc["metadata"]["resourceVersion"] = str(next(self.versions))

    def answer(self, method: str, path: str, content_type: str, body: object) -> tuple[int, object]:
        """(HTTP status, JSON answer) of one request."""
        match = PATH.match(path)
        try:
            if not match:
                raise Refused(404, "NotFound", f"no resource at {path}")
            namespace, name = match.groups()
            with self.lock:
                code, answer = (self._collection(method, namespace, body) if name is None
                                else self._item(method, namespace, name, content_type, body))
                return code, copy.deepcopy(answer)
        except Refused as refused:
            return refused.code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": refused.code,
                                  "reason": refused.reason, "message": str(refused)}

    def _collection(self, method: str, namespace: str, body: object) -> tuple[int, object]:
        if method == "GET":
            items = [isvc for (ns, _), isvc in self.objects.items() if ns == namespace]
            return 200, {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceServiceList",
                         "metadata": {"resourceVersion": str(next(self.versions))}, "items": items}
        if method != "POST":
            raise Refused(405, "MethodNotAllowed", f"{method} on a collection")
        name = body["metadata"]["name"]
        if (namespace, name) in self.objects:
            raise Refused(409, "AlreadyExists", f'inferenceservices.serving.kserve.io "{name}" already exists')
        isvc = copy.deepcopy(body)
        isvc.pop("status", None)
        isvc["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), generation=1,
                                creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return 201, self._store(namespace, name, isvc)

    def _item(self, method: str, namespace: str, name: str, content_type: str, body: object) -> tuple[int, object]:
        old = self.objects.get((namespace, name))
        if old is None:
            raise Refused(404, "NotFound", f'inferenceservices.serving.kserve.io "{name}" not found')
        if method == "GET":
            return 200, old
        if method == "DELETE":
            del self.objects[(namespace, name)]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                         "details": {"name": name, "kind": "inferenceservices"}}
        if method == "PATCH":
            if content_type != MERGE_PATCH:
                raise Refused(415, "UnsupportedMediaType", f"the stand-in applies {MERGE_PATCH} only, "
                                                           f"not {content_type}")
            if not isinstance(body, dict):
                raise Refused(400, "BadRequest", "a merge patch of an object is an object")
            new = json_merge_patch.merge(copy.deepcopy(old), body)
        elif method == "PUT":
            new = copy.deepcopy(body)
            if "resourceVersion" not in new.get("metadata", {}):
                raise Refused(422, "Invalid", "metadata.resourceVersion: must be specified for an update")
        else:
            raise Refused(405, "MethodNotAllowed", f"{method} on an object")
        sent = new["metadata"].get("resourceVersion", old["metadata"]["resourceVersion"])
        if sent != old["metadata"]["resourceVersion"]:
            raise Refused(409, "Conflict", "the object has been modified; please apply your changes to the latest "
                                           "version and try again")
        for key in ("name", "namespace", "uid", "creationTimestamp", "generation"):
            new["metadata"][key] = old["metadata"][key]
        new["metadata"]["generation"] += int(new.get("spec") != old.get("spec"))
        new.pop("status", None)
        if "status" in old:
            new["status"] = old["status"]
        return 200, self._store(namespace, name, new)

    def _store(self, namespace: str, name: str, isvc: dict) -> dict:
        isvc["metadata"]["resourceVersion"] = str(next(self.versions))
        self.objects[(namespace, name)] = isvc
        self.history.append(copy.deepcopy(isvc))
        if self.on_write:
            self.on_write(isvc)
        return isvc


def _handler(server: ApiServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _serve(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            code, answer = server.answer(self.command, self.path.split("?")[0], content_type,
                                         json.loads(raw) if raw else None)
            payload = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        def log_message(self, *args):
            pass

    return Handler
