//! A pickle reader that executes nothing. It runs the pickle machine's opcodes (protocols 0 to
//! 5, as `torch.save` writes them) but never calls a global: a small allowlist of constructors
//! that torch and numpy files use is rebuilt here as data (`OrderedDict`, `_rebuild_tensor_v2`,
//! numpy's `_reconstruct` and `dtype`, `_codecs.encode`, sets), and every other class or function
//! becomes an opaque value that remembers its name and is never called. A file naming a global
//! that only an attack would name (`os.system`, `subprocess`, `builtins.eval`, ...) is refused
//! outright, wherever it appears.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Where a tensor's numbers live: `data/<key>` of the torch zip, of element type `dtype`.
#[derive(Debug, Clone, PartialEq)]
pub struct Storage {
    pub key: String,
    pub dtype: Dtype,
}

/// A tensor as `torch._utils._rebuild_tensor_v2` describes it; its numbers are read later.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: Storage,
    pub offset: i64,
    pub shape: Vec<i64>,
    pub stride: Vec<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F16,
    BF16,
    F32,
    F64,
    I8,
    U8,
    I16,
    I32,
    I64,
    Bool,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
        }
    }

    fn of_storage(name: &str) -> Option<Dtype> {
        Some(match name {
            "FloatStorage" => Dtype::F32,
            "DoubleStorage" => Dtype::F64,
            "HalfStorage" => Dtype::F16,
            "BFloat16Storage" => Dtype::BF16,
            "LongStorage" => Dtype::I64,
            "IntStorage" => Dtype::I32,
            "ShortStorage" => Dtype::I16,
            "CharStorage" => Dtype::I8,
            "ByteStorage" => Dtype::U8,
            "BoolStorage" => Dtype::Bool,
            _ => return None,
        })
    }
}

/// A numpy array rebuilt as data: strings for unicode and object arrays, numbers otherwise.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    Strings(Vec<String>),
    Numbers(Vec<f64>),
    /// An object array holding something other than strings and numbers.
    Other,
}

/// A numpy dtype: its kind letter (`U`, `O`, `f`, `i`, `u`, `b`, `S`), its item size in bytes
/// and its byte order (`<`, `>`, `|`, `=`).
#[derive(Debug, Clone, PartialEq)]
pub struct NpDtype {
    pub kind: char,
    pub size: usize,
    pub order: char,
}

pub type Shared<T> = Rc<RefCell<T>>;

#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Shared<Vec<Value>>),
    Tuple(Rc<Vec<Value>>),
    /// Dicts and `OrderedDict`s, in insertion order.
    Dict(Shared<Vec<(Value, Value)>>),
    Set(Shared<Vec<Value>>),
    Tensor(Rc<TensorRef>),
    Storage(Storage),
    Array(Shared<Array>),
    NpDtype(Shared<NpDtype>),
    /// A global outside the allowlist (never called here). An object the pickle makes by calling
    /// one is kept as data instead: a `Dict` of `__class__` (the global's name), `__args__` (the
    /// arguments) and what its state (BUILD) gives; see `Value::class`.
    Opaque(Rc<str>),
    Mark,
}

impl Value {
    /// A dict's value under the string key `key`.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            // Keys set twice keep the last value, as in Python.
            Value::Dict(d) => d
                .borrow()
                .iter()
                .rfind(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    /// A dict's string keys with their values (other keys skipped).
    pub fn entries(&self) -> Vec<(String, Value)> {
        match self {
            Value::Dict(d) => {
                // A key set twice: where it was first set, with its last value (Python's order).
                let d = d.borrow();
                let mut last = HashMap::new();
                for (i, (k, _)) in d.iter().enumerate() {
                    if let Value::Str(s) = k {
                        last.insert(s.as_str(), i);
                    }
                }
                let mut seen = std::collections::HashSet::new();
                d.iter()
                    .filter_map(|(k, _)| match k {
                        Value::Str(s) if seen.insert(s.as_str()) => Some((s.clone(), d[last[s.as_str()]].1.clone())),
                        _ => None,
                    })
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9e15 => Some(*f as i64),
            _ => None,
        }
    }

    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Int(0) => Some(false),
            Value::Int(1) => Some(true),
            _ => None,
        }
    }

