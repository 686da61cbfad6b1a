"""The console's traffic statistics when Redis fails: a Cluster's own errors (not RedisError
subclasses) fall back to the worker's own view like any other Redis failure."""

from __future__ import annotations

from app.state.redis_client import RedisOptions, connect
from app.ui.stats import RollingStats
from tests.harness import free_port


async def test_an_unreachable_cluster_leaves_the_console_its_own_view():
    cluster = connect(f"redis://127.0.0.1:{free_port()}", 0.2, RedisOptions(mode="cluster"))
    stats = RollingStats(redis=lambda: cluster, prefix="egw:test-stats:", timeout=0.5)
    stats.observe("m", 200, 0.01)
    series, shared = await stats.last_hour_everywhere()  # flushes first, then reads
    assert shared is False
    assert [one.model for one in series] == ["m"]
    assert series[0].total_requests == 1
