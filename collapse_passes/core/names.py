"""One rule for the names a rewrite adds: `base`, then `base_1`, `base_2`, ... (ONNX needs unique node and tensor
names; the names carry no semantics, so the first free one is as good as any and keeps diffs readable)."""
from __future__ import annotations


def fresh_name(base: str, taken, sep: str = "_") -> str:
    """The first of base, base<sep>1, base<sep>2, ... not in `taken` (a set, or AttributeNames); it is added."""
    name, k = base, 1
    while name in taken:
        name, k = f"{base}{sep}{k}", k + 1
    taken.add(name)
    return name


class AttributeNames:
    """The names a torch module's attributes (submodules, parameters, buffers) take, as `taken` for fresh_name."""

    def __init__(self, module):
        self.module = module

    def __contains__(self, name: str) -> bool:
        return hasattr(self.module, name)

    def add(self, name: str) -> None:
        pass   # the caller's add_submodule / register_buffer takes it