    /// Strings of a list, tuple or numpy array of strings.
    pub fn as_strings(&self) -> Option<Vec<String>> {
        match self {
            Value::Array(a) => match &*a.borrow() {
                Array::Strings(s) => Some(s.clone()),
                _ => None,
            },
            Value::List(l) => l.borrow().iter().map(|v| v.as_str().map(String::from)).collect(),
            Value::Tuple(t) => t.iter().map(|v| v.as_str().map(String::from)).collect(),
            _ => None,
        }
    }

    /// The global an opaque value is, or whose call made an object (kept as a dict); None for
    /// plain data.
    pub fn class(&self) -> Option<String> {
        match self {
            Value::Opaque(name) => Some(name.to_string()),
            Value::Dict(_) => self.get(CLASS).and_then(|v| v.as_str().map(String::from)),
            _ => None,
        }
    }

    /// What the value is, for messages: its Python type, or the global an opaque value came from.
    pub fn describe(&self) -> String {
        if let (Value::Dict(_), Some(class)) = (self, self.class()) {
            return format!("an object of `{class}`, which scmz does not run");
        }
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a string".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::List(_) => "a list".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Set(_) => "a set".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::Storage(_) => "a storage".into(),
            Value::Array(_) => "a numpy array".into(),
            Value::NpDtype(_) => "a numpy dtype".into(),
            Value::Opaque(name) => format!("an object of `{name}`, which scmz does not run"),
            Value::Mark => "a mark".into(),
        }
    }
}

/// The keys of an object kept as data: the global called, its arguments and a state that is
/// not a dict (a dict's items are the object's own).
const CLASS: &str = "__class__";
const ARGS: &str = "__args__";
const STATE: &str = "__state__";

/// The object a call of global `class` with `args` makes, as data (nothing is called).
fn object(class: &str, args: &Value) -> Value {
    Value::Dict(Rc::new(RefCell::new(vec![
        (Value::Str(CLASS.into()), Value::Str(class.into())),
        (Value::Str(ARGS.into()), args.clone()),
    ])))
}

/// Globals no model file has a reason to name: a file naming one is refused.
fn forbidden(module: &str, name: &str) -> bool {
    let root = module.split('.').next().unwrap_or(module);
    matches!(
        root,
        "os" | "posix"
            | "nt"
            | "subprocess"
            | "sys"
            | "shutil"
            | "socket"
            | "importlib"
            | "runpy"
            | "pty"
            | "code"
            | "codeop"
            | "ctypes"
            | "multiprocessing"
            | "webbrowser"
            | "pickle"
            | "_pickle"
            | "marshal"
            | "shelve"
            | "tempfile"
            | "io"
            | "_io"
            | "pathlib"
            | "urllib"
            | "http"
            | "asyncio"
            | "signal"
            | "threading"
            | "operator"
            | "_operator"
            | "commands"
            | "_posixsubprocess"
            | "pdb"
            | "bdb"
            | "timeit"
            | "profile"
            | "cProfile"
            | "trace"
            | "functools"
            | "_thread"
    ) || (matches!(module, "builtins" | "__builtin__")
        && matches!(
            name,
            "eval"
                | "exec"
                | "compile"
                | "open"
                | "getattr"
                | "setattr"
                | "delattr"
                | "__import__"
                | "globals"
                | "locals"
                | "vars"
                | "input"
                | "breakpoint"
                | "help"
                | "exit"
                | "quit"
                | "memoryview"
        ))
}

const MAX_DEPTH: usize = 10_000;

