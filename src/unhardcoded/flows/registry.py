"""Registered flows: operator files callable as ``model: "flow:NAME"``.

A flow file is JSON: ``{"name": "...", "description": "...", "flow_ir": <flow>}``
(the name defaults to the file's stem). The shipped examples are always
registered; an operator directory (``[router] flows_dir``) adds more or
replaces an example of the same name. Every file is admitted when loaded:
a bad file is refused with its path and the fault, never served.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..lang import strictjson
from ..lang.errors import LangError
from ..lang.fields import Schema
from ..lang.flow import NormalFlow, admit_flow

EXAMPLES = Path(__file__).parent / "examples"


@dataclass(frozen=True)
class RegisteredFlow:
    name: str
    description: str
    flow_ir: Any
    normal: NormalFlow
    source: str


class FlowRegistryError(LangError):
    kind = "invalid_flow"


def load_flow_file(path: Path, schema: Schema) -> RegisteredFlow:
    try:
        doc = strictjson.loads(path.read_bytes())
    except LangError as exc:
        raise FlowRegistryError(exc.code, f"{path.name}: {exc.message}", exc.parts) from None
    if not isinstance(doc, dict) or "flow_ir" not in doc:
        raise FlowRegistryError("flow_file", f'{path.name}: a flow file is {{"name", "description", "flow_ir"}}')
    name = doc.get("name") or path.stem
    try:
        normal = admit_flow(doc["flow_ir"], schema, path=("flow_ir",))
    except LangError as exc:
        raise FlowRegistryError(exc.code, f"{path.name}: {exc.message}", exc.parts) from None
    return RegisteredFlow(name, doc.get("description", ""), doc["flow_ir"], normal, str(path))


def load_registry(schema: Schema, flows_dir: str | None = None, *, examples: bool = True,
                  skipped: list[str] | None = None) -> dict[str, RegisteredFlow]:
    """Shipped examples that the catalog cannot admit (they observe a field it does not
    declare) are left out and named in ``skipped``; an operator's own file must admit."""
    out: dict[str, RegisteredFlow] = {}
    if examples:
        for f in sorted(EXAMPLES.glob("*.json")):
            try:
                reg = load_flow_file(f, schema)
            except FlowRegistryError as exc:
                if skipped is not None:
                    skipped.append(f"{f.name}: {exc.message}")
                continue
            out[reg.name] = reg
    if flows_dir:
        for f in sorted(Path(flows_dir).glob("*.json")):
            reg = load_flow_file(f, schema)
            out[reg.name] = reg
    return out
