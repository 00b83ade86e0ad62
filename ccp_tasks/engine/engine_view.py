"""What the engine holds of our images, known without listing it on every run.

Listing the engine's images (`GET /images/json`) costs time in proportion to
every image it stores, intermediate build layers included: 0.66 s on an engine
with 2,400 of them, whatever the filter. A no-op run cannot afford that, so the
pipeline keeps its own view in cache/engine.json: which of our references
pointed at which image ID when last verified, and the engine's newest event at
that moment (a "marker"). The next run reads the engine's event buffer (one
cheap `GET /events`) and replays the image events since the marker (`apply`).

The replay believes an event only as far as it says what happened. A `tag`
names the reference it moves (so does an import's or a commit's, or a build's
by anyone); a `delete` removes every reference to its image. Docker 20.10's
`untag` names the image, not which of its references went, and a `pull` names
a reference or a whole repository but not the image it now holds: the
references they may have touched leave the view, and the run asks the engine
about each of those it needs (one inspect each). A `load` moves whatever the
tar's RepoTags say without any `tag` event and names no reference, so after
one (or after any action this code does not know) the run lists the engine.

The view is trusted only when the very event it recorded as its marker is
still in the engine's buffer. That event is the daemon instance's identity: a
restarted daemon starts with an empty buffer, another daemon behind the same
socket (or a cache/ copied from another machine) never had that event, and a
buffer that overflowed has dropped it. `/info`'s daemon ID would tell less (it
survives restarts) at 15 times the cost of the events request. When the marker
is not found, or the engine is remote (its clock is not ours), the run lists
the engine once instead. Either way, one request per run, never one per image,
unless references were left uncertain by an untag or a pull.
"""

from __future__ import annotations

import json
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from ccp_tasks.core.errors import EngineError
from ccp_tasks.core.state import Malformed, fields, read_record, write_atomic
from ccp_tasks.engine import docker_ops

# Image actions that move no reference: an import's reference comes as its own
# `tag` event, a prune's removals as `delete` and `untag` events.
KNOWN_HARMLESS = frozenset({"push", "save", "prune", "import"})


@dataclass(frozen=True)
class ImageEvent:
    time_nano: int
    action: str
    image_id: str
    name: str


def _key(raw: dict) -> list:
    """What identifies one event of the daemon (as JSON keeps it: a list)."""
    return [
        int(raw.get("timeNano", 0)),
        raw.get("Type", ""),
        raw.get("Action", ""),
        (raw.get("Actor") or {}).get("ID", ""),
    ]


def _parse(body: bytes) -> list[tuple[list, ImageEvent | None]]:
    """Every event in the buffer (oldest first) as its key, and as an ImageEvent when it is an image's."""
    events = []
    for line in body.decode().splitlines():
        if not line.strip():
            continue
        raw = json.loads(line)
        actor = raw.get("Actor") or {}
        image = None
        if raw.get("Type") == "image":
            image = ImageEvent(
                int(raw.get("timeNano", 0)),
                raw.get("Action", ""),
                actor.get("ID", ""),
                (actor.get("Attributes") or {}).get("name", ""),
            )
        events.append((_key(raw), image))
    return events


def _all_events_until_now() -> list[tuple[list, ImageEvent | None]] | None:
    """The engine's event buffer, events of every kind (the marker must be the
    newest event of any kind: a run that only made containers still moves it),
    or None where events cannot be trusted (remote engine, error)."""
    socket_path = docker_ops.local_socket()
    if socket_path is None:
        return None
    try:
        return _parse(docker_ops.unix_get(socket_path, f"/events?since=0&until={time.time():.9f}", timeout=30))
    except Exception:
        return None


def _newest(buffered) -> list | None:
    return buffered[-1][0] if buffered else None


def _since(buffered, marker) -> list[ImageEvent] | None:
    """The image events after the marker event, or None when the buffer does
    not hold that event (another daemon, a restart, an overflow, no marker)."""
    if not buffered or not isinstance(marker, list):
        return None
    keys = [key for key, _ in buffered]
    if marker not in keys:
        return None
    return [image for _, image in buffered[keys.index(marker) + 1 :] if image is not None]


def _repository(ref: str) -> str:
    """`host:5000/ns/x:tag` -> `host:5000/ns/x` (a tag follows the last `/`; a digest follows `@`)."""
    ref = ref.partition("@")[0]
    head, slash, last = ref.rpartition("/")
    return f"{head}{slash}{last.partition(':')[0]}"


def apply(
    present: dict[str, str], events: list[ImageEvent], ours: AbstractSet[tuple[str, str]] = frozenset()
) -> dict[str, str] | None:
    """Replay image events on a reference -> image ID map; None when an event
    may have moved references it does not name (then only a listing tells).

    Removing is conservative: a delete of an image drops every reference to
    it; an untag drops the reference it names, or, when it names only the
    image (as Docker 20.10's does), every reference to that image; a pull drops
    the reference or repository it names; a tag of one of our references onto
    another image drops it. A tag adds a reference only when it is one this
    run made (`ours`), so a reference the view does not know stays unknown,
    and EngineView.has asks the engine about it."""
    present = dict(present)
    for event in events:
        if event.action == "delete" or (event.action == "untag" and event.name not in present):
            for ref in [r for r, i in present.items() if i == event.image_id]:
                del present[ref]
        elif event.action == "untag":
            del present[event.name]
        elif event.action == "pull":
            # Its Actor ID is what was pulled: `repo:tag`, `repo@digest` or (`pull -a`) `repo`.
            pulled = event.image_id
            tagged = ":" in pulled.rpartition("/")[2] and "@" not in pulled
            for ref in [r for r in present if (r == pulled if tagged else _repository(r) == _repository(pulled))]:
                del present[ref]
        elif event.action == "tag":
            if event.name in present and present[event.name] != event.image_id:
                del present[event.name]
            if (event.name, event.image_id) in ours:
                present[event.name] = event.image_id
        elif event.action not in KNOWN_HARMLESS:
            return None  # a load, or an action this code does not know
    return present


