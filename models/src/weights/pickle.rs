//! Legacy PyTorch checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`), read without running any code.
//!
//! `torch.save` writes a Python pickle of the object graph (usually a dict of tensors, possibly
//! wrapped in a Lightning checkpoint) plus the raw bytes of every tensor storage. Unpickling with
//! Python would import and call whatever the pickle names (`os.system` included), so this module
//! never does: it *evaluates* the pickle as data. `GLOBAL`/`STACK_GLOBAL` push an inert symbol;
//! `REDUCE`/`NEWOBJ`/`BUILD` construct values only for the handful of allow-listed tensor-rebuilding
//! callables ([`classify`]); other allow-listed globals (numpy scalars, Lightning callbacks, …)
//! become opaque values that are never called; any other global refuses the file with
//! [`Error::ForbiddenGlobal`]. Tensors come out as strided views (element offsets and strides)
//! into storages that are located, bounds-checked and only read when [`TensorSource::read`] asks.
//!
//! Containers (spec: `formats.md` §1.2 and §11, the project's model-format reference):
//! - the zip archive of torch ≥ 1.6: `<arch>/data.pkl` and one record `<arch>/data/<key>` per
//!   storage, `<arch>/byteorder` (big-endian records are byte-swapped on read); stored records are
//!   sliced out of a memory map, deflated ones (re-zipped files) are decompressed on read;
//!   TorchScript archives (`code/`, `constants.pkl`) are refused;
//! - the pre-1.6 stream: five pickles (magic number, protocol 1001, sys_info, the object graph,
//!   the storage keys) followed by each storage as an int64 element count and raw bytes.
//!
//! The evaluator implements the opcodes of pickle protocols 0–5 (§11.3) except the extension
//! registry and out-of-band buffers, and bounds the stack, the memo, the number of values and
//! string lengths, so that hostile input can neither run code nor exhaust memory. Values live in an
//! arena and refer to each other by index, so deep nesting or reference cycles cannot overflow the
//! native stack when they are built or dropped.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use tch::{Device, Kind, Tensor};

use super::{TensorInfo, TensorSource};
use crate::error::{Error, Result};

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// Bounds on what one pickle may make the evaluator hold. Real checkpoints stay far below them
/// (an SDXL checkpoint pickle has ~50k values); they exist so that a small hostile file cannot
/// make the daemon allocate without bound.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Items on the value stack (all mark frames together).
    stack: usize,
    /// Nested MARKs.
    marks: usize,
    /// Memo entries.
    memo: usize,
    /// Values created (arena nodes), over all pickles of one file.
    objects: usize,
    /// Bytes in one string, byte string or text line.
    string: usize,
    /// Nesting of `_rebuild_from_type_v2(func, …)` calls evaluated inside each other.
    call_depth: usize,
    /// Bytes of values built by copying other values (`set(x)`, `OrderedDict(x)`,
    /// `_codecs.encode(s)`): a few opcodes can repeat such a call on one large memoised value.
    copied: usize,
}

const LIMITS: Limits = Limits {
    stack: 1 << 20,
    marks: 1 << 16,
    memo: 1 << 21,
    objects: 1 << 22,
    string: 64 << 20,
    call_depth: 8,
    copied: 256 << 20,
};

/// Largest `data.pkl` accepted (SD checkpoints have well under 1 MiB).
const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Most zip entries accepted (a checkpoint has one per storage; SDXL has ~2.5k).
const MAX_ENTRIES: usize = 1 << 20;
/// Deepest dict nesting followed when collecting tensors.
const MAX_NESTING: usize = 64;
/// Most dimensions of one tensor.
const MAX_DIMS: usize = 64;
/// Longest integer accepted from LONG1/LONG4, in bytes (the legacy magic needs 10).
const MAX_LONG_BYTES: usize = 1024;
/// A deflate stream cannot expand by more than this factor (RFC 1951: 258 bytes per 2 bits, in
/// practice ~1032); larger declared sizes are lies meant to make us allocate.
const MAX_DEFLATE_RATIO: u64 = 1100;

// ---------------------------------------------------------------------------------------------
// Dtypes and the global allow-list
// ---------------------------------------------------------------------------------------------

/// A storage or tensor element type: its torch name, size, and tch kind when diffusiond can read
/// it (unsupported ones, e.g. uint16 or complex, are still sized so that bounds can be checked).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Dtype {
    name: &'static str,
    size: u64,
    kind: Option<Kind>,
}

const fn dt(name: &'static str, size: u64, kind: Option<Kind>) -> Dtype {
    Dtype { name, size, kind }
}

const U8: Dtype = dt("uint8", 1, Some(Kind::Uint8));

/// `torch.<Name>Storage` symbols (the legacy typed storages that torch.save still names).
fn storage_dtype(name: &str) -> Option<Dtype> {
    Some(match name {
        "DoubleStorage" => dt("float64", 8, Some(Kind::Double)),
        "FloatStorage" => dt("float32", 4, Some(Kind::Float)),
        "HalfStorage" => dt("float16", 2, Some(Kind::Half)),
        "BFloat16Storage" => dt("bfloat16", 2, Some(Kind::BFloat16)),
        "LongStorage" => dt("int64", 8, Some(Kind::Int64)),
        "IntStorage" => dt("int32", 4, Some(Kind::Int)),
        "ShortStorage" => dt("int16", 2, Some(Kind::Int16)),
        "CharStorage" => dt("int8", 1, Some(Kind::Int8)),
        "ByteStorage" => U8,
        "BoolStorage" => dt("bool", 1, Some(Kind::Bool)),
        "Float8_e4m3fnStorage" => dt("float8_e4m3fn", 1, Some(Kind::Float8e4m3fn)),
        "Float8_e5m2Storage" => dt("float8_e5m2", 1, Some(Kind::Float8e5m2)),
        "ComplexFloatStorage" => dt("complex64", 8, None),
        "ComplexDoubleStorage" => dt("complex128", 16, None),
        "QInt8Storage" => dt("qint8", 1, None),
        "QUInt8Storage" => dt("quint8", 1, None),
        "QInt32Storage" => dt("qint32", 4, None),
        "QUInt4x2Storage" => dt("quint4x2", 1, None),
        "QUInt2x4Storage" => dt("quint2x4", 1, None),
        _ => return None,
    })
}

/// `torch.<dtype>` symbols, as pickled for `_rebuild_tensor_v3` (canonical names and aliases).
fn dtype_symbol(name: &str) -> Option<Dtype> {
    Some(match name {
        "float64" | "double" => dt("float64", 8, Some(Kind::Double)),
        "float32" | "float" => dt("float32", 4, Some(Kind::Float)),
        "float16" | "half" => dt("float16", 2, Some(Kind::Half)),
        "bfloat16" => dt("bfloat16", 2, Some(Kind::BFloat16)),
        "int64" | "long" => dt("int64", 8, Some(Kind::Int64)),
        "int32" | "int" => dt("int32", 4, Some(Kind::Int)),
        "int16" | "short" => dt("int16", 2, Some(Kind::Int16)),
        "int8" => dt("int8", 1, Some(Kind::Int8)),
        "uint8" => U8,
        "bool" => dt("bool", 1, Some(Kind::Bool)),
        "float8_e4m3fn" => dt("float8_e4m3fn", 1, Some(Kind::Float8e4m3fn)),
        "float8_e5m2" => dt("float8_e5m2", 1, Some(Kind::Float8e5m2)),
        "float8_e4m3fnuz" => dt("float8_e4m3fnuz", 1, Some(Kind::Float8e4m3fnuz)),
        "float8_e5m2fnuz" => dt("float8_e5m2fnuz", 1, Some(Kind::Float8e5m2fnuz)),
        "float8_e8m0fnu" => dt("float8_e8m0fnu", 1, None),
        "uint16" => dt("uint16", 2, None),
        "uint32" => dt("uint32", 4, None),
        "uint64" => dt("uint64", 8, None),
        "complex32" | "chalf" => dt("complex32", 4, None),
        "complex64" | "cfloat" => dt("complex64", 8, None),
        "complex128" | "cdouble" => dt("complex128", 16, None),
        _ => return None,
    })
}

/// What an allow-listed global means to the evaluator.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Callable {
    /// `collections.OrderedDict`, `typing.OrderedDict`: a dict.
    OrderedDict,
    /// `builtins.set`, `__builtin__.set`: a set (kept as a list of items).
    Set,
    /// `_codecs.encode(str, "latin1")`: how protocol 2 pickles `bytes`.
    CodecsEncode,
    /// `torch._utils._rebuild_tensor` (torch 0.3), `_v2`, `_v3`: a tensor view of a storage.
    RebuildTensor { version: u8 },
    /// `torch._utils._rebuild_parameter(_with_state)`: the wrapped tensor.
    RebuildParameter,
    /// `torch._tensor._rebuild_from_type_v2(func, type, args, state)`: `func(*args)`.
    RebuildFromType,
    /// A storage type (`torch.FloatStorage`, `torch.UntypedStorage`, …): only meaningful inside
    /// a persistent id.
    Storage(Dtype),
    /// A dtype symbol (`torch.float16`): an argument of `_rebuild_tensor_v3`.
    DtypeSymbol(Dtype),
    /// `torch.nn.modules.container.ParameterDict`: opaque, but its `_parameters` hold tensors
    /// (old textual-inversion files).
    ParameterDict,
    /// Harmless data types that checkpoints carry next to the weights; calling one records its
    /// arguments in an opaque value and calls nothing.
    Inert,
}

