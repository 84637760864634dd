"""The pure core of deepum: no torch, no CUDA.

It holds the ideas of DeepUM as plain data structures, so that they can be read
and tested with synthetic operator traces:

* :mod:`.budget` - what a budget string means, in bytes.
* :mod:`.pages` - pages (tensor storages), their states, and the accounting of
  resident bytes against the budget.
* :mod:`.correlation` - execution IDs, the execution-ID correlation table and
  the page correlation table, and the predictor that chains through them.
* :mod:`.policy` - which pages to evict and which to prefetch.

The glue in the parent package moves bytes; everything it decides, it asks of
these modules.
"""
