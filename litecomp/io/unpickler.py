"""A pickle reader that only knows torch's checkpoint vocabulary, and a protocol-2 writer.

The reader is a small pickle virtual machine of its own (as torch's weights_only unpickler
is): it never calls ``pickle.Unpickler.find_class`` and never imports anything.  A global
resolves only through ``ALLOWED`` to a litecomp stand-in (a tensor description, a dtype
marker, ``dict``, ...); anything else raises ``UnsafeCheckpointError`` naming the global.
REDUCE and NEWOBJ only call stand-ins; BUILD only touches dicts and tensor descriptions.
Tensors come out as ``TensorRef`` records (storage, offset, shape, strides) that the
caller turns into arrays, so reading the pickle never touches storage bytes.
"""

import _compat_pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..errors import FormatError, UnsafeCheckpointError
from . import dtypes as _dt

MAX_LONG_BYTES = 256          # LONG4 payloads beyond this are not integers a checkpoint needs
MAX_STACK = 1 << 20


# ------------------------------------------------------------------ stand-ins
@dataclass(frozen=True)
class TorchDtype:
    name: str                 # numpy/ml_dtypes name, or the torch name when NumPy has none

    @property
    def numpy(self):
        try:
            return _dt.numpy_dtype(self.name)
        except TypeError:
            raise FormatError(f"torch dtype {self.name} has no NumPy equivalent") from None


@dataclass(frozen=True)
class StorageType:
    dtype: object             # TorchDtype, or None for UntypedStorage (bytes)


@dataclass(frozen=True)
class StorageRef:
    key: str
    dtype: object             # TorchDtype or None (untyped: numel counts bytes)
    numel: int
    location: str


@dataclass
class TensorRef:
    storage: StorageRef
    offset: int
    shape: tuple
    strides: tuple
    dtype: TorchDtype


class _Marker:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"<{self.name}>"


TENSOR_CLASS = _Marker("torch.Tensor")
PARAMETER_CLASS = _Marker("torch.nn.Parameter")


def _ints(x, what):
    if not isinstance(x, (tuple, list)) or not all(type(i) is int for i in x):
        raise FormatError(f"checkpoint: tensor {what} {x!r} is not a tuple of ints")
    return tuple(x)


def _tensor(storage, offset, size, stride, dtype):
    if not isinstance(storage, StorageRef):
        raise FormatError(f"checkpoint: tensor storage is {type(storage).__name__}, "
                          "not a storage")
    if type(offset) is not int or offset < 0:
        raise FormatError(f"checkpoint: tensor storage offset {offset!r} is invalid")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or any(s < 0 for s in size + stride):
        raise FormatError(f"checkpoint: tensor size {size} / stride {stride} are invalid")
    if not isinstance(dtype, TorchDtype):
        raise FormatError(f"checkpoint: tensor dtype {dtype!r} is not a torch dtype")
    return TensorRef(storage, offset, size, stride, dtype)


def rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False,
                      backward_hooks=None, metadata=None):
    if storage.dtype is None if isinstance(storage, StorageRef) else False:
        raise FormatError("checkpoint: _rebuild_tensor_v2 on an untyped storage")
    return _tensor(storage, offset, size, stride,
                   storage.dtype if isinstance(storage, StorageRef) else None)


def rebuild_tensor_v3(storage, offset, size, stride, requires_grad, backward_hooks,
                      dtype, metadata=None):
    return _tensor(storage, offset, size, stride, dtype)


def rebuild_tensor(storage, offset, size, stride):
    return rebuild_tensor_v2(storage, offset, size, stride)


def rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, TensorRef):
        raise FormatError("checkpoint: a Parameter whose data is not a tensor")
    return data


def rebuild_from_type_v2(func, new_type, args, state):
    if func not in _REBUILDERS or new_type not in (TENSOR_CLASS, PARAMETER_CLASS):
        raise UnsafeCheckpointError(
            f"checkpoint: _rebuild_from_type_v2 of {func!r} / {new_type!r} is not allowed")
    if not isinstance(args, tuple):
        raise FormatError("checkpoint: _rebuild_from_type_v2 arguments are not a tuple")
    return func(*args)


