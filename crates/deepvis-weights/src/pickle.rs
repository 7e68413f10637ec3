//! A data-only pickle machine for `torch.save` output.
//!
//! Pickle is a program for a stack machine whose GLOBAL/REDUCE opcodes can
//! call any Python function, which is how malicious checkpoints run code.
//! This machine never calls anything: GLOBAL resolves only to a fixed
//! allow-list of torch/collections names, and REDUCE on those is interpreted
//! here (building a dict or a tensor descriptor). Every other global is
//! rejected with [`PickleError::Forbidden`] as soon as it is read.
//!
//! Containers are immutable once shared (copy-on-write through `Rc`), which
//! rules out reference cycles; together with a nesting limit and a budget on
//! copies this keeps memory and stack use proportional to the input.

use std::collections::HashMap;
use std::rc::Rc;

use crate::DType;

/// Deeper nesting than this never occurs in a checkpoint; the limit keeps
/// recursive drops and formatting from overflowing the stack.
const MAX_DEPTH: u32 = 100;

/// Real state dict pickles hold a few values per tensor; these caps bound
/// memory for hostile input (each value costs tens of bytes) while staying
/// far above what models with hundreds of thousands of tensors need.
const MAX_STACK: usize = 1 << 21;
const MAX_MEMO: usize = 1 << 22;

#[derive(Debug)]
pub(crate) enum PickleError {
    /// A global outside the allow-list, as `module.name`.
    Forbidden(String),
    /// The stream is not a well-formed pickle (or is truncated).
    Malformed { offset: usize, reason: String },
    /// Well-formed, but uses something a state dict loader has no business with.
    Unsupported { offset: usize, reason: String },
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PickleError::Forbidden(g) => write!(f, "forbidden global {g}"),
            PickleError::Malformed { offset, reason } => {
                write!(f, "bad pickle data at byte {offset}: {reason}")
            }
            PickleError::Unsupported { offset, reason } => {
                write!(f, "pickle byte {offset}: {reason}")
            }
        }
    }
}

/// The callables a state dict pickle may reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    Size,
    Device,
    /// `torch.FloatStorage` and friends: only meaningful inside persistent ids.
    StorageType(DType),
}

fn resolve_global(module: &str, name: &str) -> Option<Global> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch", "Size") => Global::Size,
        ("torch", "device") => Global::Device,
        ("torch", storage) => Global::StorageType(match storage {
            "DoubleStorage" => DType::F64,
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        }),
        _ => return None,
    };
    Some(g)
}

/// A tensor storage named by a persistent id; its bytes live outside the
/// pickle (a zip entry, or the tail of a legacy file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorageRef {
    pub key: String,
    pub dtype: DType,
    /// Element count of the whole storage, as claimed by the pickle.
    pub numel: usize,
    /// Legacy files may reference a window `(offset, len)` of a root storage.
    pub view: Option<(usize, usize)>,
}

/// What `_rebuild_tensor(_v2)` was asked to build.
#[derive(Debug, Clone)]
pub(crate) struct TensorRef {
    pub storage: Rc<StorageRef>,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

#[derive(Debug, Clone)]
pub(crate) struct Seq {
    pub items: Vec<Value>,
    depth: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct Pairs {
    /// In insertion order; later duplicates win, as in a Python dict.
    pub items: Vec<(Value, Value)>,
    depth: u32,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// Integers wider than 64 bits, as minimal little-endian two's complement.
    BigInt(Rc<[u8]>),
    // Floats and bytes are decoded faithfully but no state dict field needs them.
    #[allow(dead_code)]
    Float(f64),
    Str(Rc<str>),
    #[allow(dead_code)]
    Bytes(Rc<[u8]>),
    Tuple(Rc<Seq>),
    List(Rc<Seq>),
    Dict(Rc<Pairs>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(s) | Value::List(s) => s.depth,
            Value::Dict(p) => p.depth,
            _ => 0,
        }
    }

    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) => usize::try_from(*i).ok(),
            _ => None,
        }
    }

    /// Items of a tuple or list.
    fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(s) | Value::List(s) => Some(&s.items),
            _ => None,
        }
    }
}