/// The allow-list: `Some` for globals a checkpoint may reference, `None` for everything else
/// (which makes [`PickleFile::open`] fail with [`Error::ForbiddenGlobal`]).
fn classify(module: &str, name: &str) -> Option<Callable> {
    use Callable::*;
    Some(match (module, name) {
        ("collections" | "typing", "OrderedDict") => OrderedDict,
        ("builtins" | "__builtin__", "set") => Set,
        ("_codecs", "encode") => CodecsEncode,
        ("torch._utils", "_rebuild_tensor") => RebuildTensor { version: 1 },
        ("torch._utils", "_rebuild_tensor_v2") => RebuildTensor { version: 2 },
        ("torch._utils", "_rebuild_tensor_v3") => RebuildTensor { version: 3 },
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => RebuildParameter,
        ("torch._tensor", "_rebuild_from_type_v2") => RebuildFromType,
        // torch 2.x pickles untyped storages (used with `_rebuild_tensor_v3`) by this name.
        ("torch" | "torch.storage", "UntypedStorage") => Storage(U8),
        ("torch", n) if storage_dtype(n).is_some() => Storage(storage_dtype(n)?),
        ("torch", n) if dtype_symbol(n).is_some() => DtypeSymbol(dtype_symbol(n)?),
        ("torch.nn.modules.container", "ParameterDict") => ParameterDict,
        ("torch", "Size" | "device" | "Tensor")
        | ("torch._tensor", "Tensor")
        | ("torch.nn.parameter", "Parameter")
        | ("torch.storage", "TypedStorage")
        | ("torch.serialization", "_get_layout")
        | ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar" | "_reconstruct")
        | ("numpy", "dtype" | "ndarray")
        | ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint") => Inert,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------

/// Index of a value in the evaluator's arena.
type Id = u32;

/// Values every pickle uses, allocated once.
const NONE: Id = 0;
const TRUE: Id = 1;
const FALSE: Id = 2;

#[derive(Clone, Debug)]
struct Global {
    module: String,
    name: String,
    what: Callable,
}

/// A reference to (part of) one storage record.
#[derive(Clone, Debug)]
struct StorageRef {
    /// Record key (`<arch>/data/<key>` in a zip, the root key in the legacy stream).
    key: Box<str>,
    dtype: Dtype,
    /// Start of the visible range within the record, in bytes (non-zero only for legacy views).
    base: u64,
    /// Length of the visible range, in bytes.
    nbytes: u64,
}

/// A tensor: a strided view of a storage. `lo..hi` is the byte range of the record it covers
/// (validated against the storage when it is built).
#[derive(Clone, Debug)]
struct TensorRef {
    key: Box<str>,
    dtype: Dtype,
    size: Vec<i64>,
    stride: Vec<i64>,
    lo: u64,
    hi: u64,
}

/// A value of a callable that is allowed but not evaluated.
#[derive(Debug)]
struct Object {
    class: Id,
    args: Option<Id>,
    state: Option<Id>,
    items: Vec<Id>,
    entries: Vec<(Id, Id)>,
}

#[derive(Debug)]
enum Node {
    None,
    Bool(bool),
    Int(i64),
    /// Integers beyond 64 bits, little-endian two's complement (the legacy magic number).
    BigInt(Box<[u8]>),
    Float(f64),
    Str(Box<str>),
    Bytes(Box<[u8]>),
    Tuple(Box<[Id]>),
    List(Vec<Id>),
    Set(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(Box<Global>),
    Storage(Box<StorageRef>),
    Tensor(Box<TensorRef>),
    Object(Box<Object>),
}

impl Node {
    fn type_name(&self) -> &'static str {
        match self {
            Node::None => "None",
            Node::Bool(_) => "bool",
            Node::Int(_) | Node::BigInt(_) => "int",
            Node::Float(_) => "float",
            Node::Str(_) => "str",
            Node::Bytes(_) => "bytes",
            Node::Tuple(_) => "tuple",
            Node::List(_) => "list",
            Node::Set(_) => "set",
            Node::Dict(_) => "dict",
            Node::Global(_) => "global",
            Node::Storage(_) => "storage",
            Node::Tensor(_) => "tensor",
            Node::Object(_) => "object",
        }
    }
}

/// Why evaluation stopped: a global outside the allow-list, or malformed input.
#[derive(Debug)]
enum Fault {
    Forbidden(String),
    Bad(String),
}

type PResult<T> = std::result::Result<T, Fault>;

fn bad<T>(reason: impl Into<String>) -> PResult<T> {
    Err(Fault::Bad(reason.into()))
}

// ---------------------------------------------------------------------------------------------
// The evaluator
// ---------------------------------------------------------------------------------------------

/// A pickle evaluator over one byte buffer. Several pickles may follow each other in the buffer
/// (the legacy stream); [`Machine::run`] evaluates the next one and leaves `pos` after its STOP.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    limits: Limits,
    /// Persistent ids follow the legacy layout (`…, numel, view_metadata`) instead of the zip one.
    legacy: bool,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    /// Bytes charged against `limits.copied`.
    copied: usize,
    /// Every storage a persistent id described: root key → (dtype, bytes).
    storages: HashMap<Box<str>, (Dtype, u64)>,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8], legacy: bool, limits: Limits) -> Self {
        Machine {
            data,
            pos: 0,
            limits,
            legacy,
            nodes: vec![Node::None, Node::Bool(true), Node::Bool(false)],
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            copied: 0,
            storages: HashMap::new(),
        }
    }

    fn node(&self, id: Id) -> &Node {
        // Ids only come from `alloc`, so they are always in range; `None` is a safe fallback.
        self.nodes.get(id as usize).unwrap_or(&Node::None)
    }

    fn node_mut(&mut self, id: Id) -> PResult<&mut Node> {
        match self.nodes.get_mut(id as usize) {
            Some(n) => Ok(n),
            None => bad("internal: dangling value"),
        }
    }

    fn alloc(&mut self, node: Node) -> PResult<Id> {
        if self.nodes.len() >= self.limits.objects {
            return bad(format!("more than {} values", self.limits.objects));
        }
        self.nodes.push(node);
        Ok((self.nodes.len() - 1) as Id)
    }

    // --- input --------------------------------------------------------------------------------

    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let data = self.data;
        match self.pos.checked_add(n).and_then(|end| data.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => bad(format!("unexpected end of data (wanted {n} bytes)")),
        }
    }

    fn array<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn byte(&mut self) -> PResult<u8> {
        Ok(self.array::<1>()?[0])
    }

    /// A length prefix checked against the string limit before anything is allocated.
    fn length(&self, n: u64) -> PResult<usize> {
        if n > self.limits.string as u64 {
            return bad(format!("string of {n} bytes exceeds the limit of {}", self.limits.string));
        }
        Ok(n as usize)
    }

    /// A text-protocol line, without its `\n`.
    fn line(&mut self) -> PResult<&'a [u8]> {
        let data = self.data;
        let rest = data.get(self.pos..).unwrap_or(&[]);
        let window = &rest[..rest.len().min(self.limits.string.saturating_add(1))];
        match window.iter().position(|&b| b == b'\n') {
            Some(n) => {
                self.pos += n + 1;
                Ok(&rest[..n])
            }
            None => bad("unterminated text line"),
        }
    }

    fn line_str(&mut self) -> PResult<&'a str> {
        match std::str::from_utf8(self.line()?) {
            Ok(s) => Ok(s),
            Err(_) => bad("text line is not UTF-8"),
        }
    }

    // --- stack --------------------------------------------------------------------------------

    fn push(&mut self, id: Id) -> PResult<()> {
        if self.stack.len() >= self.limits.stack {
            return bad(format!("stack deeper than {}", self.limits.stack));
        }
        self.stack.push(id);
        Ok(())
    }

    fn push_new(&mut self, node: Node) -> PResult<()> {
        let id = self.alloc(node)?;
        self.push(id)
    }

    fn frame_start(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> PResult<Id> {
        if self.stack.len() <= self.frame_start() {
            return bad("stack underflow");
        }
        match self.stack.pop() {
            Some(id) => Ok(id),
            None => bad("stack underflow"),
        }
    }

    fn top(&self) -> PResult<Id> {
        if self.stack.len() <= self.frame_start() {
            return bad("stack underflow");
        }
        match self.stack.last() {
            Some(&id) => Ok(id),
            None => bad("stack underflow"),
        }
    }

    fn pop_mark(&mut self) -> PResult<Vec<Id>> {
        match self.marks.pop() {
            Some(mark) => Ok(self.stack.split_off(mark.min(self.stack.len()))),
            None => bad("no MARK on the stack"),
        }
    }

    fn memo_put(&mut self, key: u64) -> PResult<()> {
        let id = self.top()?;
        if self.memo.len() >= self.limits.memo && !self.memo.contains_key(&key) {
            return bad(format!("memo larger than {}", self.limits.memo));
        }
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> PResult<()> {
        match self.memo.get(&key) {
            Some(&id) => self.push(id),
            None => bad(format!("memo key {key} was never stored")),
        }
    }

    // --- running ------------------------------------------------------------------------------

    /// Evaluates one pickle starting at `pos`; returns its value and leaves `pos` after STOP.
    fn run(&mut self) -> PResult<Id> {
        self.stack.clear();
        self.marks.clear();
        self.memo.clear();
        loop {
            let at = self.pos;
            let op = match self.data.get(at) {
                Some(&op) => op,
                None => return bad("pickle ends without STOP"),
            };
            self.pos += 1;
            match self.step(op) {
                Ok(Some(result)) => return Ok(result),
                Ok(None) => {}
                Err(Fault::Bad(reason)) => {
                    return Err(Fault::Bad(format!("{reason} (opcode 0x{op:02x} at byte {at})")))
                }
                Err(forbidden) => return Err(forbidden),
            }
        }
    }

    /// Executes one opcode; `Some` at STOP.
    fn step(&mut self, op: u8) -> PResult<Option<Id>> {
        match op {
            // Header and framing. Frames only group opcodes for buffered reading; the opcodes
            // inside are read as if there were no frame.
            0x80 => {
                let proto = self.byte()?;
                if proto > 5 {
                    return bad(format!("unsupported pickle protocol {proto}"));
                }
            }
            0x95 => {
                let n = u64::from_le_bytes(self.array()?);
                if n > (self.data.len() - self.pos) as u64 {
                    return bad("FRAME longer than the data");
                }
            }
            b'.' => return Ok(Some(self.pop()?)),

            // Stack control.
            b'(' => {
                if self.marks.len() >= self.limits.marks {
                    return bad(format!("more than {} nested MARKs", self.limits.marks));
                }
                self.marks.push(self.stack.len());
            }
            b'0' => {
                if self.stack.len() > self.frame_start() {
                    self.stack.pop();
                } else {
                    self.pop_mark()?;
                }
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let top = self.top()?;
                self.push(top)?;
            }

            // Containers.
            b'}' => self.push_new(Node::Dict(Vec::new()))?,
            b']' => self.push_new(Node::List(Vec::new()))?,
            b')' => self.push_new(Node::Tuple(Box::new([])))?,
            0x8f => self.push_new(Node::Set(Vec::new()))?,
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = pairs(&items)?;
                self.push_new(Node::Dict(pairs))?;
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.push_new(Node::List(items))?;
            }
            b't' => {
                let items = self.pop_mark()?;
                self.push_new(Node::Tuple(items.into()))?;
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < self.frame_start() + n {
                    return bad("stack underflow");
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push_new(Node::Tuple(items.into()))?;
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.push_new(Node::Set(items))?;
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                let target = self.top()?;
                self.set_items(target, vec![(key, value)])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                self.set_items(target, pairs(&items)?)?;
            }
            b'a' => {
                let value = self.pop()?;
                let target = self.top()?;
                self.append_items(target, vec![value], false)?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                self.append_items(target, items, false)?;
            }
            0x90 => {
                let items = self.pop_mark()?;
                let target = self.top()?;
                self.append_items(target, items, true)?;
            }

            // Integers.
            b'J' => {
                let v = i32::from_le_bytes(self.array()?);
                self.push_new(Node::Int(v as i64))?;
            }
            b'K' => {
                let v = self.byte()?;
                self.push_new(Node::Int(v as i64))?;
            }
            b'M' => {
                let v = u16::from_le_bytes(self.array()?);
                self.push_new(Node::Int(v as i64))?;
            }
            0x8a => {
                let n = self.byte()? as usize;
                let bytes = self.take(n)?;
                self.push_long(bytes)?;
            }
            0x8b => {
                let n = i32::from_le_bytes(self.array()?);
                if n < 0 || n as usize > MAX_LONG_BYTES {
                    return bad(format!("LONG4 of {n} bytes"));
                }
                let bytes = self.take(n as usize)?;
                self.push_long(bytes)?;
            }
            b'I' => {
                let text = self.line_str()?.trim();
                match text {
                    // Protocol 0 spells booleans as INT with these exact digits.
                    "01" => self.push(TRUE)?,
                    "00" => self.push(FALSE)?,
                    _ => self.push_decimal(text)?,
                }
            }
            b'L' => {
                let text = self.line_str()?.trim();
                self.push_decimal(text.strip_suffix('L').unwrap_or(text))?;
            }

            // Floats and constants.
            b'G' => {
                let v = f64::from_be_bytes(self.array()?);
                self.push_new(Node::Float(v))?;
            }
            b'F' => {
                let text = self.line_str()?.trim();
                match text.parse::<f64>() {
                    Ok(f) => self.push_new(Node::Float(f))?,
                    Err(_) => return bad(format!("bad FLOAT `{text}`")),
                }
            }
            b'N' => self.push(NONE)?,
            0x88 => self.push(TRUE)?,
            0x89 => self.push(FALSE)?,

            // Strings and bytes. Python-2 `str` opcodes (T, U, S) are decoded as UTF-8, as
            // torch.load does (`encoding="utf-8"`); invalid sequences are replaced rather than
            // refused, since they only ever occur in metadata.
            b'X' => {
                let raw = u32::from_le_bytes(self.array()?) as u64;
                let n = self.length(raw)?;
                self.push_str(n)?;
            }
            0x8c => {
                let n = self.byte()? as usize;
                self.push_str(n)?;
            }
            0x8d => {
                let raw = u64::from_le_bytes(self.array()?);
                let n = self.length(raw)?;
                self.push_str(n)?;
            }
            b'T' => {
                let n = i32::from_le_bytes(self.array()?);
                if n < 0 {
                    return bad("negative BINSTRING length");
                }
                let n = self.length(n as u64)?;
                self.push_str(n)?;
            }
            b'U' => {
                let n = self.byte()? as usize;
                self.push_str(n)?;
            }
            b'V' => {
                let text = decode_raw_unicode_escape(self.line()?);
                self.push_new(Node::Str(text.into()))?;
            }
            b'S' => {
                let bytes = decode_string_literal(self.line()?)?;
                self.push_new(Node::Str(String::from_utf8_lossy(&bytes).into()))?;
            }
            b'B' => {
                let raw = u32::from_le_bytes(self.array()?) as u64;
                let n = self.length(raw)?;
                self.push_bytes(n)?;
            }
            b'C' => {
                let n = self.byte()? as usize;
                self.push_bytes(n)?;
            }
            0x8e | 0x96 => {
                let raw = u64::from_le_bytes(self.array()?);
                let n = self.length(raw)?;
                self.push_bytes(n)?;
            }

            // Memo.
            b'q' => {
                let key = self.byte()? as u64;
                self.memo_put(key)?;
            }
            b'r' => {
                let key = u32::from_le_bytes(self.array()?) as u64;
                self.memo_put(key)?;
            }
            b'p' => {
                let key = parse_memo_key(self.line_str()?)?;
                self.memo_put(key)?;
            }
            0x94 => {
                let key = self.memo.len() as u64;
                self.memo_put(key)?;
            }
            b'h' => {
                let key = self.byte()? as u64;
                self.memo_get(key)?;
            }
            b'j' => {
                let key = u32::from_le_bytes(self.array()?) as u64;
                self.memo_get(key)?;
            }
            b'g' => {
                let key = parse_memo_key(self.line_str()?)?;
                self.memo_get(key)?;
            }

            // Globals: a symbol, never an import.
            b'c' => {
                let module = self.line_str()?;
                let name = self.line_str()?;
                let id = self.global(module, name)?;
                self.push(id)?;
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Node::Str(module), Node::Str(name)) = (self.node(module), self.node(name)) else {
                    return bad("STACK_GLOBAL operands are not strings");
                };
                let (module, name) = (module.to_string(), name.to_string());
                let id = self.global(&module, &name)?;
                self.push(id)?;
            }

            // Object construction: only allow-listed callables, evaluated as data.
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let result = self.call(callable, args, 0)?;
                self.push(result)?;
            }
            0x81 => {
                let args = self.pop()?;
                let class = self.pop()?;
                let result = self.new_object(class, args)?;
                self.push(result)?;
            }
            0x92 => {
                let kwargs = self.pop()?;
                let args = self.pop()?;
                let class = self.pop()?;
                if !matches!(self.node(kwargs), Node::Dict(_)) {
                    return bad("NEWOBJ_EX keyword arguments are not a dict");
                }
                let result = self.new_object(class, args)?;
                self.push(result)?;
            }
            b'i' => {
                let module = self.line_str()?;
                let name = self.line_str()?;
                let class = self.global(module, name)?;
                let items = self.pop_mark()?;
                let args = self.alloc(Node::Tuple(items.into()))?;
                let result = self.call(class, args, 0)?;
                self.push(result)?;
            }
            b'o' => {
                let items = self.pop_mark()?;
                let Some((&class, rest)) = items.split_first() else {
                    return bad("OBJ without a class");
                };
                let args = self.alloc(Node::Tuple(rest.into()))?;
                let result = self.call(class, args, 0)?;
                self.push(result)?;
            }
            b'b' => {
                let state = self.pop()?;
                let target = self.top()?;
                self.build(target, state)?;
            }

            // Persistent ids: storages.
            b'Q' => {
                let pid = self.pop()?;
                let storage = self.persistent_load(pid)?;
                self.push(storage)?;
            }
            b'P' => return bad("text persistent ids (PERSID) are not torch storages"),

            0x82..=0x84 => return bad("the extension registry (EXT1/EXT2/EXT4) is not supported"),
            0x97 | 0x98 => return bad("out-of-band buffers (protocol 5) are not supported"),
            _ => return bad("unknown opcode"),
        }
        Ok(None)
    }

    fn push_str(&mut self, n: usize) -> PResult<()> {
        let bytes = self.take(n)?;
        self.push_new(Node::Str(String::from_utf8_lossy(bytes).into()))
    }

    fn push_bytes(&mut self, n: usize) -> PResult<()> {
        let bytes = self.take(n)?;
        self.push_new(Node::Bytes(bytes.into()))
    }

    /// LONG1/LONG4 payload: little-endian two's complement of any length.
    fn push_long(&mut self, bytes: &[u8]) -> PResult<()> {
        let node = match long_to_i64(bytes) {
            Some(v) => Node::Int(v),
            None => Node::BigInt(bytes.into()),
        };
        self.push_new(node)
    }

    fn push_decimal(&mut self, text: &str) -> PResult<()> {
        if let Ok(v) = text.parse::<i64>() {
            return self.push_new(Node::Int(v));
        }
        match text.parse::<i128>() {
            Ok(v) => {
                // Minimal two's complement, as LONG1 would carry it.
                let bytes = v.to_le_bytes();
                let fill = if v < 0 { 0xff } else { 0 };
                let mut n = bytes.len();
                while n > 1 && bytes[n - 1] == fill && (bytes[n - 2] & 0x80 != 0) == (v < 0) {
                    n -= 1;
                }
                self.push_long(&bytes[..n])
            }
            Err(_) => bad(format!("bad integer `{}`", text.chars().take(40).collect::<String>())),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> PResult<Id> {
        match classify(module, name) {
            Some(what) => {
                self.alloc(Node::Global(Box::new(Global { module: module.into(), name: name.into(), what })))
            }
            None => Err(Fault::Forbidden(format!("{module}.{name}"))),
        }
    }

    fn set_items(&mut self, target: Id, new: Vec<(Id, Id)>) -> PResult<()> {
        match self.node_mut(target)? {
            Node::Dict(entries) => entries.extend(new),
            Node::Object(o) => o.entries.extend(new),
            other => return bad(format!("SETITEM on a {}", other.type_name())),
        }
        Ok(())
    }

    fn append_items(&mut self, target: Id, new: Vec<Id>, to_set: bool) -> PResult<()> {
        match self.node_mut(target)? {
            Node::Set(items) => items.extend(new),
            Node::List(items) if !to_set => items.extend(new),
            Node::Object(o) => o.items.extend(new),
            other => return bad(format!("APPEND/ADDITEMS on a {}", other.type_name())),
        }
        Ok(())
    }

    /// BUILD: records the state of opaque objects; containers and tensors ignore it (an
    /// OrderedDict's state is attributes such as `_metadata`).
    fn build(&mut self, target: Id, state: Id) -> PResult<()> {
        match self.node_mut(target)? {
            Node::Object(o) => o.state = Some(state),
            Node::Dict(_) | Node::List(_) | Node::Set(_) | Node::Tensor(_) | Node::Storage(_) => {}
            other => return bad(format!("BUILD on a {}", other.type_name())),
        }
        Ok(())
    }

    /// What the global `id` stands for.
    fn callable(&self, id: Id) -> PResult<Callable> {
        match self.node(id) {
            Node::Global(g) => Ok(g.what),
            other => bad(format!("call of a {}, not of a global", other.type_name())),
        }
    }

    /// `module.name` of a global, for error messages.
    fn global_name(&self, id: Id) -> String {
        match self.node(id) {
            Node::Global(g) => format!("{}.{}", g.module, g.name),
            other => other.type_name().to_string(),
        }
    }

    fn arity(&self, callable: Id, n: usize, ok: bool) -> PResult<()> {
        if ok {
            Ok(())
        } else {
            bad(format!("{} with {n} arguments", self.global_name(callable)))
        }
    }

    /// The items of a tuple of at most `max` items; longer ones are refused before copying.
    fn small_tuple(&self, id: Id, max: usize, what: &str) -> PResult<Vec<Id>> {
        match self.node(id) {
            Node::Tuple(items) if items.len() <= max => Ok(items.to_vec()),
            Node::Tuple(items) => bad(format!("{what} has {} items", items.len())),
            other => bad(format!("{what} is a {}, not a tuple", other.type_name())),
        }
    }

    /// The items of a list, set or tuple.
    fn sequence(&self, id: Id) -> Option<&[Id]> {
        match self.node(id) {
            Node::List(items) | Node::Set(items) => Some(items),
            Node::Tuple(items) => Some(items),
            _ => None,
        }
    }

    /// Accounts for a value about to be built by copying `bytes` of other values.
    fn charge(&mut self, bytes: usize) -> PResult<()> {
        self.copied = self.copied.saturating_add(bytes);
        if self.copied > self.limits.copied {
            return bad(format!("values copied by calls exceed {} bytes", self.limits.copied));
        }
        Ok(())
    }

    /// REDUCE, INST and OBJ: `callable(*args)` for allow-listed callables, as data.
    fn call(&mut self, callable: Id, args: Id, depth: usize) -> PResult<Id> {
        let what = self.callable(callable)?;
        if !matches!(self.node(args), Node::Tuple(_)) {
            return bad(format!("call arguments are a {}, not a tuple", self.node(args).type_name()));
        }
        if matches!(what, Callable::ParameterDict | Callable::Inert) {
            // Recorded, never looked into: no copy, whatever the size of the arguments.
            return self.opaque(callable, args);
        }
        let argv = self.small_tuple(args, 8, "call arguments")?;
        let n = argv.len();
        match what {
            Callable::OrderedDict => {
                self.arity(callable, n, n <= 1)?;
                let entries = match argv.first() {
                    None => Vec::new(),
                    Some(&init) => self.dict_init(init)?,
                };
                self.alloc(Node::Dict(entries))
            }
            Callable::Set => {
                self.arity(callable, n, n <= 1)?;
                let items = match argv.first() {
                    None => Vec::new(),
                    Some(&init) => {
                        let Some(len) = self.sequence(init).map(<[Id]>::len) else {
                            return bad(format!("set() of a {}", self.node(init).type_name()));
                        };
                        self.charge(len * std::mem::size_of::<Id>())?;
                        self.sequence(init).map(<[Id]>::to_vec).unwrap_or_default()
                    }
                };
                self.alloc(Node::Set(items))
            }
            Callable::CodecsEncode => {
                self.arity(callable, n, (1..=3).contains(&n))?;
                let len = match self.node(argv[0]) {
                    Node::Str(s) => s.len(),
                    other => return bad(format!("_codecs.encode of a {}", other.type_name())),
                };
                self.charge(len)?;
                let text = match self.node(argv[0]) {
                    Node::Str(s) => s.to_string(),
                    _ => String::new(),
                };
                let encoding = match argv.get(1).map(|&a| self.node(a)) {
                    None => "utf-8".to_string(),
                    Some(Node::Str(e)) => e.to_ascii_lowercase(),
                    Some(other) => return bad(format!("_codecs.encode encoding is a {}", other.type_name())),
                };
                match encoding.as_str() {
                    "latin1" | "latin-1" | "iso-8859-1" | "iso8859-1" | "l1" => {
                        let mut bytes = Vec::with_capacity(text.len());
                        for c in text.chars() {
                            match u8::try_from(c as u32) {
                                Ok(b) => bytes.push(b),
                                Err(_) => return bad("_codecs.encode: character outside latin-1"),
                            }
                        }
                        self.alloc(Node::Bytes(bytes.into()))
                    }
                    "utf-8" | "utf8" => self.alloc(Node::Bytes(text.into_bytes().into())),
                    _ => self.opaque(callable, args),
                }
            }
            Callable::RebuildTensor { version } => {
                let (min, max) = match version {
                    1 => (4, 4),
                    2 => (6, 7),
                    _ => (7, 8),
                };
                self.arity(callable, n, (min..=max).contains(&n))?;
                let dtype = match version {
                    3 => match self.node(argv[6]) {
                        Node::Global(g) => match g.what {
                            Callable::DtypeSymbol(d) => Some(d),
                            _ => return bad(format!("_rebuild_tensor_v3 dtype is {}.{}", g.module, g.name)),
                        },
                        other => return bad(format!("_rebuild_tensor_v3 dtype is a {}", other.type_name())),
                    },
                    _ => None,
                };
                let tensor = self.tensor(argv[0], argv[1], argv[2], argv[3], dtype)?;
                self.alloc(Node::Tensor(Box::new(tensor)))
            }
            Callable::RebuildParameter => {
                self.arity(callable, n, (3..=4).contains(&n))?;
                // A Parameter is its data as far as loading weights is concerned.
                Ok(argv[0])
            }
            Callable::RebuildFromType => {
                self.arity(callable, n, n == 4)?;
                if depth >= self.limits.call_depth {
                    return bad("_rebuild_from_type_v2 nested too deeply");
                }
                // `func(*args)`; the subclass (`new_type`) and its Python state are dropped.
                if matches!(self.node(argv[0]), Node::Global(_)) {
                    self.call(argv[0], argv[2], depth + 1)
                } else {
                    self.opaque(callable, args)
                }
            }
            Callable::Storage(_) | Callable::DtypeSymbol(_) => {
                bad(format!("{} is not callable in a checkpoint", self.global_name(callable)))
            }
            Callable::ParameterDict | Callable::Inert => self.opaque(callable, args),
        }
    }

    /// NEWOBJ: `class.__new__(class, *args)`, for classes only.
    fn new_object(&mut self, class: Id, args: Id) -> PResult<Id> {
        let what = self.callable(class)?;
        if !matches!(self.node(args), Node::Tuple(_)) {
            return bad(format!("NEWOBJ arguments are a {}, not a tuple", self.node(args).type_name()));
        }
        match what {
            Callable::OrderedDict => self.alloc(Node::Dict(Vec::new())),
            Callable::Set => self.alloc(Node::Set(Vec::new())),
            Callable::ParameterDict | Callable::Inert => self.opaque(class, args),
            _ => bad(format!("NEWOBJ of {}, which is not a class", self.global_name(class))),
        }
    }

    fn opaque(&mut self, class: Id, args: Id) -> PResult<Id> {
        self.alloc(Node::Object(Box::new(Object {
            class,
            args: Some(args),
            state: None,
            items: Vec::new(),
            entries: Vec::new(),
        })))
    }

    /// Entries for `OrderedDict(init)`: a dict, or a sequence of key/value pairs.
    fn dict_init(&mut self, init: Id) -> PResult<Vec<(Id, Id)>> {
        let len = match (self.node(init), self.sequence(init)) {
            (Node::Dict(entries), _) => entries.len(),
            (_, Some(items)) => items.len(),
            (other, None) => return bad(format!("OrderedDict of a {}", other.type_name())),
        };
        self.charge(len * 2 * std::mem::size_of::<Id>())?;
        if let Node::Dict(entries) = self.node(init) {
            return Ok(entries.clone());
        }
        let mut entries = Vec::with_capacity(len);
        for &item in self.sequence(init).unwrap_or(&[]) {
            match self.sequence(item) {
                Some(&[k, v]) if !matches!(self.node(item), Node::Set(_)) => entries.push((k, v)),
                _ => return bad("OrderedDict item is not a pair"),
            }
        }
        Ok(entries)
    }

    fn int(&self, id: Id, what: &str) -> PResult<i64> {
        match self.node(id) {
            Node::Int(v) => Ok(*v),
            Node::Bool(b) => Ok(*b as i64),
            other => bad(format!("{what} is a {}, not an int", other.type_name())),
        }
    }

    fn uint(&self, id: Id, what: &str) -> PResult<u64> {
        let v = self.int(id, what)?;
        u64::try_from(v).or_else(|_| bad(format!("{what} is negative ({v})")))
    }

    fn ints(&self, id: Id, what: &str) -> PResult<Vec<i64>> {
        let items: &[Id] = match self.node(id) {
            Node::Tuple(items) => items,
            Node::List(items) => items,
            other => return bad(format!("{what} is a {}, not a tuple", other.type_name())),
        };
        if items.len() > MAX_DIMS {
            return bad(format!("{what} has {} dimensions", items.len()));
        }
        items
            .iter()
            .map(|&i| {
                let v = self.int(i, what)?;
                if v < 0 {
                    return bad(format!("{what} has a negative entry ({v})"));
                }
                Ok(v)
            })
            .collect()
    }

    /// A short string from a str or bytes value (persistent-id fields; keys may also be ints).
    fn text(&self, id: Id, what: &str) -> PResult<String> {
        match self.node(id) {
            Node::Str(s) => Ok(s.to_string()),
            Node::Bytes(b) => Ok(String::from_utf8_lossy(b).into_owned()),
            Node::Int(v) => Ok(v.to_string()),
            other => bad(format!("{what} is a {}, not a string", other.type_name())),
        }
    }

    /// `("storage", storage_type, key, location, numel[, view_metadata])` → a storage reference.
    fn persistent_load(&mut self, pid: Id) -> PResult<Id> {
        let fields = self.small_tuple(pid, 6, "persistent id")?;
        let Some(&tag) = fields.first() else {
            return bad("empty persistent id");
        };
        let tag = self.text(tag, "persistent id tag")?;
        if tag != "storage" {
            // Legacy files of whole pickled nn.Modules use ("module", …).
            return bad(format!("persistent id `{tag}` (only tensor storages are supported)"));
        }
        let want = if self.legacy { 6 } else { 5 };
        if fields.len() != want {
            return bad(format!("storage persistent id with {} fields, expected {want}", fields.len()));
        }
        let dtype = match self.node(fields[1]) {
            Node::Global(g) => match g.what {
                Callable::Storage(d) => d,
                _ => return bad(format!("storage type {}.{} is not a storage", g.module, g.name)),
            },
            other => return bad(format!("storage type is a {}", other.type_name())),
        };
        let key: Box<str> = self.text(fields[2], "storage key")?.into();
        let numel = self.uint(fields[4], "storage size")?;
        let Some(nbytes) = numel.checked_mul(dtype.size) else {
            return bad("storage size overflows");
        };
        match self.storages.get(&key) {
            Some(&(d, n)) if d.name != dtype.name || n != nbytes => {
                return bad(format!("storage `{key}` is described twice, differently"));
            }
            Some(_) => {}
            None => {
                self.storages.insert(key.clone(), (dtype, nbytes));
            }
        }
        // Pre-1.0 torch could save views of a storage: (view_key, offset, size) in elements.
        let (base, visible) = match fields.get(5).map(|&v| (v, self.node(v))) {
            None | Some((_, Node::None)) => (0, nbytes),
            Some((view, _)) => {
                let view = self.small_tuple(view, 3, "storage view")?;
                if view.len() != 3 {
                    return bad("storage view metadata is not (key, offset, size)");
                }
                let offset = self.uint(view[1], "storage view offset")?;
                let size = self.uint(view[2], "storage view size")?;
                match offset.checked_add(size) {
                    Some(end) if end <= numel => (offset * dtype.size, size * dtype.size),
                    _ => return bad(format!("view of storage `{key}` runs past its end")),
                }
            }
        };
        self.alloc(Node::Storage(Box::new(StorageRef { key, dtype, base, nbytes: visible })))
    }

    /// `_rebuild_tensor*(storage, offset, size, stride, …)`: a bounds-checked strided view.
    fn tensor(
        &self,
        storage: Id,
        offset: Id,
        size: Id,
        stride: Id,
        dtype: Option<Dtype>,
    ) -> PResult<TensorRef> {
        let storage = match self.node(storage) {
            Node::Storage(s) => (**s).clone(),
            other => return bad(format!("tensor storage is a {}", other.type_name())),
        };
        let offset = self.uint(offset, "tensor offset")?;
        let size = self.ints(size, "tensor size")?;
        let stride = self.ints(stride, "tensor stride")?;
        if size.len() != stride.len() {
            return bad(format!("tensor size {size:?} and stride {stride:?} differ in rank"));
        }
        // `_rebuild_tensor_v3` views an untyped (byte) storage as `dtype`; older versions use
        // the storage's own dtype.
        let dtype = dtype.unwrap_or(storage.dtype);
        let overflow = || bad(format!("tensor size {size:?} / stride {stride:?} overflows"));
        let mut numel: u64 = 1;
        let mut last = offset as u128;
        for (&n, &s) in size.iter().zip(&stride) {
            numel = match numel.checked_mul(n as u64) {
                Some(v) if v <= i64::MAX as u64 => v,
                _ => return overflow(),
            };
            if n > 0 {
                match (n as u128 - 1).checked_mul(s as u128).and_then(|d| last.checked_add(d)) {
                    Some(v) => last = v,
                    None => return overflow(),
                }
            }
        }
        let el = dtype.size as u128;
        let (lo, hi) = if numel == 0 {
            (0, 0)
        } else {
            // Elements offset ..= last must lie in the storage: offset + Σ(size−1)·stride < numel.
            let Some(end) = last.checked_add(1).and_then(|e| e.checked_mul(el)) else {
                return overflow();
            };
            let lo = storage.base as u128 + offset as u128 * el;
            let hi = storage.base as u128 + end;
            if end > storage.nbytes as u128 {
                return bad(format!(
                    "tensor (offset {offset}, size {size:?}, stride {stride:?}) runs past the end of \
                     storage `{}` ({} bytes of {})",
                    storage.key, storage.nbytes, dtype.name
                ));
            }
            match (u64::try_from(lo), u64::try_from(hi)) {
                (Ok(lo), Ok(hi)) => (lo, hi),
                _ => return overflow(),
            }
        };
        Ok(TensorRef { key: storage.key, dtype, size, stride, lo, hi })
    }

    /// A Python-like rendering of a value, for tests and error messages (abbreviated: long
    /// containers and strings are cut, deep nesting is elided).
    fn render(&self, id: Id, depth: usize) -> String {
        const WIDTH: usize = 16;
        if depth > 16 {
            return "…".into();
        }
        let list = |items: &[Id]| {
            let mut parts: Vec<String> =
                items.iter().take(WIDTH).map(|&i| self.render(i, depth + 1)).collect();
            if items.len() > WIDTH {
                parts.push("…".into());
            }
            parts.join(", ")
        };
        match self.node(id) {
            Node::None => "None".into(),
            Node::Bool(true) => "True".into(),
            Node::Bool(false) => "False".into(),
            Node::Int(v) => v.to_string(),
            Node::BigInt(b) => {
                format!("long(0x{})", b.iter().rev().map(|x| format!("{x:02x}")).collect::<String>())
            }
            Node::Float(f) => format!("{f:?}"),
            Node::Str(s) if s.chars().count() > 80 => {
                format!("{:?}…", s.chars().take(80).collect::<String>())
            }
            Node::Str(s) => format!("{s:?}"),
            Node::Bytes(b) => format!("b{:?}", String::from_utf8_lossy(&b[..b.len().min(80)])),
            Node::Tuple(items) if items.len() == 1 => format!("({},)", list(items)),
            Node::Tuple(items) => format!("({})", list(items)),
            Node::List(items) => format!("[{}]", list(items)),
            Node::Set(items) => format!("set[{}]", list(items)),
            Node::Dict(entries) => format!(
                "{{{}}}",
                entries
                    .iter()
                    .take(WIDTH)
                    .map(|&(k, v)| format!("{}: {}", self.render(k, depth + 1), self.render(v, depth + 1)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Node::Global(g) => format!("{}.{}", g.module, g.name),
            Node::Storage(s) => format!("storage({}, {}, {}+{})", s.key, s.dtype.name, s.base, s.nbytes),
            Node::Tensor(t) => format!(
                "tensor({}, {}, {:?}, {:?}, {}..{})",
                t.key, t.dtype.name, t.size, t.stride, t.lo, t.hi
            ),
            Node::Object(o) => format!(
                "object({}, {}, {})",
                self.render(o.class, depth + 1),
                o.args.map_or("-".into(), |a| self.render(a, depth + 1)),
                o.state.map_or("-".into(), |s| self.render(s, depth + 1)),
            ),
        }
    }
}

/// Pairs up MARK items for DICT and SETITEMS.
fn pairs(items: &[Id]) -> PResult<Vec<(Id, Id)>> {
    if !items.len().is_multiple_of(2) {
        return bad("odd number of items for a dict");
    }
    Ok(items.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect())
}

/// Little-endian two's complement bytes → i64 when the value fits.
fn long_to_i64(bytes: &[u8]) -> Option<i64> {
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let fill = if negative { 0xff } else { 0 };
    if bytes.len() > 8 {
        // Longer encodings are accepted only if the extra bytes are pure sign extension.
        let (low, high) = bytes.split_at(8);
        if high.iter().any(|&b| b != fill) || (low[7] & 0x80 != 0) != negative {
            return None;
        }
        return long_to_i64(low);
    }
    let mut buf = [fill; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    Some(i64::from_le_bytes(buf))
}

fn parse_memo_key(text: &str) -> PResult<u64> {
    text.trim()
        .parse::<u64>()
        .or_else(|_| bad(format!("bad memo key `{}`", text.chars().take(40).collect::<String>())))
}

/// Protocol 0 UNICODE: latin-1 bytes with `\uXXXX` / `\UXXXXXXXX` escapes (`raw-unicode-escape`).
fn decode_raw_unicode_escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() && (bytes[i + 1] == b'u' || bytes[i + 1] == b'U') {
            let n = if bytes[i + 1] == b'u' { 4 } else { 8 };
            let digits = bytes.get(i + 2..i + 2 + n).and_then(|d| std::str::from_utf8(d).ok());
            if let Some(c) = digits.and_then(|d| u32::from_str_radix(d, 16).ok()).and_then(char::from_u32) {
                out.push(c);
                i += 2 + n;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// Protocol 0 STRING: a quoted Python 2 `repr`, decoded like `codecs.escape_decode`.
fn decode_string_literal(line: &[u8]) -> PResult<Vec<u8>> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = match line {
        [q, inner @ .., q2] if (*q == b'\'' || *q == b'"') && q == q2 => inner,
        _ => return bad("STRING is not quoted"),
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let b = inner[i];
        i += 1;
        if b != b'\\' || i >= inner.len() {
            out.push(b);
            continue;
        }
        let e = inner[i];
        i += 1;
        match e {
            b'\n' => {}
            b'\\' | b'\'' | b'"' => out.push(e),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'x' => {
                let hex = inner.get(i..i + 2).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => return bad("bad \\x escape in STRING"),
                }
            }
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                for _ in 0..2 {
                    match inner.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            _ => {
                out.push(b'\\');
                out.push(e);
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Collecting tensors from the object graph
// ---------------------------------------------------------------------------------------------

/// Walks the unpickled object and returns `name → tensor`, flattening nested dicts with `.`.
fn collect_tensors(m: &Machine, root: Id) -> PResult<HashMap<String, TensorRef>> {
    let mut root = root;
    let mut skip_state_dict = false;
    // Lightning / A1111: the weights are under `state_dict`; A1111 then drops a second nested
    // `state_dict` key. If that nested one is the only key, it is the real state dict: unwrap it.
    if let Some(inner) = dict_get(m, root, "state_dict").filter(|&i| is_dict(m, i)) {
        root = inner;
        skip_state_dict = true;
        if let Node::Dict(entries) = m.node(root) {
            if entries.len() == 1 {
                if let Some(inner) = dict_get(m, root, "state_dict").filter(|&i| is_dict(m, i)) {
                    root = inner;
                }
            }
        }
    }
    let root_is_container = match m.node(root) {
        Node::Dict(_) => true,
        Node::Object(o) => is_parameter_dict(m, o),
        _ => false,
    };
    if !root_is_container {
        return bad(format!("the pickled object is a {}, not a dict of tensors", m.node(root).type_name()));
    }
    let mut out = HashMap::new();
    let mut seen = HashSet::new();
    walk(m, root, "", 0, skip_state_dict, &mut seen, &mut out);
    Ok(out)
}

fn walk(
    m: &Machine,
    id: Id,
    prefix: &str,
    depth: usize,
    skip_state_dict: bool,
    seen: &mut HashSet<Id>,
    out: &mut HashMap<String, TensorRef>,
) {
    match m.node(id) {
        Node::Tensor(t) => {
            // A later duplicate key wins, as it would in a Python dict.
            out.insert(prefix.to_string(), (**t).clone());
        }
        // Each container is expanded once: shared or cyclic references cannot blow up the walk.
        Node::Dict(entries) if depth < MAX_NESTING && seen.insert(id) => {
            for &(k, v) in entries {
                let key = match m.node(k) {
                    Node::Str(s) => s.to_string(),
                    Node::Int(i) => i.to_string(),
                    Node::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                    _ => continue,
                };
                if skip_state_dict && key == "state_dict" {
                    continue;
                }
                let name = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
                walk(m, v, &name, depth + 1, false, seen, out);
            }
        }
        // ParameterDict (old textual inversion): the tensors are in `state["_parameters"]`,
        // named by the dict keys alone.
        Node::Object(o) if depth < MAX_NESTING && is_parameter_dict(m, o) && seen.insert(id) => {
            let state = match o.state.map(|s| (s, m.node(s))) {
                Some((_, Node::Tuple(parts))) => parts.first().copied(),
                Some((s, _)) => Some(s),
                None => None,
            };
            if let Some(params) = state.and_then(|s| dict_get(m, s, "_parameters")) {
                if let Node::Dict(_) = m.node(params) {
                    walk(m, params, prefix, depth + 1, false, seen, out);
                }
            }
        }
        _ => {}
    }
}

fn is_parameter_dict(m: &Machine, o: &Object) -> bool {
    matches!(m.node(o.class), Node::Global(g) if g.what == Callable::ParameterDict)
}

fn is_dict(m: &Machine, id: Id) -> bool {
    matches!(m.node(id), Node::Dict(_))
}

/// `dict[key]` for a string key (the last entry wins, as in Python).
fn dict_get(m: &Machine, dict: Id, key: &str) -> Option<Id> {
    match m.node(dict) {
        Node::Dict(entries) => entries
            .iter()
            .rev()
            .find(|&&(k, _)| matches!(m.node(k), Node::Str(s) if &**s == key))
            .map(|&(_, v)| v),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Containers
// ---------------------------------------------------------------------------------------------

/// Where a storage's bytes are in the file.
#[derive(Clone, Copy, Debug)]
enum Record {
    /// `len` bytes at `start`, usable in place.
    Stored { start: usize, len: u64 },
    /// A raw deflate stream of `compressed` bytes at `start`, inflating to `len` bytes.
    Deflated { start: usize, compressed: usize, len: u64 },
}

impl Record {
    fn len(&self) -> u64 {
        match *self {
            Record::Stored { len, .. } | Record::Deflated { len, .. } => len,
        }
    }

    /// The first `upto` bytes of the record (`upto ≤ len`): borrowed from the map when stored,
    /// inflated when deflated.
    fn bytes<'m>(&self, map: &'m [u8], upto: u64) -> std::result::Result<Cow<'m, [u8]>, String> {
        if upto > self.len() {
            return Err(format!("read of {upto} bytes from a record of {}", self.len()));
        }
        match *self {
            Record::Stored { start, .. } => {
                let end = start.checked_add(upto as usize);
                match end.and_then(|end| map.get(start..end)) {
                    Some(s) => Ok(Cow::Borrowed(s)),
                    None => Err("record runs past the end of the file".into()),
                }
            }
            Record::Deflated { start, compressed, .. } => {
                let Some(raw) = start.checked_add(compressed).and_then(|end| map.get(start..end)) else {
                    return Err("record runs past the end of the file".into());
                };
                let mut out = Vec::new();
                flate2::read::DeflateDecoder::new(raw)
                    .take(upto)
                    .read_to_end(&mut out)
                    .map_err(|e| format!("corrupt deflate stream: {e}"))?;
                if out.len() as u64 != upto {
                    return Err(format!("deflate stream ends after {} of {upto} bytes", out.len()));
                }
                Ok(Cow::Owned(out))
            }
        }
    }
}

/// What opening a container yields besides the map itself.
struct Parsed {
    big_endian: bool,
    records: HashMap<String, Record>,
    tensors: HashMap<String, TensorRef>,
}

/// The bytes of the legacy magic number `0x1950a86a20f9469cfc6c`, as LONG1 stores them.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// Protocol of the legacy stream's second pickle.
const LEGACY_PROTOCOL: i64 = 1001;

fn is_legacy_stream(bytes: &[u8]) -> bool {
    legacy_magic_matches(bytes, LEGACY_MAGIC.len())
}

/// Whether `bytes` start like the legacy stream's first pickle (the magic number as LONG1),
/// comparing at least `min_magic` bytes of the magic and as many more as `bytes` holds.
fn legacy_magic_matches(bytes: &[u8], min_magic: usize) -> bool {
    let rest = match bytes {
        [0x80, 2 | 3, rest @ ..] => rest,
        // Protocol ≥ 4 puts a FRAME header first.
        [0x80, 4 | 5, 0x95, rest @ ..] => rest.get(8..).unwrap_or(&[]),
        _ => return false,
    };
    let Some(magic) = rest.strip_prefix(&[0x8a, 0x0a]) else {
        return false;
    };
    let n = magic.len().min(LEGACY_MAGIC.len());
    n >= min_magic && magic[..n] == LEGACY_MAGIC[..n]
}

/// Whether `bytes`, the start of a file (or all of it), look like a PyTorch checkpoint: a zip
/// archive naming a `*/data.pkl`, or the pre-1.6 stream's magic number.
///
/// Works on short heads: a zip whose first entry name is not yet visible counts as a candidate,
/// and the legacy magic is compared as far as it is visible (16 bytes show all of it for the
/// usual protocol 2). Passing 64 bytes or more lets the first local header (torch writes
/// `<arch>/data.pkl` first) decide. TorchScript archives also pass; [`PickleFile::open`] refuses
/// them with a clear message.
pub fn sniff(bytes: &[u8]) -> bool {
    if bytes.starts_with(b"PK\x03\x04") {
        let name_len = match bytes.get(26..28) {
            Some(&[a, b]) => u16::from_le_bytes([a, b]) as usize,
            _ => return true,
        };
        if bytes.len() < 30 + name_len {
            return true;
        }
        // The first entry, a local header elsewhere in `bytes`, or the central directory at the
        // end when the whole file is passed.
        let needle = b"/data.pkl";
        let head = &bytes[..bytes.len().min(64 << 10)];
        let tail = &bytes[bytes.len().saturating_sub(4 << 20)..];
        return [head, tail].iter().any(|part| part.windows(needle.len()).any(|w| w == needle));
    }
    legacy_magic_matches(bytes, 3)
}

/// Names in the zip central directory, read directly: the zip crate keeps the last of several
/// entries with one name, and duplicates must be refused (which record would torch read?).
fn central_directory_names(map: &[u8], start: u64) -> Vec<&[u8]> {
    let mut names = Vec::new();
    let mut pos = start as usize;
    while let Some(h) = map.get(pos..pos.saturating_add(46)) {
        if h[..4] != *b"PK\x01\x02" || names.len() > MAX_ENTRIES {
            break;
        }
        let field = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]) as usize;
        let (name_len, extra_len, comment_len) = (field(28), field(30), field(32));
        let Some(name) = map.get(pos + 46..pos + 46 + name_len) else { break };
        names.push(name);
        pos += 46 + name_len + extra_len + comment_len;
    }
    names
}

fn open_zip(path: &Path, map: &[u8]) -> Result<Parsed> {
    let malformed = |reason: String| Error::Pickle { file: path.into(), reason };
    let unknown = |reason: String| Error::UnknownFormat { file: path.into(), reason };
    let mut archive = zip::ZipArchive::new(Cursor::new(map))
        .map_err(|e| unknown(format!("unreadable zip archive: {e}")))?;
    if archive.len() > MAX_ENTRIES {
        return Err(malformed(format!("zip archive with {} entries", archive.len())));
    }
    let listed = central_directory_names(map, archive.central_directory_start());
    let mut distinct = HashSet::new();
    for name in &listed {
        if !distinct.insert(*name) {
            return Err(malformed(format!("duplicate zip entry `{}`", String::from_utf8_lossy(name))));
        }
    }
    if listed.len() != archive.len() {
        return Err(malformed(format!(
            "the zip central directory lists {} entries, {} distinct names",
            listed.len(),
            archive.len()
        )));
    }

    let names: Vec<String> =
        (0..archive.len()).filter_map(|i| archive.name_for_index(i).map(str::to_owned)).collect();
    // TorchScript archives carry compiled code to run; refuse them before anything else.
    if names.iter().any(|n| n.contains("/code/") || n.starts_with("code/") || n.ends_with("constants.pkl")) {
        return Err(unknown(
            "a TorchScript archive (code/, constants.pkl): diffusiond does not run TorchScript; \
             save the state dict instead"
                .into(),
        ));
    }
    let dirs: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_suffix("/data.pkl"))
        .filter(|d| !d.is_empty() && !d.contains('/'))
        .collect();
    let arch = match dirs.as_slice() {
        [arch] => format!("{arch}/"),
        [] => return Err(unknown("a zip archive without <dir>/data.pkl: not a PyTorch checkpoint".into())),
        _ => return Err(malformed(format!("{} data.pkl entries in the archive", dirs.len()))),
    };

    let mut pickle = None;
    let mut byteorder = None;
    let mut records = HashMap::new();
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i).map_err(|e| malformed(format!("zip entry {i}: {e}")))?;
        let name = entry.name().to_owned();
        let Some(rest) = name.strip_prefix(&arch) else {
            return Err(malformed(format!("zip entry `{name}` is outside the archive folder `{arch}`")));
        };
        if rest.split('/').any(|c| c == ".." || c == ".") {
            return Err(malformed(format!("zip entry `{name}` has a relative path component")));
        }
        if entry.is_dir() {
            continue;
        }
        if entry.encrypted() {
            return Err(malformed(format!("zip entry `{name}` is encrypted")));
        }
        let (start, compressed, len) = (entry.data_start(), entry.compressed_size(), entry.size());
        let end = start.checked_add(compressed).filter(|&end| end <= map.len() as u64);
        if end.is_none() {
            return Err(malformed(format!("zip entry `{name}` runs past the end of the file")));
        }
        let start = start as usize;
        let record = match entry.compression() {
            zip::CompressionMethod::Stored if compressed == len => Record::Stored { start, len },
            zip::CompressionMethod::Stored => {
                return Err(malformed(format!("stored zip entry `{name}` has two different sizes")))
            }
            zip::CompressionMethod::Deflated
                if len <= compressed.saturating_mul(MAX_DEFLATE_RATIO).saturating_add(64) =>
            {
                Record::Deflated { start, compressed: compressed as usize, len }
            }
            zip::CompressionMethod::Deflated => {
                return Err(malformed(format!("zip entry `{name}` claims an absurd size ({len} bytes)")))
            }
            method => {
                return Err(malformed(format!("zip entry `{name}` uses unsupported compression {method:?}")))
            }
        };
        match rest {
            "data.pkl" => pickle = Some(record),
            "byteorder" => byteorder = Some(record),
            _ => {
                if let Some(key) = rest.strip_prefix("data/") {
                    if key.is_empty() || key.contains('/') {
                        return Err(malformed(format!("unexpected zip entry `{name}`")));
                    }
                    records.insert(key.to_string(), record);
                }
                // `version`, `.format_version`, `.storage_alignment`, `.data/*` and anything
                // else newer torch may add carry nothing the weights need.
            }
        }
    }

    let big_endian = match byteorder {
        None => false,
        Some(record) if record.len() <= 16 => {
            let bytes = record.bytes(map, record.len()).map_err(|r| malformed(format!("byteorder: {r}")))?;
            match String::from_utf8_lossy(&bytes).trim() {
                "little" => false,
                "big" => true,
                other => return Err(malformed(format!("unknown byteorder `{other}`"))),
            }
        }
        Some(_) => return Err(malformed("oversized byteorder record".into())),
    };
    let Some(pickle) = pickle else {
        return Err(malformed("data.pkl vanished".into()));
    };
    if pickle.len() > MAX_PICKLE_BYTES {
        return Err(malformed(format!("data.pkl of {} bytes", pickle.len())));
    }
    let data = pickle.bytes(map, pickle.len()).map_err(|r| malformed(format!("data.pkl: {r}")))?;
    let mut machine = Machine::new(&data, false, LIMITS);
    let root = machine.run().map_err(|f| fault(path, f))?;
    let tensors = collect_tensors(&machine, root).map_err(|f| fault(path, f))?;
    check_storages(path, &machine.storages, &records)?;
    Ok(Parsed { big_endian, records, tensors })
}

fn open_legacy(path: &Path, map: &[u8]) -> Result<Parsed> {
    let malformed = |reason: String| Error::Pickle { file: path.into(), reason };
    let mut machine = Machine::new(map, true, LIMITS);
    let magic = machine.run().map_err(|f| fault(path, f))?;
    if !matches!(machine.node(magic), Node::BigInt(b) if **b == LEGACY_MAGIC) {
        let reason = format!("legacy magic number is {}", machine.render(magic, 0));
        return Err(Error::UnknownFormat { file: path.into(), reason });
    }
    let protocol = machine.run().map_err(|f| fault(path, f))?;
    if !matches!(machine.node(protocol), Node::Int(LEGACY_PROTOCOL)) {
        return Err(malformed(format!(
            "legacy protocol {}, expected {LEGACY_PROTOCOL}",
            machine.render(protocol, 0)
        )));
    }
    // sys_info (protocol_version, little_endian, type_sizes): torch ≥ 1.0 always wrote the
    // storages little-endian, whatever it says.
    machine.run().map_err(|f| fault(path, f))?;
    let root = machine.run().map_err(|f| fault(path, f))?;
    let keys = machine.run().map_err(|f| fault(path, f))?;
    let keys: Vec<String> = match machine.node(keys) {
        Node::List(items) => items.clone(),
        Node::Tuple(items) => items.to_vec(),
        other => return Err(malformed(format!("storage key list is a {}", other.type_name()))),
    }
    .into_iter()
    .map(|k| machine.text(k, "storage key"))
    .collect::<PResult<_>>()
    .map_err(|f| fault(path, f))?;

    // Storages follow in key order: an int64 element count, then the bytes.
    let mut pos = machine.pos;
    let mut records = HashMap::new();
    for key in keys {
        let Some(&(dtype, nbytes)) = machine.storages.get(key.as_str()) else {
            return Err(malformed(format!("storage `{key}` is listed but no tensor describes it")));
        };
        let count = match map.get(pos..pos + 8) {
            Some(b) => i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            None => return Err(malformed(format!("file ends before storage `{key}`"))),
        };
        if u64::try_from(count).ok().and_then(|c| c.checked_mul(dtype.size)) != Some(nbytes) {
            return Err(malformed(format!(
                "storage `{key}` holds {count} elements, expected {}",
                nbytes / dtype.size
            )));
        }
        let start = pos + 8;
        let end = (start as u64).checked_add(nbytes).filter(|&e| e <= map.len() as u64);
        let Some(end) = end else {
            return Err(malformed(format!("storage `{key}` runs past the end of the file")));
        };
        if records.insert(key.clone(), Record::Stored { start, len: nbytes }).is_some() {
            return Err(malformed(format!("storage `{key}` is listed twice")));
        }
        pos = end as usize;
    }
    let tensors = collect_tensors(&machine, root).map_err(|f| fault(path, f))?;
    check_storages(path, &machine.storages, &records)?;
    Ok(Parsed { big_endian: false, records, tensors })
}

/// Every storage a persistent id named must exist with exactly the described size.
fn check_storages(
    path: &Path,
    storages: &HashMap<Box<str>, (Dtype, u64)>,
    records: &HashMap<String, Record>,
) -> Result<()> {
    for (key, &(dtype, nbytes)) in storages {
        let record = records.get(&**key).ok_or_else(|| Error::Pickle {
            file: path.into(),
            reason: format!("storage record `data/{key}` is missing"),
        })?;
        if record.len() != nbytes {
            return Err(Error::Pickle {
                file: path.into(),
                reason: format!(
                    "storage record `data/{key}` has {} bytes, expected {nbytes} ({} × {})",
                    record.len(),
                    nbytes / dtype.size,
                    dtype.name
                ),
            });
        }
    }
    Ok(())
}

fn fault(path: &Path, f: Fault) -> Error {
    match f {
        Fault::Forbidden(global) => Error::ForbiddenGlobal { file: path.into(), global },
        Fault::Bad(reason) => Error::Pickle { file: path.into(), reason },
    }
}

// ---------------------------------------------------------------------------------------------
// The tensor source
// ---------------------------------------------------------------------------------------------

/// One PyTorch checkpoint (zip or legacy stream), memory-mapped; tensors are located when the
/// file is opened and copied out one at a time by [`TensorSource::read`].
pub struct PickleFile {
    path: PathBuf,
    map: Mmap,
    big_endian: bool,
    records: HashMap<String, Record>,
    tensors: HashMap<String, TensorRef>,
}

impl PickleFile {
    /// Opens and evaluates the checkpoint at `path`. Fails with [`Error::ForbiddenGlobal`] when
    /// the pickle names a global outside the allow-list, [`Error::UnknownFormat`] when the file
    /// is not a PyTorch checkpoint (or is TorchScript), and [`Error::Pickle`] when it is
    /// malformed. Never runs code from the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len < 16 {
            return Err(Error::UnknownFormat {
                file: path,
                reason: "too short for a PyTorch checkpoint".into(),
            });
        }
        // SAFETY: the map is read-only and model files are not modified while the daemon reads
        // them (the catalog writes new files under temporary names and renames them in). Every
        // access below is bounds-checked against the map's length.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let parsed = if map.starts_with(b"PK\x03\x04") {
            open_zip(&path, &map)?
        } else if is_legacy_stream(&map) {
            open_legacy(&path, &map)?
        } else {
            return Err(Error::UnknownFormat {
                file: path,
                reason: "neither a PyTorch zip archive nor a legacy torch.save stream".into(),
            });
        };
        let Parsed { big_endian, records, tensors } = parsed;
        Ok(PickleFile { path, map, big_endian, records, tensors })
    }

    /// Whether the archive stores big-endian elements (they are swapped on read).
    pub fn is_big_endian(&self) -> bool {
        self.big_endian
    }
}

impl TensorSource for PickleFile {
    fn origin(&self) -> &Path {
        &self.path
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    /// Unsupported element types (uint16, complex, …) are reported as `Kind::ComplexHalf`, as
    /// by the safetensors source, and refused by `read`.
    fn info(&self, name: &str) -> Option<TensorInfo> {
        self.tensors
            .get(name)
            .map(|t| TensorInfo { kind: t.dtype.kind.unwrap_or(Kind::ComplexHalf), shape: t.size.clone() })
    }

    fn read(&self, name: &str) -> Result<Tensor> {
        let malformed = |reason: String| Error::Pickle { file: self.path.clone(), reason };
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.into(), file: self.path.clone() })?;
        let Some(kind) = t.dtype.kind else {
            return Err(Error::UnsupportedDtype {
                name: name.into(),
                file: self.path.clone(),
                dtype: t.dtype.name.into(),
            });
        };
        if t.hi == t.lo {
            return Ok(Tensor::f_zeros(t.size.as_slice(), (kind, Device::Cpu))?);
        }
        let record = self
            .records
            .get(&*t.key)
            .ok_or_else(|| malformed(format!("storage record `data/{}` is missing", t.key)))?;
        let bytes = record.bytes(&self.map, t.hi).map_err(|r| malformed(format!("data/{}: {r}", t.key)))?;
        let span = bytes
            .get(t.lo as usize..)
            .ok_or_else(|| malformed(format!("data/{}: bad tensor range", t.key)))?;
        let el = t.dtype.size as usize;
        let fixed: Cow<[u8]> = if kind == Kind::Bool {
            // Bytes other than 0/1 are not valid bools for libtorch; normalise them.
            Cow::Owned(span.iter().map(|&b| (b != 0) as u8).collect())
        } else if self.big_endian && el > 1 {
            let mut v = span.to_vec();
            v.chunks_exact_mut(el).for_each(|c| c.reverse());
            Cow::Owned(v)
        } else {
            Cow::Borrowed(span)
        };
        let flat = Tensor::f_from_data_size(&fixed, &[(span.len() / el) as i64], kind)?;
        let out = if is_row_major(&t.size, &t.stride) {
            flat.f_reshape(t.size.as_slice())?
        } else {
            flat.f_as_strided(t.size.as_slice(), t.stride.as_slice(), 0)?.f_contiguous()?
        };
        Ok(out)
    }
}

/// Whether `stride` is the row-major contiguous layout of `size` (unit dimensions ignored).
fn is_row_major(size: &[i64], stride: &[i64]) -> bool {
    let mut expected = 1;
    for (&n, &s) in size.iter().zip(stride).rev() {
        if n != 1 && s != expected {
            return false;
        }
        expected *= n;
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Tests of the evaluator on hand-made pickles (the container tests are in tests/pickle.rs)
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn eval_with(bytes: &[u8], legacy: bool, limits: Limits) -> std::result::Result<String, Fault> {
        let mut m = Machine::new(bytes, legacy, limits);
        let root = m.run()?;
        Ok(m.render(root, 0))
    }

    fn eval(bytes: &[u8]) -> std::result::Result<String, Fault> {
        eval_with(bytes, false, LIMITS)
    }

    fn ok(bytes: &[u8]) -> String {
        match eval(bytes) {
            Ok(s) => s,
            Err(f) => panic!("evaluation failed: {f:?}"),
        }
    }

    fn bad_reason(bytes: &[u8]) -> String {
        match eval(bytes) {
            Err(Fault::Bad(reason)) => reason,
            other => panic!("expected a malformed-pickle error, got {other:?}"),
        }
    }

    fn forbidden(bytes: &[u8]) -> String {
        match eval(bytes) {
            Err(Fault::Forbidden(global)) => global,
            other => panic!("expected a forbidden global, got {other:?}"),
        }
    }

    /// `pickle.dumps({...}, protocol=0)` from CPython 3.11: text opcodes, PUT, `_codecs.encode`
    /// for bytes, INT booleans, a long with an L suffix, unicode escapes.
    #[test]
    fn pickle_protocol0_text_opcodes() {
        let p = b"(dp0\nVa\np1\n(lp2\nI1\naI-2\naF2.5\naVx\xe9\\u4e2d\\u000a\np3\nac_codecs\nencode\np4\n(Vy\np5\nVlatin1\np6\ntp7\nRp8\naNaI01\naI00\nasVb\np9\n(I1\nI2\nI3\ntp10\nsVc\np11\nL12345678901234567890L\nsVd\np12\nI-70000\nsVe\np13\n(ts.";
        assert_eq!(
            ok(p),
            "{\"a\": [1, -2, 2.5, \"xé中\\n\", b\"y\", None, True, False], \"b\": (1, 2, 3), \
             \"c\": long(0x00ab54a98ceb1f0ad2), \"d\": -70000, \"e\": ()}"
        );
    }

    /// The same object at protocol 1: binary ints/floats/strings, APPENDS/SETITEMS, MARK tuples.
    #[test]
    fn pickle_protocol1_binary_opcodes() {
        let p = b"}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffG@\x04\x00\x00\x00\x00\x00\x00X\x07\x00\x00\x00x\xc3\xa9\xe4\xb8\xad\nq\x03c_codecs\nencode\nq\x04(X\x01\x00\x00\x00yq\x05X\x06\x00\x00\x00latin1q\x06tq\x07Rq\x08NI01\nI00\neX\x01\x00\x00\x00bq\t(K\x01K\x02K\x03tq\nX\x01\x00\x00\x00cq\x0bL12345678901234567890L\nX\x01\x00\x00\x00dq\x0cJ\x90\xee\xfe\xffX\x01\x00\x00\x00eq\r)u.";
        assert_eq!(
            ok(p),
            "{\"a\": [1, -2, 2.5, \"xé中\\n\", b\"y\", None, True, False], \"b\": (1, 2, 3), \
             \"c\": long(0x00ab54a98ceb1f0ad2), \"d\": -70000, \"e\": ()}"
        );
    }

    /// Protocol 5: FRAME, SHORT_BINUNICODE, MEMOIZE, EMPTY_SET/ADDITEMS, FROZENSET, a 9-byte
    /// LONG1, BYTEARRAY8, SHORT_BINBYTES, NEWTRUE.
    #[test]
    fn pickle_protocol5_opcodes() {
        let p = b"\x80\x05\x95\\\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01J\xfe\xff\xff\xffG@\x04\x00\x00\x00\x00\x00\x00\x8c\x01x\x94C\x01y\x94N\x88e\x8c\x01s\x94\x8f\x94(K\x01K\x02\x90\x8c\x01f\x94(K\x03\x91\x94\x8c\x03big\x94\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00@\x8c\x01b\x94\x96\x01\x00\x00\x00\x00\x00\x00\x00z\x94u.";
        assert_eq!(
            ok(p),
            "{\"a\": [1, -2, 2.5, \"x\", b\"y\", None, True], \"s\": set[1, 2], \"f\": set[3], \
             \"big\": long(0x400000000000000000), \"b\": b\"z\"}"
        );
    }

    #[test]
    fn pickle_ordered_dict_and_memo_sharing() {
        assert_eq!(ok(b"ccollections\nOrderedDict\np0\n(tRp1\nVk\np2\nI1\ns."), "{\"k\": 1}");
        assert_eq!(
            ok(b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00kq\x02K\x01s."),
            "{\"k\": 1}"
        );
        // (x, x) with x = [1]: the memo hands out the same list twice.
        assert_eq!(ok(b"\x80\x02]q\x00K\x01ah\x00\x86q\x01."), "([1], [1])");
        // typing.OrderedDict via STACK_GLOBAL; OrderedDict([(k, v)]) form; BUILD ignored.
        assert_eq!(
            ok(b"\x80\x04\x8c\x06typing\x8c\x0bOrderedDict\x93]\x8c\x01kK\x07\x86a\x85R}b."),
            "{\"k\": 7}"
        );
    }

    #[test]
    fn pickle_string_literals_and_escapes() {
        assert_eq!(ok(b"S'a\\'b\\x41\\n\\101'\n."), "\"a'bA\\nA\"");
        assert_eq!(ok(b"S\"q\"\n."), "\"q\"");
        assert!(bad_reason(b"S'unterminated\n.").contains("not quoted"));
        assert_eq!(ok(b"U\x03abc."), "\"abc\"");
        assert_eq!(ok(b"T\x02\x00\x00\x00hi."), "\"hi\"");
        assert_eq!(ok(b"B\x02\x00\x00\x00\x00\xff."), "b\"\\0\u{fffd}\"");
        assert_eq!(ok(b"\x80\x04\x8d\x01\x00\x00\x00\x00\x00\x00\x00z."), "\"z\"");
        assert_eq!(ok(b"\x80\x04\x8e\x01\x00\x00\x00\x00\x00\x00\x00z."), "b\"z\"");
    }

    #[test]
    fn pickle_integers() {
        assert_eq!(ok(b"K\xff."), "255");
        assert_eq!(ok(b"M\xff\xff."), "65535");
        assert_eq!(ok(b"J\xff\xff\xff\xff."), "-1");
        assert_eq!(ok(b"\x80\x02\x8a\x00."), "0");
        assert_eq!(ok(b"\x80\x02\x8a\x01\xff."), "-1");
        assert_eq!(ok(b"\x80\x02\x8a\x02\x00\x80."), "-32768");
        assert_eq!(ok(b"\x80\x02\x8b\x01\x00\x00\x00\x7f."), "127");
        assert_eq!(ok(b"I-12\n."), "-12");
        assert_eq!(ok(b"L-5L\n."), "-5");
        assert_eq!(ok(b"F-0.25\n."), "-0.25");
        // The legacy magic number is wider than 64 bits.
        assert_eq!(ok(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."), "long(0x1950a86a20f9469cfc6c)");
        assert!(bad_reason(b"\x80\x02\x8b\xff\xff\xff\xff.").contains("LONG4"));
        assert!(bad_reason(b"Iabc\n.").contains("bad integer"));
    }

    #[test]
    fn pickle_stack_control() {
        // MARK, then POP_MARK discards what followed it; POP with an empty frame pops the mark.
        assert_eq!(ok(b"K\x01(K\x02K\x031."), "1");
        assert_eq!(ok(b"K\x01(0."), "1");
        assert_eq!(ok(b"K\x012\x86."), "(1, 1)");
        assert_eq!(ok(b"(K\x01K\x02K\x03K\x04d."), "{1: 2, 3: 4}");
        assert!(bad_reason(b"(K\x01d.").contains("odd number"));
        assert!(bad_reason(b"0.").contains("no MARK"));
        assert!(bad_reason(b"(.").contains("underflow"));
        assert!(bad_reason(b"K\x01(\x85.").contains("underflow"));
        assert!(bad_reason(b"h\x05.").contains("never stored"));
        assert!(bad_reason(b"K\x01").contains("without STOP"));
        assert!(bad_reason(b"K\x00K\x01K\x02s.").contains("SETITEM on a int"));
    }

    #[test]
    fn pickle_forbidden_globals_are_refused() {
        assert_eq!(forbidden(b"cposix\nsystem\n(S'touch /tmp/x'\ntR."), "posix.system");
        assert_eq!(forbidden(b"cos\nsystem\n."), "os.system");
        assert_eq!(forbidden(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93."), "builtins.eval");
        assert_eq!(forbidden(b"(S'ls'\nisubprocess\nPopen\n."), "subprocess.Popen");
        assert_eq!(forbidden(b"cnt\nsystem\n."), "nt.system");
        // Allow-listed modules do not make every name in them acceptable.
        assert_eq!(forbidden(b"ctorch\nload\n."), "torch.load");
        assert_eq!(forbidden(b"ctorch._utils\n_rebuild_qtensor\n."), "torch._utils._rebuild_qtensor");
        assert_eq!(forbidden(b"ccopy_reg\n_reconstructor\n."), "copy_reg._reconstructor");
    }

    #[test]
    fn pickle_inert_globals_become_opaque_values() {
        assert_eq!(ok(b"\x80\x02ctorch\nSize\nK\x02K\x03\x86\x85R."), "object(torch.Size, ((2, 3),), -)");
        // NEWOBJ + BUILD on an allowed class records the state and calls nothing.
        assert_eq!(
            ok(b"\x80\x02cpytorch_lightning.callbacks.model_checkpoint\nModelCheckpoint\n)\x81}X\x01\x00\x00\x00kK\x01sb."),
            "object(pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint, (), {\"k\": 1})"
        );
        // INST and OBJ forms.
        assert_eq!(ok(b"(S'cpu'\nitorch\ndevice\n."), "object(torch.device, (\"cpu\",), -)");
        assert_eq!(ok(b"(ctorch\ndevice\nS'cpu'\no."), "object(torch.device, (\"cpu\",), -)");
        // A dtype symbol is a value, not something to call.
        assert_eq!(ok(b"ctorch\nfloat16\n."), "torch.float16");
        assert!(bad_reason(b"ctorch\nfloat16\n)R.").contains("not callable"));
        assert!(bad_reason(b"ctorch\nFloatStorage\nK\x05\x85R.").contains("not callable"));
        assert!(bad_reason(b"K\x01)R.").contains("not of a global"));
        assert!(bad_reason(b"ctorch._utils\n_rebuild_parameter\n)\x81.").contains("not a class"));
    }

    #[test]
    fn pickle_codecs_encode_makes_bytes() {
        assert_eq!(ok(b"c_codecs\nencode\n(V\xff\nVlatin1\ntR."), "b\"\u{fffd}\"");
        assert_eq!(ok(b"c_codecs\nencode\n(Vab\ntR."), "b\"ab\"");
        assert!(bad_reason(b"c_codecs\nencode\n(V\\u4e2d\nVlatin1\ntR.").contains("latin-1"));
    }

    #[test]
    fn pickle_unsupported_opcodes_are_rejected() {
        assert!(bad_reason(b"\x82\x01.").contains("extension registry"));
        assert!(bad_reason(b"\x83\x01\x00.").contains("extension registry"));
        assert!(bad_reason(b"\x84\x01\x00\x00\x00.").contains("extension registry"));
        assert!(bad_reason(b"\x80\x05\x97.").contains("out-of-band"));
        assert!(bad_reason(b"\x80\x05\x98.").contains("out-of-band"));
        assert!(bad_reason(b"P1\n.").contains("PERSID"));
        assert!(bad_reason(b"\x80\x06.").contains("protocol 6"));
        assert!(bad_reason(b"\xff.").contains("unknown opcode"));
    }

    /// A zip-style storage persistent id and `_rebuild_tensor_v2` over it.
    fn rebuild(offset: u8, size: &[u8], stride: &[u8], numel: u8) -> Vec<u8> {
        let mut p = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK".to_vec();
        p.push(numel);
        p.extend_from_slice(b"tQK");
        p.push(offset);
        p.push(b'(');
        for &s in size {
            p.extend_from_slice(&[b'K', s]);
        }
        p.extend_from_slice(b"t(");
        for &s in stride {
            p.extend_from_slice(&[b'K', s]);
        }
        p.extend_from_slice(b"t\x89ccollections\nOrderedDict\n)RtR.");
        p
    }

    #[test]
    fn pickle_tensor_views_are_bounds_checked() {
        assert_eq!(ok(&rebuild(2, &[2, 3], &[3, 1], 8)), "tensor(0, float32, [2, 3], [3, 1], 8..32)");
        // Transposed view of a 3×2 storage.
        assert_eq!(ok(&rebuild(0, &[2, 3], &[1, 2], 6)), "tensor(0, float32, [2, 3], [1, 2], 0..24)");
        // One element too far: offset 3 + (2−1)·3 + (3−1)·1 = 8 is not < 8.
        assert!(bad_reason(&rebuild(3, &[2, 3], &[3, 1], 8)).contains("runs past the end"));
        assert!(bad_reason(&rebuild(0, &[2, 3], &[1], 8)).contains("rank"));
        // Empty tensors cover no bytes whatever their offset.
        assert_eq!(ok(&rebuild(9, &[0, 3], &[3, 1], 8)), "tensor(0, float32, [0, 3], [3, 1], 0..0)");
        let huge = [200u8; 12];
        assert!(bad_reason(&rebuild(0, &huge, &huge, 8)).contains("overflows"));
    }

    /// `{"state_dict": {"a": t, "state_dict": {"b": t}}}` gives `a` (A1111 drops the second
    /// nested `state_dict`), `{"state_dict": {"state_dict": {"b": t}}}` gives `b`.
    #[test]
    fn pickle_state_dict_unwrapping() {
        let tensor = rebuild(0, &[2], &[1], 2);
        let tensor = &tensor[2..tensor.len() - 1];
        let key = |k: &str| {
            let mut v = vec![b'X'];
            v.extend_from_slice(&(k.len() as u32).to_le_bytes());
            v.extend_from_slice(k.as_bytes());
            v
        };
        let names = |p: Vec<u8>| {
            let mut m = Machine::new(&p, false, LIMITS);
            let root = m.run().unwrap_or_else(|f| panic!("{f:?}"));
            let mut names: Vec<String> =
                collect_tensors(&m, root).map(|t| t.into_keys().collect()).unwrap_or_default();
            names.sort();
            names
        };
        let both = [
            &b"\x80\x02}"[..],
            &key("state_dict"),
            b"}",
            &key("a"),
            tensor,
            b"s",
            &key("state_dict"),
            b"}",
            &key("b"),
            tensor,
            b"sss.",
        ]
        .concat();
        assert_eq!(names(both), vec!["a"]);
        let only = [
            &b"\x80\x02}"[..],
            &key("state_dict"),
            b"}",
            &key("state_dict"),
            b"}",
            &key("b"),
            tensor,
            b"sss.",
        ]
        .concat();
        assert_eq!(names(only), vec!["b"]);
        // Without a state_dict wrapper, nested dicts are flattened with dots.
        let nested = [&b"\x80\x02}"[..], &key("m"), b"}", &key("w"), tensor, b"ss."].concat();
        assert_eq!(names(nested), vec!["m.w"]);
    }

    #[test]
    fn pickle_storage_described_twice_differently_is_refused() {
        let p = b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ(X\x07\x00\x00\x00storagectorch\nHalfStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ\x86.";
        assert!(bad_reason(p).contains("described twice"));
    }

    #[test]
    fn pickle_rebuild_from_type_evaluates_allowed_inner_function() {
        // _rebuild_from_type_v2(_rebuild_parameter, torch.Tensor, (x,), {}) with x = 5 → 5.
        let p = b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\n(ctorch._utils\n_rebuild_parameter\nctorch\nTensor\nK\x05\x89)\x87}tR.";
        assert_eq!(ok(p), "5");
        // A func that is not a global gives an opaque value.
        let p = b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\n(K\x01ctorch\nTensor\n)}tR.";
        assert!(ok(p).starts_with("object(torch._tensor._rebuild_from_type_v2"));
    }

    #[test]
    fn pickle_limits_stop_hostile_input() {
        let tiny = Limits {
            stack: 100,
            marks: 10,
            memo: 10,
            objects: 1000,
            string: 64,
            call_depth: 2,
            copied: 4096,
        };
        let run = |p: &[u8]| eval_with(p, false, tiny);
        let reason = |p: &[u8]| match run(p) {
            Err(Fault::Bad(r)) => r,
            other => panic!("expected a limit error, got {other:?}"),
        };
        assert!(reason(&[b'N'; 200]).contains("stack deeper"));
        assert!(reason(&[b'('; 20]).contains("nested MARKs"));
        let mut memo = b"N".to_vec();
        for i in 0..20u8 {
            memo.extend_from_slice(&[b'q', i]);
        }
        assert!(reason(&memo).contains("memo larger"));
        assert!(reason(&[b']', b'0'].repeat(2000)).contains("more than 1000 values"));
        assert!(reason(b"X\x00\x01\x00\x00").contains("exceeds the limit"));
        assert!(reason(b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\xff").contains("exceeds the limit"));
        assert!(reason(
            b"Vabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz\n."
        )
        .contains("unterminated"));
        // Nested _rebuild_from_type_v2(_rebuild_from_type_v2, _, (…), _) calls are bounded.
        let mut m = Machine::new(b"", false, tiny);
        let g = m.alloc(Node::Global(Box::new(Global {
            module: "torch._tensor".into(),
            name: "_rebuild_from_type_v2".into(),
            what: Callable::RebuildFromType,
        })));
        let (Ok(g), Ok(t)) = (g, m.alloc(Node::Tuple(Box::new([])))) else { panic!("alloc") };
        let mut chain = t;
        for _ in 0..5 {
            let Ok(next) = m.alloc(Node::Tuple(Box::new([g, NONE, chain, NONE]))) else { panic!("alloc") };
            chain = next;
        }
        assert!(matches!(m.call(g, chain, 0), Err(Fault::Bad(r)) if r.contains("nested too deeply")));
    }

    /// `set(x)` repeated on one memoised 1000-item list is charged for every copy.
    #[test]
    fn pickle_copying_calls_are_budgeted() {
        let limits = Limits { stack: 2000, copied: 10_000, ..LIMITS };
        let mut p = b"\x80\x02](".to_vec();
        p.extend(std::iter::repeat_n(b'N', 1000));
        p.extend_from_slice(b"eq\x00cbuiltins\nset\nq\x01");
        let call = b"h\x01h\x00\x85R0";
        for _ in 0..2 {
            p.extend_from_slice(call);
        }
        let mut ok = p.clone();
        ok.push(b'.');
        assert!(eval_with(&ok, false, limits).is_ok());
        p.extend_from_slice(call);
        p.push(b'.');
        assert!(matches!(eval_with(&p, false, limits), Err(Fault::Bad(r)) if r.contains("copied")));
    }

    /// A million nested tuples and a self-containing list neither overflow the native stack
    /// (values are arena indices) nor hang the tensor walk.
    #[test]
    fn pickle_deep_nesting_and_cycles_are_harmless() {
        let mut p = b"\x80\x02)".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 1_000_000));
        p.push(b'.');
        let mut m = Machine::new(&p, false, LIMITS);
        assert!(m.run().is_ok());
        drop(m);
        // d = {}; d["a"] = d; d["b"] = [d]
        let p = b"\x80\x02}q\x00X\x01\x00\x00\x00ah\x00sX\x01\x00\x00\x00b]h\x00as.";
        let mut m = Machine::new(p, false, LIMITS);
        let root = m.run().unwrap_or(NONE);
        assert!(matches!(collect_tensors(&m, root), Ok(t) if t.is_empty()));
    }

    #[test]
    fn pickle_truncated_input_is_an_error() {
        let p = b"\x80\x05\x95\\\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01J\xfe\xff\xff\xffG@\x04\x00\x00\x00\x00\x00\x00\x8c\x01x\x94C\x01y\x94N\x88e\x8c\x01s\x94\x8f\x94(K\x01K\x02\x90\x8c\x01f\x94(K\x03\x91\x94\x8c\x03big\x94\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00@\x8c\x01b\x94\x96\x01\x00\x00\x00\x00\x00\x00\x00z\x94u.";
        for n in 0..p.len() {
            assert!(eval(&p[..n]).is_err(), "prefix of {n} bytes evaluated");
        }
        let t = rebuild(2, &[2, 3], &[3, 1], 8);
        for n in 0..t.len() {
            assert!(eval(&t[..n]).is_err(), "prefix of {n} bytes evaluated");
        }
    }

    /// Random opcode soup (xorshift, fixed seed) never panics.
    #[test]
    fn pickle_random_bytes_never_panic() {
        let alphabet: Vec<u8> =
            b"()012}]dlt\x85\x86\x87\x8f\x90\x91suaeJKM\x8a\x8bIGLFN\x88\x89XUTBC\x8c\x8d\x8e\x96qrph\
              jg\x94\x93cRb\x81\x92ioQ\x80\x95."
                .to_vec();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let small = Limits {
            stack: 1000,
            marks: 100,
            memo: 1000,
            objects: 10_000,
            string: 1 << 16,
            call_depth: 4,
            copied: 1 << 20,
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let p: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 4 == 0 {
                        (r >> 8) as u8
                    } else {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    }
                })
                .chain(std::iter::once(b'.'))
                .collect();
            for legacy in [false, true] {
                let mut m = Machine::new(&p, legacy, small);
                if let Ok(root) = m.run() {
                    let _ = collect_tensors(&m, root);
                }
            }
        }
    }

    #[test]
    fn pickle_sniff_recognises_containers() {
        assert!(sniff(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03."));
        assert!(sniff(b"\x80\x05\x95\x0c\x00\x00\x00\x00\x00\x00\x00\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."));
        // A zip whose first local header names archive/data.pkl, then one naming another file.
        let zip = |name: &[u8]| {
            let mut z = b"PK\x03\x04".to_vec();
            z.extend_from_slice(&[0; 22]);
            z.extend_from_slice(&(name.len() as u16).to_le_bytes());
            z.extend_from_slice(&[0, 0]);
            z.extend_from_slice(name);
            z
        };
        assert!(sniff(&zip(b"archive/data.pkl")));
        assert!(!sniff(&zip(b"archive/other.txt")));
        // Too short to see the name: a candidate, which `open` then decides on.
        assert!(sniff(&zip(b"archive/other.txt")[..16]));
        // The legacy magic seen through a 16-byte head, at protocols 2 and 4.
        assert!(sniff(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02"));
        assert!(sniff(&b"\x80\x04\x95\x0c\x00\x00\x00\x00\x00\x00\x00\x8a\x0al\xfc\x9cF"[..16]));
        assert!(!sniff(b"\x80\x04\x95\x0c\x00\x00\x00\x00\x00\x00\x00\x8a\x0al\xfc\x9cX"));
        assert!(!sniff(b"\x80\x02}q\x00."));
        assert!(!sniff(b""));
        assert!(!sniff(b"\x80"));
    }

    #[test]
    fn pickle_long_decoding() {
        assert_eq!(long_to_i64(&[]), Some(0));
        assert_eq!(long_to_i64(&[0xff, 0x7f]), Some(32767));
        assert_eq!(long_to_i64(&[0xff; 9]), Some(-1));
        assert_eq!(long_to_i64(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0]), None);
        assert_eq!(long_to_i64(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0xff]), Some(i64::MIN));
    }

    #[test]
    fn pickle_row_major_detection() {
        assert!(is_row_major(&[2, 3], &[3, 1]));
        assert!(is_row_major(&[2, 1, 3], &[3, 99, 1]));
        assert!(is_row_major(&[], &[]));
        assert!(!is_row_major(&[3, 2], &[1, 3]));
        assert!(!is_row_major(&[2, 3], &[6, 2]));
    }
}
