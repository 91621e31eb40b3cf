"""Typed errors of the languages.

Every refusal carries three things a caller can act on:

* ``code``: a stable, machine-readable identifier (``unknown_op``,
  ``json_duplicate_key``...). Codes are part of our public contract: they are
  never renamed, only added.
* ``path``: the JSONPath of the fault inside the value that was submitted,
  e.g. ``$[2][1]`` for the second argument of the third slot of a policy.
* ``message``: one readable sentence for a person.
"""

from __future__ import annotations

from typing import Any, Sequence

PathPart = int | str


def format_path(parts: Sequence[PathPart], root: str = "$") -> str:
    """Render a path as JSONPath: indexes as ``[i]``, keys as ``.key`` or ``["key"]``."""
    out = [root]
    for p in parts:
        if isinstance(p, int):
            out.append(f"[{p}]")
            continue
        # a key may hold unpaired surrogates: show them escaped, never raw
        p = p.encode("utf-8", "backslashreplace").decode("utf-8")
        if p.isidentifier():
            out.append(f".{p}")
        else:
            escaped = p.replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'["{escaped}"]')
    return "".join(out)


class LangError(ValueError):
    """Base of every typed refusal raised by the pure core."""

    kind = "lang_error"

    def __init__(self, code: str, message: str, path: Sequence[PathPart] = ()) -> None:
        self.code = code
        self.parts: tuple[PathPart, ...] = tuple(path)
        self.message = message
        super().__init__(f"{self.path}: {message} [{code}]")

    @property
    def path(self) -> str:
        return format_path(self.parts)

    def under(self, *prefix: PathPart) -> "LangError":
        """The same error, with its path placed under ``prefix`` (e.g. ``policy_ir``)."""
        err = type(self)(self.code, self.message, (*prefix, *self.parts))
        return err

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "path": self.path, "message": self.message}


class JSONError(LangError):
    """The submitted bytes are not strict JSON."""

    kind = "invalid_json"


class AdmissionError(LangError):
    """A policy term was refused at admission; nothing ran."""

    kind = "invalid_policy"


class FlowAdmissionError(LangError):
    """A flow was refused at admission; nothing ran."""

    kind = "invalid_flow"


class EvaluationError(LangError):
    """Evaluation met a value the admitted term cannot observe (a malformed candidate)."""

    kind = "evaluation_error"
