"""Policy-change notices between processes: the catalog announces that a policy's refs may resolve
differently (publish, alias move, retraction); gateways drop what they cached for it.

Redis pub/sub carries them in a fleet. Pub/sub is lossy (a gateway that is reconnecting misses notices),
so caches also expire entries on a short TTL; the notices make the common case immediate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

log = logging.getLogger(__name__)

EVERY_POLICY = "*"  # a notice that may concern any policy (bulk import, or notices possibly missed)


class RedisPolicyBus:
    def __init__(self, redis_url: str, prefix: str = "mint:"):
        self._client = redis.Redis.from_url(redis_url)
        self.channel = f"{prefix}policy-changes"
        self._stop = threading.Event()

    def publish(self, policy: str) -> None:
        try:
            self._client.publish(self.channel, policy)
        except redis.RedisError as err:  # a lost notice only delays invalidation to the TTL
            log.warning("could not announce a change of %s: %s", policy, err)

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Deliver notices to `callback` on a background thread, reconnecting after Redis restarts."""
        threading.Thread(target=self._listen, args=(callback,), name="policy-bus", daemon=True).start()

    def _listen(self, callback: Callable[[str], None]) -> None:
        while not self._stop.is_set():
            try:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                callback(EVERY_POLICY)  # notices may have been missed while disconnected
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        callback(message["data"].decode())
            except redis.RedisError as err:
                log.warning("policy bus disconnected (%s); reconnecting", err)
                self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()