/// How deeply values may nest (lists in lists...): model files nest a few levels; dropping a
/// value nested a hundred thousand deep would overflow the stack.
const MAX_NESTING: usize = 1_000;

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    /// Every container made, kept until the end: none is freed while the pickle runs (so the
    /// addresses below stay theirs), and the end frees them parents first, one at a time.
    arena: Vec<Value>,
    /// Each container's nesting depth, by address.
    depth: HashMap<usize, usize>,
    /// Containers placed inside another: they may not change afterwards (a pickle never needs
    /// it, and it would let a value nest deeper than its depth says).
    nested: std::collections::HashSet<usize>,
    /// Bytes of text and bytes values copied by referring back to them (memo, DUP): a value is
    /// copied each time, so a small file naming one large string many times would otherwise fill
    /// the memory.
    copied: usize,
}

/// How many bytes of strings a pickle of `len` bytes may copy by referring back to them: far
/// more than any model file does (each name a few times), far less than memory.
fn copy_budget(len: usize) -> usize {
    len.saturating_mul(8).saturating_add(64 << 20)
}

impl Drop for Machine<'_> {
    fn drop(&mut self) {
        self.stack.clear();
        self.memo.clear();
        // Parents were made after their children: freeing from the end, a parent only ever
        // lets go of children the arena still holds, so no drop recurses.
        while let Some(v) = self.arena.pop() {
            drop(v);
        }
    }
}

/// A container's address, its identity while the pickle runs.
pub(crate) fn address(v: &Value) -> Option<usize> {
    match v {
        Value::List(x) | Value::Set(x) => Some(Rc::as_ptr(x) as *const u8 as usize),
        Value::Tuple(x) => Some(Rc::as_ptr(x) as *const u8 as usize),
        Value::Dict(x) => Some(Rc::as_ptr(x) as *const u8 as usize),
        _ => None,
    }
}

/// A container's items (keys and values for a dict).
fn children(v: &Value) -> Vec<Value> {
    match v {
        Value::List(x) | Value::Set(x) => x.borrow().clone(),
        Value::Tuple(x) => x.to_vec(),
        Value::Dict(x) => x.borrow().iter().flat_map(|(k, v)| [k.clone(), v.clone()]).collect(),
        _ => Vec::new(),
    }
}

