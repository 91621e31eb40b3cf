"""Flows: sigma-flow/v1 executed as a DAG of routed calls, concurrently where the graph allows."""

from .record import build_flow_record
from .registry import RegisteredFlow, load_registry
from .runner import FlowResult, FlowRunner

__all__ = ["FlowResult", "FlowRunner", "RegisteredFlow", "build_flow_record", "load_registry"]
