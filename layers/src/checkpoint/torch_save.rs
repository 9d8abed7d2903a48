//! Reads the archives PyTorch's `torch.save` writes: a zip file whose `<name>/data.pkl`
//! is a pickle of the saved object, and whose `<name>/data/<key>` entries hold the raw
//! bytes of each tensor storage.
//!
//! The pickle is *interpreted*, never executed: the small virtual machine below knows
//! the opcodes of protocols 2 to 5, rebuilds tensors from `torch._utils._rebuild_tensor_v2`
//! (and the `Parameter` wrappers around it) and keeps every other class or call as an
//! opaque value. So a Lightning checkpoint whose hyper-parameters pickle arbitrary
//! Python objects still reads, and nothing in a file can run code.
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;
use tch::{Kind, Tensor};
use terrahost_plugin_api::{PluginError, Result};

/// Reads the state_dict in the `torch.save` archive at `path`: the saved dict itself, or
/// the dict under `state_dict` (Lightning) or `model` when the file holds a wrapper.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad = |what: String| {
        PluginError::invalid_argument(format!(
            "checkpoint {}: {what}; {}",
            path.display(),
            conversion_hint(path)
        ))
    };
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open it: {e}")))?;
    let mut zip = match zip::ZipArchive::new(file) {
        Ok(z) => z,
        Err(_) => {
            return Err(bad(
                "it is not a zip archive: only the format torch.save has written since PyTorch 1.6 is read \
                 (files saved with _use_new_zipfile_serialization=False or by torch.jit are not)"
                    .into(),
            ))
        }
    };
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().map(|f| f.name().to_owned()))
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .ok_or_else(|| {
            bad("the archive has no <name>/data.pkl, so torch.save did not write it".into())
        })?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_owned();
    if let Ok(mut f) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut order = String::new();
        let _ = f.read_to_string(&mut order);
        if order.trim() != "little" {
            return Err(bad(format!(
                "it was saved on a `{}`-endian machine",
                order.trim()
            )));
        }
    }
    let mut pickle = Vec::new();
    zip.by_name(&pkl_name)
        .and_then(|mut f| f.read_to_end(&mut pickle).map_err(Into::into))
        .map_err(|e| bad(format!("cannot read {pkl_name}: {e}")))?;

    let mut storages = |key: &str| -> std::result::Result<Vec<u8>, String> {
        let name = format!("{prefix}data/{key}");
        let mut f = zip
            .by_name(&name)
            .map_err(|e| format!("storage `{name}` is missing: {e}"))?;
        let mut bytes = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read storage `{name}`: {e}"))?;
        Ok(bytes)
    };
    let root = Unpickler::new(&pickle, &mut storages)
        .run()
        .map_err(|e| bad(format!("cannot unpickle data.pkl: {e}")))?;
    state_dict_of(&root).ok_or_else(|| {
        bad(format!(
            "it holds {}, not a state_dict (a dict of tensors, or a dict with one under `state_dict` or `model`)",
            root.describe()
        ))
    })
}

/// Finds the dict of tensors in a loaded object.
fn state_dict_of(v: &Val) -> Option<Vec<(String, Tensor)>> {
    let Val::Dict(d) = v else { return None };
    let items = d.borrow();
    let tensors: Vec<(String, Tensor)> = items
        .iter()
        .filter_map(|(k, v)| match (k, v) {
            (Val::Str(k), Val::Tensor(t)) => Some((k.clone(), t.shallow_clone())),
            _ => None,
        })
        .collect();
    if !tensors.is_empty() {
        return Some(tensors);
    }
    for wrapper in ["state_dict", "model", "module"] {
        if let Some((_, inner)) = items
            .iter()
            .find(|(k, _)| matches!(k, Val::Str(s) if s == wrapper))
        {
            if let Some(sd) = state_dict_of(inner) {
                return Some(sd);
            }
        }
    }
    None
}

