"""Real redis-server processes for the tests: started on free loopback ports, stopped after.

Used by the fixtures in conftest.py; also usable by fault tests (stop / start / pause).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int, password: str | None = None, username: str | None = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            if password:
                who = f"{username} " if username else ""
                sock.sendall(f"AUTH {who}{password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process bound to 127.0.0.1 on a free port."""

    def __init__(
        self,
        *extra_args: str,
        password: str | None = None,
        port: int | None = None,
        username: str | None = None,
        auth_only: bool = False,
    ) -> None:
        """``password`` sets requirepass, unless ``auth_only`` (users are configured in
        ``extra_args``): then ``username``/``password`` are only used to check readiness."""
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self.port = port or free_port()
        self.password = password
        self.username = username
        self.auth_only = auth_only
        self.extra_args = list(extra_args)
        self._dir = tempfile.mkdtemp(prefix="gathering-cache-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [
            str(REDIS_SERVER),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--enable-debug-command", "local",
            *self.extra_args,
        ]  # fmt: skip
        if self.password and not self.auth_only:
            args += ["--requirepass", self.password]
        log = Path(self._dir, "redis.log").open("ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            if _ping(self.port, self.password, self.username):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a paused server cannot exit
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets open but answers nothing (a hung server)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=5)
            self.process = None

    def log_tail(self) -> str:
        try:
            return Path(self._dir, "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


REDIS_CLI = shutil.which("redis-cli")


def distinct_free_ports(count: int) -> list[int]:
    """``count`` different free ports (``free_port`` alone may answer the same one twice)."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return list(ports)


CLUSTER_NODE_TIMEOUT_MS = 1000
"""cluster-node-timeout of the test cluster: a killed primary's replica takes over ~1-2 s
later (the default 15 s would make a failover test slow)."""


class LocalCluster:
    """A Redis Cluster of ``primaries`` primaries with ``replicas`` replicas each, every node a
    :class:`RedisServer` on a free loopback port (and a free cluster-bus port)."""

    def __init__(self, primaries: int = 3, replicas: int = 1) -> None:
        if REDIS_CLI is None:
            raise RuntimeError("redis-cli is not installed (apt-get install -y redis-server)")
        count = primaries * (1 + replicas)
        self.replicas = replicas
        ports = distinct_free_ports(count * 2)  # a data port and a bus port each
        self.nodes = []
        for _ in range(count):
            args = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                "--cluster-port", str(ports.pop()),
                "--cluster-replica-validity-factor", "0",
            ]  # fmt: skip
            self.nodes.append(RedisServer(*args, port=ports.pop()))

    @property
    def addresses(self) -> list[str]:
        """``host:port`` of every node (seed list for ``cluster_nodes``)."""
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    def start(self, timeout: float = 20.0) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [str(REDIS_CLI), "--cluster", "create", *self.addresses,
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
        self.wait_ok(timeout)

    def cli(self, port: int, *args: str) -> str:
        """One redis-cli command against the node on ``port``; its output ("" on failure)."""
        try:
            done = subprocess.run(
                [str(REDIS_CLI), "-h", "127.0.0.1", "-p", str(port), *args],
                capture_output=True, timeout=2, text=True,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout

    def alive(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process is not None]

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Until every live node reports ``cluster_state:ok`` and agrees on the primaries."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [self.cli(node.port, "cluster", "info") for node in self.alive()]
            if all("cluster_state:ok" in info for info in infos) and self._settled():
                return
            time.sleep(0.05)
        raise RuntimeError("the test cluster did not reach cluster_state:ok")

    def _settled(self) -> bool:
        views = {frozenset(self.primary_ports(node.port)) for node in self.alive()}
        return len(views) == 1

    def primary_ports(self, port: int | None = None) -> list[int]:
        """Ports of the live primaries that own slots, as the node on ``port`` sees them."""
        asked = port if port is not None else self.alive()[0].port
        ports = []
        for line in self.cli(asked, "cluster", "nodes").splitlines():
            fields = line.split()
            if len(fields) > 8 and "master" in fields[2] and "fail" not in fields[2]:
                ports.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        return sorted(ports)

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def restore(self, timeout: float = 20.0) -> None:
        """Restart killed nodes (they rejoin as replicas) and wait for a healthy cluster."""
        for node in self.nodes:
            if node.process is None:
                node.start()
        self.wait_ok(timeout)

    def flush(self) -> None:
        for port in self.primary_ports():
            self.cli(port, "flushall")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


SENTINEL_SERVICE = "mymaster"


class LocalSentinel:
    """One primary, one replica and one sentinel (quorum 1) watching them as
    :data:`SENTINEL_SERVICE`, on free loopback ports; failover within ~1-2 s."""

    def __init__(self) -> None:
        primary, replica, self.port = distinct_free_ports(3)
        fast_sync = ("--repl-diskless-sync-delay", "0")  # the default waits 5 s
        self.primary = RedisServer(*fast_sync, port=primary)
        self.replica = RedisServer(
            *fast_sync, "--replicaof", "127.0.0.1", str(primary), port=replica
        )
        self._dir = tempfile.mkdtemp(prefix="gathering-cache-sentinel-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        self.primary.start()
        self.replica.start()
        conf = Path(self._dir, "sentinel.conf")
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self._dir}\n"
            f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n"
            f"sentinel failover-timeout {SENTINEL_SERVICE} 3000\n"
        )
        log = Path(self._dir, "sentinel.log").open("ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [str(REDIS_SERVER), str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("redis-sentinel exited")
            if self._replica_known() and self._replica_synced() and self._replica_promotable():
                return
            time.sleep(0.05)
        raise RuntimeError("the test sentinel did not see the replica in time")

    def cli(self, port: int, *args: str) -> str:
        try:
            done = subprocess.run(
                [str(REDIS_CLI), "-h", "127.0.0.1", "-p", str(port), *args],
                capture_output=True, timeout=2, text=True,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout

    def _replica_known(self) -> bool:
        return "127.0.0.1" in self.cli(self.port, "sentinel", "replicas", SENTINEL_SERVICE)

    def _replica_synced(self) -> bool:
        return "master_link_status:up" in self.cli(self.replica.port, "info", "replication")

    def _replica_promotable(self) -> bool:
        """Whether the sentinel would promote the replica now (else SENTINEL FAILOVER answers
        NOGOODSLAVE): seen as a healthy replica, its INFO fresh, its link to the primary up.
        (Checked at start only: after a failover the sentinel sees the demoted primary's
        link up only at its next INFO, up to ~20 s later.)"""
        lines = self.cli(self.port, "sentinel", "replicas", SENTINEL_SERVICE).splitlines()
        fields = dict(zip(lines[::2], lines[1::2], strict=False))  # the one replica
        try:
            fresh = int(fields.get("info-refresh", "")) < 20_000  # ms; the sentinel wants < 30 s
        except ValueError:
            return False
        return fresh and fields.get("flags") == "slave" and fields.get("master-link-status") == "ok"

    def primary_port(self) -> int | None:
        lines = self.cli(self.port, "sentinel", "get-master-addr-by-name", SENTINEL_SERVICE).split()
        return int(lines[1]) if len(lines) == 2 else None

    def current_replica_port(self) -> int:
        primary = self.primary_port()
        return self.replica.port if primary == self.primary.port else self.primary.port

    def wait_settled(self, timeout: float = 20.0) -> None:
        """Until the sentinel's primary is a primary and the other node replicates it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            primary = self.primary_port()
            if primary is not None:
                other = self.current_replica_port()
                role = self.cli(primary, "info", "replication")
                link = self.cli(other, "info", "replication")
                if "role:master" in role and "master_link_status:up" in link:
                    return
            time.sleep(0.05)
        raise RuntimeError("the sentinel set did not settle")

    def flush(self) -> None:
        port = self.primary_port()
        if port is not None:
            self.cli(port, "flushall")

    def cleanup(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        self.replica.cleanup()
        self.primary.cleanup()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalSentinel:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
