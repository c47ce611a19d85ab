"""The broker's OpenAPI 3.1 contract (static/openapi.yaml): `GET /openapi.json` and a readable `GET /docs`.

Both are open like the probes: the document holds no data, and a client needs it before it has a token.
"""

from __future__ import annotations

import functools
import html
import json
from importlib import resources
from typing import Any

import yaml
from aiohttp import web

from .. import __version__

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


@functools.cache
def document() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("static/openapi.yaml").read_text(encoding="utf-8")
    doc: dict[str, Any] = yaml.safe_load(text)
    doc["info"]["version"] = __version__
    return doc


@functools.cache
def _json_bytes() -> bytes:
    return json.dumps(document(), indent=1).encode()


@functools.cache
def _page() -> bytes:
    return render(document()).encode()


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=_json_bytes(), content_type="application/json", charset="utf-8")


async def docs(request: web.Request) -> web.Response:
    return web.Response(body=_page(), content_type="text/html", charset="utf-8")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)


def render(doc: dict[str, Any]) -> str:
    """The document as one HTML page: each operation with its parameters, body and answers.
    Server-rendered, no script and nothing fetched, so it works offline and behind any proxy."""
    info = doc["info"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{_e(info['title'])} API</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(info['title'])} <small>{_e(info['version'])}</small></h1>",
        f"<p>{_e(info.get('summary', ''))} Machine-readable: <a href='openapi.json'>openapi.json</a> "
        f"(OpenAPI {_e(doc['openapi'])}).</p>",
        f"<pre class='intro'>{_e(info.get('description', ''))}</pre>",
    ]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any], list[Any]]]] = {}
    for path, item in doc["paths"].items():
        shared = item.get("parameters", [])
        for method in METHODS:
            if method in item:
                op = item[method]
                by_tag.setdefault(op.get("tags", ["other"])[0], []).append((method, path, op, shared))
    for tag in doc.get("tags", []):
        parts.append(f"<h2 id='{_e(tag['name'])}'>{_e(tag['name'])}</h2><p>{_e(tag.get('description', ''))}</p>")
        for method, path, op, shared in by_tag.get(tag["name"], []):
            parts.append(_operation(doc, method, path, op, shared))
    parts.append("</body></html>")
    return "\n".join(parts)


def _operation(doc: dict[str, Any], method: str, path: str, op: dict[str, Any], shared: list[Any]) -> str:
    security = op.get("security", doc.get("security", []))
    needs = sorted({name for req in security for name in req})
    guard = "open" if not needs else (" or ".join(needs) + (" (when set)" if {} in security else ""))
    out = [
        f"<section id='{_e(op.get('operationId', ''))}'><h3><span class='m {method}'>{method.upper()}</span> "
        f"<code>{_e(path)}</code></h3><p>{_e(op.get('summary', ''))} <em>auth: {_e(guard)}</em></p>"
    ]
    params = [resolve(doc, p) for p in [*shared, *op.get("parameters", [])]]
    if params:
        out.append("<table><tr><th>parameter</th><th>in</th><th>schema</th><th></th></tr>")
        for p in params:
            req = " (required)" if p.get("required") else ""
            out.append(
                f"<tr><td><code>{_e(p['name'])}</code>{req}</td><td>{_e(p['in'])}</td>"
                f"<td><code>{_e(_brief(p.get('schema', {})))}</code></td><td>{_e(p.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    if "requestBody" in op:
        body = resolve(doc, op["requestBody"])
        for media, content in body.get("content", {}).items():
            schema = resolve(doc, content.get("schema", {}))
            out.append(f"<p>body <code>{_e(media)}</code>{' (required)' if body.get('required') else ''}:</p>")
            out.append(f"<pre>{_e(json.dumps(schema, indent=1))}</pre>")
    out.append("<table><tr><th>status</th><th>answer</th></tr>")
    for status, answer in op.get("responses", {}).items():
        answer = resolve(doc, answer)
        media = ", ".join(answer.get("content", {}))
        headers = ", ".join(answer.get("headers", {}))
        extra = f" <code>{_e(media)}</code>" + (f"; headers: {_e(headers)}" if headers else "")
        out.append(f"<tr><td>{_e(status)}</td><td>{_e(answer.get('description', ''))}{extra}</td></tr>")
    out.append("</table></section>")
    return "\n".join(out)


def resolve(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = doc
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def _brief(schema: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in schema.items() if k != "description")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


_CSS = """
body{font:15px/1.45 system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;color:#222}
pre{background:#f5f5f5;padding:.5rem;overflow-x:auto;font-size:13px}pre.intro{white-space:pre-wrap}
table{border-collapse:collapse;margin:.3rem 0}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}
section{border-top:1px solid #eee;margin-top:1rem}h3{margin-bottom:.2rem}small{color:#777}
.m{display:inline-block;min-width:4.5rem;font-size:13px;color:#fff;padding:.1rem .3rem;border-radius:3px}
.get{background:#2a7}.put{background:#c80}.post{background:#27c}.delete{background:#c33}
"""
