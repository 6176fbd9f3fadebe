"""The daemon's moving parts: the sync loop, health and metrics servers, conntrack cleanup."""
