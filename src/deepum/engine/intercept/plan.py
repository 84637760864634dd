"""Per-overload analysis, done once: which arguments are tensors, which are written, what the
operator can do (allocate, be retried, be recomputed); and the argument helpers the paths share."""

from __future__ import annotations

import torch

from ..remat import recomputable, seeded

# Operators that write arguments their schema does not mark as written:
# batch norm updates running_mean and running_var (arguments 3 and 4) in
# training mode.
_UNANNOTATED_WRITES = {
    "aten::native_batch_norm": (3, 4),
    "aten::cudnn_batch_norm": (3, 4),
    "aten::miopen_batch_norm": (3, 4),
}

# Operators whose meta kernel under-states their outputs (the RNN layers:
# the backend sizes their workspace at run time); see estimate.py.
UNRELIABLE_META = {
    "aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward", "aten::_cudnn_rnn",
    "aten::_cudnn_rnn_backward", "aten::miopen_rnn", "aten::miopen_rnn_backward",
    "aten::_thnn_fused_lstm_cell", "aten::_thnn_fused_gru_cell",
}

# Of those, operators whose outputs do not depend on what they write, so a
# replay can leave the written arguments out (engine/remat.py).
_REPLAY_WITHOUT_STATS = {"aten::native_batch_norm"}

Tensor = torch.Tensor
_PAGEABLE_TYPES = (torch.Tensor, torch.nn.Parameter)


class OpPlan:
    """What the interceptor needs to know about one operator overload, computed once."""

    __slots__ = ("func", "call", "name", "slots", "n_written", "list_slots", "foreach",
                 "fresh", "factory", "retry_safe", "comm", "recomputable", "seeded", "sized", "view")

    def __init__(self, func: torch._ops.OpOverload, recipes: str = "all") -> None:
        schema = func._schema
        self.func = func
        # The overload's C++ callable: OpOverload.__call__ is a Python frame that only forwards to it.
        self.call = getattr(func, "_op", func)
        self.name = str(func)
        extra = _UNANNOTATED_WRITES.get(schema.name, ())
        written, read, lists = [], [], []
        pos = 0
        for i, arg in enumerate(schema.arguments):
            kind = tensor_kind(arg.type)
            # Positional arguments come in args by index; keyword-only ones
            # come in kwargs by name.
            index = 10**6 if arg.kwarg_only else pos
            if not arg.kwarg_only:
                pos += 1
            if isinstance(arg.type, torch.ListType):
                lists.append((index, arg.name))
            if kind is None:
                continue
            is_write = bool(arg.alias_info is not None and arg.alias_info.is_write) or i in extra
            (written if is_write else read).append((index, arg.name, kind == "list"))
        self.slots = tuple(written + read)
        self.n_written = len(written)
        self.list_slots = tuple(lists)
        base = schema.name.split("::")[-1]
        self.foreach = base.startswith(("_foreach_", "_fused_")) and bool(lists)
        # Can the operator allocate new storages? Returns without alias
        # annotation can; views and in-place returns cannot.
        self.fresh = any(r.alias_info is None and tensor_kind(r.type) is not None
                         for r in schema.returns)
        self.factory = any(a.name == "device" for a in schema.arguments)
        # Collectives return before the communication ends (a Work handle).
        self.comm = schema.name.startswith("c10d::")
        # After an out-of-memory error a functional operator has changed
        # nothing and can run again; one that writes its arguments may have
        # written some of them. Batch norm is the exception: its kernels
        # allocate every output before they touch the running statistics.
        annotated_write = any(a.alias_info is not None and a.alias_info.is_write
                              for a in schema.arguments)
        self.retry_safe = not annotated_write
        self.recomputable = (self.fresh and not annotated_write and recomputable(func, recipes)
                             and (not extra or schema.name in _REPLAY_WITHOUT_STATS))
        # Replaying a random operator needs the generator state it saw.
        self.seeded = self.recomputable and seeded(func)
        # See [Note: sizes known before the run] in estimate.py.
        self.sized = self.fresh and (self.factory or schema.name in UNRELIABLE_META)
        # Metadata only: reads no element, writes nothing, makes no storage
        # (see [Note: views] in mode.py).
        self.view = bool(func.is_view) and not annotated_write and not self.fresh and not self.comm

    def collect(self, args: tuple, kwargs: dict) -> tuple[list, int]:
        """The tensor arguments, written ones first, and how many are written."""
        out = []
        nargs = len(args)
        n_written = self.n_written
        nw, n = -1, 0  # (len(out) kept by hand: every operator)
        for k, (index, name, is_list) in enumerate(self.slots):
            if k == n_written:
                nw = n
            v = args[index] if index < nargs else kwargs.get(name)
            if v is None:
                continue
            if is_list:
                out += [x for x in v if isinstance(x, Tensor)]
                n = len(out)
            elif isinstance(v, Tensor):
                # Python scalars can stand where the schema says Tensor.
                out.append(v)
                n += 1
        if nw < 0:  # every tensor argument is written (k never reached n_written)
            nw = n
        return out, nw


def tensor_kind(t: torch._C.JitType) -> str | None:
    if isinstance(t, torch.OptionalType):
        t = t.getElementType()
    if isinstance(t, torch.TensorType):
        return "tensor"
    if isinstance(t, torch.ListType):
        e = t.getElementType()
        if isinstance(e, torch.OptionalType):
            e = e.getElementType()
        if isinstance(e, torch.TensorType):
            return "list"
    return None


def pageable(t: torch.Tensor, s: torch.UntypedStorage) -> bool:
    """Can this storage be freed and re-allocated in place without anyone noticing?"""
    # A ZeroTensor (autograd's allocation-free zeros) has a storage with a
    # size and no memory: there is nothing to copy out.
    return (type(t) in _PAGEABLE_TYPES and s.resizable() and not t.is_quantized
            and not t.is_nested and t.layout == torch.strided and not t._is_zerotensor())


def hashable(x):
    if isinstance(x, torch.Tensor):
        # What an operator with no managed input is named by: a fresh host
        # batch copied in each step is the same role each step, whatever its
        # identity (tensors hash by identity, which made a new ID per step).
        return ("tensor", x.dtype, tuple(x.shape), x.device.type)
    if isinstance(x, (list, tuple)):
        return tuple(hashable(y) for y in x)
    if isinstance(x, dict):
        return tuple(sorted((k, hashable(v)) for k, v in x.items()))
    if isinstance(x, torch.Generator):
        # A generator made per batch is the same role each step (it hashes by identity).
        return ("generator", x.device.type)
    try:
        hash(x)
    except TypeError:
        return id(x)
    return x


def logical_nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def flat_outputs(out) -> tuple | list:
    """The tensors of an operator's result, two levels of tuples and lists deep."""
    if isinstance(out, torch.Tensor):
        return (out,)  # most operators: no list, no generator (this runs for each one)
    flat = []
    if isinstance(out, (tuple, list)):
        for x in out:
            if isinstance(x, torch.Tensor):
                flat.append(x)
            elif isinstance(x, (tuple, list)):
                flat.extend(y for y in x if isinstance(y, torch.Tensor))
    return flat
