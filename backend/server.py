"""Run the ML backend under gunicorn with threaded workers, as the Label Studio ecosystem does."""

from __future__ import annotations

import ipaddress
import logging

from gunicorn.app.base import BaseApplication

from thumbnail_ml.settings import Settings, configure_logging

logger = logging.getLogger(__name__)

# Label Studio waits up to 100 s for /predict; a worker gets a little more before gunicorn
# restarts it.
WORKER_TIMEOUT_S = 120


def is_loopback(host: str) -> bool:
    """Return whether ``host`` only accepts connections from this machine."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class GunicornServer(BaseApplication):
    """A gunicorn application whose workers each build the Flask app from ``settings``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        options = {
            "bind": f"{self.settings.host}:{self.settings.port}",
            "workers": self.settings.workers,
            "threads": self.settings.threads,
            "worker_class": "gthread",
            "timeout": WORKER_TIMEOUT_S,
            "graceful_timeout": 30,
            "keepalive": 5,
            "loglevel": self.settings.log_level.lower(),
            # The app logs one line per request with its ids; gunicorn's access log would repeat it.
            "accesslog": None,
            # gunicorn's control socket has one default path per user ($HOME/.gunicorn/gunicorn.ctl),
            # which every backend on the machine would share; nothing here uses the socket.
            "control_socket_disable": True,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self):
        from backend.app import create_app

        configure_logging(self.settings.log_level)
        return create_app(self.settings)


def serve(settings: Settings) -> None:
    """Start gunicorn and block until it stops."""
    configure_logging(settings.log_level)
    if not settings.basic_auth_user and not is_loopback(settings.host):
        logger.warning(
            "listening on %s without BASIC_AUTH_USER/BASIC_AUTH_PASS: anyone who reaches this address "
            "can request predictions; set both to require credentials", settings.host,
        )
    logger.info("serving on http://%s:%d with %d worker(s) x %d thread(s), model store %s",
                settings.host, settings.port, settings.workers, settings.threads, settings.model_dir)
    GunicornServer(settings).run()