/// A value on the pickle machine's stack. Containers are shared (`Rc<RefCell<..>>`)
/// because pickle memoizes an object before it fills it.
#[derive(Clone)]
enum Val {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Rc<Vec<Val>>),
    List(Rc<RefCell<Vec<Val>>>),
    Dict(Rc<RefCell<Vec<(Val, Val)>>>),
    /// A class or function named by `module.name`, never imported.
    Global(Rc<(String, String)>),
    /// A tensor storage: its element type and the archive entry with its bytes.
    Storage(Kind, Rc<String>),
    Tensor(Rc<Tensor>),
    /// Any other object: the call that would have made it (kept, never run).
    Opaque(Rc<(Val, Val)>),
    Mark,
}

impl Val {
    fn describe(&self) -> String {
        match self {
            Val::None => "None".into(),
            Val::Bool(_) => "a bool".into(),
            Val::Int(_) => "an int".into(),
            Val::Float(f) => format!("the float {f}"),
            Val::Str(_) => "a string".into(),
            Val::Bytes(b) => format!("{} bytes", b.len()),
            Val::Tuple(_) => "a tuple".into(),
            Val::List(_) => "a list".into(),
            Val::Dict(d) => {
                let keys: Vec<String> = d
                    .borrow()
                    .iter()
                    .take(8)
                    .map(|(k, _)| match k {
                        Val::Str(s) => format!("`{s}`"),
                        other => other.describe(),
                    })
                    .collect();
                format!("a dict with keys {}", keys.join(", "))
            }
            Val::Global(g) => format!("the class {}.{}", g.0, g.1),
            Val::Storage(..) => "a storage".into(),
            Val::Tensor(_) => "a single tensor".into(),
            Val::Opaque(o) => match &o.0 {
                Val::Global(g) => format!("a {}.{} object", g.0, g.1),
                _ => "an object".into(),
            },
            Val::Mark => "a mark".into(),
        }
    }

    fn int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            Val::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    fn ints(&self) -> Option<Vec<i64>> {
        match self {
            Val::Tuple(t) => t.iter().map(Val::int).collect(),
            Val::List(l) => l.borrow().iter().map(Val::int).collect(),
            _ => None,
        }
    }
}

/// The element type of a typed storage class (`torch.FloatStorage`, ...).
fn storage_kind(class: &str) -> Option<Kind> {
    Some(match class {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        "ComplexFloatStorage" => Kind::ComplexFloat,
        "ComplexDoubleStorage" => Kind::ComplexDouble,
        _ => return None,
    })
}

type StorageReader<'a> = dyn FnMut(&str) -> std::result::Result<Vec<u8>, String> + 'a;

struct Unpickler<'a, 'r> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Val>,
    memo: HashMap<u32, Val>,
    read_storage: &'r mut StorageReader<'r>,
    /// Storages already read, as flat 1-D tensors, so views of one storage share it.
    storages: HashMap<String, Tensor>,
}

type R<T> = std::result::Result<T, String>;

impl<'a, 'r> Unpickler<'a, 'r> {
    fn new(data: &'a [u8], read_storage: &'r mut StorageReader<'r>) -> Self {
        Self {
            data,
            pos: 0,
            stack: Vec::new(),
            memo: HashMap::new(),
            read_storage,
            storages: HashMap::new(),
        }
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or("truncated pickle")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> R<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn line(&mut self) -> R<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated pickle (line)")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> R<Val> {
        let b = self.take(n)?;
        Ok(Val::Str(
            String::from_utf8(b.to_vec()).map_err(|e| format!("invalid UTF-8 string: {e}"))?,
        ))
    }

    fn pop(&mut self) -> R<Val> {
        self.stack.pop().ok_or_else(|| "stack underflow".to_owned())
    }

    fn top(&mut self) -> R<&mut Val> {
        self.stack
            .last_mut()
            .ok_or_else(|| "stack underflow".to_owned())
    }