/// Runs the pickle in `data` and returns what it builds; an error says what was refused or
/// malformed, in words for a one-line message.
pub fn load(data: &[u8]) -> Result<Value, String> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        arena: Vec::new(),
        depth: HashMap::new(),
        nested: Default::default(),
        copied: 0,
    };
    m.run()
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or("the pickle ends in the middle of an instruction")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("the pickle ends inside a text line")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn text(&mut self, n: usize) -> Result<String, String> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "the pickle holds a string that is not UTF-8".to_string())
    }

    fn push(&mut self, v: Value) -> Result<(), String> {
        if self.stack.len() >= 1_000_000 {
            return Err("the pickle's stack grows past a million values".into());
        }
        // A container seen for the first time: made just now, with the items it holds.
        if let Some(a) = address(&v).filter(|a| !self.depth.contains_key(a)) {
            self.depth.insert(a, 0);
            self.arena.push(v.clone());
            self.grow(&v, &children(&v))?;
        }
        self.stack.push(v);
        Ok(())
    }

    fn depth_of(&self, v: &Value) -> usize {
        address(v).map_or(0, |a| self.depth.get(&a).copied().unwrap_or(1))
    }

    /// Records that container `target` is about to hold `items`.
    fn grow(&mut self, target: &Value, items: &[Value]) -> Result<(), String> {
        let Some(a) = address(target) else {
            return Ok(());
        };
        if self.nested.contains(&a) {
            return Err(
                "the pickle changes a value after placing it inside another, which no model file does; refused".into(),
            );
        }
        let d = 1 + items.iter().map(|i| self.depth_of(i)).max().unwrap_or(0);
        if d > MAX_NESTING {
            return Err(format!("the pickle nests values more than {MAX_NESTING} deep; refused"));
        }
        let e = self.depth.entry(a).or_insert(1);
        *e = (*e).max(d);
        self.nested.extend(items.iter().filter_map(address));
        Ok(())
    }

    /// The value on top of the stack, about to receive `items`.
    fn target(&mut self, items: &[Value]) -> Result<Value, String> {
        let t = self.top()?.clone();
        self.grow(&t, items)?;
        Ok(t)
    }

    fn pop(&mut self) -> Result<Value, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("the pickle pops past a mark".into());
        }
        self.stack
            .pop()
            .ok_or_else(|| "the pickle pops an empty stack".to_string())
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "the pickle works on an empty stack".to_string())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let m = self.marks.pop().ok_or("the pickle ends a group it never began")?;
        if m > self.stack.len() {
            return Err("the pickle's marks are out of order".into());
        }
        Ok(self.stack.split_off(m))
    }

    fn memo_get(&mut self, k: u64) -> Result<(), String> {
        let v = self
            .memo
            .get(&k)
            .cloned()
            .ok_or("the pickle refers to a value it never stored")?;
        self.count_copy(&v)?;
        self.push(v)
    }

    /// Counts the bytes a copy of a text or bytes value costs (containers are shared, not copied).
    fn count_copy(&mut self, v: &Value) -> Result<(), String> {
        let n = match v {
            Value::Str(s) => s.len(),
            Value::Bytes(b) => b.len(),
            _ => return Ok(()),
        };
        self.copied = self.copied.saturating_add(n);
        if self.copied > copy_budget(self.data.len()) {
            return Err(format!(
                "the pickle repeats its strings into more than {} MB from a {} KB file (a memory bomb, not a model file); refused",
                copy_budget(self.data.len()) >> 20,
                self.data.len() >> 10
            ));
        }
        Ok(())
    }

    fn memo_put(&mut self, k: u64) -> Result<(), String> {
        let v = self.top()?.clone();
        if self.memo.len() >= 10_000_000 {
            return Err("the pickle stores more than ten million values".into());
        }
        self.memo.insert(k, v);
        Ok(())
    }

    fn run(&mut self) -> Result<Value, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(format!("the pickle uses protocol {proto}; scmz reads 0 to 5"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint
                }
                b'.' => return self.pop(),
                b'(' => {
                    if self.marks.len() >= MAX_DEPTH {
                        return Err("the pickle nests deeper than scmz follows".into());
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.count_copy(&v)?;
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
                    self.push(Value::Int(v as i64))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64))?
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(long(&b))?
                }
                0x8b => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(long(&b))?
                }
                b'I' => {
                    let l = self.line()?;
                    let v = match l.as_str() {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        s => Value::Int(
                            s.parse()
                                .map_err(|_| format!("the pickle holds a malformed integer `{s}`"))?,
                        ),
                    };
                    self.push(v)?
                }
                b'L' => {
                    let l = self.line()?;
                    let s = l.trim_end_matches('L');
                    let v = s
                        .parse::<i64>()
                        .map(Value::Int)
                        .unwrap_or(Value::Opaque("int (a big number)".into()));
                    self.push(v)?
                }
                b'F' => {
                    let l = self.line()?;
                    let v = l
                        .parse()
                        .map_err(|_| format!("the pickle holds a malformed float `{l}`"))?;
                    self.push(Value::Float(v))?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.push(Value::Float(v))?
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.text(n)?;
                    self.push(Value::Str(s))?
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.text(n)?;
                    self.push(Value::Str(s))?
                }
                0x8d => {
                    let n = usize::try_from(self.u64()?).map_err(|_| "the pickle holds an impossible length")?;
                    let s = self.text(n)?;
                    self.push(Value::Str(s))?
                }
                b'V' => {
                    let l = self.line()?;
                    self.push(Value::Str(l))?
                }
                b'S' => {
                    let l = self.line()?;
                    let s = l.trim_matches(|c| c == '\'' || c == '"').to_string();
                    self.push(Value::Str(s))?
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Str(String::from_utf8_lossy(&b).into_owned()))?
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Str(String::from_utf8_lossy(&b).into_owned()))?
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                0x8e | 0x96 => {
                    let n = usize::try_from(self.u64()?).map_err(|_| "the pickle holds an impossible length")?;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                b')' => self.push(Value::Tuple(Rc::new(Vec::new())))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::new(items)))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n + self.marks.last().copied().unwrap_or(0) {
                        return Err("the pickle builds a tuple from values it does not have".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(Rc::new(items)))?
                }
                b']' => self.push(Value::List(Rc::new(RefCell::new(Vec::new()))))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))))?
                }
                b'}' => self.push(Value::Dict(Rc::new(RefCell::new(Vec::new()))))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = pairs(items)?;
                    self.push(Value::Dict(Rc::new(RefCell::new(d))))?
                }
                0x8f => self.push(Value::Set(Rc::new(RefCell::new(Vec::new()))))?,
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::Set(Rc::new(RefCell::new(items))))?
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    if let Value::Set(s) = self.target(&items)? {
                        s.borrow_mut().extend(items);
                    }
                }
                b'a' => {
                    let v = self.pop()?;
                    append(&mut self.target(std::slice::from_ref(&v))?, vec![v]);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    append(&mut self.target(&items)?, items);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let mut t = self.target(&[k.clone(), v.clone()])?;
                    set_items(&mut t, vec![(k, v)]);
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let mut t = self.target(&items)?;
                    set_items(&mut t, pairs(items)?);
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = self.u32()? as u64;
                    self.memo_put(k)?
                }
                b'p' => {
                    let l = self.line()?;
                    let k = l.parse().map_err(|_| "the pickle stores under a malformed key")?;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    self.memo_get(k)?
                }
                b'j' => {
                    let k = self.u32()? as u64;
                    self.memo_get(k)?
                }
                b'g' => {
                    let l = self.line()?;
                    let k = l.parse().map_err(|_| "the pickle reads a malformed key")?;
                    self.memo_get(k)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = global(&module, &name)?;
                    self.push(g)?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err("the pickle names a global with something other than text".into());
                    };
                    let g = global(&module, &name)?;
                    self.push(g)?
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = reduce(f, args)?;
                    self.push(v)?
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = reduce(cls, args)?;
                    self.push(v)?
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = reduce(cls, args)?;
                    self.push(v)?
                }
                b'b' => {
                    let state = self.pop()?;
                    let object = self.top()?.class().is_some();
                    match self.target(std::slice::from_ref(&state)) {
                        Ok(_) => build(self.top()?, state)?,
                        // An object kept as data whose state would nest too deep, or comes after
                        // the object was placed elsewhere (a cycle): its state is left out.
                        Err(_) if object => {}
                        Err(e) => return Err(e),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent(pid)?;
                    self.push(v)?
                }
                b'P' => {
                    let l = self.line()?;
                    return Err(format!(
                        "the pickle refers to an outside object `{l}` in text form, which torch never writes"
                    ));
                }
                b'i' | b'o' => {
                    return Err(
                        "the pickle builds objects with the old INST/OBJ instructions, which torch never writes".into(),
                    )
                }
                0x82..=0x84 => {
                    return Err("the pickle uses the copyreg extension registry, which torch never writes".into())
                }
                0x97 | 0x98 => return Err("the pickle uses out-of-band buffers, which torch never writes".into()),
                op => return Err(format!("the pickle holds an unknown instruction (byte 0x{op:02x})")),
            }
        }
    }
}

