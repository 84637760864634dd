"""The recipe graph: which pages a dropped page is computed from, and who reads whom.

A page with a recipe can be dropped (freed without a copy) and computed again
from its recipe's inputs. This module keeps the graph's two directions in
step and measures chains; it moves no bytes (engine/remat.py does that).

[Note: the recipe graph]
``page.recipe.inputs`` lists the pages a recipe reads; each input lists the
pages whose recipes read it in ``input.readers``. ``attach`` and ``detach``
are the only writers of both, so an edge exists in one direction exactly when
it exists in the other. ``recipe.held`` holds the inputs' storages for as
long as the recipe exists (lineage nodes: engine/remat.py), and
``recipe.depth`` is how many dropped pages a rebuild runs through, the page
itself included.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any, Protocol


class Node(Protocol):
    recipe: Any
    readers: list | None


def attach(page: Node, recipe: Any) -> None:
    """``page`` can be computed again by ``recipe`` (whose ``inputs`` are pages)."""
    page.recipe = recipe
    for q in recipe.inputs:
        if q.readers is None:
            q.readers = []
        q.readers.append(page)


def detach(page: Node) -> None:
    """Forget ``page``'s recipe: its inputs or its own bytes changed."""
    recipe, page.recipe = page.recipe, None
    for q in recipe.inputs:
        if q.readers and page in q.readers:
            q.readers.remove(page)


def readers(page: Node) -> list:
    """The pages whose recipes read ``page`` (a copy: the caller may detach them)."""
    return list(page.readers or ())


def drop_depth(recipe: Any, dropping: Container) -> int:
    """How deep a rebuild of a page dropped by ``recipe`` would go.

    ``dropping``: pages being dropped in the same batch (not yet marked
    evicted); they count as dropped.
    """
    return 1 + max((q.recipe.depth for q in recipe.inputs
                    if q.recipe is not None and (q.dropped or q in dropping)), default=0)