/// Result of running one pickle.
pub(crate) struct Unpickled {
    pub value: Value,
    /// Offset just past the STOP opcode; legacy files put more data there.
    pub end: usize,
    /// Every storage referenced by a persistent id, in order of appearance.
    pub storages: Vec<Rc<StorageRef>>,
}

/// Runs the pickle starting at `data[0]` up to its STOP opcode.
pub(crate) fn unpickle(data: &[u8]) -> Result<Unpickled, PickleError> {
    Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        storages: Vec::new(),
        // Copy-on-write of shared containers is the only way to do work out
        // of proportion to the input; cap it generously relative to the input.
        copy_budget: data.len().saturating_mul(4).saturating_add(1 << 20),
    }
    .run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each MARK; values below the last mark are not
    /// reachable by ordinary pops.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    storages: Vec<Rc<StorageRef>>,
    copy_budget: usize,
}

fn tuple(items: Vec<Value>) -> Result<Value, String> {
    Ok(Value::Tuple(Rc::new(seq(items)?)))
}

fn seq(items: Vec<Value>) -> Result<Seq, String> {
    let depth = items.iter().map(Value::depth).max().unwrap_or(0) + 1;
    if depth > MAX_DEPTH {
        return Err(format!("containers nested more than {MAX_DEPTH} deep"));
    }
    Ok(Seq { items, depth })
}

fn pairs(items: Vec<(Value, Value)>) -> Result<Pairs, String> {
    let depth = items
        .iter()
        .map(|(k, v)| k.depth().max(v.depth()))
        .max()
        .unwrap_or(0)
        + 1;
    if depth > MAX_DEPTH {
        return Err(format!("containers nested more than {MAX_DEPTH} deep"));
    }
    Ok(Pairs { items, depth })
}

