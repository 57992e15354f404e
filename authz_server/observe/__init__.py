"""Observers of finished decisions: metrics and the audit log. They never change a decision."""
