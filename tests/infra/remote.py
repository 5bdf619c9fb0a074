"""
A second host on this machine: a Docker engine and an sshd in their own network and mount
namespaces, reached only over SSH (``DOCKER_HOST=ssh://root@ADDRESS``).

The "remote host" is a network namespace joined to this one by a veth pair (a /30 of
10.213.0.0/16, see :func:`infra.network.create_netns`) and a mount namespace of its own, whose
``/tmp`` and ``/run`` are private: bind mounts of directories under :data:`REMOTE_ROOT`, so the
tests can look at the remote host's files from outside, but a path of this host never means
the same file there. In it run:

- a ``dockerd`` with ``--bridge=none`` (it would delete ``docker0`` in its namespace: never
  start one so in the host's namespace!) with its own data root (under the remote root) and its
  socket at ``/run/docker.sock`` of the private ``/run``, where the remote ``docker`` CLI looks;
- an ``sshd`` listening on the veth address, port 22, with a throwaway host key and one
  authorized client key, for root.

The ssh client finds the remote host through an ssh configuration of its own (host key in a
known_hosts file, the client key as IdentityFile). OpenSSH reads ``~/.ssh/config`` of the
passwd entry's home and ignores ``$HOME``, so a temporary HOME would not do; instead a
directory with an ``ssh`` wrapper (``exec /usr/bin/ssh -F CONFIG "$@"``) goes first on
``PATH``, and both the docker CLI and x11passthrough run the ``ssh`` they find there, as they do
a user's. Nothing here listens outside the namespace pair.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .ci import E2ESetupError, run_checked
from .network import NetNamespace, create_netns
from .processes import pid_alive, set_pdeathsig, stop_process, wait_until
from .xvfb import STATE_DIR


#: Where remote hosts keep their files (on disk: a Docker data root does not fit in /tmp).
REMOTE_ROOT = Path("/var/tmp")
REMOTE_PREFIX = "x11pt-remote-"
#: The login user of the remote host.
REMOTE_USER = "root"
#: The remote engine's socket, inside the remote host's private /run.
REMOTE_DOCKER_SOCKET = "/run/docker.sock"

_SSHD_CONFIG = """\
Port {port}
ListenAddress {address}
AddressFamily inet
HostKey {root}/ssh/host_key
AuthorizedKeysFile {root}/ssh/authorized_keys
PidFile none
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
PermitUserRC no
X11Forwarding no
PrintMotd no
PrintLastLog no
LogLevel VERBOSE
SetEnv DOCKER_HOST=unix://{socket}
{extra}
"""


@dataclass
class RemoteSshd:
    """One sshd of the remote host (the port says which)."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def sessions(self) -> list[int]:
        """Return the pids of this sshd's per-connection processes (its children)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(p) for p in children.read_text().split()]
        except OSError:
            return []

    def drop_connections(self) -> list[int]:
        """Kill every connection of this sshd (SIGKILL to its per-connection processes)."""
        pids = self.sessions()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids


@dataclass
class RemoteHost:
    """
    The second host: its namespaces, engine, sshd, and the ssh client configuration for it.

    Attributes:
        netns: The network namespace and the veth pair to it.
        root: This host's view of the remote host's files (``tmp/``, ``run/``, ``docker/``,
            ``ssh/``).
        client_dir: The ssh client's files (key, known_hosts, config, ``bin/ssh``).
        image: The image loaded into the remote engine at start ("" for none).
    """

    netns: NetNamespace
    root: Path
    client_dir: Path
    holder: subprocess.Popen[bytes] | None = None
    dockerd: subprocess.Popen[bytes] | None = None
    sshds: list[RemoteSshd] = field(default_factory=list)
    image: str = ""

    @property
    def address(self) -> str:
        """The remote host's address (its end of the veth pair)."""
        return self.netns.ns_address

    @property
    def docker_host(self) -> str:
        """``DOCKER_HOST`` for the remote engine: ``ssh://root@ADDRESS``."""
        return f"ssh://{REMOTE_USER}@{self.address}"

    def url(self, port: int = 22) -> str:
        """An ``ssh://`` URL of the remote host on `port`."""
        return self.docker_host if port == 22 else f"{self.docker_host}:{port}"

    @property
    def ssh_config(self) -> Path:
        """The ssh client configuration for the remote host."""
        return self.client_dir / "config"

    @property
    def bin_dir(self) -> Path:
        """The directory with the ``ssh`` wrapper; put it first on ``PATH``."""
        return self.client_dir / "bin"

    @property
    def sshd(self) -> RemoteSshd:
        """The remote host's main sshd (port 22)."""
        return self.sshds[0]

    def env(self, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
        """
        Return an environment whose ``ssh`` and ``docker`` reach the remote host.

        ``PATH`` starts with the ssh wrapper, ``DOCKER_HOST`` is the remote engine (unless
        `extra` sets it: pass ``DOCKER_HOST=""`` to leave it out), ``DOCKER_CONTEXT`` and
        ``CONTAINER_HOST`` are removed.
        """
        env = dict(os.environ if base is None else base)
        for name in ("DOCKER_CONTEXT", "CONTAINER_HOST", "CONTAINER_CONNECTION"):
            env.pop(name, None)
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
        env["DOCKER_HOST"] = self.docker_host
        env.update(extra)
        if not env["DOCKER_HOST"]:
            del env["DOCKER_HOST"]
        return env

    def local_path(self, remote: str | os.PathLike[str]) -> Path:
        """Return this host's path to the remote file `remote` (under its /tmp or /run)."""
        path = PurePosixPath(os.fspath(remote))
        for top in ("tmp", "run"):
            if path.parts[1:2] == (top,):
                return self.root / top / Path(*path.parts[2:])
        msg = f"{remote} is not under the remote host's /tmp or /run"
        raise ValueError(msg)

    def run(
        self, argv: Sequence[str], *, timeout: float = 120, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command on the remote host directly (in its namespaces, not over SSH)."""
        assert self.holder is not None
        return subprocess.run(
            [*self._enter(), *argv],
            capture_output=True,
            timeout=timeout,
            input=input,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.root)},
        )

    def docker(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``docker`` on the remote host against its engine (directly, not over SSH)."""
        done = self.run(["docker", "-H", f"unix://{REMOTE_DOCKER_SOCKET}", *args], timeout=timeout)
        return subprocess.CompletedProcess(
            done.args,
            done.returncode,
            done.stdout.decode(errors="replace"),
            done.stderr.decode(errors="replace"),
        )

    def over_ssh(
        self, argv: Sequence[str], *, port: int = 22, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a remote command over SSH, as a user would (the wrapper, the config)."""
        return subprocess.run(
            ["ssh", "-p", str(port), f"{REMOTE_USER}@{self.address}", *argv],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def load_image(self, image: str) -> None:
        """Copy `image` from this host's engine into the remote engine, unless it is there."""
        ours = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Id}}", image],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        theirs = self.docker("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
        if ours and ours == theirs:
            return
        with subprocess.Popen(
            ["docker", "save", image], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        ) as save:
            assert self.holder is not None
            loaded = subprocess.run(
                [*self._enter(), "docker", "-H", f"unix://{REMOTE_DOCKER_SOCKET}", "load", "-q"],
                stdin=save.stdout,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        if save.returncode != 0 or loaded.returncode != 0:
            msg = f"loading {image} into the remote engine failed: {loaded.stderr.strip()}"
            raise E2ESetupError(msg)

    def start_sshd(self, port: int, extra_config: str = "") -> RemoteSshd:
        """
        Start another sshd of the remote host on `port`, with more sshd_config lines.

        For a server that forbids what the main one allows (``AllowStreamLocalForwarding
        no``); stopped with the host.
        """
        config = self.root / "ssh" / f"sshd_config.{port}"
        config.write_text(
            _SSHD_CONFIG.format(
                port=port,
                address=self.address,
                root=self.root,
                socket=REMOTE_DOCKER_SOCKET,
                extra=extra_config,
            )
        )
        log = self.root / f"sshd.{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*self._enter(), "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=set_pdeathsig,  # noqa: PLW1509 - only prctl, safe before exec
            )
        server = RemoteSshd(port, process, log)
        self.sshds.append(server)
        if not _wait_banner(self.address, port, process):
            msg = f"the remote sshd on port {port} did not start: {_tail(log)}"
            raise E2ESetupError(msg)
        return server

    def stop_sshd(self, server: RemoteSshd) -> None:
        """Stop one sshd of the remote host."""
        stop_process(server.process)
        with contextlib.suppress(ValueError):
            self.sshds.remove(server)

    def close(self) -> None:
        """Stop everything and remove the namespaces and files (idempotent)."""
        for server in list(self.sshds):
            self.stop_sshd(server)
        if self.dockerd is not None:
            if self.dockerd.poll() is None:
                self.dockerd.terminate()
                try:
                    self.dockerd.wait(60)
                except subprocess.TimeoutExpired:
                    self.dockerd.kill()
                    self.dockerd.wait(10)
            self.dockerd = None
        if self.holder is not None:
            stop_process(self.holder)
            for stream in (self.holder.stdout, self.holder.stderr):
                if stream is not None:
                    stream.close()
            self.holder = None
        self.netns.delete()
        shutil.rmtree(self.client_dir, ignore_errors=True)
        _remove_tree(self.root)
        (STATE_DIR / f"{self.root.name}.owner").unlink(missing_ok=True)

    def _enter(self) -> list[str]:
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "--net", "--mount", "--"]


