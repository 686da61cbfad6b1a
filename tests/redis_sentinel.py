"""A throwaway Sentinel set-up on 127.0.0.1: a master, one replica, and three sentinels
(`redis-server --sentinel`, which is what Debian's `redis-sentinel` runs)."""

from __future__ import annotations

import time

import redis

from tests.redis_server import RedisServer

MASTER_NAME = "egw-test"
DOWN_AFTER_MS = 1000


class RedisSentinelServers:
    def __init__(self, sentinels: int = 3) -> None:
        self.master = RedisServer()
        self.replica = RedisServer(args=("--replicaof", "127.0.0.1", str(self.master.port)))
        config = (
            "bind 127.0.0.1\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} 10000\n"
        )
        self.sentinels = [
            RedisServer(args=("--sentinel",), config=config) for _ in range(sentinels)
        ]

    @property
    def addresses(self) -> str:
        """REDIS_SENTINELS for the gateway."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, self.replica]

    def start(self, timeout: float = 30) -> RedisSentinelServers:
        self.master.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_ready(timeout)
        return self

    def current_master(self) -> RedisServer:
        with self.sentinels[0].client() as client:
            _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return next(s for s in self.servers if s.port == int(port))

    def wait_ready(self, timeout: float = 30) -> None:
        """The replica is in sync and every sentinel knows the replica and the other sentinels."""
        deadline = time.monotonic() + timeout
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError("the Sentinel set-up did not become ready")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            master = self.current_master()
            replica = next(s for s in self.servers if s is not master)
            with replica.client() as client:
                if client.info("replication").get("master_link_status") != "up":
                    return False
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    state = client.sentinel_master(MASTER_NAME)
                    if state["num-slaves"] < 1 or state["num-other-sentinels"] < 2:
                        return False
        except (redis.RedisError, StopIteration, KeyError):
            return False
        return True

    def failover(self, timeout: float = 30) -> RedisServer:
        """`SENTINEL FAILOVER`, then wait until the other server is master and in charge."""
        before = self.current_master()
        with self.sentinels[0].client() as client:
            client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        deadline = time.monotonic() + timeout
        while True:
            try:
                now = self.current_master()
                with now.client() as client:
                    promoted = client.execute_command("ROLE")[0] == b"master"
                if now is not before and promoted:
                    return now
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinels did not fail over")
            time.sleep(0.05)

    def close(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            server.close()

    def __enter__(self) -> RedisSentinelServers:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
