"""Keeping up with a set of API objects on a thread until told to stop.

`Follow` lists the objects, then watches from the list's resource version for a couple
of seconds, and again, until stopped: every round starts from a full list, so an event
lost between two watches (or a watch the API server ended) costs nothing, and a stop is
seen within one round. It hands the current objects, by UID, to `changed` after the list
and after every event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Self

from kindling.cluster.processes import SAFETY_S

log = logging.getLogger(__name__)

# One round's watch: how soon a stop is seen.
ROUND_S = 2


def _uid(obj: Any) -> str:
    """A typed object's UID, or a custom object's (a dict)."""
    return str(obj["metadata"]["uid"] if isinstance(obj, dict) else obj.metadata.uid)


class Follow:
    """A set of objects followed on a thread while in its `with` block; subclasses keep
    what they need of them in `changed`."""

    def __init__(
        self,
        list_call: Callable[..., Any],
        args: tuple[Any, ...],
        changed: Callable[[dict[str, Any]], None],
        **kwargs: Any,
    ) -> None:
        self.list_call, self.args, self.kwargs = list_call, args, kwargs
        self.changed = changed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kindling-follow", daemon=True)

    def _run(self) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            try:
                self._round(watch.Watch())
            except Exception as exc:  # the API server restarting, a broken stream
                log.warning("following %s: %s; again in 1 s", self.args, exc)
                self._stop.wait(1.0)

    def _round(self, stream: Any) -> None:
        listed = self.list_call(*self.args, **self.kwargs)
        if isinstance(listed, dict):  # a custom object's list
            items, version = listed["items"], listed["metadata"]["resourceVersion"]
        else:
            items, version = listed.items, listed.metadata.resource_version
        current = {_uid(item): item for item in items}
        self.changed(dict(current))
        for event in stream.stream(
            self.list_call, *self.args, resource_version=version, timeout_seconds=ROUND_S,
            **self.kwargs,
        ):  # fmt: skip
            if event["type"] == "DELETED":
                current.pop(_uid(event["object"]), None)
            elif event["type"] in ("ADDED", "MODIFIED"):
                current[_uid(event["object"])] = event["object"]
            self.changed(dict(current))

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(SAFETY_S)