fn long(b: &[u8]) -> Value {
    if b.len() > 8 {
        return Value::Opaque("int (a big number)".into());
    }
    let neg = b.last().is_some_and(|&x| x & 0x80 != 0);
    let mut buf = [if neg { 0xff } else { 0 }; 8];
    buf[..b.len()].copy_from_slice(b);
    Value::Int(i64::from_le_bytes(buf))
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("the pickle builds a dict from an odd number of values".into());
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn append(target: &mut Value, items: Vec<Value>) {
    if let Value::List(l) = target {
        l.borrow_mut().extend(items);
    }
    // Appending to anything else (an opaque object) changes nothing scmz reads.
}

/// Appends: a key set again is resolved when read (`Value::get`, `Value::entries`), so that
/// each item costs the same however large the dict.
fn set_items(target: &mut Value, items: Vec<(Value, Value)>) {
    if let Value::Dict(d) = target {
        d.borrow_mut().extend(items);
    }
}

/// The value a `module.name` global stands for: allowlisted constructors as markers, anything
/// else opaque; forbidden ones refuse the file.
fn global(module: &str, name: &str) -> Result<Value, String> {
    if forbidden(module, name) {
        return Err(format!(
            "the pickle names `{module}.{name}`, which a model file has no reason to call; it was not run"
        ));
    }
    Ok(Value::Opaque(format!("{module}.{name}").into()))
}

fn tuple_items(args: &Value) -> Result<&[Value], String> {
    match args {
        Value::Tuple(t) => Ok(t),
        _ => Err("the pickle calls a constructor with arguments that are not a tuple".into()),
    }
}

/// `f(*args)` for the allowlisted constructors, rebuilt as data; any other call of a global gives
/// an object kept as data (`object`: its class and arguments; never run).
fn reduce(f: Value, args: Value) -> Result<Value, String> {
    let Value::Opaque(name) = &f else {
        return Ok(Value::Opaque(format!("a call of {}", f.describe()).into()));
    };
    let a = tuple_items(&args)?;
    let v = match &**name {
        "collections.OrderedDict" | "builtins.dict" | "__builtin__.dict" if a.is_empty() => {
            Value::Dict(Rc::new(RefCell::new(Vec::new())))
        }
        // Its default factory is kept by no one: looking up a missing key never calls it here.
        "collections.defaultdict" => Value::Dict(Rc::new(RefCell::new(Vec::new()))),
        "builtins.set" | "builtins.frozenset" | "__builtin__.set" => {
            let items = match a.first() {
                Some(Value::List(l)) => l.borrow().clone(),
                Some(Value::Tuple(t)) => t.to_vec(),
                _ => Vec::new(),
            };
            Value::Set(Rc::new(RefCell::new(items)))
        }
        "builtins.bytearray" | "builtins.bytes" | "__builtin__.bytearray" => match a.first() {
            Some(Value::Bytes(b)) => Value::Bytes(b.clone()),
            None => Value::Bytes(Vec::new()),
            _ => Value::Opaque(name.clone()),
        },
        "_codecs.encode" => match (a.first(), a.get(1).and_then(Value::as_str)) {
            // Protocol 2's form of bytes: their latin-1 decoding, encoded back.
            (Some(Value::Str(s)), Some("latin1" | "latin-1")) => {
                Value::Bytes(s.chars().map(|c| c as u32 as u8).collect())
            }
            _ => Value::Opaque(name.clone()),
        },
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let storage = match a.first() {
                Some(Value::Storage(s)) => s.clone(),
                _ => return Err("the pickle rebuilds a tensor from something other than a storage".into()),
            };
            let ints = |v: Option<&Value>| -> Result<Vec<i64>, String> {
                match v {
                    Some(Value::Tuple(t)) => t
                        .iter()
                        .map(|x| x.as_int().filter(|&i| i >= 0))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| "the pickle gives a tensor a malformed shape or stride".to_string()),
                    _ => Err("the pickle gives a tensor a malformed shape or stride".into()),
                }
            };
            let offset = a.get(1).and_then(Value::as_int).filter(|&o| o >= 0);
            let offset = offset.ok_or("the pickle gives a tensor a malformed offset")?;
            let shape = ints(a.get(2))?;
            let stride = ints(a.get(3))?;
            if shape.len() != stride.len() {
                return Err("the pickle gives a tensor a shape and a stride of different lengths".into());
            }
            Value::Tensor(Rc::new(TensorRef {
                storage,
                offset,
                shape,
                stride,
            }))
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            a.first().cloned().unwrap_or(Value::None)
        }
        "numpy.core.multiarray._reconstruct" | "numpy._core.multiarray._reconstruct" => {
            Value::Array(Rc::new(RefCell::new(Array::Other)))
        }
        "numpy.dtype" => {
            let spec = a.first().and_then(Value::as_str).unwrap_or("");
            Value::NpDtype(Rc::new(RefCell::new(np_dtype(spec))))
        }
        "numpy.core.multiarray.scalar" | "numpy._core.multiarray.scalar" => scalar(a),
        _ => object(name, &args),
    };
    Ok(v)
}

