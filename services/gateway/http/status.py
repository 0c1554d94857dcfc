"""The status page: a read-only view of the fleet for operators, rendered on the server (no script, no build).

`GET /status` shows the engines (address, base, load, bytes per tier, the adapters each holds, named by
the revisions they were published as when the page knows them), the open waves and their progress, and
for each tenant shown its policies (aliases, recent revisions, recorded metrics and a small plot of each
metric over the revisions) and its latest audit events. `GET /status/policies/{tenant}/{policy}` is one
policy's whole revision and alias history.

Engines and waves come from the scheduler, catalog data from the catalog with the caller's own key acting
for each tenant shown (`?tenant=`, repeatable; default: the key's tenant and the tenants of open waves).

Admin keys only (the admin role holding the admin scope): the page shows every tenant's work. A browser
gives the key once, by `?key=` or the login form (`POST /status/login`); it is then kept in an HttpOnly,
SameSite=Strict cookie scoped to /status, so links carry no key. `Authorization: Bearer` works too. No key
answers 401 (with the form), another key 403. Every value is HTML-escaped (Jinja2 autoescape).
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from mint import auth
from mint.adapters.identity import blob_of
from mint.errors import Code, MintError
from mint.proto import catalog_pb2, common_pb2
from mint.scopes import Scope
from mint.server import principal_from_metadata
from services.gateway.http.door import Caller, Door, retry_after
from services.scheduler.base import LiveEngine

COOKIE = "mint_status_key"
MAX_POLICIES = 50          # per tenant on the main page
MAIN_REVISIONS = 12        # newest revisions per policy on the main page
DETAIL_REVISIONS = 200     # on a policy's own page
AUDIT_EVENTS = 12          # per tenant
MAX_TENANTS = 8
TIERS = ("device", "host", "disk")
HEADERS = {"cache-control": "no-store", "referrer-policy": "no-referrer", "x-frame-options": "DENY",
           "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"}


class StatusPage:
    def __init__(self, door: Door):
        self.door = door

    def routes(self) -> list[Route]:
        return [
            Route("/status", self.main, methods=["GET"]),
            Route("/status/login", self.login, methods=["POST"]),
            Route("/status/policies/{tenant}/{policy}", self.policy, methods=["GET"]),
        ]

    # --- endpoints -------------------------------------------------------------------------------------

    async def main(self, request: Request) -> Response:
        async def render(caller: Caller) -> str:
            tenants = [t.strip() for value in request.query_params.getlist("tenant") for t in value.split(",")]
            view = await self.door.run(caller, self._fleet_view, caller, tenants)
            return _render("main", **view)

        return await self._page(request, render)

    async def policy(self, request: Request) -> Response:
        tenant, name = request.path_params["tenant"], request.path_params["policy"]

        async def render(caller: Caller) -> str:
            view = await self.door.run(caller, self._policy_view, caller, tenant, name)
            return _render("policy", **view)

        return await self._page(request, render)

    async def login(self, request: Request) -> Response:
        form = urllib.parse.parse_qs((await request.body())[:4096].decode(errors="replace"))
        key = (form.get("key") or [""])[0].strip()
        try:
            await self._admin(key)
        except MintError as err:
            return self._refusal(err)
        response = RedirectResponse("/status", status_code=303, headers=HEADERS)
        self._remember(response, request, key)
        return response

    # --- authentication --------------------------------------------------------------------------------

    async def _page(self, request: Request, render) -> Response:
        query_key = request.query_params.get("key", "").strip()
        key = query_key or auth.key_from_metadata([(k.lower(), v) for k, v in request.headers.items()]) or request.cookies.get(COOKIE, "")
        try:
            caller = await self._admin(key)
            response = HTMLResponse(await render(caller), headers=HEADERS)
        except MintError as err:
            return self._refusal(err)
        if query_key:
            self._remember(response, request, query_key)
        return response

    async def _admin(self, key: str) -> Caller:
        """The caller `key` authenticates, if it is an admin key; UNAUTHENTICATED without a key (or with a
        bad one), PERMISSION_DENIED for any other key."""
        if not key:
            raise MintError(Code.UNAUTHENTICATED, "the status page needs an admin API key")
        return Caller(key, None, await self.door.run(None, self._admin_principal, key))

    def _admin_principal(self, key: str) -> auth.Principal:
        """`_admin`'s work on a worker thread: the key's principal, an admin's, within its tenant's request rate."""
        principal = principal_from_metadata(self.door.authenticator, [("authorization", f"Bearer {key}")])
        if principal.role is not auth.Role.ADMIN or not principal.has(Scope.ADMIN):
            raise MintError(
                Code.PERMISSION_DENIED,
                f"the status page is for admin keys; key {principal.key_label} is a {principal.role.value} key of tenant {principal.tenant}",
            )
        if self.door.admit is not None:
            self.door.admit(principal, "/status")
        return principal

    def _remember(self, response: Response, request: Request, key: str) -> None:
        response.set_cookie(COOKIE, key, path="/status", httponly=True, samesite="strict", secure=request.url.scheme == "https")

    def _refusal(self, err: MintError) -> Response:
        status = err.http_status
        html = _render("refused", status=status, message=self.door.cut(err.message), login=status == 401)
        response = HTMLResponse(html, status_code=status, headers=HEADERS | retry_after(err))
        if status == 401:
            response.delete_cookie(COOKIE, path="/status")
        return response

    # --- what the pages show (on a worker thread, as the caller) ---------------------------------------

    def _fleet_view(self, caller: Caller, asked: Sequence[str]) -> dict[str, Any]:
        scheduler = self.door.servicer.scheduler
        engines = scheduler.engines()
        waves = []
        for base in sorted({e.info.base_model for e in engines}):
            for tenant, wave_id in scheduler.open_waves(base):
                try:
                    waves.append((tenant, base, scheduler.wave_status(wave_id, None)))
                except MintError as err:
                    if err.code is not Code.NOT_FOUND:  # NOT_FOUND: it expired since it was listed
                        raise
        tenants = _unique([*asked] if asked else [caller.principal.tenant, *(t for t, _, _ in waves)])[:MAX_TENANTS]
        shown = [self._tenant_view(caller, tenant) for tenant in tenants]
        names = {r.sha256: r for t in shown for p in t["policies"] for r in p["revisions"]}
        return {
            "now": _now(),
            "engines": [_engine_view(e, scheduler.resident(e.info.engine_id), names) for e in engines],
            "waves": [_wave_view(tenant, base, status) for tenant, base, status in waves],
            "tenants": shown,
            "asked": ", ".join(tenants),
        }

    def _tenant_view(self, caller: Caller, tenant: str) -> dict[str, Any]:
        acting = Caller(caller.api_key, tenant, caller.principal.acting_as(tenant))
        with auth.acting(acting.principal):
            try:
                page = self._catalog("ListPolicies", catalog_pb2.ListPoliciesRequest(page=_page(MAX_POLICIES)), acting)
            except MintError as err:
                return {"tenant": tenant, "error": err.message, "policies": [], "events": [], "more": False}
            policies = [self._policy_summary(acting, p, MAIN_REVISIONS) for p in page.policies]
            events = self._catalog("ListAuditEvents", catalog_pb2.ListAuditEventsRequest(page=_page(AUDIT_EVENTS)), acting).events
        return {"tenant": tenant, "error": "", "policies": policies, "events": [_event_view(e) for e in events],
                "more": bool(page.next_page_token)}

    def _policy_view(self, caller: Caller, tenant: str, name: str) -> dict[str, Any]:
        acting = Caller(caller.api_key, tenant, caller.principal.acting_as(tenant))
        with auth.acting(acting.principal):
            policy = self._catalog("GetPolicy", catalog_pb2.GetPolicyRequest(name=f"{tenant}/{name}"), acting)
            summary = self._policy_summary(acting, policy, DETAIL_REVISIONS)
            moves = self._catalog("ListAliasHistory", catalog_pb2.ListAliasHistoryRequest(policy=policy.full_name, page=_page(100)), acting).moves
        return {"now": _now(), "policy": summary, "moves": [_move_view(m) for m in moves]}

    def _policy_summary(self, caller: Caller, policy: catalog_pb2.Policy, revisions: int) -> dict[str, Any]:
        aliases = self._catalog("ListAliases", catalog_pb2.ListAliasesRequest(policy=policy.full_name), caller).aliases
        newest = self._catalog(
            "ListRevisions", catalog_pb2.ListRevisionsRequest(policy=policy.full_name, newest_first=True, page=_page(revisions)), caller
        ).revisions
        by_number: dict[int, list[str]] = {}
        for alias in aliases:
            by_number.setdefault(alias.revision_number, []).append(alias.name)
        oldest_first = list(reversed(newest))
        keys = sorted({k for r in newest for k in r.metrics})
        return {
            "tenant": policy.tenant, "name": policy.name, "full_name": policy.full_name, "base_model": policy.base_model,
            "description": policy.description, "head": policy.head_number,
            "aliases": [(a.name, a.revision_number, _time(a.updated_at)) for a in sorted(aliases, key=lambda a: a.name)],
            "revisions": [RevisionRow(r, by_number.get(r.number, [])) for r in newest],
            "metric_keys": keys,
            "plots": [_plot(key, [(r.number, r.metrics[key]) for r in oldest_first if key in r.metrics]) for key in keys],
            "shown": len(newest),
        }

    def _catalog(self, method: str, request, caller: Caller):
        return self.door.catalog.call(method, request, caller)


# --- views: plain values the templates show ---------------------------------------------------------


class RevisionRow:
    __slots__ = ("number", "address", "sha256", "size", "rank", "status", "source", "metrics", "aliases", "created", "retracted")

    def __init__(self, revision: catalog_pb2.Revision, aliases: list[str]):
        self.number = revision.number
        self.address = revision.address
        self.sha256 = revision.sha256
        self.size = revision.size_bytes
        self.rank = revision.rank
        self.retracted = revision.status == catalog_pb2.REVISION_STATUS_RETRACTED
        self.status = f"retracted: {revision.retracted_reason}" if self.retracted else "active"
        self.source = revision.source
        self.metrics = sorted(revision.metrics.items())
        self.aliases = sorted(aliases)
        self.created = _time(revision.created_at)


def _engine_view(engine: LiveEngine, resident: Iterable[str], names: dict[str, RevisionRow]) -> dict[str, Any]:
    info, load = engine.info, engine.load
    adapters = []
    for key in sorted(resident):
        revision = names.get(blob_of(key))
        adapters.append({"key": key, "name": revision.address if revision else "", "size": revision.size if revision else None})
    adapters.sort(key=lambda a: (a["name"] == "", a["name"], a["key"]))
    budgets = (info.device_bytes, info.host_bytes, info.disk_bytes)
    return {
        "id": info.engine_id, "address": info.address, "base": info.base_model,
        "running": load.running, "waiting": load.waiting, "tokens_per_s": load.tokens_per_s,
        "tiers": [(tier, used, budget, _share(used, budget)) for tier, used, budget in zip(TIERS, load.tier_bytes, budgets, strict=True)],
        "adapters": adapters,
        "seen_s_ago": max(0.0, dt.datetime.now(dt.UTC).timestamp() - engine.last_seen),
    }


def _wave_view(tenant: str, base: str, status) -> dict[str, Any]:
    return {
        "name": status.name, "tenant": tenant, "base": base, "id": status.wave_id, "total": status.total,
        "resident": status.resident, "failed": status.failed, "ready": status.ready,
        "share": _share(status.resident, status.total), "failed_share": _share(status.failed, status.total),
        "engines": [(s.engine_id, s.adapters, s.resident, s.bytes) for s in status.engines],
        "failures": list(status.failures)[:10],
    }


def _event_view(event: catalog_pb2.AuditEvent) -> dict[str, Any]:
    subject = event.policy + (f"@{event.revision_number}" if event.revision_number else "")
    try:
        details = json.dumps(json.loads(event.details_json), sort_keys=True) if event.details_json else ""
    except ValueError:
        details = event.details_json
    return {"at": _time(event.at), "actor": event.actor, "key": event.key_name, "action": event.action,
            "subject": subject, "details": details if len(details) <= 120 else details[:119] + "…"}


def _move_view(move: catalog_pb2.AliasMove) -> dict[str, Any]:
    return {"at": _time(move.at), "alias": move.alias, "from": move.from_number or "", "to": move.to_number,
            "action": move.action, "actor": move.actor, "reason": move.reason}


def _plot(key: str, points: list[tuple[int, float]], width: int = 180, height: int = 40, pad: int = 4) -> dict[str, Any]:
    """A sparkline of one metric over revision numbers: the SVG polyline's points, and the range it spans."""
    values = [v for _, v in points]
    low, high = (min(values), max(values)) if values else (0.0, 0.0)
    numbers = [n for n, _ in points]
    first, last = (numbers[0], numbers[-1]) if numbers else (0, 0)

    def x(n: int) -> float:
        return pad + (width - 2 * pad) * ((n - first) / (last - first) if last > first else 0.5)

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * ((v - low) / (high - low) if high > low else 0.5)

    coords = [(round(x(n), 1), round(y(v), 1)) for n, v in points]
    return {"key": key, "points": " ".join(f"{cx},{cy}" for cx, cy in coords), "dots": coords, "low": low, "high": high,
            "first": first, "last": last, "latest": values[-1] if values else None, "width": width, "height": height}


