"""The host link as the planner sees it: transfer capacity per operator slot.

While op j computes, a link direction moves ``seconds[j] * Bps`` bytes. The
planner books copies against that capacity as a fluid: a copy out takes
capacity from the slots right after its eviction (as soon as possible), a
copy in from the slots right before its use (as late as possible, so the page
occupies device memory for the shortest time). A Fenwick tree answers "how
much is free between slots a and b" and "where does n bytes' worth end" in
O(log n); two skip lists (union-find with path compression) jump over slots
already full, so booking is near-constant time amortised.
"""

from __future__ import annotations


class LinkCapacity:
    def __init__(self, seconds: list[float], Bps: float) -> None:
        n = self.n = len(seconds)
        self.cap = [max(0, int(s * Bps)) for s in seconds]
        tree = [0] * (n + 1)
        for i, c in enumerate(self.cap, 1):
            tree[i] += c
            j = i + (i & -i)
            if j <= n:
                tree[j] += tree[i]
        self._tree = tree
        # _left[k + 1]: 1 + the last slot <= k with room (0: none);
        # _right[k]: the first slot >= k with room (n: none).
        self._left = [k if k == 0 or self.cap[k - 1] > 0 else -1 for k in range(n + 1)]
        self._right = [k if k == n or self.cap[k] > 0 else -1 for k in range(n + 1)]
        for k in range(1, n + 1):
            if self._left[k] < 0:
                self._left[k] = self._left[k - 1] if self._left[k - 1] >= 0 else 0
        for k in range(n - 1, -1, -1):
            if self._right[k] < 0:
                self._right[k] = self._right[k + 1]

    def _prefix(self, i: int) -> int:
        s, tree = 0, self._tree
        while i > 0:
            s += tree[i]
            i -= i & -i
        return s

    def _add(self, i: int, delta: int) -> None:
        tree, n = self._tree, self.n
        i += 1
        while i <= n:
            tree[i] += delta
            i += i & -i

    def free(self, a: int, b: int) -> int:
        """Bytes still free in slots a .. b - 1."""
        a, b = max(a, 0), min(b, self.n)
        return self._prefix(b) - self._prefix(a) if b > a else 0

    def fill_point(self, a: int, nbytes: int) -> tuple[int, int]:
        """The first slot e >= a by which ``nbytes`` fit in slots a .. e, and the
        bytes that do not fit before the end of the step (then e = n - 1)."""
        target = self._prefix(max(a, 0)) + nbytes
        pos, rem, step = 0, target, 1 << self.n.bit_length()
        tree = self._tree
        while step:
            nxt = pos + step
            if nxt <= self.n and tree[nxt] < rem:
                pos = nxt
                rem -= tree[nxt]
            step >>= 1
        if pos >= self.n:
            return self.n - 1, target - self._prefix(self.n)
        return max(pos, a), 0

    def take_forward(self, a: int, nbytes: int) -> int:
        """Book ``nbytes`` from slot a on; return the last slot booked (a - 1 if none)."""
        last, k = a - 1, self._find_right(max(a, 0))
        while nbytes > 0 and k < self.n:
            got = min(nbytes, self.cap[k])
            self._take(k, got)
            nbytes -= got
            last = k
            k = self._find_right(k)
        return last

    def take_backward(self, b: int, lo: int, nbytes: int) -> int:
        """Book ``nbytes`` in slots lo .. b - 1, latest first; return the first
        slot booked (b if none)."""
        first, k = b, self._find_left(min(b, self.n) - 1)
        while nbytes > 0 and k >= max(lo, 0):
            got = min(nbytes, self.cap[k])
            self._take(k, got)
            nbytes -= got
            first = k
            k = self._find_left(k)
        return first

    def _take(self, k: int, got: int) -> None:
        self.cap[k] -= got
        self._add(k, -got)
        if self.cap[k] == 0:
            self._left[k + 1] = k
            self._right[k] = k + 1

    def _find_right(self, k: int) -> int:
        r = self._right
        root = k
        while r[root] != root:
            root = r[root]
        while r[k] != root:
            r[k], k = root, r[k]
        return root

    def _find_left(self, k: int) -> int:
        """The last slot <= k with room, or -1."""
        if k < 0:
            return -1
        left = self._left
        j = k + 1
        root = j
        while left[root] != root:
            root = left[root]
        while left[j] != root:
            left[j], j = root, left[j]
        return root - 1