def _remove_tree(path: Path) -> None:
    """Remove a remote root; a mount left in it (by a killed engine) is detached first."""
    if not path.exists():
        return
    with contextlib.suppress(OSError):
        shutil.rmtree(path)
    if path.exists():
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        for line in reversed(mounts):
            target = line.split()[1]
            if target.startswith(f"{path}/"):
                subprocess.run(["umount", "-l", target], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_banner(address: str, port: int, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection((address, port), timeout=5) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def reap_stale_remotes() -> list[Path]:
    """Remove remote roots that killed test runs left behind (their namespaces die with them)."""
    reaped: list[Path] = []
    if not STATE_DIR.is_dir():
        return reaped
    for record in STATE_DIR.glob(f"{REMOTE_PREFIX}*.owner"):
        try:
            owner = int(record.read_text().strip())
        except (OSError, ValueError):
            owner = 0
        if owner and pid_alive(owner):
            continue
        root = REMOTE_ROOT / record.stem
        _remove_tree(root)
        record.unlink(missing_ok=True)
        reaped.append(root)
    return reaped


def start_remote_host(client_dir: Path, *, image: str | None = None) -> RemoteHost:
    """
    Start the second host: namespaces, its engine, its sshd, and an ssh client setup for it.

    Needs root, ``nsenter``/``unshare``, ``dockerd`` and ``sshd``.

    Args:
        client_dir: A fresh directory for the ssh client's files.
        image: An image of this host's engine to load into the remote one.

    Returns:
        The running host; call :meth:`RemoteHost.close` when done.

    Raises:
        E2ESetupError: A piece did not start (everything started is stopped again).
    """
    reap_stale_remotes()
    token = secrets.token_hex(4)
    root = REMOTE_ROOT / f"{REMOTE_PREFIX}{token}"
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    (STATE_DIR / f"{root.name}.owner").write_text(f"{os.getpid()}\n")
    for part in ("tmp", "run", "docker", "ssh"):
        (root / part).mkdir(parents=True, mode=0o700)
    (root / "tmp").chmod(0o1777)
    (root / "run").chmod(0o755)
    netns = create_netns()
    host = RemoteHost(netns, root, client_dir)
    try:
        _start_holder(host)
        _start_dockerd(host)
        _setup_ssh(host)
        host.start_sshd(22)
        _check_login(host)
        if image is not None:
            host.load_image(image)
            host.image = image
    except BaseException:
        host.close()
        raise
    return host


def _check_login(host: RemoteHost) -> None:
    done = host.over_ssh(["true"])
    if done.returncode != 0:
        msg = f"ssh to the remote host failed: {done.stderr.strip()}"
        raise E2ESetupError(msg)


def _start_holder(host: RemoteHost) -> None:
    """Start the process that holds the mount namespace (private /tmp and /run)."""
    script = (
        f"mount --bind {host.root}/tmp /tmp && mount --bind {host.root}/run /run && "
        "mkdir -p /run/sshd && echo ready && exec sleep infinity"
    )
    host.holder = subprocess.Popen(
        [
            "nsenter",
            f"--net=/run/netns/{host.netns.name}",
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=set_pdeathsig,  # noqa: PLW1509 - only prctl, safe before exec
    )
    assert host.holder.stdout is not None
    line = host.holder.stdout.readline()
    if line.strip() != b"ready":
        assert host.holder.stderr is not None
        msg = f"the remote host's namespaces did not start: {host.holder.stderr.read()!r}"
        raise E2ESetupError(msg)
    # `sleep` holds the namespaces: nsenter enters them through its pid.
    holder_pid = host.holder.pid
    wait_until(
        lambda: _comm(holder_pid) == "sleep",
        "the namespace holder to exec sleep",
        timeout=30,
    )


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _start_dockerd(host: RemoteHost) -> None:
    """Start the remote engine and wait until it answers on its socket."""
    log = host.root / "dockerd.log"
    argv = [
        *host._enter(),
        "dockerd",
        "--bridge=none",
        "--iptables=false",
        "--ip6tables=false",
        "--ip-masq=false",
        f"--data-root={host.root}/docker",
        "--exec-root=/run/docker",
        f"--host=unix://{REMOTE_DOCKER_SOCKET}",
        "--pidfile=/run/docker.pid",
        "--cgroup-parent=/x11pt-remote",
    ]
    with log.open("wb") as out:
        host.dockerd = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            preexec_fn=set_pdeathsig,  # noqa: PLW1509 - only prctl, safe before exec
        )
    deadline = time.monotonic() + 90
    while host.docker("version", "--format", "{{.Server.Version}}", timeout=30).returncode != 0:
        if host.dockerd.poll() is not None or time.monotonic() > deadline:
            msg = f"the remote dockerd did not start: {_tail(log)}"
            raise E2ESetupError(msg)
        time.sleep(0.2)


def _setup_ssh(host: RemoteHost) -> None:
    """Make the host key, the client key, known_hosts, the client config and the wrapper."""
    keys = host.root / "ssh"
    host.client_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    host.client_dir.chmod(0o700)
    client_key = host.client_dir / "id_ed25519"
    for path, comment in ((keys / "host_key", "remote-host"), (client_key, "x11pt-client")):
        run_checked(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            what="generating an ssh key",
        )
    (keys / "authorized_keys").write_bytes(client_key.with_suffix(".pub").read_bytes())
    host_public = (keys / "host_key.pub").read_text().split()
    (host.client_dir / "known_hosts").write_text(
        f"{host.address} {host_public[0]} {host_public[1]}\n"
    )
    host.ssh_config.write_text(
        f"""\
Host {host.address}
  User {REMOTE_USER}
  IdentityFile {client_key}
  IdentitiesOnly yes
  UserKnownHostsFile {host.client_dir / "known_hosts"}
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
  ConnectTimeout 30
"""
    )
    host.bin_dir.mkdir(mode=0o755)
    wrapper = host.bin_dir / "ssh"
    ssh = shutil.which("ssh") or "/usr/bin/ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {ssh} -F {host.ssh_config} "$@"\n')
    wrapper.chmod(0o755)


@contextlib.contextmanager
def remote_host(client_dir: Path, *, image: str | None = None) -> Iterator[RemoteHost]:
    """Run a remote host for the duration of the block."""
    host = start_remote_host(client_dir, image=image)
    try:
        yield host
    finally:
        host.close()
