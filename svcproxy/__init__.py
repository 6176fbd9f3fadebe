"""svcproxy: a Kubernetes Service proxy you can read, run and debug."""

__version__ = "0.1.0"
