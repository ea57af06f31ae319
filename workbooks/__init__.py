"""Workbooks: a self-hosted runtime for Org-mode workbooks."""

__version__ = "0.1.0"
