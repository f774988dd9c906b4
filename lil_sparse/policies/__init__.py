"""KV page selection policies: full, sink, h2o, quest, infllm."""

from lil_sparse.policies.base import PolicyBatch, SelectionPolicy
from lil_sparse.policies.registry import POLICIES, get_policy

__all__ = ["POLICIES", "PolicyBatch", "SelectionPolicy", "get_policy"]