fn np_dtype(spec: &str) -> NpDtype {
    let (order, rest) = match spec.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &spec[1..]),
        _ => ('|', spec),
    };
    let kind = rest.chars().next().unwrap_or('?');
    let n: usize = rest[kind.len_utf8().min(rest.len())..].parse().unwrap_or(0);
    // numpy's `U15` counts characters; its item size counts 4 bytes each.
    let size = if kind == 'U' { n * 4 } else { n };
    NpDtype { kind, size, order }
}

/// `numpy.core.multiarray.scalar(dtype, bytes)`: a number.
fn scalar(a: &[Value]) -> Value {
    let (Some(Value::NpDtype(d)), Some(Value::Bytes(b))) = (a.first(), a.get(1)) else {
        return Value::Opaque("numpy scalar".into());
    };
    let d = d.borrow();
    match number(&d, b) {
        Some(x) if d.kind == 'f' => Value::Float(x),
        Some(x) if d.kind == 'b' => Value::Bool(x != 0.0),
        Some(x) => Value::Int(x as i64),
        None => Value::Opaque("numpy scalar".into()),
    }
}

fn number(d: &NpDtype, b: &[u8]) -> Option<f64> {
    if d.order == '>' || b.len() != d.size {
        return None;
    }
    Some(match (d.kind, d.size) {
        ('f', 4) => f32::from_le_bytes(b.try_into().ok()?) as f64,
        ('f', 8) => f64::from_le_bytes(b.try_into().ok()?),
        ('i', 1) => b[0] as i8 as f64,
        ('i', 2) => i16::from_le_bytes(b.try_into().ok()?) as f64,
        ('i', 4) => i32::from_le_bytes(b.try_into().ok()?) as f64,
        ('i', 8) => i64::from_le_bytes(b.try_into().ok()?) as f64,
        ('u' | 'b', 1) => b[0] as f64,
        ('u', 2) => u16::from_le_bytes(b.try_into().ok()?) as f64,
        ('u', 4) => u32::from_le_bytes(b.try_into().ok()?) as f64,
        ('u', 8) => u64::from_le_bytes(b.try_into().ok()?) as f64,
        _ => return None,
    })
}

