"""Shared building blocks with no knowledge of HTTP or storage: errors, JSON, time, geometry."""
