"""
The container command ``x11passthrough run`` wraps: where the arguments go, and what it asks for.

A wrapped command is found through the words people put in front of their
engine (``sudo``, ``env VAR=...``, ``nice``, ``time``) and the engine's global options, as
``ENGINE [options] run`` or ``ENGINE [options] container run`` (``create`` too). The options of
``run`` that change what the passthrough must do are read from it: ``-d``/``--detach``,
``--network``/``--net``, ``--user``/``-u``, ``--hostname``/``-h``.

The recipe most users arrive with, ``-e DISPLAY=$DISPLAY -v /tmp/.X11-unix:/tmp/.X11-unix``,
is left over in many wrapped commands. Both parts would beat the lent display: the user's
``DISPLAY`` names the host's server, whose cookie the container does not have ("Authorization
required"), and the mount of the host's socket directory makes the engine create an empty
mount point ``XM`` in the host's ``/tmp/.X11-unix`` for the lent socket, on every run (and the
next reservation then skips that number). So such leftovers (``DISPLAY`` and ``XAUTHORITY``
variables, mounts onto ``/tmp/.X11-unix``) are dropped from the command, and named.
"""

from __future__ import annotations

import os
import posixpath

from collections.abc import Sequence
from typing import TypedDict

import attrs

from .exceptions import X11PassthroughError


ENGINES = frozenset({"docker", "podman", "nerdctl"})
SUBCOMMANDS = frozenset({"run", "create"})
PLACEHOLDER = "{x11}"

#: Options of ``docker run``/``podman run`` that take no value (the rest take one).
_FLAGS = frozenset(
    {
        "--detach",
        "--interactive",
        "--tty",
        "--rm",
        "--init",
        "--privileged",
        "--publish-all",
        "--read-only",
        "--no-healthcheck",
        "--oom-kill-disable",
        "--quiet",
        "--disable-content-trust",
        "--help",
        "--replace",
        "--rmi",
        "--sig-proxy",
        "--no-hosts",
        "--http-proxy",
        "--env-host",
        "--tls-verify",
        "--read-only-tmpfs",
    }
)
_SHORT_FLAGS = frozenset("ditPq")
_SHORT_VALUES = {"-u": "--user", "-h": "--hostname", "-e": "--env", "-v": "--volume"}
#: The variables the lent display sets: a value the command gives would win over it.
_DISPLAY_VARIABLES = frozenset({"DISPLAY", "XAUTHORITY"})
#: Where the lent socket goes in the container: a mount onto it would go to the host.
_SOCKET_DIR = "/tmp/.X11-unix"
_COMPOSE = frozenset({"docker-compose", "podman-compose", "compose"})


@attrs.frozen(kw_only=True)
class Wrapped:
    """
    A container command and the parts of it the passthrough reads.

    Attributes:
        argv: The whole command.
        engine: The engine's command word (``docker``, ``podman``, ``nerdctl``), or None when
            a ``{x11}`` placeholder marks the place of a command we do not know.
        prefix: The words that run the engine, up to and including its global options
            (``sudo docker --context ci``): how to run ``wait`` or ``kill`` on the same one.
        insert_at: Where the arguments go (after ``run``/``create``, or the placeholder's).
        placeholder: Whether ``{x11}`` marks the place (and is replaced).
        detach: ``-d``/``--detach``: the command returns while the container runs.
        network: The ``--network`` given, if any.
        user: The ``--user`` given, if any.
        hostname: The ``--hostname`` given, if any.
        create: The subcommand is ``create`` (the container is not started).
        leftovers: Where options of the usual recipe stand, as ``(start, end)`` word ranges
            of `argv` (``-e DISPLAY=:0``, ``-v /tmp/.X11-unix:/tmp/.X11-unix``); they are
            dropped by :meth:`splice`, as they would beat the lent display.
    """

    argv: tuple[str, ...]
    engine: str | None
    prefix: tuple[str, ...]
    insert_at: int
    placeholder: bool
    detach: bool = False
    network: str | None = None
    user: str | None = None
    hostname: str | None = None
    create: bool = False
    leftovers: tuple[tuple[int, int], ...] = ()

    @property
    def dropped(self) -> list[str]:
        """The leftover options :meth:`splice` drops, each as one string."""
        return [" ".join(self.argv[start:end]) for start, end in self.leftovers]

    @classmethod
    def parse(cls, argv: Sequence[str]) -> Wrapped:
        """
        Read a wrapped command.

        Raises:
            X11PassthroughError: There is no engine command and no ``{x11}`` in it.
        """
        words = tuple(argv)
        engine_at = next((i for i, w in enumerate(words) if os.path.basename(w) in ENGINES), None)
        if PLACEHOLDER in words:
            at = words.index(PLACEHOLDER)
            found = cls._engine_parts(words, engine_at) if engine_at is not None else None
            options: _RunOptions = _read_options(words, at + 1) if found else {}
            return cls(
                argv=words,
                engine=os.path.basename(words[engine_at]) if engine_at is not None else None,
                prefix=found[0] if found else (),
                insert_at=at,
                placeholder=True,
                **options,
            )
        found = cls._engine_parts(words, engine_at) if engine_at is not None else None
        if found is None:
            if _COMPOSE & {os.path.basename(w) for w in words}:
                raise X11PassthroughError(
                    f"cannot wrap a Compose command ({' '.join(words)!r}): Compose starts its "
                    "containers itself. Use 'x11passthrough args --format compose --service "
                    "SERVICE > x11.override.yml', which holds the display while Compose runs "
                    "with '-f x11.override.yml' (see the Compose how-to)"
                )
            raise X11PassthroughError(
                f"cannot tell where the container arguments go in {' '.join(words)!r}: wrap a "
                f"'docker run ...' or 'podman run ...' command, or put {PLACEHOLDER} where they "
                "belong"
            )
        prefix, sub_at = found
        assert engine_at is not None  # noqa: S101 - found implies it
        return cls(
            argv=words,
            engine=os.path.basename(words[engine_at]),
            prefix=prefix,
            insert_at=sub_at + 1,
            placeholder=False,
            create=words[sub_at] == "create",
            **_read_options(words, sub_at + 1),
        )

    @staticmethod
    def _engine_parts(
        words: tuple[str, ...], engine_at: int | None
    ) -> tuple[tuple[str, ...], int] | None:
        """Return the engine's prefix and the index of its run/create word, or None."""
        if engine_at is None:
            return None
        for i in range(engine_at + 1, len(words)):
            word = words[i]
            if word in SUBCOMMANDS:
                container = i > engine_at + 1 and words[i - 1] == "container"
                return words[: i - 1 if container else i], i
            if word.startswith("-") or word == "container":
                continue
            previous = words[i - 1]
            if i > engine_at + 1 and previous.startswith("-") and "=" not in previous:
                continue  # the value of a global option (--context NAME)
            return None  # another subcommand (ps, build, image ls, ...)
        return None

    def splice(self, arguments: Sequence[str]) -> list[str]:
        """Return the command with `arguments` in their place."""
        dropped = {i for start, end in self.leftovers for i in range(start, end)}
        words = [w if i not in dropped else None for i, w in enumerate(self.argv)]
        end = self.insert_at + 1 if self.placeholder else self.insert_at
        kept = [*words[: self.insert_at], *arguments, *words[end:]]
        return [w for w in kept if w is not None]


