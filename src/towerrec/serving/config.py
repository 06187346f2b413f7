"""Service settings: plain frozen dataclasses read from the `conf/serve.yaml` Hydra config (or a dict).

The `rerank` node of the config (the LM: model, scoring, explanations; `conf/rerank/`) is kept as a plain dict
in `ServeConfig.lm` and handed to the LM component factory untouched; the service's own switches for the LM
stages (on/off, time budgets, concurrency) live under `service.rerank` / `service.explain`. The `index` node
says where to search (`index.backend`: the artifact's FAISS index, or the Milvus collection of `index.milvus`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from towerrec.index import IndexConfig

RELOAD_TOKEN_ENV = "TOWERREC_RELOAD_TOKEN"


@dataclasses.dataclass(frozen=True)
class StageSettings:
    """An optional LM stage run under a time budget (rerank, explanations, product copy)."""

    enabled: bool = False
    budget_ms: float = 300.0  # past this the request goes on without the stage (rerank/explain) or gets a 503
    max_concurrent: int = 1  # LM calls in flight at once; requests beyond it skip the stage ("busy")
    candidates: int | None = None  # rerank: retrieval candidates handed to the LM (None: the reranker's top_n)
    max_items: int = 3  # explain: explanations for at most this many of the returned items
    describe_budget_ms: float = 10000.0  # explain: the budget of POST /describe (one product copy)

    def __post_init__(self):
        if self.budget_ms <= 0 or self.describe_budget_ms <= 0:
            raise ValueError(f"a stage budget must be positive, got {self.budget_ms} / {self.describe_budget_ms} ms")
        if self.max_concurrent < 1 or (self.candidates is not None and self.candidates < 1) or self.max_items < 0:
            raise ValueError(f"bad stage settings: {self}")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    artifacts: str  # the artifact directory served (and reloaded by default)
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    reload_token: str | None = None  # None: POST /admin/reload is disabled
    development: bool = False  # serve artifacts whose user pseudonyms came from the development key
    max_body_bytes: int = 65536  # larger request bodies get 413
    max_k: int = 100
    max_history: int = 200  # history item ids per request
    max_text_chars: int = 1000  # free text (query) length
    max_id_chars: int = 200  # user and item id length
    user_cache_size: int = 10000  # user vectors cached by what determines them (ServiceState.user_key; 0: none)
    precompute_user_vectors: bool = False  # embed every known user at load (before ready, and on each reload)
    embed_batch_size: int = 32  # concurrent user-tower calls share a forward pass of up to this many users (1: off)
    embed_batch_wait_ms: float = 2.0  # how long the first user of a batch waits for others
    threads: int = 1  # torch / FAISS threads per request
    workers: int = 1  # server processes on the port (uvicorn's supervisor; SIGHUP: a rolling restart of each)
    worker_timeout_s: int = 180  # workers > 1: a replacement worker must have loaded within this (else killed)
    worker_threads: int = 64  # that thread pool's size (rerank / explain requests and the other endpoints)
    gc_thresholds: tuple[int, ...] | None = (100_000, 50, 1000)  # gc.set_threshold in the server (None: Python's)
    exit_on_load_failure: bool = True  # a failed first load stops the server (else /readyz stays 503)
    lm_factory: str = "towerrec.serving.components.build_lm_components"  # module.function(ServeConfig)
    rerank_dir: str | None = "auto"  # a stage=rerank directory (tuned fusion, adapter); auto: ARTIFACT/rerank
    rerank: StageSettings = StageSettings()
    explain: StageSettings = dataclasses.field(default_factory=lambda: StageSettings(budget_ms=5000.0))
    lm: Mapping = dataclasses.field(default_factory=dict)  # the `rerank` config node, for the LM factory
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)  # only backend and milvus are read

    def __post_init__(self):
        for name in ("max_body_bytes", "max_k", "max_history", "max_text_chars", "max_id_chars", "threads",
                     "workers", "worker_timeout_s", "worker_threads", "embed_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"service.{name} must be at least 1, got {getattr(self, name)}")
        if self.gc_thresholds is not None:
            t = tuple(int(x) for x in self.gc_thresholds)
            if not 1 <= len(t) <= 3 or min(t) < 0:
                raise ValueError(f"service.gc_thresholds must be 1 to 3 non-negative integers (gc.set_threshold) "
                                 f"or null, got {self.gc_thresholds!r}")
            object.__setattr__(self, "gc_thresholds", t)
        if self.reload_token is not None and len(self.reload_token) < 8:
            raise ValueError("reload_token must have at least 8 characters (or be unset to disable reloads)")

    @property
    def lm_needed(self) -> bool:
        return self.rerank.enabled or self.explain.enabled

    @classmethod
    def from_cfg(cls, cfg) -> "ServeConfig":
        """From the composed `conf/serve.yaml` (DictConfig) or an equivalent nested dict."""
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):  # only the nodes read here are resolved (paths.* need a Hydra run)
            d = {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
                 for k in ("artifacts", "host", "port", "log_level", "reload_token", "development", "service",
                           "rerank", "index")
                 if k in cfg and not OmegaConf.is_missing(cfg, k)}
        else:
            d = dict(cfg)
        if not d.get("artifacts") or d["artifacts"] == "???":
            raise ValueError("no artifact to serve: pass artifacts=PATH (a directory written by python train.py)")
        service = dict(d.get("service") or {})
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(service) - fields
        if unknown:
            raise ValueError(f"unknown service option(s) {sorted(unknown)}; known: {sorted(fields)}")
        defaults = cls.__dataclass_fields__
        for stage in ("rerank", "explain"):
            if stage in service:
                default = defaults[stage].default
                if default is dataclasses.MISSING:
                    default = defaults[stage].default_factory()
                service[stage] = _stage(stage, service[stage], default)
        token = d.get("reload_token") or os.environ.get(RELOAD_TOKEN_ENV) or None
        return cls(artifacts=str(d["artifacts"]), host=str(d.get("host", "127.0.0.1")), port=int(d.get("port", 8000)),
                   log_level=str(d.get("log_level", "info")), reload_token=token, lm=dict(d.get("rerank") or {}),
                   development=bool(d.get("development", False)), index=IndexConfig.from_any(d.get("index")),
                   **service)


def _stage(name: str, node: Mapping | None, default: StageSettings) -> StageSettings:
    node = dict(node or {})
    known = {f.name for f in dataclasses.fields(StageSettings)}
    unknown = set(node) - known
    if unknown:
        raise ValueError(f"unknown service.{name} option(s) {sorted(unknown)}; known: {sorted(known)}")
    return dataclasses.replace(default, **node)
