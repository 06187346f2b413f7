"""Run the service under uvicorn (what `python serve.py` does), with SIGHUP reloading the served artifact.

Threads: torch and FAISS get `service.threads` threads each (default 1): requests run concurrently in the
handler thread pool, and one thread per forward pass keeps them from fighting over the cores.

Workers: `service.workers=N` (N > 1) runs N server processes on one listening socket under uvicorn's
supervisor (`uvicorn.supervisors.Multiprocess`, started processes, not forks: torch and FAISS keep no state
across a fork). Each worker loads the artifact before it accepts connections; the index is memory-mapped, so
the workers share its pages. SIGHUP to the supervisor, or POST /admin/reload to any worker, is a rolling
restart: each replacement worker loads and verifies the artifact, and only then does the worker it replaces
stop (graceful: its requests in flight finish); a replacement that fails to load is killed and the rest of the
restart abandoned, so the served version stays. More hosts: run one such server per host behind a load
balancer, each reading the artifact from shared storage, and reload each (SIGHUP or the endpoint).
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import threading

from towerrec.serving.config import ServeConfig

log = logging.getLogger(__name__)


def configure_threads(n: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def configure_process(cfg: ServeConfig) -> None:
    configure_threads(cfg.threads)
    if cfg.gc_thresholds is not None:  # fewer collections: each full one walks the artifact's objects
        gc.set_threshold(*cfg.gc_thresholds)


def run(cfg: ServeConfig, access_log: bool = False) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit status (1 when the first load failed)."""
    if cfg.workers > 1:
        return run_workers(cfg, access_log)
    import uvicorn

    from towerrec.serving.app import create_app

    configure_process(cfg)
    failed = threading.Event()
    server: uvicorn.Server | None = None

    def on_load_failure(exc: BaseException) -> None:
        failed.set()
        if cfg.exit_on_load_failure and server is not None:
            log.error("the first load failed; stopping (service.exit_on_load_failure=true)")
            server.should_exit = True

    app = create_app(cfg, on_load_failure=on_load_failure)
    service = app.state.service

    def reload_in_background(signum, frame) -> None:  # a signal handler must return at once
        def reload():
            try:
                service.reload()
            except Exception as e:
                log.error("SIGHUP reload failed, the served artifact stays: %s", e)

        log.info("SIGHUP: reloading %s", service.holder.path)
        threading.Thread(target=reload, name="towerrec-reload", daemon=True).start()

    hup = hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGHUP, reload_in_background) if hup else None
    # log_config=None: keep the logging set up by Hydra (console + the run's log file)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, log_config=None,
                            access_log=access_log, timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    try:
        server.run()
    finally:
        if hup:
            signal.signal(signal.SIGHUP, previous)
    return 1 if failed.is_set() else 0


def worker_app(cfg: ServeConfig, log_files: tuple[str, ...] = ()):
    """The app of one worker process (uvicorn's factory, called in the worker): logging to the console and the
    supervisor's log files, the process settings, and an app that loads before it serves."""
    from towerrec.serving.app import create_app

    handlers: list[logging.Handler] = [logging.StreamHandler()] + [logging.FileHandler(f) for f in log_files]
    fmt = logging.Formatter("[%(asctime)s][worker %(process)d][%(name)s][%(levelname)s] - %(message)s")
    for h in handlers:
        h.setFormatter(fmt)
    logging.basicConfig(level=cfg.log_level.upper(), handlers=handlers, force=True)
    configure_process(cfg)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads are the supervisor's (a rolling restart)
    supervisor = os.getppid()
    return create_app(cfg, load_before_serving=True, reload_all=lambda: os.kill(supervisor, signal.SIGHUP))


def run_workers(cfg: ServeConfig, access_log: bool = False) -> int:
    """`service.workers` processes on one socket under uvicorn's supervisor, until SIGINT/SIGTERM; returns 1 when
    a worker failed to start (e.g. the artifact did not load)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    log_files = tuple(h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler))
    config = uvicorn.Config(functools.partial(worker_app, cfg, log_files), factory=True, host=cfg.host,
                            port=cfg.port, workers=cfg.workers, log_level=cfg.log_level, log_config=None,
                            access_log=access_log, timeout_graceful_shutdown=10)

    class Supervisor(Multiprocess):
        def restart_all(self) -> None:  # uvicorn's health-check timeout (5 s) bounds a replacement's start-up
            ping = config.timeout_worker_healthcheck
            config.timeout_worker_healthcheck = cfg.worker_timeout_s  # loading the artifact and models takes longer
            try:
                super().restart_all()
            finally:
                config.timeout_worker_healthcheck = ping

    supervisor = Supervisor(config, sockets=[config.bind_socket()])
    supervisor.run()
    return 1 if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes) else 0
