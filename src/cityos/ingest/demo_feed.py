"""``make demo``'s live sensor feed: the simulator publishing to the demo server.

When an MQTT broker answers (``CITYOS_MQTT_URL``, else the local Mosquitto on 1883),
the demo registers the simulated Toyama fleet, ingests from the broker, and runs
``cityos simulate`` (with the flood scenario) against it once the server is up. HTTP
ingestion gets a secret too (printed), so a ChirpStack or TTN can be pointed at it.
Without a broker the demo runs without the feed and says so.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import httpx

from cityos.ingest.commands import open_registry
from cityos.ingest.simulator import build_fleet
from cityos.settings import Settings

LOCAL_BROKER = "mqtt://127.0.0.1:1883"


def broker_answers(url: str) -> bool:
    """True when something listens at the MQTT URL's host and port."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 1883), 1):
            return True
    except OSError:
        return False


def prepare(settings: Settings, devices: int) -> Settings | None:
    """Register the fleet and return the settings with ingestion on; ``None`` when no
    broker answers (the demo then runs without a feed)."""
    url = settings.mqtt_url or LOCAL_BROKER
    if not broker_answers(url):
        return None
    with open_registry(settings.data_dir, settings.database) as registry:
        registry.register_many(device.registration() for device in build_fleet(devices))
    return settings.model_copy(
        update={
            "mqtt_url": url,
            "mqtt_client_id": "cityos-demo",
            "ingest_secret": settings.ingest_secret or secrets.token_urlsafe(16),
        }
    )


class DemoFeed:
    """``cityos simulate`` against the demo server, started once the server answers."""

    def __init__(self, settings: Settings, devices: int, rate: float) -> None:
        self.settings = settings
        self.devices = devices
        self.rate = rate
        self._process: subprocess.Popen[bytes] | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        """Wait for the server in the background, then launch the simulator."""
        threading.Thread(target=self._launch, daemon=True, name="cityos-demo-feed").start()

    def stop(self) -> None:
        """Stop the simulator (if it was started)."""
        self._stopped.set()
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)

    def _launch(self) -> None:
        base = f"http://{self.settings.host}:{self.settings.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self._stopped.is_set():
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        if self._stopped.is_set():
            return
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cityos.cli",
                "simulate",
                "--to",
                str(self.settings.mqtt_url),
                "--devices",
                str(self.devices),
                "--rate",
                str(self.rate),
                "--duration",
                "0",
                "--scenario",
                "flood",
            ],
            stdout=subprocess.DEVNULL,
        )
