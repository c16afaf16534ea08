"""One shared Redis client per process, built from ``settings.REDIS_URL``."""

from functools import lru_cache

import redis
from django.conf import settings
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


@lru_cache(maxsize=4)
def _client_for(url: str) -> redis.Redis:
    # Short timeouts: a Redis that is down must turn into an error quickly (health, publish),
    # not hang a request.
    # Two quick retries ride out a dropped connection without stalling callers for long.
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
    )


def get_redis() -> redis.Redis:
    """The process-wide client for the configured Redis (connection-pooled, thread-safe)."""
    return _client_for(settings.REDIS_URL)
