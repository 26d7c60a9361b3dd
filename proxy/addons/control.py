"""REST control API (aiohttp, same event loop as the proxy; 127.0.0.1 by default).

    GET    /                 what is here
    GET    /fault-types      the catalogue: every fault type, its parameters and defaults
    GET    /faults           active faults          POST /faults   add one (spec) or several (list)
    GET    /faults/{name}    one fault              PATCH          merge into its spec (replaces it)
    DELETE /faults/{name}    remove it              POST /reset    remove all: transparent again
    GET    /connections      live relays: per direction bytes, messages, frames, holds, faults
    GET    /upstreams        the pool: alive, active, total, failures, pid
    PATCH  /upstreams/{i}    {"pid": N} registers a worker's process (worker_crash), {"alive": b},
                             {"url": "ws://..."} points it elsewhere (new connections; with
                             --server-dials: the next client under test's listening port)
    GET    /events?since=SEQ&limit=N&event=NAME   recent events (each has a `seq`)

Errors are JSON `{"error": "..."}` naming what was wrong: 400 for a bad spec (unknown
type, bad parameter, bad selector), 404 for an unknown name, 409 for a duplicate name.
Faults apply to new and existing connections at once; a fault that cannot act on a live
connection (a message fault where permessage-deflate was negotiated, a fault that means
nothing in the connection's mode: a drop on a noise session) is still added, and its
answer lists those connections, with why, under `not_applied`. A connection's mode is
known once its client's first message is (`profile` and `mode` in `GET /connections`);
a fault added before that is refused there at that moment (`GET /faults` lists it then).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..faults import FaultSpecError, Selector, build_fault, fault_types
from ..state import ProxyState, Upstream

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), status=status, content_type="application/json")


def _error(status: int, msg: str) -> web.Response:
    return _json({"error": msg}, status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except FaultSpecError as e:
        return _error(400, str(e))
    except web.HTTPException as e:
        if e.status >= 400:
            return _error(e.status, e.reason or "error")
        raise


async def _body(request: web.Request) -> Any:
    raw = await request.text()
    if not raw.strip():
        raise FaultSpecError("empty body: expected a JSON fault spec")
    try:
        return json.loads(raw)
    except ValueError as e:
        raise FaultSpecError(f"body is not valid JSON: {e}") from None


class ControlServer:
    def __init__(self, state: ProxyState, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state
        self.host = host
        self.port = port
        self.runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[_errors])
        r = self.app.router
        r.add_get("/", self.index)
        r.add_get("/fault-types", self.types)
        r.add_get("/faults", self.list_faults)
        r.add_post("/faults", self.add_fault)
        r.add_get("/faults/{name}", self.get_fault)
        r.add_patch("/faults/{name}", self.patch_fault)
        r.add_delete("/faults/{name}", self.delete_fault)
        r.add_post("/reset", self.reset)
        r.add_get("/connections", self.connections)
        r.add_get("/upstreams", self.upstreams)
        r.add_patch("/upstreams/{index}", self.patch_upstream)
        r.add_get("/events", self.events)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # --- handlers -------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.Response:
        return _json({"service": "sendspin-proxy", "endpoints": [
            "GET /fault-types", "GET|POST /faults", "GET|PATCH|DELETE /faults/{name}", "POST /reset",
            "GET /connections", "GET /upstreams", "PATCH /upstreams/{index}", "GET /events?since=SEQ"]})

    async def types(self, request: web.Request) -> web.Response:
        return _json({"types": {k: cls.describe() for k, cls in fault_types().items()},
                      "selector": list(Selector.FIELDS)})

    async def list_faults(self, request: web.Request) -> web.Response:
        return _json({"faults": [f.to_dict() for f in self.state.faults.values()]})

    async def add_fault(self, request: web.Request) -> web.Response:
        body = await _body(request)
        specs = body if isinstance(body, list) else [body]
        faults = []
        for i, spec in enumerate(specs):  # build all first: a bad entry adds nothing
            try:
                faults.append(build_fault(spec))
            except FaultSpecError as e:
                raise FaultSpecError(f"entry {i + 1}: {e}" if len(specs) > 1 else str(e)) from None
        names = [f.name for f in faults if f.named]
        dup = [n for n in names if n in self.state.faults] or [n for n in set(names) if names.count(n) > 1]
        if dup:
            return _error(409, f"a fault named {dup[0]!r} exists already (PATCH or DELETE it)")
        added = [self.state.add_fault(f).to_dict() for f in faults]
        return _json({"faults": added} if isinstance(body, list) else {"fault": added[0]}, 201)

    def _fault(self, request: web.Request) -> Any:
        name = request.match_info["name"]
        f = self.state.faults.get(name)
        if f is None:
            raise web.HTTPNotFound(reason=f"no fault named {name!r} (active: {list(self.state.faults)})")
        return f

    async def get_fault(self, request: web.Request) -> web.Response:
        return _json({"fault": self._fault(request).to_dict()})

    async def patch_fault(self, request: web.Request) -> web.Response:
        old = self._fault(request)
        body = await _body(request)
        if not isinstance(body, dict):
            raise FaultSpecError("PATCH body must be an object (fields to change)")
        spec = old.spec()
        cls = type(old)
        for k, v in body.items():
            if k == "type" and v != old.kind:
                raise FaultSpecError(f"{old.name}: the type cannot change ({old.kind} -> {v}); add a new fault")
            if k == "name" and v != old.name:
                raise FaultSpecError(f"{old.name}: the name cannot change; DELETE and POST instead")
            if k in ("params", "selector"):
                if not isinstance(v, dict):
                    raise FaultSpecError(f"{old.kind}: {k} must be an object")
                spec[k] = {**spec.get(k, {}), **v}
            elif k in cls.PARAMS:
                spec["params"][k] = v
            elif k in Selector.FIELDS:
                spec.setdefault("selector", {})[k] = v
            else:
                spec[k] = v
        new = build_fault(spec)
        return _json({"fault": self.state.replace_fault(old.name, new).to_dict()})

    async def delete_fault(self, request: web.Request) -> web.Response:
        f = self._fault(request)
        self.state.remove_fault(f.name)
        return _json({"removed": f.name, "applied": f.applied})

    async def reset(self, request: web.Request) -> web.Response:
        return _json({"removed": self.state.reset()})

    async def connections(self, request: web.Request) -> web.Response:
        out = []
        for r in self.state.relays():
            s = r.summary()
            # "upstream"/"downstream" are the directions' counters; the server is upstream_index
            s.update(id=r.flow_id, seq=r.seq, path=r.path, client_port=r.client_port, extensions=list(r.extensions),
                     mode=r.mode,
                     upstream_index=r.upstream.index if r.upstream is not None else None,
                     upstream_url=r.upstream.url if r.upstream is not None else None)
            out.append(s)
        return _json({"connections": out})

    async def upstreams(self, request: web.Request) -> web.Response:
        return _json({"upstreams": [u.to_dict() for u in self.state.upstreams]})

    async def patch_upstream(self, request: web.Request) -> web.Response:
        try:
            u = self.state.upstreams[int(request.match_info["index"])]
        except (ValueError, IndexError):
            raise web.HTTPNotFound(reason=f"no upstream {request.match_info['index']!r} "
                                          f"(0..{len(self.state.upstreams) - 1})") from None
        body = await _body(request)
        if not isinstance(body, dict) or set(body) - {"pid", "alive", "url"}:
            raise FaultSpecError('PATCH /upstreams/{index} takes {"pid": int|null, "alive": bool, "url": str}')
        if "url" in body:
            try:
                new = Upstream.parse(u.index, body["url"] if isinstance(body["url"], str) else "")
            except ValueError as e:
                raise FaultSpecError(str(e)) from None
            u.url, u.host, u.port, u.path = new.url, new.host, new.port, new.path
        if "pid" in body:
            pid = body["pid"]
            if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0):
                raise FaultSpecError(f"pid must be a positive integer or null, got {json.dumps(pid)}")
            u.pid = pid
        if "alive" in body:
            if not isinstance(body["alive"], bool):
                raise FaultSpecError("alive must be true or false")
            u.alive = body["alive"]
            self.state.events.emit("upstream_up" if u.alive else "upstream_down", upstream=u.index, url=u.url,
                                   why="control API")
        return _json({"upstream": u.to_dict()})

    async def events(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            since = int(q.get("since", "0"))
            limit = max(1, min(int(q.get("limit", "1000")), 10_000))
        except ValueError:
            raise FaultSpecError("since and limit must be integers (since = the last seq you saw)") from None
        evs = self.state.events.since(since, limit, q.get("event"))
        return _json({"events": evs, "last": self.state.events.last_seq})
