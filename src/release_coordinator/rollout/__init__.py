"""Staged, geo-targeted function rollouts across a hierarchy of edge nodes."""
