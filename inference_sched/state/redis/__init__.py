"""State shared by several scheduler replicas through Redis (optional; ``docs/redis.md``).

With N replicas behind a gateway each sees 1/N of the picks. Given a ``redis`` parameter,
``approx-prefix-cache-producer`` keeps its prefix index in Redis
(:class:`~inference_sched.state.redis.index.RedisPrefixIndex`) and
``inflight-load-producer`` its in-flight counters
(:class:`~inference_sched.state.redis.inflight.RedisInflightCounters`), so every replica
sees every pick. Both degrade to their in-process state while Redis is unreachable.

Importing this package does not import ``redis``; connecting does, and without the
``[redis]`` extra raises a :class:`~inference_sched.errors.ConfigError` naming it.
"""

from inference_sched.state.redis.index import HashEncoding, RedisPrefixIndex
from inference_sched.state.redis.inflight import RedisInflightCounters
from inference_sched.state.redis.link import EXTRA_HINT, RedisLink, Unavailable
from inference_sched.state.redis.params import (
    RedisInflightParams,
    RedisParams,
    RedisPrefixParams,
)

__all__ = [
    "EXTRA_HINT",
    "HashEncoding",
    "RedisInflightCounters",
    "RedisInflightParams",
    "RedisLink",
    "RedisParams",
    "RedisPrefixIndex",
    "RedisPrefixParams",
    "Unavailable",
]