def _unsupported(what):
    def fn(*args):
        raise FormatError(f"checkpoint: {what} tensors are not supported by litecomp")
    return fn


def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    # protocol-2 pickles of bytes: _codecs.encode(str, 'latin1')
    if type(obj) is not str or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise FormatError("checkpoint: _codecs.encode is only allowed as latin1 of a str")
    return obj.encode("latin1")


def _identity(*args):
    return args[0] if len(args) == 1 else args


_REBUILDERS = {rebuild_tensor_v2, rebuild_tensor_v3, rebuild_tensor, rebuild_parameter}


def _allowed():
    a = {
        "collections.OrderedDict": OrderedDict,
        "torch._utils._rebuild_tensor_v2": rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": rebuild_tensor_v3,
        "torch._utils._rebuild_tensor": rebuild_tensor,
        "torch._utils._rebuild_parameter": rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": rebuild_from_type_v2,
        "torch._utils._rebuild_qtensor": _unsupported("quantized"),
        "torch._utils._rebuild_sparse_tensor": _unsupported("sparse"),
        "torch._utils._rebuild_wrapper_subclass": _unsupported("subclass"),
        "torch._utils._rebuild_meta_tensor_no_storage": _unsupported("meta"),
        "torch._utils._rebuild_nested_tensor": _unsupported("nested"),
        "torch.Tensor": TENSOR_CLASS,
        "torch.nn.parameter.Parameter": PARAMETER_CLASS,
        "torch.Size": tuple,
        "torch.device": _identity,
        "_codecs.encode": _codecs_encode,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.bytearray": bytearray,
        "builtins.complex": complex,
        "torch.storage.UntypedStorage": StorageType(None),
    }
    for name, (tname, storage) in _dt.TORCH.items():
        a[f"torch.{tname}"] = TorchDtype(name)
        if storage:
            a[f"torch.{storage}"] = StorageType(TorchDtype(name))
    for alias, name in _dt.TORCH_ALIASES.items():
        a[f"torch.{alias}"] = TorchDtype(name)
    return a


ALLOWED = _allowed()
_CALLABLE = {id(v): v for v in ALLOWED.values() if callable(v) and not isinstance(v, type)
             } | {id(OrderedDict): OrderedDict, id(set): set, id(frozenset): frozenset,
                  id(bytearray): bytearray, id(complex): complex, id(tuple): tuple}


def _global(module: str, name: str):
    # Protocol-2 pickles written by Python 3 spell some modules the Python 2 way
    # (__builtin__.set); translate names as pickle's fix_imports does (names only).
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    full = f"{module}.{name}"
    try:
        return ALLOWED[full]
    except KeyError:
        raise UnsafeCheckpointError(
            f"checkpoint: global {full} is not on litecomp's allowlist (nothing was "
            "imported or called); the file is not a plain state dict or may be hostile"
        ) from None


def _call(func, args, what):
    if id(func) not in _CALLABLE or _CALLABLE[id(func)] is not func:
        raise UnsafeCheckpointError(f"checkpoint: {what} of {func!r}, which is not an "
                                    "allowlisted callable")
    if not isinstance(args, tuple):
        raise FormatError(f"checkpoint: {what} arguments are not a tuple")
    try:
        return func(*args)
    except (FormatError, UnsafeCheckpointError):
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise FormatError(f"checkpoint: bad arguments to {func!r}: {exc}") from None


# ------------------------------------------------------------------ the reader
class _Mark:
    pass


