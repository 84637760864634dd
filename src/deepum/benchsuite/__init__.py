"""The pieces of ``deepum bench``: models and their batches, peers, one case.

``deepum.bench`` keeps the command line, the suite and the tables; this
package holds what a single case needs, so a child process imports only that.
"""