/// `obj.__setstate__(state)` for the objects rebuilt here, as data for objects kept as data;
/// other values ignore it.
fn build(target: &mut Value, state: Value) -> Result<(), String> {
    match target {
        Value::Dict(_) => {
            if let Value::Dict(s) = &state {
                let items = s.borrow().clone();
                set_items(target, items);
            } else if target.class().is_some() {
                set_items(target, vec![(Value::Str(STATE.into()), state)]);
            }
        }
        Value::NpDtype(d) => {
            // (version, byte order, subarray, names, fields, item size, alignment, flags)
            if let Value::Tuple(t) = &state {
                let mut d = d.borrow_mut();
                if let Some(o) = t.get(1).and_then(Value::as_str).and_then(|s| s.chars().next()) {
                    d.order = o;
                }
                if let Some(n) = t.get(5).and_then(Value::as_int).filter(|&n| n > 0) {
                    d.size = n as usize;
                }
            }
        }
        Value::Array(arr) => {
            // (version, shape, dtype, is Fortran order, raw bytes or a list of objects)
            let Value::Tuple(t) = &state else {
                return Err("the pickle gives a numpy array a malformed state".into());
            };
            let n: i64 = match t.get(1) {
                Some(Value::Tuple(s)) => s.iter().map(|x| x.as_int().unwrap_or(-1).max(0)).product(),
                _ => return Err("the pickle gives a numpy array a malformed shape".into()),
            };
            let n = n as usize;
            let Some(Value::NpDtype(d)) = t.get(2) else {
                return Err("the pickle gives a numpy array no dtype".into());
            };
            let d = d.borrow().clone();
            *arr.borrow_mut() = match t.get(4) {
                Some(Value::List(items)) => {
                    let items = items.borrow();
                    if let Some(s) = items
                        .iter()
                        .map(|v| v.as_str().map(String::from))
                        .collect::<Option<Vec<_>>>()
                    {
                        Array::Strings(s)
                    } else if let Some(x) = items.iter().map(Value::as_float).collect::<Option<Vec<_>>>() {
                        Array::Numbers(x)
                    } else {
                        Array::Other
                    }
                }
                Some(Value::Bytes(b)) => raw_array(&d, b, n)?,
                Some(Value::Str(s)) => raw_array(&d, &s.chars().map(|c| c as u32 as u8).collect::<Vec<_>>(), n)?,
                _ => Array::Other,
            };
        }
        _ => {}
    }
    Ok(())
}

