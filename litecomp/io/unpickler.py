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
import reprlib
import struct
from collections import OrderedDict
from dataclasses import dataclass


from ..errors import FormatError, UnsafeCheckpointError
from . import dtypes as _dt

MAX_LONG_BYTES = 256          # LONG4 payloads beyond this are not integers a checkpoint needs
MAX_STACK = 1 << 20
MAX_DEPTH = 10_000            # MARKs open at once; state dicts nest a few levels deep
# Objects one pickle may build (containers, strings, memo slots), in units of ~50 bytes
# (a set counts 5, a memo slot 3).  Each costs one to five opcode bytes but up to 216
# bytes of memory, so without a budget a 16 MB data.pkl (deflated: a 16 KB file) could
# take gigabytes.  torch.save spends about 25 per tensor, so 1.5M allows 60k tensors in
# one file and bounds what any pickle builds to under 100 MB.
MAX_CONTAINERS = 1_500_000


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
        raise FormatError(f"checkpoint: tensor {what} {_short(x)} is not a tuple of ints")
    return tuple(x)


def _tensor(storage, offset, size, stride, dtype):
    if not isinstance(storage, StorageRef):
        raise FormatError(f"checkpoint: tensor storage is {type(storage).__name__}, "
                          "not a storage")
    if type(offset) is not int or offset < 0:
        raise FormatError(f"checkpoint: tensor storage offset {_short(offset)} is invalid")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or any(s < 0 for s in size + stride):
        raise FormatError(f"checkpoint: tensor size {size} / stride {stride} are invalid")
    if not isinstance(dtype, TorchDtype):
        raise FormatError(f"checkpoint: tensor dtype {_short(dtype)} is not a torch dtype")
    return TensorRef(storage, offset, size, stride, dtype)


def rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False,
                      backward_hooks=None, metadata=None):
    dtype = storage.dtype if isinstance(storage, StorageRef) else None
    if isinstance(storage, StorageRef) and dtype is None:
        raise FormatError("checkpoint: _rebuild_tensor_v2 on an untyped storage")
    return _tensor(storage, offset, size, stride, dtype)


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
    # identity checks only: `in` would hash/compare objects a hostile pickle built
    if not (any(func is r for r in _REBUILDERS)
            and (new_type is TENSOR_CLASS or new_type is PARAMETER_CLASS)):
        raise UnsafeCheckpointError(f"checkpoint: _rebuild_from_type_v2 of {_short(func)} / "
                                    f"{_short(new_type)} is not allowed")
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


_FLAT = (str, int, float, bool, bytes, type(None))


def flat_key(k):
    """Dict keys and set items must be flat scalars: hashing a deeply nested tuple built by
    a hostile pickle would overflow the C stack."""
    if type(k) not in _FLAT:
        raise FormatError(f"checkpoint: a {type(k).__name__} as a dict key or set item is "
                          "not allowed")
    return k


def _ordered_dict(items=()):
    d = OrderedDict()
    pairs = items.items() if type(items) in (dict, OrderedDict) else items
    if type(pairs) not in (list, tuple, type({}.items())):
        raise FormatError("checkpoint: OrderedDict of something that is not a list of pairs")
    for pair in pairs:
        if type(pair) not in (tuple, list) or len(pair) != 2:
            raise FormatError("checkpoint: OrderedDict item is not a pair")
        d[flat_key(pair[0])] = pair[1]
    return d


def _set(items=()):
    if type(items) not in (list, tuple, set, frozenset):
        raise FormatError("checkpoint: set of something that is not a list")
    return {flat_key(i) for i in items}


def _frozenset(items=()):
    return frozenset(_set(items))


def _bytearray(data=b""):
    if type(data) not in (bytes, bytearray):     # never bytearray(n): a memory bomb
        raise FormatError("checkpoint: bytearray of something other than bytes")
    return bytearray(data)


def _identity(*args):
    return args[0] if len(args) == 1 else args


_REBUILDERS = {rebuild_tensor_v2, rebuild_tensor_v3, rebuild_tensor, rebuild_parameter}


def _allowed():
    a = {
        "collections.OrderedDict": _ordered_dict,
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
        "builtins.set": _set,
        "builtins.frozenset": _frozenset,
        "builtins.bytearray": _bytearray,
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
             } | {id(complex): complex, id(tuple): tuple}
_NEWOBJ = (_ordered_dict, _set, _frozenset, _bytearray)


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
        raise UnsafeCheckpointError(f"checkpoint: {what} of {_short(func)}, which is not an "
                                    "allowlisted callable")
    if not isinstance(args, tuple):
        raise FormatError(f"checkpoint: {what} arguments are not a tuple")
    try:
        return func(*args)
    except (FormatError, UnsafeCheckpointError):
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise FormatError(f"checkpoint: bad arguments to {_short(func)}: "
                          f"{_short(str(exc))}") from None


