"""
The container command ``x11passthrough run`` wraps: where the arguments go, and what it asks for.

Strictly private. A wrapped command is found through the words people put in front of their
engine (``sudo``, ``env VAR=...``, ``nice``, ``time``) and the engine's global options, as
``ENGINE [options] run`` or ``ENGINE [options] container run`` (``create`` too). The options of
``run`` that change what the passthrough must do are read from it: ``-d``/``--detach``,
``--network``/``--net``, ``--user``/``-u``, ``--hostname``/``-h``.
"""

from __future__ import annotations

import os

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
            options: _RunOptions = _read_options(words[at + 1 :]) if found else {}
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
            **_read_options(words[sub_at + 1 :]),
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
        words = list(self.argv)
        end = self.insert_at + 1 if self.placeholder else self.insert_at
        return [*words[: self.insert_at], *arguments, *words[end:]]


class _RunOptions(TypedDict, total=False):
    detach: bool
    network: str
    user: str
    hostname: str


def _read_options(words: Sequence[str]) -> _RunOptions:
    """Read the options of ``run`` up to the image: detach, network, user, hostname."""
    found: _RunOptions = {}
    i = 0
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
            if not eq:
                if i >= len(words):
                    break
                value = words[i]
                i += 1
            _note(found, name, value)
            continue
        # A short option or a cluster of them (-dit, -it, -u1000, -e X=1).
        letters = word[1:]
        for at, letter in enumerate(letters):
            if letter in _SHORT_FLAGS:
                if letter == "d":
                    found["detach"] = True
                continue
            value = letters[at + 1 :]
            if not value:
                if i >= len(words):
                    break
                value = words[i]
                i += 1
            _note(found, _SHORT_VALUES.get(f"-{letter}", f"-{letter}"), value)
            break
    return found


def _note(found: _RunOptions, name: str, value: str) -> None:
    if name in ("--network", "--net"):
        found["network"] = value
    elif name == "--user":
        found["user"] = value
    elif name == "--hostname":
        found["hostname"] = value
