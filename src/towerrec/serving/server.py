"""Run the service under uvicorn (what `python serve.py` does), with SIGHUP reloading the served artifact.

Threads: torch and FAISS get `service.threads` threads each (default 1): requests run concurrently in the
handler thread pool, and one thread per forward pass keeps them from fighting over the cores.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading

from towerrec.serving.config import ServeConfig

log = logging.getLogger(__name__)


def configure_threads(n: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def run(cfg: ServeConfig, access_log: bool = False) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit status (1 when the first load failed)."""
    import uvicorn

    from towerrec.serving.app import create_app

    configure_threads(cfg.threads)
    if cfg.gc_thresholds is not None:  # fewer collections: each full one walks the artifact's objects
        gc.set_threshold(*cfg.gc_thresholds)
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
