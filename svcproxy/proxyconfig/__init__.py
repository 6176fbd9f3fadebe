"""kube-proxy's configuration, modelled once: the typed KubeProxyConfiguration (model.py), its
file format (v1alpha1.py), every kube-proxy flag (flags.py), kube-proxy's checks
(validation.py) and the precedence that makes one Settings of flags and a file (resolve.py).
run, render and trace all start from resolve()."""

from .model import KubeProxyConfiguration
from .resolve import ConfigError, OwnFlags, Settings, resolve

__all__ = ["ConfigError", "KubeProxyConfiguration", "OwnFlags", "Settings", "resolve"]