fn raw_array(d: &NpDtype, b: &[u8], n: usize) -> Result<Array, String> {
    if d.size == 0 || n.checked_mul(d.size) != Some(b.len()) {
        return Err("a numpy array in the pickle holds fewer or more bytes than its shape needs".into());
    }
    if d.order == '>' {
        return Ok(Array::Other);
    }
    Ok(match d.kind {
        'U' => Array::Strings(
            b.chunks(d.size)
                .map(|c| {
                    c.chunks(4)
                        .map(|x| u32::from_le_bytes(x.try_into().expect("4 bytes")))
                        .take_while(|&u| u != 0)
                        .map(|u| char::from_u32(u).unwrap_or('\u{fffd}'))
                        .collect()
                })
                .collect(),
        ),
        'S' => Array::Strings(
            b.chunks(d.size)
                .map(|c| String::from_utf8_lossy(c.split(|&x| x == 0).next().unwrap_or(&[])).into_owned())
                .collect(),
        ),
        _ => match b.chunks(d.size).map(|c| number(d, c)).collect::<Option<Vec<_>>>() {
            Some(x) => Array::Numbers(x),
            None => Array::Other,
        },
    })
}

/// torch's persistent ids: `('storage', <XStorage class>, key, location, numel)`.
fn persistent(pid: Value) -> Result<Value, String> {
    let Value::Tuple(t) = &pid else {
        return Err("the pickle refers to an outside object that is not a torch storage".into());
    };
    if t.first().and_then(Value::as_str) != Some("storage") {
        return Err("the pickle refers to an outside object that is not a torch storage".into());
    }
    let class = match t.get(1) {
        Some(Value::Opaque(n)) => n.to_string(),
        _ => String::new(),
    };
    let dtype = class
        .strip_prefix("torch.")
        .and_then(Dtype::of_storage)
        .ok_or_else(|| format!("the pickle stores a tensor of type `{class}`, which scmz does not read"))?;
    let key = match t.get(2) {
        Some(Value::Str(k)) => k.clone(),
        Some(Value::Int(k)) => k.to_string(),
        _ => return Err("the pickle names a storage without a key".into()),
    };
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("the pickle names a storage `{key}` that is not a plain name"));
    }
    Ok(Value::Storage(Storage { key, dtype }))
}
