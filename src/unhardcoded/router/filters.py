"""The host's text filters, run when a policy attaches a ``filter_text`` directive.

sigma-pol only *names* a seeded recipe (``request._filters.text``); running
it is the host's job. We run a small, deterministic set over the text of
every message; unknown steps are reported, never guessed at. Image filters
are not run by this host (the directive is reported as not applied).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Callable

_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

TEXT_STEPS: dict[str, Callable[[str], str]] = {
    "NFKC": lambda s: unicodedata.normalize("NFKC", s),
    "NFC": lambda s: unicodedata.normalize("NFC", s),
    "RmZeroWidth": lambda s: _ZERO_WIDTH.sub("", s),
    "StripControl": lambda s: _CONTROL.sub("", s),
    "Trim": lambda s: s.strip(),
    "Lower": lambda s: s.lower(),
    "CollapseSpace": lambda s: re.sub(r"[ \t]+", " ", s),
}


def _apply(text: str, steps: list[Callable[[str], str]]) -> str:
    for f in steps:
        text = f(text)
    return text


def apply_directives(request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Run and remove ``_filters``; return the request and a note for the trace."""
    directives = request.get("_filters")
    if directives is None:
        return request, None
    out = {k: v for k, v in request.items() if k != "_filters"}
    note: dict[str, Any] = {}
    text = directives.get("text") if isinstance(directives, dict) else None
    if isinstance(text, dict):
        steps, unknown = [], []
        for step in text.get("recipe") or []:
            name = step if isinstance(step, str) else None
            if name in TEXT_STEPS:
                steps.append(TEXT_STEPS[name])
            else:
                unknown.append(step)
        if steps:
            out["messages"] = [_filter_message(m, steps) for m in out.get("messages") or []]
        note["text"] = {"applied": [s for s in text.get("recipe") or [] if isinstance(s, str) and s in TEXT_STEPS],
                        "unknown": unknown}
    if isinstance(directives, dict) and "image" in directives:
        note["image"] = {"applied": [], "unknown": (directives["image"] or {}).get("recipe", []),
                         "note": "this host does not run image filters"}
    return out, note


def _filter_message(m: Any, steps: list[Callable[[str], str]]) -> Any:
    if not isinstance(m, dict):
        return m
    content = m.get("content")
    if isinstance(content, str):
        return {**m, "content": _apply(content, steps)}
    if isinstance(content, list):
        parts = [{**p, "text": _apply(p["text"], steps)} if isinstance(p, dict) and isinstance(p.get("text"), str) else p
                 for p in content]
        return {**m, "content": parts}
    return m
