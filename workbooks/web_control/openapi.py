"""The control plane's OpenAPI 3 document (served at /openapi.json; a test checks it against the routes)."""

from __future__ import annotations

import copy

ERROR = {"$ref": "#/components/responses/Error"}
TENANT_ID = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"}
WORKBOOK_ID = {"type": "string", "pattern": "^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"}
VAR_KEY = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _obj(props: dict, required: list[str] | None = None, extra: bool = True) -> dict:
    out = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        out["required"] = required
    return out


def _path_param(name: str, schema: dict, description: str = "") -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _errors(*codes: int) -> dict:
    return {str(c): ERROR for c in codes}


TENANT_HEADER = {
    "name": "X-Workbooks-Tenant", "in": "header", "required": False, "schema": TENANT_ID,
    "description": "with an admin key: the tenant to act for (a tenant key reaches its own tenant only)",
}
IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "`*` or the workbook's current sha as an entity-tag (its ETag); "
                           "412 precondition_failed when it does not match (or the workbook does not exist)"}
IF_NONE_MATCH = {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
                 "description": "`*`: only create, 412 precondition_failed when the workbook exists; "
                                "a list of ETags: 412 when the current one is among them"}

DEPLOYED = _obj({"sha": {"type": "string"}, "nochange": {"type": "boolean"}})
COMMIT = _obj({"sha": {"type": "string"}, "ts": {"type": "integer"}, "author": {"type": "string"},
               "msg": {"type": "string"}}, ["sha", "ts", "author", "msg"])
KEY_ROW = _obj({"id": {"type": "string"}, "prefix": {"type": "string"}, "scope": {"type": "string"},
                "tenant": {"type": ["string", "null"]}, "created_at": {"type": "number"},
                "revoked_at": {"type": ["number", "null"]}})
VAR_ROW = _obj({"key": {"type": "string"}, "secret": {"type": "boolean"}, "value": {"type": "string"},
                "size": {"type": "integer"}, "updated_at": {"type": "number"}})
