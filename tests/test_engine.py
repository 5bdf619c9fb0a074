"""
Engine detection from the engines' own answers: recorded ones replayed over a real UNIX socket
(Docker Desktop cannot run here), and the live Docker engine.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import socketserver
import threading
import time

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from x11passthrough import _engine
from x11passthrough._options import Options
from x11passthrough._plan import plan
from x11passthrough.exceptions import ConfigurationError


DATA = Path(__file__).parent / "data" / "engines"


def recorded(name: str) -> Any:
    return json.loads((DATA / f"{name}.json").read_text())


class _Replay(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    answers: dict[str, tuple[dict[str, str], bytes]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Replay

    def do_GET(self) -> None:
        headers, body = self.server.answers.get(self.path, ({}, b""))
        if not body:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        for name, value in headers.items():
            if name not in {"Content-Length", "Transfer-Encoding"} and not name.startswith("("):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(name="replay")
def _replay(tmp_path: Path) -> Iterator[Any]:
    """Serve an engine's recorded answers on a UNIX socket; yields a starter."""
    servers: list[_Replay] = []

    def start(engine: str) -> str:
        path = str(tmp_path / f"{engine}.sock")
        server = _Replay(path, _Handler)
        headers = recorded(f"{engine}-headers")
        answers = {"/_ping": (headers["/_ping"], b"OK")}
        if (DATA / f"{engine}-info.json").exists():
            answers["/info"] = (
                headers.get("/info", {}),
                json.dumps(recorded(f"{engine}-info")).encode(),
            )
        server.answers = answers
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return path

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("engine", "kind", "rootless", "words"),
    [
        ("docker-rootful", "docker", False, "Docker Engine 20.10"),
        ("docker-rootless", "docker", True, "Docker Engine 20.10"),
        ("docker-desktop", "desktop", False, "Docker Desktop (engine 27.1.1)"),
        ("podman-rootful", "podman", False, "Podman 4.3.1"),
        ("podman-rootless", "podman", True, "Podman 4.3.1"),
    ],
)
def test_classify_recorded_answers(engine: str, kind: str, rootless: bool, words: str) -> None:
    """Each engine is told apart by its own recorded /_ping headers and /info."""
    headers = {k.lower(): v for k, v in recorded(f"{engine}-headers")["/_ping"].items()}
    info = recorded(f"{engine}-info") if kind != "podman" else None
    uid = 2000 if rootless else 0
    found = _engine.classify("/sock", headers, info, uid)
    assert (found.kind, found.rootless, found.same_kernel) == (kind, rootless, kind != "desktop")
    assert found.description.startswith(words)


