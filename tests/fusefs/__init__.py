"""A FUSE file system for durability tests: passthrough that can cut power and fill the disk."""

from fusefs.rig import PowerCutMount, descendants, freeze_and_kill

__all__ = ["PowerCutMount", "descendants", "freeze_and_kill"]
