"""A small router for API Gateway REST proxy events, in the shape of Powertools' resolver.

    app = Router(cors=Cors(origin="https://dash.example"))

    @app.get("/devices/<thing>", path=ThingPath, query=DeviceQuery, response=DeviceDetail)
    def get_device(thing: str, shadow: str | None) -> DeviceDetail: ...

    def lambda_handler(event, context):
        return app.resolve(event, context)

A route declares its path, query and body models (iotbridge_api.schema); the router checks the
request against them before the handler runs and calls it with the values as keyword arguments
(path and query fields by name, the body as `body`). The same declarations write the OpenAPI
document (iotbridge_api.openapi). A raised ApiError becomes its JSON error; anything else
propagates, as a Lambda error.
"""

from __future__ import annotations

import base64
import contextvars
import json
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote

from iotbridge_api import errors, guard
from iotbridge_api.schema import Invalid, Model, Problem

F = TypeVar("F", bound=Callable[..., Any])
JSON = "application/json"


class Cors:
    """One allowed origin; its answers let a browser on that origin call the API and read Location."""

    def __init__(self, origin: str, *, allow_headers: tuple[str, ...] = (), expose_headers: tuple[str, ...] = (),
                 max_age: int | None = None) -> None:  # fmt: skip
        self.origin = origin
        self._headers = {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Headers": ",".join(sorted(allow_headers))}
        if expose_headers:
            self._headers["Access-Control-Expose-Headers"] = ",".join(expose_headers)
        if max_age is not None:
            self._headers["Access-Control-Max-Age"] = str(max_age)

    def headers(self, request_origin: str | None) -> dict[str, str]:
        """CORS headers for a request from `request_origin`: none unless it is the allowed one."""
        return dict(self._headers) if request_origin == self.origin else {}


class Response:
    """A handler's answer when it is not a plain 200 (another status, or headers such as Location)."""

    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}


class Route:
    def __init__(self, method: str, rule: str, handler: Callable[..., Any], path: type[Model] | None,
                 query: type[Model] | None, body: type[Model] | None, docs: dict[str, Any]) -> None:  # fmt: skip
        self.method, self.rule, self.handler = method, rule, handler
        self.path, self.query, self.body = path, query, body
        self.docs = docs  # summary, description, tags, responses, ...: read by the OpenAPI writer only
        # "/devices/<thing>" -> ["devices", "<thing>"]: a <name> takes one whole, non-empty segment
        self._segments = rule[1:].split("/")

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The path parameters if the request's path segments fit this rule, else None."""
        if len(segments) != len(self._segments):
            return None
        params: dict[str, str] = {}
        for want, got in zip(self._segments, segments, strict=True):
            if want.startswith("<"):
                if not got or "/" in got:  # a parameter is one whole segment
                    return None
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params

    @property
    def openapi_path(self) -> str:
        return "/" + "/".join("{" + s[1:-1] + "}" if s.startswith("<") else s for s in self._segments)


class _Event:
    """What the handlers may read of the request being answered."""

    def __init__(self, event: dict[str, Any]) -> None:
        self.raw = event
        self.http_method = str(event.get("httpMethod") or "").upper()
        path = str(event.get("path") or "/")
        self.base = _mapped_base(path, event)
        path = path[len(self.base):]
        self.path = path[:-1] if len(path) > 1 and path.endswith("/") else path  # /devices/ is /devices
        self.headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}

    def url_path(self, route_path: str) -> str:
        """route_path as the caller reaches it, for a Location: on an execute-api URL the API
        lives under /{stage}, which API Gateway strips from `path` but keeps in requestContext."""
        called = str((self.raw.get("requestContext") or {}).get("path") or "")
        own = str(self.raw.get("path") or "")
        prefix = called[: len(called) - len(own)] if own and called.endswith(own) else ""
        return prefix + self.base + route_path

    def query(self) -> dict[str, Any]:
        """Query parameters; one given several times keeps all its values (a list), which no field accepts."""
        multi = self.raw.get("multiValueQueryStringParameters")
        if multi:
            return {k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in multi.items()}
        return dict(self.raw.get("queryStringParameters") or {})

    def json_body(self) -> Any:
        body = self.raw.get("body")
        if body is None or body == "":
            return None
        if self.raw.get("isBase64Encoded"):
            body = base64.b64decode(body).decode("utf-8")  # the guard made sure it is UTF-8
        try:
            value = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
        except ValueError as e:
            raise errors.InvalidJson(str(e) if isinstance(e, _NotJson) else "the body is not valid JSON") from None
        except RecursionError:  # e.g. 5,000 '[': not a ValueError, and it must not become a 502
            raise errors.InvalidJson("the body nests too deeply to be read") from None
        _check_json(value)
        return value


