"""Provider wires: the router's OpenAI shape to each provider's HTTP API and back."""

from __future__ import annotations

from .anthropic import WIRE as ANTHROPIC
from .base import CLIENT_FAULT_KINDS, ERROR_KINDS, HttpRequest, ProviderError, StreamDecoder, Target, Wire
from .gemini import WIRE as GEMINI
from .openai import WIRE as OPENAI

WIRES: dict[str, Wire] = {w.name: w for w in (OPENAI, ANTHROPIC, GEMINI)}

__all__ = [
    "CLIENT_FAULT_KINDS", "ERROR_KINDS", "HttpRequest", "ProviderError", "StreamDecoder", "Target", "Wire", "WIRES",
]