# ------------------------------------------------------------------ the reader
def loads(data, persistent_load, *, pos=0):
    """Run the pickle in ``data[pos:]``; returns (object, end position)."""
    mv = memoryview(data)
    n = len(mv)
    stack, metastack, memo = [], [], {}
    made = 0                      # containers built (MAX_CONTAINERS)

    def over_budget():
        raise FormatError(f"checkpoint: pickle builds more than {MAX_CONTAINERS} containers; "
                          "a state dict needs about 25 per tensor")

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

    def get(i):
        if i not in memo:
            raise FormatError(f"checkpoint: pickle memo {i} is not set")
        stack.append(memo[i])

    def setitems(d, items):
        if type(d) not in (dict, OrderedDict) or len(items) % 2:
            raise FormatError("checkpoint: SETITEMS on a non-dict")
        for i in range(0, len(items), 2):
            d[flat_key(items[i])] = items[i + 1]

    while True:
        if pos >= n:
            raise FormatError("checkpoint: pickle is truncated")
        op = mv[pos]
        pos += 1
        # The opcodes a torch state dict is made of come first, most frequent first.
        if op == 0x71:                                   # BINPUT
            memo[take(1)[0]] = top()            # 256 slots at most: not counted
        elif op == 0x68:                                 # BINGET
            get(take(1)[0])
        elif op == 0x58:                                 # BINUNICODE
            k = int.from_bytes(take(4), "little")
            stack.append(unicode(take(k)))
            made += 1
            if made > MAX_CONTAINERS:
                over_budget()
        elif op == 0x4b:                                 # BININT1
            stack.append(take(1)[0])
        elif op == 0x28:                                 # MARK
            if len(metastack) >= MAX_DEPTH:
                raise FormatError(f"checkpoint: pickle nests more than {MAX_DEPTH} deep")
            metastack.append(stack)
            stack = []
            made += 1
            if made > MAX_CONTAINERS:
                over_budget()
        elif op == 0x74:                                 # TUPLE
            t = tuple(pop_mark())         # pop_mark() rebinds `stack`: call it first
            stack.append(t)
        elif op == 0x29:                                 # EMPTY_TUPLE
            stack.append(())
        elif op in (0x85, 0x86, 0x87):                   # TUPLE1..3
            k = op - 0x84
            if len(stack) < k:
                raise FormatError("checkpoint: pickle stack underflow")
            t = tuple(stack[-k:])
            del stack[-k:]
            stack.append(t)
            made += 1
            if made > MAX_CONTAINERS:
                over_budget()
        elif op == 0x52:                                 # REDUCE
            args, func = pop(), pop()
            stack.append(_call(func, args, "REDUCE"))
            made += 2
            if made > MAX_CONTAINERS:
                over_budget()
        elif op == 0x89:                                 # NEWFALSE
            stack.append(False)
        elif op == 0x51:                                 # BINPERSID
            stack.append(persistent_load(pop()))
        elif op == 0x63:                                 # GLOBAL
            line = []
            for _ in range(2):
                end = bytes(mv[pos:min(n, pos + 1024)]).find(b"\n")
                if end < 0:
                    raise FormatError("checkpoint: pickle GLOBAL is malformed")
                line.append(str(mv[pos:pos + end], "utf-8", "replace"))
                pos += end + 1
            stack.append(_global(*line))
        elif op == 0x75:                                 # SETITEMS
            items = pop_mark()
            setitems(top(), items)
        elif op == 0x7d:                                 # EMPTY_DICT
            stack.append({})
            made += 1
            if made > MAX_CONTAINERS:
                over_budget()
        elif op == 0x62:                                 # BUILD
            state = pop()
            inst = top()
            # OrderedDict state holds torch's `_metadata` (module versions); tensors may
            # carry Python attributes.  Neither matters for the arrays: drop it.
            if type(inst) not in (OrderedDict, dict, TensorRef):
                raise UnsafeCheckpointError(
                    f"checkpoint: BUILD on {type(inst).__name__} is not allowed")
            del state
        elif op == 0x80:                                 # PROTO
            if take(1)[0] > 5:
                raise FormatError("checkpoint: unknown pickle protocol")
        elif op == 0x2e:                                 # STOP
            return pop(), pos
        elif len(stack) > MAX_STACK:
            raise FormatError("checkpoint: pickle stack too deep")
        # The rest of protocols 0-5 that plain data needs.
        elif op == 0x95:                                 # FRAME
            take(8)
        elif op == 0x30:                                 # POP
            pop()
        elif op == 0x31:                                 # POP_MARK
            pop_mark()
        elif op == 0x4e:                                 # NONE
            stack.append(None)
        elif op == 0x88:                                 # NEWTRUE
            stack.append(True)
        elif op == 0x4a:                                 # BININT
            stack.append(struct.unpack("<i", take(4))[0])
        elif op == 0x4d:                                 # BININT2
            stack.append(struct.unpack("<H", take(2))[0])
        elif op in (0x8a, 0x8b):                         # LONG1, LONG4
            k = take(1)[0] if op == 0x8a else struct.unpack("<i", take(4))[0]
            if k < 0 or k > MAX_LONG_BYTES:
                raise FormatError("checkpoint: pickle integer is absurdly long")
            stack.append(int.from_bytes(take(k), "little", signed=True))
        elif op == 0x47:                                 # BINFLOAT
            stack.append(struct.unpack(">d", take(8))[0])
        elif op in (0x8c, 0x8d):                         # SHORT_BINUNICODE, BINUNICODE8
            k = take(1)[0] if op == 0x8c else struct.unpack("<Q", take(8))[0]
            stack.append(unicode(take(k)))
            made += 1
            if made > MAX_CONTAINERS:
                over_budget()
        elif op in (0x54, 0x55):                         # BINSTRING, SHORT_BINSTRING
            k = struct.unpack("<i", take(4))[0] if op == 0x54 else take(1)[0]
            stack.append(str(take(k), "latin1"))
        elif op in (0x42, 0x43, 0x8e):                   # BINBYTES, SHORT_.., ..8
            k = (struct.unpack("<I", take(4))[0] if op == 0x42 else take(1)[0]
                 if op == 0x43 else struct.unpack("<Q", take(8))[0])
            stack.append(bytes(take(k)))
        elif op == 0x5d:                                 # EMPTY_LIST
            stack.append([])
            made += 1
            if made > MAX_CONTAINERS:
                over_budget()
        elif op == 0x6c:                                 # LIST
            lst = list(pop_mark())
            stack.append(lst)
        elif op in (0x61, 0x65):                         # APPEND, APPENDS
            items = [pop()] if op == 0x61 else pop_mark()
            lst = top()
            if type(lst) is not list:
                raise FormatError("checkpoint: APPEND to a non-list")
            lst.extend(items)
        elif op == 0x64:                                 # DICT
            d = {}
            setitems(d, pop_mark())
            stack.append(d)
        elif op == 0x73:                                 # SETITEM
            v, k = pop(), pop()
            setitems(top(), [k, v])
        elif op == 0x8f:                                 # EMPTY_SET
            stack.append(set())
            made += 5
            if made > MAX_CONTAINERS:
                over_budget()
        elif op == 0x90:                                 # ADDITEMS
            items = pop_mark()
            s = top()
            if type(s) is not set:
                raise FormatError("checkpoint: ADDITEMS to a non-set")
            s.update(flat_key(i) for i in items)
        elif op == 0x91:                                 # FROZENSET
            fs = frozenset(flat_key(i) for i in pop_mark())
            stack.append(fs)
            made += 5
            if made > MAX_CONTAINERS:
                over_budget()
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
                full = _short(stack[-1] if stack else None)
            opname = "INST" if op == 0x69 else "OBJ"
            raise UnsafeCheckpointError(f"checkpoint: pickle opcode {opname} ({full}) is "
                                        "not allowed")
        elif op == 0x81:                                 # NEWOBJ
            args, cls = pop(), pop()
            if not any(cls is c for c in _NEWOBJ):
                raise UnsafeCheckpointError(f"checkpoint: NEWOBJ of {_short(cls)} is not allowed")
            stack.append(_call(cls, args, "NEWOBJ"))
            made += 5
            if made > MAX_CONTAINERS:
                over_budget()
        elif op == 0x50:                                 # PERSID (text)
            end = bytes(mv[pos:pos + 1024]).find(b"\n")
            if end < 0:
                raise FormatError("checkpoint: pickle PERSID is malformed")
            pid = str(mv[pos:pos + end], "ascii", "replace")
            pos += end + 1
            stack.append(persistent_load(pid))
        elif op == 0x6a:                                 # LONG_BINGET
            get(struct.unpack("<I", take(4))[0])
        elif op in (0x72, 0x94):                         # LONG_BINPUT, MEMOIZE
            memo[struct.unpack("<I", take(4))[0] if op == 0x72 else len(memo)] = top()
            made += 3                           # a memo slot costs 100-150 bytes
            if made > MAX_CONTAINERS:
                over_budget()
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
    return reprlib.repr(x)          # bounded depth: a hostile object cannot recurse


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