def _mapped_base(path: str, event: dict[str, Any]) -> str:
    """A custom domain's base path mapping ("/v1"), which API Gateway leaves at the start of
    `path`: what precedes the {proxy+} part (decoded in pathParameters, as on AWS). "" on an
    execute-api URL (the stage is not in `path`), or when the two do not line up."""
    params = event.get("pathParameters")
    proxy = params.get("proxy") if isinstance(params, dict) else None
    if not isinstance(proxy, str) or not proxy:
        return ""
    # A trailing slash may be in one and not the other.
    decoded, tail = unquote(path).rstrip("/"), "/" + proxy.rstrip("/")
    if not decoded.endswith(tail):
        return ""
    base = decoded[: len(decoded) - len(tail)]
    return base if path.startswith(base + "/") else ""  # a base path is plain segments, never encoded


# What json.loads takes but JSON (RFC 8259) and AWS IoT do not: NaN/Infinity, numbers past a
# double, unpaired surrogates. Let through, AWS refuses the shadow document later, after part of
# a job is recorded; deep nesting overflows the stack of whatever serialises it next.
MAX_BODY_DEPTH = 32


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NotJson(f"the number {text[:20]} is too large")
    return value


def _check_json(value: Any) -> None:
    """Raise InvalidJson for nesting past MAX_BODY_DEPTH or a string (or key) that is not valid Unicode."""
    todo = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise errors.InvalidJson("the body has a string with an unpaired surrogate (\\ud800-\\udfff)") from None
            continue
        children: Any = None
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, list):
            children = item
        if children is None:
            continue
        if depth > MAX_BODY_DEPTH:
            raise errors.InvalidJson(f"the body nests deeper than {MAX_BODY_DEPTH} levels")
        todo.extend((child, depth + 1) for child in children)