    /// Pops everything above the topmost mark, and the mark.
    fn pop_mark(&mut self) -> R<Vec<Val>> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Val::Mark))
            .ok_or("no mark on the stack")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn run(mut self) -> R<Val> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(format!("pickle protocol {proto} is newer than 5"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Val::Mark),
                b'}' => self.stack.push(Val::Dict(Rc::default())),
                b']' => self.stack.push(Val::List(Rc::default())),
                b')' => self.stack.push(Val::Tuple(Rc::new(Vec::new()))),
                0x8f => self.stack.push(Val::List(Rc::default())), // EMPTY_SET, kept as a list
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Val::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let at = self.stack.len().checked_sub(n).ok_or("stack underflow")?;
                    let items = self.stack.split_off(at);
                    self.stack.push(Val::Tuple(Rc::new(items)));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Val::List(Rc::new(RefCell::new(items))));
                }
                0x91 => {
                    let items = self.pop_mark()?; // FROZENSET
                    self.stack.push(Val::List(Rc::new(RefCell::new(items))));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = items
                        .chunks(2)
                        .filter(|c| c.len() == 2)
                        .map(|c| (c[0].clone(), c[1].clone()))
                        .collect();
                    self.stack.push(Val::Dict(Rc::new(RefCell::new(pairs))));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'N' => self.stack.push(Val::None),
                0x88 => self.stack.push(Val::Bool(true)),
                0x89 => self.stack.push(Val::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Val::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Val::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Val::Int(v as i64));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(format!("an integer of {n} bytes does not fit in 64 bits"));
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.stack.push(Val::Int(i64::from_le_bytes(buf)));
                }
                b'I' | b'L' => {
                    let l = self.line()?;
                    let t = l.trim_end_matches('L');
                    let v = match t {
                        "01" => Val::Bool(true),
                        "00" => Val::Bool(false),
                        _ => Val::Int(t.parse().map_err(|_| format!("bad integer `{l}`"))?),
                    };
                    self.stack.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.stack.push(Val::Float(v));
                }
                b'F' => {
                    let l = self.line()?;
                    self.stack.push(Val::Float(
                        l.parse().map_err(|_| format!("bad float `{l}`"))?,
                    ));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                b'T' | b'U' | b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'U' | b'C' => self.u8()? as usize,
                        b'T' | b'B' => self.u32()? as usize,
                        _ => self.u64()? as usize,
                    };
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Val::Bytes(b));
                }
                b'V' => {
                    let l = self.line()?;
                    self.stack.push(Val::Str(l));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Val::Global(Rc::new((module, name))));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Val::Str(m), Val::Str(n)) => self.stack.push(Val::Global(Rc::new((m, n)))),
                        _ => return Err("STACK_GLOBAL without two strings".into()),
                    }
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'p' => {
                    let i: u32 = self.line()?.parse().map_err(|_| "bad PUT index")?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' | b'j' | b'g' => {
                    let i = match op {
                        b'h' => self.u8()? as u32,
                        b'j' => self.u32()?,
                        _ => self.line()?.parse().map_err(|_| "bad GET index")?,
                    };
                    let v = self
                        .memo
                        .get(&i)
                        .cloned()
                        .ok_or_else(|| format!("memo {i} is not set"))?;
                    self.stack.push(v);
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.stack.push(v);
                }
                b'P' => return Err("text persistent ids are not written by torch.save".into()),
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(func, args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.new_object(cls, args);
                    self.stack.push(v);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.new_object(cls, args);
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD sets an object's state (`__setstate__`): OrderedDict metadata,
                    // a Parameter's attributes. Nothing here needs it.
                    self.pop()?;
                }
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {}",
                        self.pos - 1
                    ))
                }
            }
        }
    }

    fn append(&mut self, items: Vec<Val>) -> R<()> {
        match self.top()? {
            Val::List(l) => {
                l.borrow_mut().extend(items);
                Ok(())
            }
            // Appending to an opaque object (a list subclass): ignore.
            Val::Opaque(_) => Ok(()),
            other => Err(format!("APPEND to {}", other.describe())),
        }
    }

    fn set_items(&mut self, items: Vec<Val>) -> R<()> {
        match self.top()? {
            Val::Dict(d) => {
                let mut d = d.borrow_mut();
                for kv in items.chunks(2) {
                    if let [k, v] = kv {
                        d.push((k.clone(), v.clone()));
                    }
                }
                Ok(())
            }
            Val::Opaque(_) => Ok(()),
            other => Err(format!("SETITEM on {}", other.describe())),
        }
    }

    /// `('storage', storage_type, key, location, numel)`: the storage's element type
    /// comes from its class; the bytes are read when a tensor first uses it.
    fn persistent_load(&mut self, pid: Val) -> R<Val> {
        let Val::Tuple(t) = pid else {
            return Err("persistent id is not a tuple".into());
        };
        match t.as_slice() {
            [Val::Str(tag), Val::Global(class), Val::Str(key), ..] if tag == "storage" => {
                let kind = storage_kind(&class.1)
                    .ok_or_else(|| format!("unsupported storage type {}.{}", class.0, class.1))?;
                Ok(Val::Storage(kind, Rc::new(key.clone())))
            }
            _ => Err("persistent id is not a ('storage', ...) tuple".into()),
        }
    }

    fn new_object(&mut self, cls: Val, args: Val) -> Val {
        match &cls {
            Val::Global(g) if g.0 == "collections" && g.1 == "OrderedDict" => {
                Val::Dict(Rc::default())
            }
            _ => Val::Opaque(Rc::new((cls, args))),
        }
    }

    fn reduce(&mut self, func: Val, args: Val) -> R<Val> {
        let Val::Global(g) = &func else {
            return Ok(Val::Opaque(Rc::new((func, args))));
        };
        let argv: Vec<Val> = match &args {
            Val::Tuple(t) => t.as_ref().clone(),
            _ => Vec::new(),
        };
        match (g.0.as_str(), g.1.as_str()) {
            ("collections", "OrderedDict") => Ok(Val::Dict(Rc::default())),
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                self.rebuild_tensor(&argv)
            }
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state") => {
                Ok(argv.into_iter().next().unwrap_or(Val::None))
            }
            // A tensor subclass: `(func, type, args, state)`; rebuild with `func(*args)`.
            ("torch._tensor", "_rebuild_from_type_v2")
            | ("torch._tensor", "_rebuild_from_type") => match argv.as_slice() {
                [f, _, a, ..] => self.reduce(f.clone(), a.clone()),
                _ => Err("_rebuild_from_type_v2 with too few arguments".into()),
            },
            _ => Ok(Val::Opaque(Rc::new((func, args)))),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks, ...)`.
    fn rebuild_tensor(&mut self, argv: &[Val]) -> R<Val> {
        let (Some(Val::Storage(kind, key)), Some(offset), Some(size), Some(stride)) = (
            argv.first(),
            argv.get(1).and_then(Val::int),
            argv.get(2).and_then(Val::ints),
            argv.get(3).and_then(Val::ints),
        ) else {
            return Err("_rebuild_tensor_v2 with unexpected arguments".into());
        };
        let storage = match self.storages.get(key.as_str()) {
            Some(s) => s.shallow_clone(),
            None => {
                let bytes = (self.read_storage)(key)?;
                let elt = kind.elt_size_in_bytes();
                if bytes.len() % elt != 0 {
                    return Err(format!(
                        "storage `{key}` has {} bytes, not a multiple of {elt}",
                        bytes.len()
                    ));
                }
                let numel = (bytes.len() / elt) as i64;
                let s =
                    Tensor::f_from_data_size(&bytes, &[numel], *kind).map_err(|e| e.to_string())?;
                self.storages.insert(key.to_string(), s.shallow_clone());
                s
            }
        };
        // The view the tensor was, copied out so that it owns contiguous memory.
        let t = storage
            .f_as_strided(&size, &stride, Some(offset))
            .and_then(|v| v.f_contiguous())
            .map_err(|e| {
                format!("tensor of size {size:?} does not fit its storage `{key}`: {e}")
            })?;
        Ok(Val::Tensor(Rc::new(t)))
    }
}

/// The command that converts a `torch.save` checkpoint at `path` into `.safetensors`,
/// for the errors that cannot read one.
pub fn conversion_hint(path: &Path) -> String {
    format!(
        "convert it with python -c \"import torch, safetensors.torch as st; sd = torch.load('{}', map_location='cpu'); \
         sd = sd.get('state_dict', sd); st.save_file({{k: v.contiguous() for k, v in sd.items()}}, 'model.safetensors')\"",
        path.display()
    )
}