def _share(part: int, whole: int) -> float:
    return min(100.0, 100.0 * part / whole) if whole > 0 else 0.0


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _page(size: int) -> common_pb2.PageRequest:
    return common_pb2.PageRequest(page_size=size)


def _time(ts) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime(tzinfo=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _number(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


# --- templates ---------------------------------------------------------------------------------------

_STYLE = """
body{font:13px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:16px;align-items:baseline}
header h1{font-size:17px;margin:0} header span{color:#aab}
main{padding:12px 20px} h2{font-size:15px;margin:18px 0 8px} h3{font-size:14px;margin:4px 0}
section.card{background:#fff;border:1px solid #dde;border-radius:6px;padding:10px 14px;margin-bottom:10px}
table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eef;vertical-align:top}
th{color:#667;font-weight:600;font-size:12px} td.muted{white-space:nowrap} code{font-size:12px;color:#445}
.bar{background:#e8eaf0;border-radius:3px;height:8px;width:140px;display:inline-block;vertical-align:middle;overflow:hidden}
.bar i{display:block;height:100%;background:#3b7ddd;float:left} .bar i.bad{background:#d9534f}
.muted{color:#889} .tag{background:#e6eefc;color:#2456a6;border-radius:3px;padding:0 5px;margin-right:3px;font-size:12px}
.retracted{color:#b33} .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:6px;margin:4px 0}
svg{background:#fafbfd;border:1px solid #eef} form{display:inline} input{font:inherit}
.engines{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:10px}
"""

_BASE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{% block title %}MinT status{% endblock %}</title>
<style>""" + _STYLE + """</style></head><body>
<header><h1>MinT status</h1><span>{{ now }}</span><span>read-only</span></header><main>{% block main %}{% endblock %}</main></body></html>"""

_MACROS = """
{% macro plots(policy) %}{% if policy.plots %}<div class="grid">{% for p in policy.plots %}<div>
<div><b>{{ p.key }}</b> <span class="muted">latest {{ p.latest|num }} · range {{ p.low|num }}…{{ p.high|num }} · revs {{ p.first }}–{{ p.last }}</span></div>
<svg width="{{ p.width }}" height="{{ p.height }}" role="img" aria-label="{{ p.key }} per revision"><title>{{ p.key }} per revision</title>
{% if p.dots|length > 1 %}<polyline fill="none" stroke="#3b7ddd" stroke-width="1.5" points="{{ p.points }}"/>{% endif %}
{% for cx, cy in p.dots %}<circle cx="{{ cx }}" cy="{{ cy }}" r="2" fill="#1d4f9c"/>{% endfor %}</svg></div>{% endfor %}</div>{% endif %}{% endmacro %}
{% macro revisions(policy) %}<table><tr><th>rev</th><th>aliases</th><th>status</th><th>size</th><th>rank</th><th>metrics</th><th>source</th><th>published</th></tr>
{% for r in policy.revisions %}<tr><td>{{ r.number }}</td><td>{% for a in r.aliases %}<span class="tag">{{ a }}</span>{% endfor %}</td>
<td class="{{ 'retracted' if r.retracted }}">{{ r.status }}</td><td>{{ r.size|bytes }}</td><td>{{ r.rank }}</td>
<td>{% for k, v in r.metrics %}<code>{{ k }}={{ v|num }}</code> {% endfor %}</td><td><code>{{ r.source }}</code></td><td class="muted">{{ r.created }}</td></tr>
{% else %}<tr><td colspan="8" class="muted">no revisions yet</td></tr>{% endfor %}</table>{% endmacro %}
"""

_MAIN = """{% extends "base" %}{% from "macros" import plots, revisions %}{% block main %}
<h2>Engines ({{ engines|length }})</h2><div class="engines">
{% for e in engines %}<section class="card" id="engine-{{ e.id }}"><h3>{{ e.id }} <span class="muted">{{ e.address }} · base {{ e.base }} · seen {{ '%.1f'|format(e.seen_s_ago) }} s ago</span></h3>
<div>load: {{ e.running }} running, {{ e.waiting }} waiting, {{ '%.1f'|format(e.tokens_per_s) }} tok/s</div>
<table><tr><th>tier</th><th>used</th><th>budget</th><th></th></tr>{% for tier, used, budget, share in e.tiers %}
<tr><td>{{ tier }}</td><td>{{ used|bytes }}</td><td>{{ budget|bytes }}</td><td><span class="bar"><i style="width:{{ '%.1f'|format(share) }}%"></i></span></td></tr>{% endfor %}</table>
<div><b>resident adapters ({{ e.adapters|length }})</b></div><table>{% for a in e.adapters %}
<tr><td>{% if a.name %}{{ a.name }}{% else %}<span class="muted">unknown to the tenants shown</span>{% endif %}</td><td><code>{{ a.key[:12] }}…{{ a.key[-8:] }}</code></td><td>{{ a.size|bytes }}</td></tr>
{% else %}<tr><td class="muted">none</td></tr>{% endfor %}</table></section>
{% else %}<p class="muted">no live engine</p>{% endfor %}</div>
<h2>Waves ({{ waves|length }})</h2><section class="card"><table><tr><th>name</th><th>tenant</th><th>base</th><th>progress</th><th>resident / total</th><th>failed</th><th>engines</th></tr>
{% for w in waves %}<tr><td>{{ w.name }} <span class="muted">{{ 'ready' if w.ready else 'loading' }}</span></td><td>{{ w.tenant }}</td><td>{{ w.base }}</td>
<td><span class="bar"><i style="width:{{ '%.1f'|format(w.share) }}%"></i><i class="bad" style="width:{{ '%.1f'|format(w.failed_share) }}%"></i></span></td>
<td>{{ w.resident }} / {{ w.total }}</td><td>{{ w.failed }}</td>
<td>{% for eid, n, res, b in w.engines %}<div><code>{{ eid }}</code>: {{ res }}/{{ n }} · {{ b|bytes }}</div>{% endfor %}</td></tr>
{% for f in w.failures %}<tr><td></td><td colspan="6" class="retracted">{{ f }}</td></tr>{% endfor %}
{% else %}<tr><td colspan="7" class="muted">no open wave</td></tr>{% endfor %}</table></section>
<h2>Catalog</h2><form method="get" action="/status">tenants shown: <input name="tenant" value="{{ asked }}" size="30"> <button>show</button></form>
<span class="muted"> (comma-separated)</span>
{% for t in tenants %}<h2>Tenant {{ t.tenant }}</h2>
{% if t.error %}<section class="card retracted">{{ t.error }}</section>{% else %}
{% for p in t.policies %}<section class="card" id="policy-{{ p.full_name }}"><h3><a href="/status/policies/{{ p.tenant|urlencode }}/{{ p.name|urlencode }}">{{ p.full_name }}</a>
<span class="muted">base {{ p.base_model }} · {{ p.head }} revisions{% if p.shown < p.head %} (newest {{ p.shown }} shown){% endif %}</span></h3>
{% if p.description %}<div class="muted">{{ p.description }}</div>{% endif %}
<div>aliases: {% for name, number, at in p.aliases %}<span class="tag">{{ name }} → {{ number }}</span>{% else %}<span class="muted">none</span>{% endfor %}</div>
{{ plots(p) }}{{ revisions(p) }}</section>
{% else %}<section class="card muted">no policies</section>{% endfor %}
{% if t.more %}<p class="muted">more policies than shown</p>{% endif %}
<section class="card"><h3>Latest audit events</h3><table><tr><th>time</th><th>actor</th><th>key</th><th>action</th><th>subject</th><th>details</th></tr>
{% for ev in t.events %}<tr><td class="muted">{{ ev.at }}</td><td><code>{{ ev.actor }}</code></td><td>{{ ev.key }}</td><td>{{ ev.action }}</td><td>{{ ev.subject }}</td><td><code>{{ ev.details }}</code></td></tr>
{% else %}<tr><td colspan="6" class="muted">no events</td></tr>{% endfor %}</table></section>{% endif %}{% endfor %}
{% endblock %}"""

_POLICY = """{% extends "base" %}{% from "macros" import plots, revisions %}{% block title %}{{ policy.full_name }} · MinT status{% endblock %}{% block main %}
<p><a href="/status?tenant={{ policy.tenant|urlencode }}">← status</a></p>
<section class="card"><h3>{{ policy.full_name }} <span class="muted">base {{ policy.base_model }} · {{ policy.head }} revisions</span></h3>
{% if policy.description %}<div class="muted">{{ policy.description }}</div>{% endif %}
<div>aliases: {% for name, number, at in policy.aliases %}<span class="tag">{{ name }} → {{ number }}</span> <span class="muted">{{ at }}</span> {% else %}<span class="muted">none</span>{% endfor %}</div>
{{ plots(policy) }}</section>
<section class="card"><h3>Revisions</h3>{{ revisions(policy) }}</section>
<section class="card"><h3>Alias history</h3><table><tr><th>time</th><th>alias</th><th>from</th><th>to</th><th>action</th><th>actor</th><th>reason</th></tr>
{% for m in moves %}<tr><td class="muted">{{ m.at }}</td><td>{{ m.alias }}</td><td>{{ m['from'] }}</td><td>{{ m.to }}</td><td>{{ m.action }}</td><td><code>{{ m.actor }}</code></td><td>{{ m.reason }}</td></tr>
{% else %}<tr><td colspan="7" class="muted">no moves</td></tr>{% endfor %}</table></section>
{% endblock %}"""

_REFUSED = """{% extends "base" %}{% block title %}{{ status }} · MinT status{% endblock %}{% block main %}
<section class="card"><h3>{{ 'Sign in' if login else 'Not allowed' }} ({{ status }})</h3><p>{{ message }}</p>
{% if login %}<form method="post" action="/status/login"><input type="password" name="key" placeholder="admin API key (mint_...)" size="50" autocomplete="off"> <button>open</button></form>{% endif %}
</section>{% endblock %}"""

_ENV = jinja2.Environment(
    loader=jinja2.DictLoader({"base": _BASE, "macros": _MACROS, "main": _MAIN, "policy": _POLICY, "refused": _REFUSED}),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
)
_ENV.filters["bytes"] = _bytes
_ENV.filters["num"] = _number


def _render(template: str, **values: Any) -> str:
    if "now" not in values:
        values["now"] = _now()
    return _ENV.get_template(template).render(**values)
