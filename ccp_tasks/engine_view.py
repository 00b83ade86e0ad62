"""What the engine holds of our images, known without listing it on every run.

Listing the engine's images (`GET /images/json`) costs time in proportion to
every image it stores, intermediate build layers included: 0.66 s on an engine
with 2,400 of them, whatever the filter. A no-op run cannot afford that, so the
pipeline keeps its own view in cache/engine.json: which of our references
pointed at which image ID when last verified, and the engine's newest event at
that moment (a "marker"). The next run reads the engine's event buffer (one
cheap `GET /events`) and replays the image events since the marker: a delete,
an untag, or a tag moving one of our references makes that reference absent.

The view is trusted only when the event buffer still reaches back to the
marker. When it does not (the buffer overflowed, the daemon restarted, there is
no marker yet) or the engine is remote (its clock is not ours), the run lists
the engine once instead. Either way, one request per run, never one per image.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from . import docker_ops
from .state import Malformed, fields, read_record, write_atomic

KNOWN_HARMLESS = frozenset({"push", "save", "prune", "import", "load", "pull", "tag"})


@dataclass(frozen=True)
class ImageEvent:
    time_nano: int
    action: str
    image_id: str
    name: str


def parse_events(body: bytes) -> list[ImageEvent]:
    events = []
    for line in body.decode().splitlines():
        if not line.strip():
            continue
        raw = json.loads(line)
        if raw.get("Type") != "image":
            continue
        actor = raw.get("Actor") or {}
        events.append(
            ImageEvent(int(raw.get("timeNano", 0)), raw.get("Action", ""), actor.get("ID", ""),
                       (actor.get("Attributes") or {}).get("name", ""))
        )
    return events


def _all_events_until_now() -> tuple[list[ImageEvent], int | None, int | None] | None:
    """The image events still in the engine's buffer (oldest first), and the times
    of the oldest and the newest event of any kind (the marker must be the newest
    event of any kind: a run that only made containers still moves it), or None
    where events cannot be trusted (remote engine, error)."""
    socket_path = docker_ops.local_socket()
    if socket_path is None:
        return None
    try:
        body = docker_ops.unix_get(socket_path, f"/events?since=0&until={time.time():.9f}", timeout=30)
    except Exception:
        return None
    lines = [line for line in body.decode().splitlines() if line.strip()]
    oldest = int(json.loads(lines[0]).get("timeNano", 0)) if lines else None
    newest = int(json.loads(lines[-1]).get("timeNano", 0)) if lines else None
    return parse_events(body), oldest, newest


def _reaches_back(buffered, marker: int | None) -> bool:
    """The engine's event buffer still holds everything since `marker`: its oldest
    event is no newer (nothing after the marker was dropped, no daemon restart)."""
    return buffered is not None and marker is not None and buffered[1] is not None and buffered[1] <= marker


def apply(present: dict[str, str], events: list[ImageEvent], ours: set[tuple[str, str]] = frozenset()) -> dict[str, str]:
    """Replay image events on a reference -> image ID map.

    Removing is conservative: an untag or delete of an image drops every
    reference to it; a tag (or pull, load, import) of one of our references
    onto another image drops it. A tag adds a reference only when it is one
    this run made (`ours`), so a reference the view does not know stays
    unknown, and a build (or adoption) verifies it."""
    present = dict(present)
    for event in events:
        if event.action in ("delete", "untag"):
            for ref in [r for r, i in present.items() if i == event.image_id]:
                del present[ref]
        elif event.name in present and present[event.name] != event.image_id:
            del present[event.name]
        if event.action == "tag" and (event.name, event.image_id) in ours:
            present[event.name] = event.image_id
    return present


def _saved_view(raw) -> dict:
    fields(raw, host=str, marker=(int, None), present=dict)
    if not all(isinstance(image_id, str) for image_id in raw["present"].values()):
        raise Malformed("present: not image IDs")
    return raw


class EngineView:
    """The per-run view; its class state is the run's (forked workers inherit it)."""

    state_path: Path | None = None
    namespace_prefix: str = ""
    _present: dict[str, str] | None = None
    _marker: int | None = None
    _how: str = ""
    _listing: dict[str, docker_ops.EngineImage] | None = None

    @classmethod
    def configure(cls, state_path: Path, namespace: str) -> None:
        cls.state_path, cls.namespace_prefix = state_path, f"{namespace}/"
        cls._present = cls._marker = cls._listing = None

    @classmethod
    def _host(cls) -> str:
        return docker_ops.engine_address()

    @classmethod
    def _load(cls) -> None:
        if cls._present is not None:
            return
        state = {}
        if cls.state_path is not None:
            state = read_record(cls.state_path, "an engine view", _saved_view) or {}
        buffered = _all_events_until_now()
        marker = state.get("marker")
        if state.get("host") == cls._host() and _reaches_back(buffered, marker):
            events = buffered[0]
            cls._present = apply(state.get("present", {}), [e for e in events if e.time_nano > marker])
            cls._how = "events"
        else:
            cls._present = cls._present_from_listing()
            cls._how = "listing"
        cls._marker = buffered[2] if buffered else None

    @classmethod
    def has(cls, image_id: str, ref: str) -> bool:
        cls._load()
        return cls._present.get(ref) == image_id

    @classmethod
    def listing(cls) -> dict[str, docker_ops.EngineImage]:
        """The full image list, taken at most once per view; {} if the engine is unreachable."""
        if cls._listing is None:
            try:
                cls._listing = {
                    entry["Id"]: docker_ops.EngineImage(entry["Id"], frozenset(entry.get("RepoTags") or ()),
                                                        entry.get("Labels") or {})
                    for entry in docker_ops.list_images()
                }
            except Exception:  # an unreachable engine makes every image "absent"; the build says why
                cls._listing = {}
        return cls._listing

    @classmethod
    def save(cls, made: set[tuple[str, str]], busy: bool = False) -> dict:
        """After the run: replay what happened since the start, including our own
        builds' tags, and remember the newest event as the next run's marker.
        When the run itself overflowed the event buffer (a build makes many
        container events), list the engine now: the run that built pays for
        the listing, not the next no-op."""
        if cls.state_path is None:
            return {}
        if not made and not busy and cls._present is not None:
            # Nothing ran: the view as of the start stands, and events since
            # its marker are replayed next time. No request; a view that had
            # to be listed is written, so the next run replays from here.
            if cls._how == "listing":
                cls._write(cls._present, cls._marker)
            return {"engine_view": cls._how}
        if cls._present is None:
            # A run that had no image to check has not looked yet; a listing taken
            # for adoption predates this run's builds.
            cls._listing = None
            cls._load()
        buffered = _all_events_until_now()
        if buffered is None:
            present, marker = cls._present, None
        else:
            marker = buffered[2]
            if _reaches_back(buffered, cls._marker):
                present = apply(cls._present, [e for e in buffered[0] if e.time_nano > cls._marker], made)
            else:
                cls._listing = None
                present = cls._present_from_listing()
        cls._write(present, marker)
        return {"engine_view": cls._how}

    @classmethod
    def _write(cls, present: dict[str, str], marker: int | None) -> None:
        write_atomic(
            cls.state_path,
            (json.dumps({"host": cls._host(), "marker": marker, "how": cls._how, "present": present},
                        indent=1, sort_keys=True) + "\n").encode(),
        )

    @classmethod
    def _present_from_listing(cls) -> dict[str, str]:
        return {ref: image.image_id for image in cls.listing().values() for ref in image.tags
                if ref.startswith(cls.namespace_prefix)}

    @classmethod
    def how(cls) -> str:
        return cls._how