def test_docker_desktop_gets_tcp_on_loopback_and_files_under_home(
    replay: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Desktop's VM shares no sockets, reaches the host's loopback, and shares only $HOME."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{replay('docker-desktop')}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    chosen = plan(Options())
    assert chosen.engine is not None
    assert chosen.engine.kind == "desktop"
    assert chosen.transport == "tcp"
    assert [str(a) for a in chosen.bind] == ["127.0.0.1"]
    assert chosen.host_alias == "host.docker.internal"
    assert chosen.gateway is None  # Desktop defines host.docker.internal itself
    assert chosen.host_dir == tmp_path / "home" / ".cache" / "x11passthrough"
    assert chosen.make_host_dir
    assert not (tmp_path / "home").exists()  # planning makes nothing; lending does


@pytest.mark.parametrize("engine", ["podman-rootful", "docker-rootless", "docker-rootful"])
def test_engines_on_this_kernel_get_the_unix_transport(
    replay: Any, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """Podman (also behind DOCKER_HOST) and Docker Engine share the kernel: a socket it is."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{replay(engine)}")
    chosen = plan(Options())
    assert chosen.transport == "unix"
    assert chosen.engine is not None
    assert chosen.engine.kind == engine.split("-", maxsplit=1)[0]


def test_podman_over_tcp_uses_its_own_host_name(
    replay: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Podman adds host.containers.internal itself and rejects host-gateway (4.3)."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{replay('podman-rootful')}")
    chosen = plan(Options(transport="tcp", engine="podman", bind="10.88.0.1"))
    assert (chosen.host_alias, chosen.gateway) == ("host.containers.internal", None)


def test_podman_over_tcp_without_its_service_binds_its_gateway_before_it_exists(
    replay: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """
    No API to ask: the default network comes from containers.conf, and its gateway (which has
    no interface before the first container) is bound with IP_FREEBIND.
    """
    conf = tmp_path / "containers.conf"
    conf.write_text(
        '[containers]\ndefault_subnet = "192.0.2.0/24"\n'
        '[network]\n# default_subnet = "10.1.0.0/16"\ndefault_subnet = "10.99.0.0/16"\n'
    )
    monkeypatch.setenv("CONTAINERS_CONF", str(conf))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/engine.sock")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert str(_engine.podman_default_network()) == "10.99.0.0/16"
    chosen = plan(Options(transport="tcp", engine="podman"))
    assert [str(a) for a in chosen.bind] == ["10.99.0.1"]
    assert chosen.freebind
    assert [str(n) for n in chosen.networks] == ["10.99.0.0/16"]
    conf.write_text("[network]\n")
    assert str(_engine.podman_default_network()) == "10.88.0.0/16"


def test_rootless_podman_has_no_tcp_address_to_lend(
    replay: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its containers reach the host only on the host's own (LAN) addresses: unix only."""
    path = replay("podman-rootless")
    if os.geteuid() == 0:
        os.chown(path, 2000, 2000)  # a rootless engine's socket belongs to its user
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    found = _engine.detect("podman")
    assert found is not None
    assert found.rootless
    with pytest.raises(ConfigurationError, match=r"rootless Podman.*transport='unix'"):
        plan(Options(transport="tcp", engine="podman"))


def test_a_remote_engine_is_not_on_this_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://192.0.2.10:2376")
    found = _engine.detect()
    assert found is not None
    assert not found.same_kernel
    assert "DOCKER_HOST=tcp://192.0.2.10:2376" in found.description


def test_the_docker_context_names_the_socket(tmp_path: Path, replay: Any) -> None:
    """Without DOCKER_HOST, the current context of ~/.docker/config.json is where to ask."""
    path = replay("docker-desktop")
    config = tmp_path / ".docker"
    meta = config / "contexts" / "meta" / hashlib.sha256(b"desktop-linux").hexdigest()
    meta.mkdir(parents=True)
    (config / "config.json").write_text(json.dumps({"currentContext": "desktop-linux"}))
    (meta / "meta.json").write_text(
        json.dumps({"Name": "desktop-linux", "Endpoints": {"docker": {"Host": f"unix://{path}"}}})
    )
    environ = {"HOME": str(tmp_path)}
    assert _engine.api_sockets(environ)[0] == path
    found = _engine.detect(environ=environ)
    assert found is not None
    assert found.kind == "desktop"


@pytest.mark.e2e
def test_the_live_engine_is_detected_once_per_process(
    docker_client: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real dockerd: Docker Engine, rootful; asked once, then answered from the cache."""
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(_engine, "_cache", {})  # what other tests detected does not count
    started = time.perf_counter()
    found = _engine.detect()
    first = time.perf_counter() - started
    started = time.perf_counter()
    again = _engine.detect()
    cached = time.perf_counter() - started
    assert found is not None
    assert again is found
    assert (found.kind, found.rootless) == ("docker", False)
    assert cached < first
    with socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(found.socket))


def test_rootless_docker_has_no_tcp_address_to_lend(
    replay: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its containers are in rootlesskit's namespace: the host's docker0 is out of reach."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{replay('docker-rootless')}")
    with pytest.raises(ConfigurationError, match=r"rootless Docker.*transport='unix'"):
        plan(Options(transport="tcp", engine="auto"))


def test_a_told_docker_engine_is_not_taken_for_rootless(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A non-root user's ``engine="docker"`` with nothing answering still gets TCP on docker0."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nothing.sock'}")
    monkeypatch.setattr("x11passthrough._plan.os.geteuid", lambda: 1000)
    told = plan(Options(transport="tcp", engine="docker"))
    assert told.transport == "tcp"
    assert told.engine is not None
    assert told.engine.socket is None