class Router:
    def __init__(self, *, cors: Cors | None = None) -> None:
        self.cors = cors
        self.routes: list[Route] = []
        self.current_event: _Event | None = None
        self.lambda_context: Any = None
        self._on_error: Callable[[errors.ApiError], None] | None = None
        self._on_request: Callable[[], None] | None = None

    # ---- declaring routes ----

    def route(self, method: str, rule: str, *, path: type[Model] | None = None, query: type[Model] | None = None,
              body: type[Model] | None = None, **docs: Any) -> Callable[[F], F]:  # fmt: skip
        def register(handler: F) -> F:
            self.routes.append(Route(method.upper(), rule, handler, path, query, body, docs))
            return handler

        return register

    def get(self, rule: str, **kw: Any) -> Callable[[F], F]:
        return self.route("GET", rule, **kw)

    def post(self, rule: str, **kw: Any) -> Callable[[F], F]:
        return self.route("POST", rule, **kw)

    def patch(self, rule: str, **kw: Any) -> Callable[[F], F]:
        return self.route("PATCH", rule, **kw)

    def on_error(self, hook: Callable[[errors.ApiError], None]) -> Callable[[errors.ApiError], None]:
        """Called with every ApiError before it is answered (e.g. to log server-side failures)."""
        self._on_error = hook
        return hook

    def on_request(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Called as every request starts, with `current_event` and `lambda_context` set (e.g. to start its clock)."""
        self._on_request = hook
        return hook

    # ---- answering an event ----

    def resolve(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        # In a context of its own: what a request sets there (its clock) ends with it.
        return contextvars.copy_context().run(self._resolve, event, context)

    def _resolve(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        request = self.current_event = _Event(event)
        self.lambda_context = context
        if self._on_request is not None:
            self._on_request()
        try:
            guard.check_request(event)  # size and media type, before anything reads the body
            if request.http_method == "OPTIONS" and self.cors is not None:
                return self._preflight(request)
            route, matched = self._find(request)
            status, body, headers = self._call(route, matched, request)
        except errors.ApiError as exc:
            if self._on_error is not None:
                self._on_error(exc)
            status, body, headers = exc.status, exc.body(), {}
        headers = {"Content-Type": JSON, **headers, **self._cors_headers(request)}
        text = json.dumps(body, separators=(",", ":"), default=_encode)
        return {"statusCode": status, "headers": headers, "body": text, "isBase64Encoded": False}

    def _cors_headers(self, request: _Event) -> dict[str, str]:
        return self.cors.headers(request.headers.get("origin")) if self.cors is not None else {}

    def _preflight(self, request: _Event) -> dict[str, Any]:
        """A browser's CORS preflight, on any path: 204 with what the API allows (API Gateway lets it through without a key)."""
        methods = ",".join(sorted({r.method for r in self.routes} | {"OPTIONS"}))
        headers = {**self._cors_headers(request), "Access-Control-Allow-Methods": methods}
        return {"statusCode": 204, "headers": headers, "body": "", "isBase64Encoded": False}

    def _find(self, request: _Event) -> tuple[Route, dict[str, str]]:
        path_matches = False
        # API Gateway's paths start with /. A REST API passes the path percent-encoded, as sent
        # (an HTTP API would decode it): split first, then decode each segment, so a thing named
        # `room:1` sent as `room%3A1` is found, and an encoded `/` (%2F) stays inside its segment.
        segments = [unquote(s) for s in request.path[1:].split("/")]
        for route in self.routes:
            matched = route.match(segments)
            if matched is None:
                continue
            if route.method == request.http_method:
                return route, matched
            path_matches = True
        if path_matches:
            raise errors.MethodNotAllowed(f"{request.http_method} is not allowed on {request.path}")
        raise errors.RouteNotFound(f"no route {request.path}")

    def _call(self, route: Route, matched: dict[str, str], request: _Event) -> tuple[int, Any, dict[str, str]]:
        query = request.query()
        known = set(route.query.__fields__) if route.query is not None else set()
        unknown = sorted(set(query) - known)
        if unknown:  # refused like unknown body fields: a typo must not pass silently
            extra = [{"loc": ["query", name], "msg": "unknown query parameter", "type": "extra_forbidden"} for name in unknown]
            raise errors.ValidationFailed(f"unknown query parameter(s): {', '.join(unknown)}", details=extra)
        body = request.json_body() if route.body is not None else None
        problems: list[Problem] = []
        kwargs: dict[str, Any] = {}
        for model, data, where in ((route.path, matched, "path"), (route.query, query, "query")):
            if model is not None:
                values = _validated(model, data, [where], problems)
                if values is not None:
                    kwargs.update({name: getattr(values, name) for name in model.__fields__})
        if route.body is not None:
            if body is None:
                problems.append({"loc": ["body"], "msg": "Field required", "type": "missing"})
            else:
                kwargs["body"] = _validated(route.body, body, ["body"], problems)
        if problems:
            raise errors.ValidationFailed("the request does not match the schema", details=problems)
        result = route.handler(**kwargs)
        if isinstance(result, Response):
            return result.status, result.body, result.headers
        return 200, result, {}


def _validated(model: type[Model], data: Any, loc: list[Any], problems: list[Problem]) -> Any:
    try:
        return model.validate(data, loc)
    except Invalid as exc:
        problems.extend(exc.problems)
        return None


def _encode(value: Any) -> Any:
    if isinstance(value, Model):
        return value.dump()
    raise TypeError(f"{type(value).__name__} is not JSON")
