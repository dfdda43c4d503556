"""Union-find over integer element ids (the channels a traced forward creates)."""

from __future__ import annotations


class UnionFind:
    """Disjoint sets of ints; ``union(a, b)`` joins their sets, ``find(a)`` names a set by its smallest id."""

    def __init__(self) -> None:
        self._parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        parent = self._parent
        root = a
        while parent.get(root, root) != root:
            root = parent[root]
        while a != root:  # path compression
            parent[a], a = root, parent.get(a, a)
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            low, high = (ra, rb) if ra < rb else (rb, ra)
            self._parent[high] = low