ORG_BODY = {"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}}
DEPLOY_BODY = {"required": True, "description": "Org text (text/plain, text/org, text/x-org), or JSON with "
                                                "the source and the git commit message (default `deploy <id>`); "
                                                "any other Content-Type is a 415",
               "content": {
                   "text/plain": {"schema": {"type": "string"}},
                   "text/org": {"schema": {"type": "string"}},
                   "text/x-org": {"schema": {"type": "string"}},
                   "application/json": {"schema": _obj({
                       "source": {"type": "string"},
                       "message": {"type": "string", "minLength": 1, "maxLength": 2000,
                                   "description": "the commit message; its first line at most 200 characters"},
                   }, ["source"], extra=False)},
               }}
OQL_OPS = {
    "query": ("headlines as JSON (parse_headlines)", {"type": "array"}),
    "parse": ("the element tree as JSON (byte offsets into the UTF-8 body)", {"type": "object"}),
    "tangle": ("the build plan (tangle_plan)", {"type": "object"}),
    "lint": ("diagnostics (validate)", {"type": "array"}),
    "render": ("an HTML fragment", None),
}


def document() -> dict:
    paths: dict = {}

    def op(path: str, method: str, summary: str, responses: dict, *, params: list | None = None,
           body: dict | None = None, auth: bool = True, tenant: bool = False) -> None:
        o: dict = {"summary": summary, "responses": responses}
        ps = list(params or [])
        if tenant:
            ps.append(TENANT_HEADER)
        if ps:
            o["parameters"] = ps
        if body is not None:
            o["requestBody"] = body
            if "application/json" in body.get("content", {}):  # JSON bodies: bad JSON, other media types
                o["responses"] = {**o["responses"], **_errors(400, 415)}
        if not auth:
            o["security"] = []
        else:
            o["responses"] = {**o["responses"], **_errors(401, 403)}
        paths.setdefault(path, {})[method] = o

    op("/healthz", "get", "liveness", {"200": _json(_obj({"ok": {"type": "boolean"}}))}, auth=False)
    op("/readyz", "get", "readiness (index and kernel reachable)",
       {"200": _json(_obj({"ready": {"type": "boolean"}})), "503": ERROR}, auth=False)
    op("/openapi.json", "get", "this document", {"200": _json({"type": "object"})}, auth=False)

    # tenants and keys (admin)
    op("/api/tenants", "post", "create a tenant (admin)",
       {"201": _json(_obj({"name": {"type": "string"}, "created_at": {"type": "number"}})), **_errors(400, 409)},
       body={"required": True, "content": {"application/json": {"schema": _obj({"name": TENANT_ID}, ["name"])}}})
    op("/api/tenants", "get", "list tenants (admin)", {"200": _json(_obj({"tenants": {"type": "array"}}))})
    tparam = _path_param("tenant", TENANT_ID)
    op("/api/tenants/{tenant}/keys", "post", "create an API key for a tenant; the key is shown this once (admin)",
       {"201": _json(_obj({"key": {"type": "string"}, "id": {"type": "string"}, "scope": {"type": "string"}})),
        **_errors(400, 404)},
       params=[tparam],
       body={"required": True, "content": {"application/json": {"schema": _obj(
           {"scope": {"type": "string", "enum": ["tenant", "exec", "operator", "admin"]}})}}})
    op("/api/tenants/{tenant}/keys", "get", "a tenant's keys, without secrets (admin)",
       {"200": _json(_obj({"keys": {"type": "array", "items": KEY_ROW}})), **_errors(404)}, params=[tparam])
    op("/api/keys", "get", "every key, without secrets (admin)",
       {"200": _json(_obj({"keys": {"type": "array", "items": KEY_ROW}}))})
    op("/api/keys/{id}", "delete", "revoke a key (admin)",
       {"200": _json(_obj({"id": {"type": "string"}, "revoked": {"type": "boolean"}})), **_errors(404)},
       params=[_path_param("id", {"type": "string"})])

    # workbooks
    wparam = _path_param("id", WORKBOOK_ID, "workbook id (a DNS label)")
    op("/api/workbooks", "get", "the tenant's workbooks",
       {"200": _json(_obj({"workbooks": {"type": "array"}})), **_errors(400, 404)}, tenant=True)
    op("/api/workbooks/{id}", "put",
       "deploy: validate, render, index and commit <id>.org, all or nothing",
       {"200": _json(DEPLOYED), **_errors(400, 404, 412, 413, 415, 422, 503, 504)},
       params=[wparam, IF_MATCH, IF_NONE_MATCH], body=DEPLOY_BODY, tenant=True)
    op("/api/workbooks/{id}", "get", "source, rendered HTML, headlines, metadata, sha",
       {"200": _json(_obj({"id": {"type": "string"}, "source": {"type": "string"}, "html": {"type": "string"},
                           "headlines": {"type": "array"}, "meta": {"type": "object"}, "sha": {"type": "string"}})),
        **_errors(400, 404)}, params=[wparam], tenant=True)
    op("/api/workbooks/{id}", "delete", "delete (a commit too)",
       {"200": _json(_obj({"sha": {"type": ["string", "null"]}, "deleted": {"type": "boolean"}})),
        **_errors(400, 404, 412)}, params=[wparam, IF_MATCH, IF_NONE_MATCH], tenant=True)

    # OQL over HTTP
    for name, (summary, schema) in OQL_OPS.items():
        ok = _json(schema) if schema else {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}}
        op(f"/api/oql/{name}", "post", summary, {"200": ok, **_errors(400, 413, 422, 503, 504)}, body=ORG_BODY)
    op("/api/oql/check_upgrade", "post", "breaking changes between two versions",
       {"200": _json({"type": "array"}), **_errors(400, 413, 422, 503, 504)},
       body={"required": True, "content": {"application/json": {"schema": _obj(
           {"old": {"type": "string"}, "new": {"type": "string"}}, ["old", "new"])}}})

    # git
    op("/api/git/log", "get", "the tenant repo's log, newest first",
       {"200": _json(_obj({"commits": {"type": "array", "items": COMMIT}})), **_errors(400, 404)},
       params=[{"name": "limit", "in": "query", "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}], tenant=True)
    op("/api/git/diff", "get", "the last commit as a unified diff",
       {"200": _json(_obj({"sha": {"type": ["string", "null"]}, "diff": {"type": "string"}})), **_errors(400, 404)},
       tenant=True)
    op("/rcp/changes", "get", "the changelog (same shape as the public /_changes)",
       {"200": _json(_obj({"changes": {"type": "array", "items": COMMIT}, "agent": {"type": "object"}})),
        **_errors(400, 404)}, tenant=True)

    # vars and secrets
    kparam = _path_param("key", VAR_KEY)
    op("/api/vars", "get", "variables; secrets redacted with their size",
       {"200": _json(_obj({"vars": {"type": "array", "items": VAR_ROW}})), **_errors(400, 404)}, tenant=True)
    op("/api/vars/{key}", "get", "one variable (a secret comes back redacted)",
       {"200": _json(VAR_ROW), **_errors(400, 404)}, params=[kparam], tenant=True)
    op("/api/vars/{key}", "put", "set a variable, or a secret (encrypted at rest)",
       {"200": _json(VAR_ROW), **_errors(400, 404, 413)}, params=[kparam], tenant=True,
       body={"required": True, "content": {"application/json": {"schema": _obj(
           {"value": {"type": "string"}, "secret": {"type": "boolean"}}, ["value"])}}})
    op("/api/vars/{key}", "delete", "delete a variable",
       {"200": _json(_obj({"key": {"type": "string"}, "deleted": {"type": "boolean"}})), **_errors(400, 404)},
       params=[kparam], tenant=True)

    # domains
    hparam = _path_param("host", {"type": "string", "maxLength": 253,
                                  "pattern": r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"},
                         "a DNS name such as docs.example.com")
    op("/api/domains", "get", "the tenant's domains",
       {"200": _json(_obj({"domains": {"type": "array"}})), **_errors(400, 404)}, tenant=True)
    op("/api/domains/{host}", "put", "claim a hostname for one of the tenant's workbooks (a real domain stays "
       "pending, with a token, until verified; *.localhost and *.test serve at once)",
       {"200": _json(_obj({"host": {"type": "string"}, "workbook": {"type": "string"},
                           "status": {"type": "string", "enum": ["pending", "verified"]}})),
        **_errors(400, 404, 409)},
       params=[hparam], tenant=True,
       body={"required": True, "content": {"application/json": {"schema": _obj({"workbook": WORKBOOK_ID}, ["workbook"])}}})
    op("/api/domains/{host}/verify", "post", "prove control of a claimed domain (DNS TXT _workbooks.<host> or "
       "http://<host>/.well-known/workbooks-challenge/<token>); only verified domains serve",
       {"200": _json(_obj({"host": {"type": "string"}, "status": {"type": "string"}})), **_errors(400, 404, 422)},
       params=[hparam], tenant=True)
    op("/api/domains/{host}", "delete", "remove a hostname",
       {"200": _json(_obj({"host": {"type": "string"}, "deleted": {"type": "boolean"}})), **_errors(400, 404)},
       params=[hparam], tenant=True)

    # ops (operator)
    op("/api/ops/workers", "get", "supervised children and their state (operator)",
       {"200": _json({"type": "object"}), **_errors(503)})
    op("/api/ops/workers/{id}/restart", "post", "restart a child (operator)",
       {"200": _json({"type": "object"}), **_errors(400, 404, 503)},
       params=[_path_param("id", {"type": "string", "maxLength": 100})])
    op("/api/ops/scale", "post", "run N children of a group (operator); 409 above the machine's capacity "
       "or down to no serving worker unless force",
       {"200": _json({"type": "object"}), **_errors(400, 404, 409, 503)},
       body={"required": True, "content": {"application/json": {"schema": _obj(
           {"group": {"type": "string"}, "n": {"type": "integer", "minimum": 0, "maximum": 1024},
            "force": {"type": "boolean"}}, ["group", "n"])}}})
    op("/metrics", "get", "Prometheus text (operator)",
       {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}})

    # trust
    op("/api/mirror/{tenant}", "post", "push the tenant repo to a remote or forge",
       {"200": _json({"type": "object"}), **_errors(400, 404, 501, 502, 503)}, params=[tparam], tenant=True,
       body={"required": True, "content": {"application/json": {"schema": {"type": "object"}}}})
    op("/api/ledger/{run}", "get", "a run's ledger report",
       {"200": _json({"type": "object"}), **_errors(400, 404, 501)},
       params=[_path_param("run", {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"})], tenant=True)

    # agent runs (executed by the agents process; workbooks.web_control.agent_routes)
    rparam = _path_param("id", {"type": "string", "pattern": "^run-[1-9][0-9]{0,11}$"}, "run id (run-<n>)")
    usage = _obj({"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}})
    started = _json(_obj({"id": {"type": "string"}, "status": {"type": "string", "enum": ["running"]}},
                         ["id", "status"]), "accepted: the run is going (poll GET /api/run/{id} or stream it)")
    op("/api/run", "post", "start an agent run: the model drives the sandboxed tools over the run's own folder "
       "(exec: over the tenant's site, with git and publish; needs a key of scope exec)",
       {"202": started, **_errors(400, 404, 429, 503)}, tenant=True,
       body={"required": True, "content": {"application/json": {"schema": _obj({
           "task": {"type": "string", "minLength": 1}, "system": {"type": "string"}, "model": {"type": "string"},
           "max_steps": {"type": "integer", "minimum": 1, "maximum": 200, "default": 40},
           "exec": {"type": "boolean", "default": False}}, ["task"], extra=False)}}})
    op("/api/runs", "get", "the tenant's agent runs, newest first",
       {"200": _json(_obj({"runs": {"type": "array"}})), **_errors(400, 404)},
       params=[{"name": "limit", "in": "query", "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 500}}], tenant=True)
    op("/api/run/{id}", "get", "a run: running {status, steps, live} / finished {status, steps, result, tools, usage}",
       {"200": _json(_obj({"id": {"type": "string"}, "status": {"type": "string", "enum": [
           "queued", "running", "done", "error", "interrupted", "cancelled"]}, "steps": {"type": "integer"},
           "live": {"type": "array"}, "result": {"type": ["string", "null"]}, "tools": {"type": "array"},
           "usage": usage}, ["id", "status", "steps"])), **_errors(400, 404)}, params=[rparam], tenant=True)
    op("/api/run/{id}", "delete", "cancel a running run (409 when it already finished)",
       {"200": _json(_obj({"id": {"type": "string"}, "status": {"type": "string"}})), **_errors(400, 404, 409, 503)},
       params=[rparam], tenant=True)
    op("/api/run/{id}/stream", "get", "the run's frames (subscribed, step, delta, error, done) as Server-Sent "
       "Events; the same path is a WebSocket with one JSON frame per message",
       {"200": {"description": "an event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
        **_errors(400, 404)}, params=[rparam], tenant=True)
    op("/api/agents/list", "get", "agents defined in the tenant's deployed workbooks (the first :agent: headline)",
       {"200": _json(_obj({"agents": {"type": "array"}})), **_errors(400, 404)}, tenant=True)
    op("/api/agent/run", "post", "run a defined agent with a prompt",
       {"202": started, **_errors(400, 404, 429, 503)}, tenant=True,
       body={"required": True, "content": {"application/json": {"schema": _obj({
           "agent_slug": {"type": "string", "minLength": 1}, "prompt": {"type": "string", "minLength": 1},
           "exec": {"type": "boolean"}, "max_steps": {"type": "integer", "minimum": 1, "maximum": 200}},
           ["agent_slug", "prompt"])}}})

    # telemetry (the index the telemetry child writes; workbooks.web_control.telemetry_routes)
    index = _obj({"scanned_at": {"type": ["number", "null"]}, "age_s": {"type": ["number", "null"]},
                  "live": {"type": "boolean"}, "source": {"type": "string", "enum": ["index", "files"]}})
    op("/api/telemetry", "get", "the tenant's runs (agent, workflow, TODO outline), most recently active first, "
       "with a roll-up over all of them; read from the telemetry index (`index` says how fresh)",
       {"200": _json(_obj({"rollup": _obj({"runs": {"type": "integer"}, "with_errors": {"type": "integer"},
                                           "tool_calls": {"type": "integer"}}, ["runs", "with_errors", "tool_calls"]),
                           "runs": {"type": "array"}, "index": index}, ["rollup", "runs", "index"])),
        **_errors(400, 404, 503)},
       params=[{"name": "limit", "in": "query", "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}}], tenant=True)
    op("/api/telemetry/{run}", "get", "one run's telemetry: stage, tasks, tool_calls, total_ms, errors (failing "
       "steps), recent (the last 15 steps)",
       {"200": _json(_obj({"id": {"type": "string"}, "stage": {"type": ["string", "null"]}, "tasks": {"type": "array"},
                           "tool_calls": {"type": "integer"}, "total_ms": {"type": "integer"},
                           "errors": {"type": "array"}, "recent": {"type": "array"}, "index": index},
                          ["id", "stage", "tasks", "tool_calls", "total_ms", "errors", "recent"])),
        **_errors(400, 404, 503)},
       params=[_path_param("run", {"type": "string", "pattern": "^(run|wf)-[1-9][0-9]{0,11}$"},
                           "run id (run-<n> agent runs, wf-<n> workflows and TODO outlines)")], tenant=True)

    # workflow runs (orchestrated by the agents process, steps in the pool's runner workers)
    wfparam = _path_param("run", {"type": "string", "pattern": "^wf-[1-9][0-9]{0,11}$"}, "workflow run id (wf-<n>)")
    op("/api/workflow", "post", "run a workbook's :workflow: (Org text, or a deployed workbook by id); "
       "?plan=1 answers the plan records instead",
       {"202": _json(_obj({"run": {"type": "string"}, "status": {"type": "string"}}, ["run", "status"])),
        "200": _json(_obj({"plans": {"type": "array"}})), **_errors(400, 404, 503)}, tenant=True,
       params=[{"name": "plan", "in": "query", "required": False, "schema": {"type": "string", "enum": ["0", "1"]}}],
       body={"required": True, "content": {"application/json": {"schema": _obj({
           "org": {"type": "string"}, "workbook": WORKBOOK_ID, "world": {"type": "string"},
           "input": {"type": ["string", "object"]}}, extra=False)}}})
    op("/api/workflow/todo", "post", "run a TODO outline as a task list",
       {"202": _json(_obj({"slug": {"type": "string"}, "status": {"type": "string"}}, ["slug", "status"])),
        **_errors(400, 404, 503)}, tenant=True,
       body={"required": True, "content": {"application/json": {"schema": _obj({"org": {"type": "string"}}, ["org"])}}})
    op("/api/workflow/{run}", "get", "a workflow run: its status and, once written, its run record",
       {"200": _json(_obj({"run": {"type": "string"}, "status": {"type": "string"}, "record": {"type": "object"}},
                          ["run", "status"])), **_errors(400, 404)}, params=[wfparam], tenant=True)
    op("/api/workflow/{run}", "delete", "cancel a running workflow run",
       {"200": _json(_obj({"id": {"type": "string"}, "status": {"type": "string"}})), **_errors(400, 404, 409, 503)},
       params=[wfparam], tenant=True)

    return copy.deepcopy({
        "openapi": "3.1.0",
        "info": {"title": "Workbooks control plane", "version": "1",
                 "description": "Authenticated API: tenants and keys, deploy = index + commit, OQL, git, "
                                "variables and secrets, domains, ops. Errors are {error: {code, message}}."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": _obj({"error": _obj({"code": {"type": "string"}, "message": {"type": "string"}},
                                                     ["code", "message"])}, ["error"])},
            "responses": {"Error": _json({"$ref": "#/components/schemas/Error"}, "an error")},
        },
    })
