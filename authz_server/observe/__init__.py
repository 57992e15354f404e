"""Observers of finished decisions: metrics and the audit log. They never change a decision."""

from authz_server.observe.audit import AuditLog
from authz_server.observe.event import DecisionEvent, Observer
from authz_server.observe.metrics import Metrics, render_metrics

__all__ = ["AuditLog", "DecisionEvent", "Metrics", "Observer", "render_metrics"]
