"""The lab: a multi-node Kubernetes-like cluster in network namespaces, with real pods,
real traffic and `svcproxy run` on every node. Used by `svcproxy lab` and by tests/e2e."""

from .lab import DEFAULT_PREFIX, ApplyResult, Lab, Probe
from .plan import LabError, LabPlan, NodeSpec, PodSpec, make_plan

__all__ = ["DEFAULT_PREFIX", "ApplyResult", "Lab", "LabError", "LabPlan", "NodeSpec", "PodSpec", "Probe",
           "make_plan"]