fn into_pairs(flat: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if flat.len() % 2 != 0 {
        return Err("odd number of items for a dict".into());
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// Decodes a pickle LONG: little-endian two's complement of any width.
fn decode_long(bytes: &[u8]) -> Value {
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    let fill = if negative { 0xff } else { 0x00 };
    // Drop redundant sign-extension bytes so width checks are meaningful.
    let mut len = bytes.len();
    while len > 1 && bytes[len - 1] == fill && (bytes[len - 2] & 0x80 != 0) == negative {
        len -= 1;
    }
    let bytes = &bytes[..len];
    if bytes.len() <= 8 {
        let mut buf = [fill; 8];
        buf[..bytes.len()].copy_from_slice(bytes);
        Value::Int(i64::from_le_bytes(buf))
    } else {
        Value::BigInt(Rc::from(bytes))
    }
}

impl<'a> Machine<'a> {
    fn malformed(&self, reason: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn unsupported(&self, reason: impl Into<String>) -> PickleError {
        PickleError::Unsupported {
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let data: &'a [u8] = self.data;
        match self.pos.checked_add(n).filter(|&end| end <= data.len()) {
            Some(end) => {
                let s = &data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.malformed("unexpected end of data (file truncated?)")),
        }
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take_array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    fn len_u64(&mut self) -> Result<usize, PickleError> {
        let n = u64::from_le_bytes(self.take_array()?);
        usize::try_from(n).map_err(|_| self.malformed("length does not fit in memory"))
    }

    fn len_i32(&mut self) -> Result<usize, PickleError> {
        let n = i32::from_le_bytes(self.take_array()?);
        usize::try_from(n).map_err(|_| self.malformed("negative length"))
    }

    /// A text line as used by GLOBAL/INST (`module\n`, `name\n`).
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let data: &'a [u8] = self.data;
        let rest = &data[self.pos.min(data.len())..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.malformed("unterminated text line"));
        };
        self.pos += nl + 1;
        std::str::from_utf8(&rest[..nl]).map_err(|_| self.malformed("text line is not UTF-8"))
    }

    fn string(&mut self, n: usize) -> Result<Value, PickleError> {
        let bytes = self.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Value::Str(Rc::from(s))),
            Err(_) => Err(self.malformed("string is not valid UTF-8")),
        }
    }

    /// Python 2 `str`: bytes of unknown encoding. Keys of old checkpoints are
    /// ASCII, so decode leniently rather than reject.
    fn py2_string(&mut self, n: usize) -> Result<Value, PickleError> {
        let bytes = self.take(n)?;
        Ok(Value::Str(Rc::from(
            String::from_utf8_lossy(bytes).as_ref(),
        )))
    }

    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.unsupported("pickle stack holds too many values"));
        }
        self.stack.push(v);
        Ok(())
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        if self.stack.len() <= self.floor() {
            return Err(self.malformed("stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let Some(mark) = self.marks.pop() else {
            return Err(self.malformed("no MARK on the stack"));
        };
        if mark > self.stack.len() {
            return Err(self.malformed("MARK above the stack top"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn top(&self) -> Result<&Value, PickleError> {
        if self.stack.len() <= self.floor() {
            return Err(self.malformed("stack underflow"));
        }
        self.stack
            .last()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    /// Charges the copy budget for cloning `n` items of a shared container.
    fn charge_copy(&mut self, shared: bool, n: usize) -> Result<(), PickleError> {
        if shared {
            self.copy_budget = self
                .copy_budget
                .checked_sub(n)
                .ok_or_else(|| self.malformed("too many copies of shared containers"))?;
        }
        Ok(())
    }

    /// Appends to the list (or set) on top of the stack.
    fn extend_top_list(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let at = self.pos;
        let (shared, n) = match self.top()? {
            Value::List(l) => (Rc::strong_count(l) > 1, l.items.len()),
            other => {
                let t = other.type_name();
                return Err(self.unsupported(format!("append to a {t}, expected a list")));
            }
        };
        self.charge_copy(shared, n)?;
        let Some(Value::List(l)) = self.stack.last_mut() else {
            return Err(self.malformed("stack underflow"));
        };
        let l = Rc::make_mut(l);
        let depth = items.iter().map(Value::depth).max().unwrap_or(0) + 1;
        l.items.extend(items);
        l.depth = l.depth.max(depth);
        if l.depth > MAX_DEPTH {
            return Err(PickleError::Malformed {
                offset: at,
                reason: format!("containers nested more than {MAX_DEPTH} deep"),
            });
        }
        Ok(())
    }

    /// Adds key/value pairs to the dict on top of the stack.
    fn extend_top_dict(&mut self, items: Vec<(Value, Value)>) -> Result<(), PickleError> {
        let at = self.pos;
        let (shared, n) = match self.top()? {
            Value::Dict(d) => (Rc::strong_count(d) > 1, d.items.len()),
            other => {
                let t = other.type_name();
                return Err(self.unsupported(format!("set item on a {t}, expected a dict")));
            }
        };
        self.charge_copy(shared, n)?;
        let Some(Value::Dict(d)) = self.stack.last_mut() else {
            return Err(self.malformed("stack underflow"));
        };
        let d = Rc::make_mut(d);
        let depth = items
            .iter()
            .map(|(k, v)| k.depth().max(v.depth()))
            .max()
            .unwrap_or(0)
            + 1;
        d.items.extend(items);
        d.depth = d.depth.max(depth);
        if d.depth > MAX_DEPTH {
            return Err(PickleError::Malformed {
                offset: at,
                reason: format!("containers nested more than {MAX_DEPTH} deep"),
            });
        }
        Ok(())
    }

    fn global(&self, module: &str, name: &str) -> Result<Value, PickleError> {
        resolve_global(module, name)
            .map(Value::Global)
            .ok_or_else(|| PickleError::Forbidden(format!("{module}.{name}")))
    }

    fn memo_get(&self, index: u32) -> Result<Value, PickleError> {
        self.memo
            .get(&index)
            .cloned()
            .ok_or_else(|| self.malformed(format!("memo entry {index} used before it was stored")))
    }

    fn memo_put(&mut self, index: u32) -> Result<(), PickleError> {
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&index) {
            return Err(self.unsupported("pickle memo holds too many values"));
        }
        let v = self.top()?.clone();
        self.memo.insert(index, v);
        Ok(())
    }

    fn run(mut self) -> Result<Unpickled, PickleError> {
        loop {
            let op = self.u8()?;
            match op {
                // PROTO
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.unsupported(format!("pickle protocol {proto}")));
                    }
                }
                // FRAME: only a buffering hint for the reader.
                0x95 => {
                    self.take(8)?;
                }
                // STOP
                b'.' => {
                    let value = self.pop()?;
                    return Ok(Unpickled {
                        value,
                        end: self.pos,
                        storages: self.storages,
                    });
                }
                // MARK
                b'(' => self.marks.push(self.stack.len()),
                // POP: like Python, an empty frame means "pop the mark".
                b'0' => {
                    if self.stack.len() > self.floor() {
                        self.pop()?;
                    } else {
                        self.pop_mark()?;
                    }
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark()?;
                }
                // DUP
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(v.into()))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(v.into()))?;
                }
                // LONG1, LONG4
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let v = decode_long(self.take(n)?);
                    self.push(v)?;
                }
                0x8b => {
                    let n = self.len_i32()?;
                    let v = decode_long(self.take(n)?);
                    self.push(v)?;
                }
                // BINFLOAT (big-endian, unlike everything else)
                b'G' => {
                    let v = f64::from_be_bytes(self.take_array()?);
                    self.push(Value::Float(v))?;
                }
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                // BINSTRING, SHORT_BINSTRING
                b'T' => {
                    let n = self.len_i32()?;
                    let v = self.py2_string(n)?;
                    self.push(v)?;
                }
                b'U' => {
                    let n = usize::from(self.u8()?);
                    let v = self.py2_string(n)?;
                    self.push(v)?;
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => usize::from(self.u8()?),
                        _ => self.len_u64()?,
                    };
                    let v = Value::Bytes(Rc::from(self.take(n)?));
                    self.push(v)?;
                }
                // EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, EMPTY_SET
                b'}' => self.push(Value::Dict(Rc::new(Pairs {
                    items: Vec::new(),
                    depth: 1,
                })))?,
                b']' | 0x8f => self.push(Value::List(Rc::new(Seq {
                    items: Vec::new(),
                    depth: 1,
                })))?,
                b')' => self.push(Value::Tuple(Rc::new(Seq {
                    items: Vec::new(),
                    depth: 1,
                })))?,
                // DICT
                b'd' => {
                    let flat = self.pop_mark()?;
                    let p = into_pairs(flat)
                        .and_then(pairs)
                        .map_err(|e| self.malformed(e))?;
                    self.push(Value::Dict(Rc::new(p)))?;
                }
                // LIST, FROZENSET (sets are kept as lists; order is irrelevant here)
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    let s = seq(items).map_err(|e| self.malformed(e))?;
                    self.push(Value::List(Rc::new(s)))?;
                }
                // TUPLE, TUPLE1, TUPLE2, TUPLE3
                b't' => {
                    let items = self.pop_mark()?;
                    let t = tuple(items).map_err(|e| self.malformed(e))?;
                    self.push(t)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let t = tuple(items).map_err(|e| self.malformed(e))?;
                    self.push(t)?;
                }
                // APPEND
                b'a' => {
                    let v = self.pop()?;
                    self.extend_top_list(vec![v])?;
                }
                // APPENDS, ADDITEMS
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_top_list(items)?;
                }
                // SETITEM
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_top_dict(vec![(k, v)])?;
                }
                // SETITEMS
                b'u' => {
                    let flat = self.pop_mark()?;
                    let p = into_pairs(flat).map_err(|e| self.malformed(e))?;
                    self.extend_top_dict(p)?;
                }
                // BINPUT, LONG_BINPUT, MEMOIZE
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(i.into())?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len())
                        .map_err(|_| self.malformed("memo too large"))?;
                    self.memo_put(i)?;
                }
                // BINGET, LONG_BINGET
                b'h' => {
                    let i = self.u8()?;
                    let v = self.memo_get(i.into())?;
                    self.push(v)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.push(v)?;
                }
                // GLOBAL
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.push(g)?;
                }
                // STACK_GLOBAL
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (module.as_str(), name.as_str()) else {
                        return Err(self.malformed("STACK_GLOBAL operands are not strings"));
                    };
                    let g = self.global(module, name)?;
                    self.push(g)?;
                }
                // INST: GLOBAL + call with the marked items.
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    let args = self.pop_mark()?;
                    let args = tuple(args).map_err(|e| self.malformed(e))?;
                    let v = self.apply(g, args)?;
                    self.push(v)?;
                }
                // OBJ: class then arguments, all above the mark.
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.malformed("OBJ without a class"));
                    }
                    let cls = items.remove(0);
                    let args = tuple(items).map_err(|e| self.malformed(e))?;
                    let v = self.apply(cls, args)?;
                    self.push(v)?;
                }
                // REDUCE, NEWOBJ
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.apply(callable, args)?;
                    self.push(v)?;
                }
                // NEWOBJ_EX: keyword arguments are never needed by the allow-list.
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.apply(cls, args)?;
                    self.push(v)?;
                }
                // BUILD: the state of a parameter/dict (requires_grad, _metadata, ...)
                // carries nothing a state dict needs.
                b'b' => {
                    self.pop()?;
                    self.top()?;
                }
                // BINPERSID
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent_storage(&pid)?;
                    self.storages.push(storage.clone());
                    self.push(Value::Storage(storage))?;
                }
                other => {
                    self.pos -= 1;
                    return Err(self.unsupported(format!(
                        "pickle opcode 0x{other:02x} is not used by torch.save"
                    )));
                }
            }
        }
    }

    /// Interprets a call of an allow-listed global. Nothing is executed:
    /// each callable has a fixed meaning here.
    fn apply(&self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Global(g) = callable else {
            let t = callable.type_name();
            return Err(self.unsupported(format!("call of a {t} object")));
        };
        let Value::Tuple(args) = args else {
            let t = args.type_name();
            return Err(self.malformed(format!("call arguments are a {t}, expected a tuple")));
        };
        let args = &args.items;
        match g {
            Global::OrderedDict => match args.as_slice() {
                [] => Ok(Value::Dict(Rc::new(Pairs {
                    items: Vec::new(),
                    depth: 1,
                }))),
                [Value::Dict(d)] => Ok(Value::Dict(d.clone())),
                [items] => {
                    let items = items
                        .as_seq()
                        .ok_or_else(|| self.malformed("OrderedDict argument is not a sequence"))?;
                    let mut out = Vec::with_capacity(items.len());
                    for item in items {
                        match item.as_seq() {
                            Some([k, v]) => out.push((k.clone(), v.clone())),
                            _ => return Err(self.malformed("OrderedDict item is not a pair")),
                        }
                    }
                    let p = pairs(out).map_err(|e| self.malformed(e))?;
                    Ok(Value::Dict(Rc::new(p)))
                }
                _ => Err(self.malformed("OrderedDict called with several arguments")),
            },
            Global::RebuildTensor | Global::RebuildTensorV2 => self.rebuild_tensor(args),
            Global::RebuildParameter | Global::RebuildParameterWithState => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(self.malformed("_rebuild_parameter without a tensor")),
            },
            Global::Size => match args.as_slice() {
                [] => tuple(Vec::new()).map_err(|e| self.malformed(e)),
                [dims] => match dims.as_seq() {
                    Some(d) => tuple(d.to_vec()).map_err(|e| self.malformed(e)),
                    None => Err(self.malformed("torch.Size argument is not a sequence")),
                },
                _ => Err(self.malformed("torch.Size called with several arguments")),
            },
            Global::Device => match args.first() {
                Some(Value::Str(s)) => Ok(Value::Str(s.clone())),
                _ => Err(self.malformed("torch.device without a device name")),
            },
            Global::StorageType(_) => {
                Err(self.unsupported("direct construction of a torch storage"))
            }
        }
    }

    /// `_rebuild_tensor(storage, offset, size, stride)`, and `_v2` which adds
    /// requires_grad, backward hooks and metadata (all irrelevant here).
    fn rebuild_tensor(&self, args: &[Value]) -> Result<Value, PickleError> {
        let [storage, offset, size, stride, ..] = args else {
            return Err(self.malformed("_rebuild_tensor needs at least 4 arguments"));
        };
        let Value::Storage(storage) = storage else {
            let t = storage.type_name();
            return Err(self.unsupported(format!("tensor backed by a {t} instead of a storage")));
        };
        let offset = offset
            .as_usize()
            .ok_or_else(|| self.malformed("tensor storage offset is not a non-negative integer"))?;
        let dims = |v: &Value, what: &str| -> Result<Vec<usize>, PickleError> {
            v.as_seq()
                .and_then(|s| s.iter().map(Value::as_usize).collect::<Option<Vec<_>>>())
                .ok_or_else(|| {
                    self.malformed(format!(
                        "tensor {what} is not a tuple of non-negative integers"
                    ))
                })
        };
        let shape = dims(size, "size")?;
        let stride = dims(stride, "stride")?;
        if shape.len() != stride.len() {
            return Err(self.malformed("tensor size and stride have different lengths"));
        }
        Ok(Value::Tensor(Rc::new(TensorRef {
            storage: storage.clone(),
            offset,
            shape,
            stride,
        })))
    }

    /// Persistent ids written by torch.save:
    /// zip: `('storage', StorageType, key, location, numel)`;
    /// legacy: the same plus `view_metadata` (`None` or `(view_key, offset, size)`).
    fn persistent_storage(&self, pid: &Value) -> Result<Rc<StorageRef>, PickleError> {
        let items = match pid {
            Value::Tuple(t) => &t.items,
            other => {
                let t = other.type_name();
                return Err(self.unsupported(format!("persistent id is a {t}, expected a tuple")));
            }
        };
        let (kind, rest) = match items.split_first() {
            Some((k, r)) => (k, r),
            None => return Err(self.malformed("empty persistent id")),
        };
        if kind.as_str() != Some("storage") {
            return Err(self.unsupported("persistent id that is not a tensor storage"));
        }
        let (storage_type, key, numel, view) = match rest {
            [t, k, _location, n] => (t, k, n, None),
            [t, k, _location, n, view] => (t, k, n, Some(view)),
            _ => return Err(self.malformed("storage persistent id has the wrong length")),
        };
        let dtype = match storage_type {
            Value::Global(Global::StorageType(d)) => *d,
            _ => return Err(self.unsupported("storage of an unsupported type")),
        };
        let key = match key {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            _ => return Err(self.malformed("storage key is not a string")),
        };
        let numel = numel
            .as_usize()
            .ok_or_else(|| self.malformed("storage size is not a non-negative integer"))?;
        let view = match view {
            None | Some(Value::None) => None,
            Some(v) => match v.as_seq() {
                Some([_view_key, offset, len]) => match (offset.as_usize(), len.as_usize()) {
                    (Some(o), Some(l)) => Some((o, l)),
                    _ => return Err(self.malformed("storage view bounds are not integers")),
                },
                _ => return Err(self.malformed("storage view metadata is malformed")),
            },
        };
        Ok(Rc::new(StorageRef {
            key,
            dtype,
            numel,
            view,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<Value, PickleError> {
        unpickle(bytes).map(|u| u.value)
    }

    #[test]
    fn reads_simple_dict() {
        // pickle.dumps({'a': 1, 'b': [2.5, 'x']}, protocol=2)
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x04eu.";
        let Value::Dict(d) = run(p).unwrap() else {
            panic!("not a dict")
        };
        assert_eq!(d.items.len(), 2);
        assert!(matches!(d.items[0].1, Value::Int(1)));
        let Value::List(l) = &d.items[1].1 else {
            panic!("not a list")
        };
        assert!(matches!(l.items[0], Value::Float(f) if f == 2.5));
        assert_eq!(l.items[1].as_str(), Some("x"));
    }

    #[test]
    fn rejects_code_execution_globals() {
        for (module, name) in [
            ("os", "system"),
            ("posix", "system"),
            ("builtins", "eval"),
            ("__builtin__", "getattr"),
            ("torch", "load"),
            ("torch._utils", "_rebuild_qtensor"),
        ] {
            let mut p = b"\x80\x02c".to_vec();
            p.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
            p.extend_from_slice(b"X\x02\x00\x00\x00ls\x85R.");
            match run(&p) {
                Err(PickleError::Forbidden(g)) => assert_eq!(g, format!("{module}.{name}")),
                other => panic!("{module}.{name}: {other:?}"),
            }
        }
        // STACK_GLOBAL (protocol 4) goes through the same allow-list.
        let p = b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93.";
        assert!(matches!(run(p), Err(PickleError::Forbidden(g)) if g == "builtins.exec"));
    }

    #[test]
    fn long_integers() {
        assert!(matches!(decode_long(&[]), Value::Int(0)));
        assert!(matches!(decode_long(&[0xff]), Value::Int(-1)));
        assert!(matches!(decode_long(&[0x00, 0x01]), Value::Int(256)));
        assert!(matches!(decode_long(&[0xff; 12]), Value::Int(-1)));
        let magic = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
        assert!(matches!(decode_long(&magic), Value::BigInt(b) if *b == magic));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // Each step wraps the previous value in a new tuple via the memo.
        let mut p = vec![0x80, 0x02, b')'];
        for _ in 0..10_000 {
            p.extend_from_slice(b"\x85");
        }
        p.push(b'.');
        assert!(matches!(run(&p), Err(PickleError::Malformed { .. })));

        let mut p = vec![0x80, 0x02];
        p.extend(std::iter::repeat(b']').take(100_000));
        p.extend(std::iter::repeat(b'a').take(99_999));
        p.push(b'.');
        assert!(matches!(run(&p), Err(PickleError::Malformed { .. })));
    }

    #[test]
    fn shared_references_do_not_blow_up() {
        // Doubling a tuple through the memo 60 times would need 2^60 items
        // with value copies; with sharing it is cheap.
        let mut p = vec![0x80, 0x02, b')'];
        for _ in 0..60 {
            p.extend_from_slice(b"q\x00h\x00\x86");
        }
        p.push(b'.');
        assert!(matches!(run(&p), Ok(Value::Tuple(t)) if t.depth == 61));
    }

    #[test]
    fn stack_misuse_is_an_error() {
        for p in [
            &b"."[..],
            b"\x80\x02(.",
            b"\x80\x02K\x01(\x85.",
            b"\x80\x02h\x05.",
            b"\x80\x02K\x01K\x02s.",
            b"\x80\x02]K\x01K\x02u.",
            b"\x80\x02K\x01a.",
            b"\x80\x02K\x01)R.",
            b"\x80\x02X\xff\xff\xff\xff",
            b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\x80\x02I1\n.",
        ] {
            assert!(run(p).is_err(), "{p:?}");
        }
    }
}