def loads(data, persistent_load, *, pos=0):
    """Run the pickle in ``data[pos:]``; returns (object, end position)."""
    mv = memoryview(data)
    n = len(mv)
    stack, metastack, memo = [], [], {}

    def take(k):
        nonlocal pos
        if k < 0 or pos + k > n:
            raise FormatError("checkpoint: pickle is truncated")
        b = mv[pos:pos + k]
        pos += k
        return b

    def pop_mark():
        nonlocal stack
        if not metastack:
            raise FormatError("checkpoint: pickle MARK missing")
        items = stack
        stack = metastack.pop()
        return items

    def top():
        if not stack:
            raise FormatError("checkpoint: pickle stack underflow")
        return stack[-1]

    def pop():
        if not stack:
            raise FormatError("checkpoint: pickle stack underflow")
        return stack.pop()

    def unicode(b):
        try:
            return str(b, "utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise FormatError("checkpoint: pickle string is not UTF-8") from None

    def setitems(d, items):
        if type(d) not in (dict, OrderedDict) or len(items) % 2:
            raise FormatError("checkpoint: SETITEMS on a non-dict")
        for i in range(0, len(items), 2):
            try:
                d[items[i]] = items[i + 1]
            except TypeError:
                raise FormatError("checkpoint: unhashable dict key") from None

    while True:
        op = take(1)[0]
        if len(stack) > MAX_STACK:
            raise FormatError("checkpoint: pickle stack too deep")
        if op == 0x80:                                   # PROTO
            if take(1)[0] > 5:
                raise FormatError("checkpoint: unknown pickle protocol")
        elif op == 0x95:                                 # FRAME
            take(8)
        elif op == 0x2e:                                 # STOP
            return pop(), pos
        elif op == 0x28:                                 # MARK
            metastack.append(stack)
            stack = []
        elif op == 0x30:                                 # POP
            pop()
        elif op == 0x31:                                 # POP_MARK
            pop_mark()
        elif op == 0x4e:                                 # NONE
            stack.append(None)
        elif op == 0x88:                                 # NEWTRUE
            stack.append(True)
        elif op == 0x89:                                 # NEWFALSE
            stack.append(False)
        elif op == 0x4a:                                 # BININT
            stack.append(struct.unpack("<i", take(4))[0])
        elif op == 0x4b:                                 # BININT1
            stack.append(take(1)[0])
        elif op == 0x4d:                                 # BININT2
            stack.append(struct.unpack("<H", take(2))[0])
        elif op in (0x8a, 0x8b):                         # LONG1, LONG4
            k = take(1)[0] if op == 0x8a else struct.unpack("<i", take(4))[0]
            if k < 0 or k > MAX_LONG_BYTES:
                raise FormatError("checkpoint: pickle integer is absurdly long")
            stack.append(int.from_bytes(take(k), "little", signed=True))
        elif op == 0x47:                                 # BINFLOAT
            stack.append(struct.unpack(">d", take(8))[0])
        elif op in (0x58, 0x8c, 0x8d):                   # BINUNICODE, SHORT_.., ..8
            k = {0x58: lambda: struct.unpack("<I", take(4))[0],
                 0x8c: lambda: take(1)[0],
                 0x8d: lambda: struct.unpack("<Q", take(8))[0]}[op]()
            stack.append(unicode(take(k)))
        elif op in (0x54, 0x55):                         # BINSTRING, SHORT_BINSTRING
            k = struct.unpack("<i", take(4))[0] if op == 0x54 else take(1)[0]
            stack.append(str(take(k), "latin1"))
        elif op in (0x42, 0x43, 0x8e):                   # BINBYTES, SHORT_.., ..8
            k = {0x42: lambda: struct.unpack("<I", take(4))[0],
                 0x43: lambda: take(1)[0],
                 0x8e: lambda: struct.unpack("<Q", take(8))[0]}[op]()
            stack.append(bytes(take(k)))
        elif op == 0x29:                                 # EMPTY_TUPLE
            stack.append(())
        elif op == 0x74:                                 # TUPLE
            t = tuple(pop_mark())         # pop_mark() rebinds `stack`: call it first
            stack.append(t)
        elif op in (0x85, 0x86, 0x87):                   # TUPLE1..3
            k = op - 0x84
            if len(stack) < k:
                raise FormatError("checkpoint: pickle stack underflow")
            t = tuple(stack[-k:])
            del stack[-k:]
            stack.append(t)
        elif op == 0x5d:                                 # EMPTY_LIST
            stack.append([])
        elif op == 0x6c:                                 # LIST
            lst = list(pop_mark())
            stack.append(lst)
        elif op in (0x61, 0x65):                         # APPEND, APPENDS
            items = [pop()] if op == 0x61 else pop_mark()
            lst = top()
            if type(lst) is not list:
                raise FormatError("checkpoint: APPEND to a non-list")
            lst.extend(items)
        elif op == 0x7d:                                 # EMPTY_DICT
            stack.append({})
        elif op == 0x64:                                 # DICT
            d = {}
            setitems(d, pop_mark())
            stack.append(d)
        elif op == 0x73:                                 # SETITEM
            v, k = pop(), pop()
            setitems(top(), [k, v])
        elif op == 0x75:                                 # SETITEMS
            items = pop_mark()
            setitems(top(), items)
        elif op == 0x8f:                                 # EMPTY_SET
            stack.append(set())
        elif op == 0x90:                                 # ADDITEMS
            items = pop_mark()
            s = top()
            if type(s) is not set:
                raise FormatError("checkpoint: ADDITEMS to a non-set")
            try:
                s.update(items)
            except TypeError:
                raise FormatError("checkpoint: unhashable set item") from None
        elif op == 0x91:                                 # FROZENSET
            try:
                fs = frozenset(pop_mark())
                stack.append(fs)
            except TypeError:
                raise FormatError("checkpoint: unhashable set item") from None
        elif op == 0x63:                                 # GLOBAL
            line = []
            for _ in range(2):
                start = pos
                end = bytes(mv[pos:min(n, pos + 1024)]).find(b"\n")
                if end < 0:
                    raise FormatError("checkpoint: pickle GLOBAL is malformed")
                line.append(str(mv[start:start + end], "utf-8", "replace"))
                pos = start + end + 1
            stack.append(_global(*line))
        elif op == 0x93:                                 # STACK_GLOBAL
            name, module = pop(), pop()
            if type(name) is not str or type(module) is not str:
                raise FormatError("checkpoint: STACK_GLOBAL of non-strings")
            stack.append(_global(module, name))
        elif op in (0x69, 0x6f):                         # INST, OBJ: class instantiation
            if op == 0x69:
                parts = bytes(mv[pos:pos + 2048]).split(b"\n", 2)
                full = b".".join(parts[:2]).decode("utf-8", "replace")
            else:
                full = repr(stack[-1] if stack else None)
            raise UnsafeCheckpointError(f"checkpoint: pickle opcode {'INST' if op == 0x69 else 'OBJ'} "
                                        f"({full}) is not allowed")
        elif op == 0x52:                                 # REDUCE
            args, func = pop(), pop()
            stack.append(_call(func, args, "REDUCE"))
        elif op == 0x81:                                 # NEWOBJ
            args, cls = pop(), pop()
            if cls not in (OrderedDict, set, frozenset, bytearray):
                raise UnsafeCheckpointError(f"checkpoint: NEWOBJ of {cls!r} is not allowed")
            stack.append(_call(cls, args, "NEWOBJ"))
        elif op == 0x62:                                 # BUILD
            state = pop()
            inst = top()
            # OrderedDict state holds torch's `_metadata` (module versions); tensors may
            # carry Python attributes.  Neither matters for the arrays: drop it.
            if type(inst) not in (OrderedDict, dict, TensorRef):
                raise UnsafeCheckpointError(
                    f"checkpoint: BUILD on {type(inst).__name__} is not allowed")
        elif op == 0x51:                                 # BINPERSID
            stack.append(persistent_load(pop()))
        elif op == 0x50:                                 # PERSID (text)
            end = bytes(mv[pos:pos + 1024]).find(b"\n")
            if end < 0:
                raise FormatError("checkpoint: pickle PERSID is malformed")
            pid = str(mv[pos:pos + end], "ascii", "replace")
            pos += end + 1
            stack.append(persistent_load(pid))
        elif op in (0x68, 0x6a):                         # BINGET, LONG_BINGET
            i = take(1)[0] if op == 0x68 else struct.unpack("<I", take(4))[0]
            try:
                stack.append(memo[i])
            except KeyError:
                raise FormatError(f"checkpoint: pickle memo {i} is not set") from None
        elif op in (0x71, 0x72):                         # BINPUT, LONG_BINPUT
            i = take(1)[0] if op == 0x71 else struct.unpack("<I", take(4))[0]
            memo[i] = top()
        elif op == 0x94:                                 # MEMOIZE
            memo[len(memo)] = top()
        else:
            raise UnsafeCheckpointError(
                f"checkpoint: pickle opcode 0x{op:02x} ({chr(op)!r}) is not allowed")


def storage_from_pid(pid):
    """Check a torch persistent id ('storage', StorageType, key, location, numel)."""
    if (type(pid) is not tuple or len(pid) not in (5, 6) or pid[0] != "storage"
            or not isinstance(pid[1], StorageType) or type(pid[2]) is not str
            or type(pid[4]) is not int or pid[4] < 0):
        raise FormatError(f"checkpoint: persistent id {_short(pid)} is not a torch storage")
    return StorageRef(pid[2], pid[1].dtype, pid[4], str(pid[3]))


def _short(x):
    r = repr(x)
    return r if len(r) < 120 else r[:117] + "..."


# ------------------------------------------------------------------ the writer
class PickleWriter:
    """Protocol-2 pickle of {name: tensor} exactly as torch.save lays it out."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")
        self.memo = {}

    def _memo_put(self, key):
        i = len(self.memo)
        self.memo[key] = i
        self.out += (b"q" + bytes([i])) if i < 256 else (b"r" + struct.pack("<I", i))

    def _memoized(self, key):
        i = self.memo.get(key)
        if i is None:
            return False
        self.out += (b"h" + bytes([i])) if i < 256 else (b"j" + struct.pack("<I", i))
        return True

    def global_(self, module, name):
        if not self._memoized(("g", module, name)):
            self.out += b"c" + f"{module}\n{name}\n".encode()
            self._memo_put(("g", module, name))

    def str_(self, s, memo=False):
        if memo and self._memoized(("s", s)):
            return
        b = s.encode("utf-8", "surrogatepass")
        self.out += b"X" + struct.pack("<I", len(b)) + b
        if memo:
            self._memo_put(("s", s))

    def int_(self, v):
        if 0 <= v < 256:
            self.out += b"K" + bytes([v])
        elif 0 <= v < 65536:
            self.out += b"M" + struct.pack("<H", v)
        elif -2 ** 31 <= v < 2 ** 31:
            self.out += b"J" + struct.pack("<i", v)
        else:
            b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(b)]) + b

    def tuple_(self, items):
        if len(items) == 0:
            self.out += b")"
            return
        if len(items) > 3:
            self.out += b"("
        for v in items:
            self.int_(v)
        self.out += b"t" if len(items) > 3 else bytes([0x84 + len(items)])

    def tensor(self, dtype_name, key, storage_numel, offset, shape, strides):
        tname, storage = _dt.TORCH[dtype_name]
        self.global_("torch._utils", "_rebuild_tensor_v2" if storage else "_rebuild_tensor_v3")
        self.out += b"(("
        self.str_("storage", memo=True)
        if storage:
            self.global_("torch", storage)
        else:
            self.global_("torch.storage", "UntypedStorage")
            storage_numel *= _dt.numpy_dtype(dtype_name).itemsize
        self.str_(key, memo=True)
        self.str_("cpu", memo=True)
        self.int_(storage_numel)
        self.out += b"tQ"                                  # TUPLE, BINPERSID
        self.int_(offset)
        self.tuple_(shape)
        self.tuple_(strides)
        self.out += b"\x89"                                # requires_grad False
        self.global_("collections", "OrderedDict")
        self.out += b")R"                                  # OrderedDict()
        if not storage:
            self.global_("torch", tname)
        self.out += b"tR"

    def dict_(self, items):
        """items: [(name, emit)] where emit() writes the value."""
        self.out += b"}"
        for i in range(0, len(items), 1000):
            self.out += b"("
            for name, emit in items[i:i + 1000]:
                self.str_(name)
                emit()
            self.out += b"u"

    def finish(self) -> bytes:
        self.out += b"."
        return bytes(self.out)
