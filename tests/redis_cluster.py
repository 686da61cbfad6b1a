"""A throwaway Redis Cluster on 127.0.0.1: three masters, each with one replica, made by
`redis-cli --cluster create`. A short node timeout lets a killed master's replica take over
in about a second."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time

import redis
from redis.cluster import RedisCluster

from tests.redis_server import RedisServer

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
NODE_TIMEOUT_MS = 1000


def cluster_port() -> int:
    """A free port with its cluster bus port (10,000 higher, so at most 55535) free too."""
    for _ in range(200):
        port = random.randint(20_000, 45_000)
        if _free(port) and _free(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisClusterServers:
    def __init__(self, masters: int = 3, replicas_per_master: int = 1) -> None:
        self._replicas = replicas_per_master
        args = (
            "--cluster-enabled", "yes",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--cluster-config-file", "nodes.conf",
            "--cluster-replica-validity-factor", "0",  # a replica may always take over
        )  # fmt: skip
        count = masters * (1 + replicas_per_master)
        self.nodes = [RedisServer(cluster_port(), args=args) for _ in range(count)]

    @property
    def url(self) -> str:
        """Any one node: the gateway's cluster client finds the rest."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def client(self) -> RedisCluster:
        running = next(n for n in self.nodes if n.running)
        return RedisCluster(host="127.0.0.1", port=running.port, socket_timeout=2)

    def start(self, timeout: float = 30) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                REDIS_CLI, "--cluster", "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas", str(self._replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )  # fmt: skip
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30) -> None:
        """Every running node says the cluster is ok and every slot has a master."""
        deadline = time.monotonic() + timeout
        while True:
            if all(self._ok(node) for node in self.nodes if node.running):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become healthy")
            time.sleep(0.1)

    @staticmethod
    def _ok(node: RedisServer) -> bool:
        try:
            with node.client() as client:
                info = client.execute_command("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                    return False
                replication = client.info("replication")
                # A replica that never synced could not take over from its master.
                return replication["role"] == "master" or replication["master_link_status"] == "up"
        except redis.RedisError:
            return False

    def master_of(self, key: str) -> RedisServer:
        """The node serving `key`'s slot now."""
        with self.client() as client:
            node = client.get_node_from_key(key)
        return next(n for n in self.nodes if n.port == node.port)

    def replica_of(self, master: RedisServer) -> RedisServer:
        for node in self.nodes:
            if node is master or not node.running:
                continue
            with node.client() as client:
                role = client.execute_command("ROLE")
            if role[0] == b"slave" and int(role[2]) == master.port:
                return node
        raise RuntimeError(f"no replica of 127.0.0.1:{master.port}")

    def wait_promoted(self, replica: RedisServer, timeout: float = 30) -> None:
        """Until `replica` is a master and every slot is served again."""
        deadline = time.monotonic() + timeout
        while True:
            with replica.client() as client:
                if client.execute_command("ROLE")[0] == b"master":
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the replica was not promoted")
            time.sleep(0.05)
        self.wait_healthy(max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisClusterServers:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
