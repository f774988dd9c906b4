"""full: attend every page. The dense baseline; it neither evicts nor selects."""

from __future__ import annotations

from lil_sparse.policies.base import SelectionPolicy


class FullPolicy(SelectionPolicy):
    name = "full"
    uses_budget = False