class _RunOptions(TypedDict, total=False):
    detach: bool
    network: str
    user: str
    hostname: str
    leftovers: tuple[tuple[int, int], ...]


def _read_options(words: Sequence[str], i: int) -> _RunOptions:
    """Read the options of ``run`` from ``words[i]`` to the image (and the leftovers)."""
    found: _RunOptions = {}
    while i < len(words):
        word = words[i]
        if word == "--" or not word.startswith("-") or word == "-":
            break
        i += 1
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            if name in _FLAGS:
                if name == "--detach" and value.lower() not in ("false", "0"):
                    found["detach"] = True
                continue
            start = i - 1
            if not eq:
                if i >= len(words):
                    break
                value = words[i]
                i += 1
            _note(found, name, value, (start, i))
            continue
        # A short option or a cluster of them (-dit, -it, -u1000, -e X=1).
        letters = word[1:]
        for at, letter in enumerate(letters):
            if letter in _SHORT_FLAGS:
                if letter == "d":
                    found["detach"] = True
                continue
            value = letters[at + 1 :]
            start = i - 1
            if not value:
                if i >= len(words):
                    break
                value = words[i]
                i += 1
            # Only a whole option can be dropped, not a letter of a cluster (-ite DISPLAY).
            span = (start, i) if at == 0 else None
            _note(found, _SHORT_VALUES.get(f"-{letter}", f"-{letter}"), value, span)
            break
    return found


def _is_leftover(name: str, value: str) -> bool:
    """Whether ``name value`` is part of the usual recipe (a display variable, a socket mount)."""
    if name == "--env":
        return value.partition("=")[0] in _DISPLAY_VARIABLES
    if name == "--volume":
        parts = value.split(":")
        target = parts[1] if len(parts) > 1 else parts[0]
    elif name == "--mount":
        fields = dict(f.partition("=")[::2] for f in value.split(","))
        target = next((fields[k] for k in ("target", "destination", "dst") if k in fields), "")
    else:
        return False
    target = posixpath.normpath(target) if target else ""
    return target == _SOCKET_DIR or target.startswith(_SOCKET_DIR + "/")


def _note(found: _RunOptions, name: str, value: str, span: tuple[int, int] | None = None) -> None:
    if _is_leftover(name, value):
        if span is None:
            raise X11PassthroughError(
                f"the command sets {value!r} in a cluster of short options, which would beat "
                "the lent display: drop it (x11passthrough sets DISPLAY and XAUTHORITY, and "
                "mounts the socket itself)"
            )
        found["leftovers"] = (*found.get("leftovers", ()), span)
        return
    if name in ("--network", "--net"):
        found["network"] = value
    elif name == "--user":
        found["user"] = value
    elif name == "--hostname":
        found["hostname"] = value