def _saved_view(raw) -> dict:
    # The marker's shape is _since's to judge: one it does not know means "list the engine".
    fields(raw, host=str, present=dict)
    if not all(isinstance(image_id, str) for image_id in raw["present"].values()):
        raise Malformed("present: not image IDs")
    return raw


class EngineView:
    """The per-run view; its class state is the run's (forked workers inherit it)."""

    state_path: Path | None = None
    namespace_prefix: str = ""
    _present: dict[str, str] | None = None
    _marker: list | None = None
    _how: str = ""
    _verified: bool = False
    _listing: dict[str, docker_ops.EngineImage] | None = None

    @classmethod
    def configure(cls, state_path: Path, namespace: str) -> None:
        cls.state_path, cls.namespace_prefix = state_path, f"{namespace}/"
        cls._present = cls._marker = cls._listing = None
        cls._verified = False

    @classmethod
    def _host(cls) -> str:
        return docker_ops.engine_address()

    @classmethod
    def _stored(cls) -> tuple[dict[str, str], object] | None:
        """The view engine.json holds, and its marker, if it is one of this
        engine and namespace; None for a missing, truncated or odd file."""
        if cls.state_path is None:
            return None
        state = read_record(cls.state_path, "an engine view", _saved_view)
        if state is None or state["host"] != cls._host() or state.get("namespace") != cls.namespace_prefix:
            return None
        return state["present"], state.get("marker")

    @classmethod
    def _load(cls) -> dict[str, str]:
        """The view as of this run's start (made once per run)."""
        if cls._present is not None:
            return cls._present
        stored = cls._stored()
        buffered = _all_events_until_now()
        replayed = None
        if stored is not None:
            events = _since(buffered, stored[1])
            if events is not None:
                replayed = apply(stored[0], events)
        if replayed is not None:
            cls._present, cls._how = replayed, "events"
        else:
            cls._present, cls._how = cls._present_from_listing(), "listing"
        cls._marker = _newest(buffered)
        return cls._present

    @classmethod
    def has(cls, image_id: str, ref: str) -> bool:
        present = cls._load()
        if ref not in present and cls._how == "events":
            # The replay could not say where the reference is (an untag or a
            # pull left it uncertain, or engine.json lost it): one inspect does.
            found = docker_ops.local_image_id(ref)
            if found:
                present[ref] = found
                cls._verified = True
        return present.get(ref) == image_id

    @classmethod
    def listing(cls) -> dict[str, docker_ops.EngineImage]:
        """The full image list, taken at most once per view; {} if the engine is unreachable."""
        if cls._listing is None:
            try:
                cls._listing = {
                    entry["Id"]: docker_ops.EngineImage(
                        entry["Id"], frozenset(entry.get("RepoTags") or ()), entry.get("Labels") or {}
                    )
                    for entry in docker_ops.list_images()
                }
            except (EngineError, ValueError):  # an unreachable engine makes every image "absent"; the build says why
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
            # to be listed, or that the engine was asked about, is written, so
            # the next run replays from here.
            if cls._how == "listing" or cls._verified:
                cls._write(cls._present, cls._marker)
            return {"engine_view": cls._how}
        current = cls._present
        if current is None:
            # A run that had no image to check has not looked yet; a listing taken
            # for adoption predates this run's builds.
            cls._listing = None
            current = cls._load()
        buffered = _all_events_until_now()
        if buffered is None:
            present, marker = current, None
        else:
            marker = _newest(buffered)
            events = _since(buffered, cls._marker)
            replayed = apply(current, events, made) if events is not None else None
            if replayed is None:
                cls._listing = None
                replayed = cls._present_from_listing()
            present = replayed
        cls._write(present, marker)
        return {"engine_view": cls._how}

    @classmethod
    def _write(cls, present: dict[str, str], marker: list | None) -> None:
        if cls.state_path is None:
            return
        write_atomic(
            cls.state_path,
            (
                json.dumps(
                    {
                        "host": cls._host(),
                        "namespace": cls.namespace_prefix,
                        "marker": marker,
                        "how": cls._how,
                        "present": present,
                    },
                    indent=1,
                    sort_keys=True,
                )
                + "\n"
            ).encode(),
        )

    @classmethod
    def _present_from_listing(cls) -> dict[str, str]:
        return {
            ref: image.image_id
            for image in cls.listing().values()
            for ref in image.tags
            if ref.startswith(cls.namespace_prefix)
        }

    @classmethod
    def how(cls) -> str:
        return cls._how
