"""Policies: model, loader, engine, hot-reloading store and test runner."""

from authz_server.policy.compiler import CompileOptions
from authz_server.policy.engine import Combine, Default, Engine, EngineOptions
from authz_server.policy.errors import PolicyError, PolicyIssue, PolicyLoadError
from authz_server.policy.loader import load_directory, load_text
from authz_server.policy.model import FailurePolicy, Policy, PolicySet

__all__ = [
    "Combine",
    "CompileOptions",
    "Default",
    "Engine",
    "EngineOptions",
    "FailurePolicy",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "PolicyLoadError",
    "PolicySet",
    "load_directory",
    "load_text",
]
