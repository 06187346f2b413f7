"""The HTTP layer: a FastAPI application over a `RecommendationService`.

`create_app(cfg)` wires routes, error mapping, the request-body limit and metrics; the service loads its
artifact (and LM components) in a background thread when the app starts, so `/healthz` answers at once and
`/readyz` turns 200 when everything is loaded. Handlers are plain functions: FastAPI runs them in a thread
pool (`service.worker_threads` threads), where the user tower and FAISS release the GIL.

Errors: invalid input -> 422 with the offending field in `detail[].loc`, including JSON that Python would
accept but JSON does not (NaN, Infinity, 1e309, lone surrogates: `body.parse_json`), the offending input
echoed only where it can be encoded (`body.encodable_errors`); a body that is not UTF-8 -> 400; unknown
user/item id -> 404; request body over `service.max_body_bytes` -> 413; not loaded yet, or an LM stage a
request needs is disabled/busy/late -> 503 with Retry-After; reload without/with a wrong token -> 401/403
whatever the body (the token is checked before the body is parsed), while another reload runs -> 409, of an
artifact that fails to load or verify, or of a path the OS refuses (a name over 255 bytes) -> 422 naming
`path` (the served artifact stays). Every error body is JSON with `detail`.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime, and the
# request models are built per app (local classes a postponed annotation string could not be resolved to).

import contextlib
import copy
import logging
import os
import secrets

import anyio.to_thread
from fastapi import Body, Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from towerrec.artifact.format import ArtifactError
from towerrec.serving import schemas as S
from towerrec.serving.body import StrictJSONRoute, cut, encodable_errors
from towerrec.serving.components import LMComponents
from towerrec.serving.config import ServeConfig
from towerrec.serving.metrics import Metrics, MetricsMiddleware
from towerrec.serving.service import InvalidField, NotFound, NotReady, RecommendationService, Unavailable
from towerrec.serving.state import ReloadInProgress, ServiceState

log = logging.getLogger(__name__)

ERRORS = {code: {"model": S.ErrorResponse, "description": text} for code, text in (
    (400, "the body cannot be decoded (not UTF-8)"), (404, "unknown user or item id"),
    (413, "request body too large"), (503, "not ready, or a required LM stage is unavailable"))}
GET_ERRORS = {k: v for k, v in ERRORS.items() if k in (404, 503)}


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, by Content-Length or by counting a streamed body.

    The body (at most max_bytes) is read here and replayed to the app, so the app never sees a partial one."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                return await _json(send, 400, "invalid Content-Length header")
            if too_large:
                return await self._refuse(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # disconnected
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._refuse(send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect as usual

        await self.app(scope, replay, send)

    async def _refuse(self, send):
        await _json(send, 413, f"request body over the {self.max_bytes}-byte limit (service.max_body_bytes)")


async def _json(send, status: int, detail: str) -> None:
    body = JSONResponse({"detail": detail}).body
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(cfg: ServeConfig, *, service: RecommendationService | None = None,
               components: LMComponents | None = None, on_load_failure=None, load_before_serving: bool = False,
               reload_all=None) -> FastAPI:
    """The service's FastAPI app. `components`: LM components to use instead of building them from config
    (tests pass doubles); `on_load_failure(exc)`: called when the background load fails (the server stops).

    One of several workers (`server.worker_app`): `load_before_serving` loads during the app's startup, so the
    worker takes no connection before it can answer (a failed load fails the startup when
    `service.exit_on_load_failure`); `reload_all()`, called after POST /admin/reload swapped the artifact into
    this worker, makes every worker reload (the supervisor's rolling restart), so only the served directory
    can be reloaded."""
    metrics = service.metrics if service is not None else Metrics()
    service = service or RecommendationService(cfg, metrics, components)
    models = S.request_models(cfg)
    RecommendRequest, SimilarItemsRequest, DescribeRequest = (models.RecommendRequest, models.SimilarItemsRequest,
                                                              models.DescribeRequest)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        anyio.to_thread.current_default_thread_limiter().total_tokens = cfg.worker_threads
        if service.holder.current is None and load_before_serving:
            try:
                await anyio.to_thread.run_sync(service.load)
            except Exception as e:
                if cfg.exit_on_load_failure:
                    raise  # uvicorn: startup failed, the worker exits
                log.error("loading failed, /readyz stays 503: %s", e)
        elif service.holder.current is None:
            service.start(on_failure=on_load_failure)
        yield
        service.close()

    app = FastAPI(title="towerrec", version="0.1.0", lifespan=lifespan,
                  description="Recommendations from an exported artifact (text two-tower or sequence model), "
                              "with optional LM rerank, explanations and product copy.")
    app.state.service = service
    app.router.route_class = StrictJSONRoute  # every route parses its body with body.parse_json
    bearer = HTTPBearer(auto_error=False, description="the reload token (TOWERREC_RELOAD_TOKEN)")

    # ---- error mapping ---------------------------------------------------------------------------------
    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(NotReady)
    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Exception):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": encodable_errors(exc.errors())}, status_code=422)

    @app.exception_handler(InvalidField)
    async def invalid_field(request: Request, exc: InvalidField):
        return JSONResponse({"detail": encodable_errors([{"loc": exc.loc, "msg": exc.msg}])}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error (logged)"}, status_code=500)

    # ---- recommendations -------------------------------------------------------------------------------
    @app.post("/recommend", response_model=S.RecommendResponse, responses=ERRORS, tags=["recommend"],
              summary="Products for a known user, a history and/or a query")
    async def recommend(req: RecommendRequest):
        if service.on_event_loop(req):
            return await service.recommend_async(req)  # first come, first served
        return await anyio.to_thread.run_sync(service.recommend, req)  # LM stages or Milvus: a handler thread

    @app.post("/similar-items", response_model=S.SimilarItemsResponse, responses=ERRORS, tags=["recommend"],
              summary="Products like a given product (product vectors only)")
    def similar_items(req: SimilarItemsRequest):
        return service.similar_items(req)

    @app.post("/describe", response_model=S.DescribeResponse, responses=ERRORS, tags=["recommend"],
              summary="Personalized product copy, grounded in the product's own fields (or refused)")
    def describe(req: DescribeRequest):
        return service.describe(req)

    @app.get("/items/{item_id}", response_model=S.ItemResponse, tags=["catalog"],
             responses=GET_ERRORS, summary="A product of the served artifact")
    def item(item_id: str = Path(min_length=1, max_length=cfg.max_id_chars)):
        return service.item(item_id)

    # ---- operations ------------------------------------------------------------------------------------
    @app.get("/healthz", response_model=S.HealthResponse, tags=["ops"], summary="The process is alive")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=S.ReadyResponse, tags=["ops"],
             responses={503: {"model": S.ReadyResponse, "description": "not ready (loading or failed)"}},
             summary="The artifact and the configured models are loaded")
    def readyz():
        body = service.readiness()
        return body if body["ready"] else JSONResponse(body, status_code=503)

    @app.get("/metrics", tags=["ops"], response_class=Response, summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition format"}})
    def metrics_endpoint():
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    async def authorize(request: Request) -> JSONResponse | None:
        """401/403 unless the request carries the reload token; runs before the body is read."""
        credentials = await bearer(request)
        if credentials is None:
            return JSONResponse({"detail": "reload needs 'Authorization: Bearer <token>'"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        if cfg.reload_token is None:
            return JSONResponse({"detail": "reloads are disabled: start the service with TOWERREC_RELOAD_TOKEN "
                                           "(or reload_token=...) set"}, status_code=403)
        if not secrets.compare_digest(credentials.credentials.encode(), cfg.reload_token.encode()):
            return JSONResponse({"detail": "wrong reload token"}, status_code=403)
        return None

    def reload(body: S.ReloadRequest | None = Body(None)):
        path = body.path if body else None
        other = path is not None and os.path.abspath(path) != os.path.abspath(service.holder.path)
        if reload_all is not None and other:
            raise InvalidField(("body", "path"), f"with service.workers={cfg.workers} every worker serves "
                                                 f"{service.holder.path}: replace that directory (or point a "
                                                 "symlink there at the new version) and reload it")
        try:
            result = service.reload(path)
        except ReloadInProgress as e:
            return JSONResponse({"detail": str(e)}, status_code=409)
        except (OSError, ValueError) as e:  # ArtifactError is a ValueError; OSError: e.g. a name too long
            raise InvalidField(("body", "path"), f"the artifact was not loaded (the served one stays): "
                                                 f"{load_error(e, path or service.holder.path)}") from e
        if reload_all is not None:  # this worker serves it: now every worker (a rolling restart)
            reload_all()
            result["workers"] = cfg.workers
        return result

    app.router.add_api_route(
        "/admin/reload", reload, methods=["POST"], response_model=S.ReloadResponse, tags=["ops"],
        summary="Load and verify an artifact fully, then swap it in (Bearer token)",
        dependencies=[Depends(bearer)],  # documents the scheme; `authorize` checks it before the body is read
        route_class_override=type("ReloadRoute", (StrictJSONRoute,), {"guard": staticmethod(authorize)}),
        responses={401: {"model": S.ErrorResponse, "description": "no token"},
                   403: {"model": S.ErrorResponse, "description": "wrong token, or reloads disabled"},
                   409: {"model": S.ErrorResponse, "description": "another reload is in progress"},
                   400: ERRORS[400], 413: ERRORS[413]})

    base_openapi = app.openapi

    def openapi_with_examples() -> dict:
        """The OpenAPI schema, with request examples taken from the served artifact once it is loaded
        (real item and user ids: a client, or a fuzzer, starts from requests that reach the logic)."""
        state = service.holder.current
        key = state.version if state is not None else None
        if key not in examples_cache:
            schema = copy.deepcopy(base_openapi())
            if state is not None:
                add_examples(schema, state)
            examples_cache.clear()
            examples_cache[key] = schema
        return examples_cache[key]

    examples_cache: dict = {}
    app.openapi = openapi_with_examples
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.router.routes)
    return app


def load_error(e: Exception, path: str) -> str:
    """One sentence on why loading `path` failed: an ArtifactError names its file; an OS error is given with
    the (cut) path it is about."""
    if isinstance(e, ArtifactError):
        return str(e)
    where = str(getattr(e, "filename", None) or path)
    return f"{cut(where, 120)}: {getattr(e, 'strerror', None) or e}"


def add_examples(schema: dict, state: ServiceState) -> None:
    """Request examples with ids of the served artifact, in place."""
    popular = [state.table.products[int(p)] for p in state.popularity_order[:3]]
    item, other = popular[0]["item_id"], popular[1]["item_id"]
    users = state.artifact.users
    user_id = next(iter(users), None)
    category = (popular[0]["category"] or "").split(" > ")[0] or None

    def body(path: str, examples: dict) -> None:
        content = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        content["examples"] = {name: {"value": value} for name, value in examples.items()}

    search = {"history": [item], "query": popular[2]["title"][:60], "k": 5,
              "filters": {"category": category, "price_max": 1000.0}}
    recommend = {"history": {"history": [item, other], "k": 5}, "search": search, "cold_start": {"k": 5}}
    if not state.has_text_path:  # an id-only sequence model embeds no free text (a query is a 422)
        search.pop("query")
        recommend["filtered"] = recommend.pop("search")
    if user_id is not None:
        recommend["known_user"] = {"user_id": user_id, "k": 5, "rerank": True}
    body("/recommend", recommend)
    body("/similar-items", {"item": {"item_id": item, "k": 5}})
    body("/describe", {"item": {"item_id": item, "history": [other]}})
    for param in schema["paths"]["/items/{item_id}"]["get"]["parameters"]:
        if param["name"] == "item_id":
            param["example"] = item
