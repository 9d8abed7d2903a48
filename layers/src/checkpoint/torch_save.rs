//! Reads the archives PyTorch's `torch.save` writes: a zip file whose `<name>/data.pkl`
//! is a pickle of the saved object, and whose `<name>/data/<key>` entries hold the raw
//! bytes of each tensor storage.
//!
//! The pickle is *interpreted*, never executed: the small virtual machine below knows
//! the opcodes of protocols 2 to 5, rebuilds tensors from `torch._utils._rebuild_tensor_v2`
//! (and the `Parameter` wrappers around it) and keeps every other class or call as an
//! opaque value. So a Lightning checkpoint whose hyper-parameters pickle arbitrary
//! Python objects still reads, and nothing in a file can run code.
//!
//! The file may come from a stranger, so the reader is built not to crash or balloon:
//!
//! - Nothing recurses on the input's depth. The pickle machine has its own stack; the
//!   search for the state_dict uses an explicit stack and a visited set (a dict may hold
//!   itself); containers drop iteratively ([`Items`], [`Pairs`]); cycles are broken when
//!   the machine is dropped.
//! - Memo references (`GET`, `DUP`, `MEMOIZE`) share a value (`Rc`), never copy it.
//! - Every size the file declares is checked before anything is allocated: zip entry
//!   sizes against the file and the budget, a storage's element count times its element
//!   size against its entry's bytes, and each tensor's offset, sizes and strides
//!   against its storage (non-negative, `checked_mul`/`checked_add`).
//! - Everything the reader allocates on the file's behalf is charged to one budget
//!   ([`Budget`]): decompressed entries (read through `take`, never trusting a header),
//!   the pickle machine's values and strings, and copies of strided views. See
//!   [`default_budget`] for the formula and [`BUDGET_ENV`] to change it.
//! - A view whose elements overlap (stride 0, say) stays a view over its storage, as
//!   libtorch keeps it, instead of being materialised.
//! - Tensors are built with tch's fallible `f_*` calls only, and libtorch's messages are
//!   cut to their first line, so no C++ stack trace reaches the user. Every error is one
//!   line that names the file, the zip entry and the problem.
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek};
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::rc::Rc;
use tch::{Device, Kind, Tensor};
use terrahost_plugin_api::{PluginError, Result};

/// The environment variable that sets the read budget, in MiB (a whole number). When it
/// is unset, the budget is [`default_budget`] of the file's size.
pub const BUDGET_ENV: &str = "TERRAHOST_CHECKPOINT_BUDGET_MB";

/// The part of the default budget that does not depend on the file's size.
pub const BUDGET_FLOOR: u64 = 64 << 20;

/// How many times the file's size the default budget allows on top of [`BUDGET_FLOOR`].
pub const BUDGET_FILE_MULTIPLE: u64 = 4;

/// The default read budget for a file of `file_size` bytes:
/// `BUDGET_FLOOR + BUDGET_FILE_MULTIPLE * file_size` = 64 MiB + 4 x the file's size.
///
/// `torch.save` stores storages uncompressed, so the tensors a file declares take at
/// most its size; their bytes are charged once (views share them), the pickle and its
/// values take a fraction of it, and copies of strided views take at most their
/// storage's size again. A file that needs more than that is compressed far beyond
/// what `torch.save` writes (a zip bomb), or declares more than it holds.
pub fn default_budget(file_size: u64) -> u64 {
    BUDGET_FLOOR.saturating_add(file_size.saturating_mul(BUDGET_FILE_MULTIPLE))
}

/// The budget for a file of `file_size` bytes: [`BUDGET_ENV`] when set, else
/// [`default_budget`].
fn budget_from_env(file_size: u64) -> std::result::Result<u64, String> {
    match std::env::var(BUDGET_ENV) {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(|mb| mb.saturating_mul(1 << 20))
            .map_err(|_| format!("{BUDGET_ENV}=`{v}` is not a whole number of MiB; unset it or set e.g. {BUDGET_ENV}=4096")),
        Err(_) => Ok(default_budget(file_size)),
    }
}

/// Reads the state_dict in the `torch.save` archive at `path`: the saved dict itself, or
/// the dict under `state_dict` (Lightning) or `model` when the file holds a wrapper.
/// `budget` is the read budget in bytes; `None`: [`BUDGET_ENV`] when set, else
/// [`default_budget`] of the file's size.
pub fn read_state_dict_with_budget(
    path: &Path,
    budget: Option<u64>,
) -> Result<Vec<(String, Tensor)>> {
    // Defence in depth: every path below returns errors; should a dependency panic on
    // some input anyway, the caller gets an error rather than an unwinding thread.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(path, budget))) {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            Err(PluginError::invalid_argument(format!(
                "checkpoint {}: the reader failed on it ({}); the file is corrupt (please report it to terrahost)",
                path.display(),
                first_line(what)
            )))
        }
    }
}

fn read(path: &Path, budget: Option<u64>) -> Result<Vec<(String, Tensor)>> {
    let bad = |what: String| {
        PluginError::invalid_argument(format!(
            "checkpoint {}: {}",
            path.display(),
            first_line(&what)
        ))
    };
    let mut file = File::open(path).map_err(|e| bad(format!("cannot open it: {e}")))?;
    let file_size = file
        .metadata()
        .map_err(|e| bad(format!("cannot read its size: {e}")))?
        .len();
    if file_size == 0 {
        return Err(bad(
            "the file is empty (0 bytes): it was cut short or never written; download or save it again".into(),
        ));
    }
    let limit = match budget {
        Some(b) => b,
        None => budget_from_env(file_size).map_err(bad)?,
    };
    let budget = Budget::new(limit, budget.is_some());
    let mut head = [0u8; 4];
    let n = read_up_to(&mut file, &mut head);
    let head = &head[..n];
    if file.rewind().is_err() {
        return Err(bad("cannot seek in it".into()));
    }
    let zip = match zip::ZipArchive::new(file) {
        Ok(z) => z,
        Err(e) if head.starts_with(b"PK") => {
            let e = e.to_string();
            return Err(bad(if e.contains("central directory end") {
                "the zip archive is truncated (its central directory is missing): the file was cut short; \
                 download it again"
                    .into()
            } else {
                format!(
                    "the zip archive is truncated or corrupt ({e}): the file was cut short or damaged; \
                     download it again"
                )
            }));
        }
        Err(_) => {
            return Err(bad(format!(
                "it is not a zip archive: only the format torch.save has written since PyTorch 1.6 is read \
                 (files saved with _use_new_zipfile_serialization=False or by torch.jit are not); {}",
                conversion_hint(path)
            )))
        }
    };
    let mut archive = Archive::new(zip, file_size, &budget).map_err(bad)?;
    let pkl_name = archive
        .names()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .min()
        .map(str::to_owned)
        .ok_or_else(|| {
            bad("the zip archive has no <name>/data.pkl, so torch.save did not write it".into())
        })?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_owned();
    let order_name = format!("{prefix}byteorder");
    if archive.entries.contains_key(&order_name) {
        let order = archive.read_small(&order_name, 64, &budget).map_err(bad)?;
        let order = String::from_utf8_lossy(&order);
        if order.trim() != "little" {
            return Err(bad(format!(
                "{order_name}: it was saved on a `{}`-endian machine; {}",
                order.trim().chars().take(16).collect::<String>(),
                conversion_hint(path)
            )));
        }
    }
    let pickle = archive.read_all(&pkl_name, &budget).map_err(bad)?;

    let mut machine = Unpickler::new(&pickle, &mut archive, &budget, prefix);
    let root = machine.run().map_err(|e| bad(format!("{pkl_name}: {e}")))?;
    let found = state_dict_of(&root);
    let described = if found.is_none() {
        root.describe()
    } else {
        String::new()
    };
    drop(root);
    // Breaks reference cycles (a dict that holds itself) so that nothing leaks.
    drop(machine);
    found.ok_or_else(|| {
        bad(format!(
            "{pkl_name}: it holds {described}, not a state_dict (a dict of tensors, or a dict with one under \
             `state_dict` or `model`)"
        ))
    })
}

/// Reads as many bytes as `buf` holds, or fewer at the end of the file.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// The first line of a message (libtorch appends C++ stack frames to its errors).
fn first_line(s: &str) -> String {
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    if line.len() > 400 {
        let mut end = 400;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &line[..end])
    } else {
        line.to_owned()
    }
}

fn tch_err(e: tch::TchError) -> String {
    format!("libtorch refused it: {}", first_line(&e.to_string()))
}

/// What may still be allocated on the file's behalf, in bytes.
struct Budget {
    limit: u64,
    used: Cell<u64>,
    explicit: bool,
}

impl Budget {
    fn new(limit: u64, explicit: bool) -> Self {
        Self {
            limit,
            used: Cell::new(0),
            explicit,
        }
    }

    fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used.get())
    }

    fn fits(&self, n: u64) -> bool {
        n <= self.remaining()
    }

    /// Charges `n` bytes for `what`, or says why it does not fit.
    fn charge(&self, n: u64, what: impl FnOnce() -> String) -> R<()> {
        if !self.fits(n) {
            return Err(self.over(n, what()));
        }
        self.used.set(self.used.get() + n);
        Ok(())
    }

    fn over(&self, n: u64, what: String) -> String {
        let how = if self.explicit {
            "the budget passed by the caller".to_owned()
        } else if std::env::var_os(BUDGET_ENV).is_some() {
            format!("set by {BUDGET_ENV}")
        } else {
            "64 MiB + 4 x the file's size".to_owned()
        };
        format!(
            "{what} needs {n} bytes, more than the {} bytes left of the read budget ({} bytes, {how}): \
             the file asks for far more memory than its size justifies (a zip bomb, a forged size or a \
             pickle that builds huge structures); if you trust it, raise the budget with {BUDGET_ENV}",
            self.remaining(),
            self.limit
        )
    }
}

/// One zip member: where its bytes are and what its headers declare.
struct Entry {
    index: usize,
    /// The size its headers declare once decompressed.
    size: u64,
}

/// The zip archive, with every member checked against the file before it is read.
struct Archive {
    zip: zip::ZipArchive<File>,
    entries: HashMap<String, Entry>,
}

impl Archive {
    fn new(mut zip: zip::ZipArchive<File>, file_size: u64, budget: &Budget) -> R<Self> {
        let mut entries = HashMap::new();
        for index in 0..zip.len() {
            let f = zip.by_index_raw(index).map_err(|e| {
                format!(
                    "zip entry #{index} cannot be read ({e}): the file is truncated or corrupt; download it again"
                )
            })?;
            let name = f.name().to_owned();
            let shown = || name.chars().take(120).collect::<String>();
            let stored = match f.compression() {
                zip::CompressionMethod::Stored => true,
                zip::CompressionMethod::Deflated => false,
                other => {
                    return Err(format!(
                        "zip entry `{}` uses compression {other:?}; torch.save writes entries uncompressed \
                         (deflate is read too)",
                        shown()
                    ))
                }
            };
            if has_aes_field(f.extra_data()) {
                return Err(format!(
                    "zip entry `{}` is encrypted; torch.save never encrypts",
                    shown()
                ));
            }
            let end = f.data_start().checked_add(f.compressed_size());
            if end.map_or(true, |e| e > file_size) {
                return Err(format!(
                    "zip entry `{}` declares {} bytes at offset {}, past the end of the {file_size}-byte file: \
                     the file is truncated or corrupt; download it again",
                    shown(),
                    f.compressed_size(),
                    f.data_start()
                ));
            }
            if stored && f.size() != f.compressed_size() {
                return Err(format!(
                    "zip entry `{}` is stored uncompressed but declares {} bytes for {} stored ones",
                    shown(),
                    f.size(),
                    f.compressed_size()
                ));
            }
            let size = f.size();
            if size > budget.limit {
                return Err(budget.over(
                    size,
                    format!("zip entry `{}` (as its header declares)", shown()),
                ));
            }
            drop(f);
            entries.insert(name, Entry { index, size });
        }
        Ok(Self { zip, entries })
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    fn entry(&self, name: &str) -> R<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| format!("zip entry `{name}` is missing from the archive"))
    }

    /// Reads an entry of at most `max` bytes (metadata such as `byteorder`).
    fn read_small(&mut self, name: &str, max: u64, budget: &Budget) -> R<Vec<u8>> {
        let size = self.entry(name)?.size;
        if size > max {
            return Err(format!(
                "zip entry `{name}` declares {size} bytes; at most {max} are expected"
            ));
        }
        self.read_all(name, budget)
    }

    /// Reads a whole entry, charging its declared size to `budget` first.
    fn read_all(&mut self, name: &str, budget: &Budget) -> R<Vec<u8>> {
        let size = self.entry(name)?.size;
        budget.charge(size, || format!("zip entry `{name}`"))?;
        // Within the budget, so within what may be allocated.
        let mut buf = vec![0u8; size as usize];
        self.read_exact(name, &mut buf)?;
        Ok(buf)
    }

    /// Fills `buf` with the entry's bytes, which must be exactly `buf.len()`: reading
    /// stops one byte past that (`take`), whatever the headers say, so a zip bomb stops
    /// there.
    fn read_exact(&mut self, name: &str, buf: &mut [u8]) -> R<()> {
        let index = self.entry(name)?.index;
        let f = self
            .zip
            .by_index(index)
            .map_err(|e| format!("zip entry `{name}` cannot be read: {e}"))?;
        let mut r = f.take(buf.len() as u64 + 1);
        r.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format!(
                    "zip entry `{name}` is truncated: it holds fewer than the {} bytes it declares; \
                     download the file again",
                    buf.len()
                )
            } else {
                format!("zip entry `{name}` cannot be read: {e}")
            }
        })?;
        let mut one = [0u8; 1];
        match r.read(&mut one) {
            Ok(0) => Ok(()),
            Ok(_) => Err(format!(
                "zip entry `{name}` decompresses to more than the {} bytes it declares (a zip bomb or a \
                 forged header); refused",
                buf.len()
            )),
            Err(e) => Err(format!("zip entry `{name}` is corrupt: {e}")),
        }
    }
}

/// Whether a zip extra field holds an AES header (0x9901), which the zip crate would
/// need a password for.
fn has_aes_field(mut extra: &[u8]) -> bool {
    while extra.len() >= 4 {
        let id = u16::from_le_bytes([extra[0], extra[1]]);
        let len = u16::from_le_bytes([extra[2], extra[3]]) as usize;
        if id == 0x9901 {
            return true;
        }
        extra = extra.get(4 + len..).unwrap_or(&[]);
    }
    false
}

/// Finds the dict of tensors in a loaded object: the object itself, or the first that
/// the wrapper keys (`state_dict`, `model`, `module`) lead to, depth first. An explicit
/// stack and a visited set: a dict may hold itself, and wrappers may nest deeply.
fn state_dict_of(root: &Val) -> Option<Vec<(String, Tensor)>> {
    const WRAPPERS: [&str; 3] = ["state_dict", "model", "module"];
    let mut seen: HashSet<*const RefCell<Pairs>> = HashSet::new();
    let mut todo = vec![root.clone()];
    while let Some(v) = todo.pop() {
        let Val::Dict(d) = &v else { continue };
        if !seen.insert(Rc::as_ptr(d)) {
            continue;
        }
        let items = d.borrow();
        let tensors: Vec<(String, Tensor)> = items
            .iter()
            .filter_map(|(k, v)| match (k, v) {
                (Val::Str(k), Val::Tensor(t)) => Some((k.to_string(), t.shallow_clone())),
                _ => None,
            })
            .collect();
        if !tensors.is_empty() {
            return Some(tensors);
        }
        // Pushed in reverse so that `state_dict` is tried first.
        for wrapper in WRAPPERS.iter().rev() {
            if let Some((_, inner)) = items
                .iter()
                .find(|(k, _)| matches!(k, Val::Str(s) if &**s == *wrapper))
            {
                todo.push(inner.clone());
            }
        }
    }
    None
}

/// The items of a tuple, list or opaque object. Dropped iteratively: a value nested a
/// million deep must not overflow the stack when it goes.
#[derive(Default)]
struct Items(Vec<Val>);

/// The items of a dict, in insertion order. Dropped iteratively, like [`Items`].
#[derive(Default)]
struct Pairs(Vec<(Val, Val)>);

impl Deref for Items {
    type Target = Vec<Val>;
    fn deref(&self) -> &Vec<Val> {
        &self.0
    }
}

impl DerefMut for Items {
    fn deref_mut(&mut self) -> &mut Vec<Val> {
        &mut self.0
    }
}

impl Deref for Pairs {
    type Target = Vec<(Val, Val)>;
    fn deref(&self) -> &Vec<(Val, Val)> {
        &self.0
    }
}

impl DerefMut for Pairs {
    fn deref_mut(&mut self) -> &mut Vec<(Val, Val)> {
        &mut self.0
    }
}

impl Drop for Items {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            drop_iteratively(std::mem::take(&mut self.0));
        }
    }
}

impl Drop for Pairs {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let mut work = Vec::with_capacity(self.0.len() * 2);
            for (k, v) in self.0.drain(..) {
                work.push(k);
                work.push(v);
            }
            drop_iteratively(work);
        }
    }
}

/// Drops values with a work list instead of recursion: a container this code owns alone
/// hands its children to the list before it goes, so each drop is one level deep.
fn drop_iteratively(mut work: Vec<Val>) {
    while let Some(mut v) = work.pop() {
        match &mut v {
            Val::Tuple(rc) | Val::Opaque(rc) => {
                if let Some(items) = Rc::get_mut(rc) {
                    work.append(&mut items.0);
                }
            }
            Val::List(rc) => {
                if let Some(cell) = Rc::get_mut(rc) {
                    work.append(&mut cell.get_mut().0);
                }
            }
            Val::Dict(rc) => {
                if let Some(cell) = Rc::get_mut(rc) {
                    for (k, v) in cell.get_mut().0.drain(..) {
                        work.push(k);
                        work.push(v);
                    }
                }
            }
            _ => {}
        }
        // `v` goes here, empty or still shared.
    }
}

/// The storage of a persistent id: its element type, its zip entry and its element count.
struct StorageRef {
    kind: Kind,
    key: String,
    numel: i64,
}

/// A value on the pickle machine's stack. Everything but scalars is shared (`Rc`): pickle
/// memoizes an object before it fills it, and a memo reference must not copy.
#[derive(Clone)]
enum Val {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Items>),
    List(Rc<RefCell<Items>>),
    Dict(Rc<RefCell<Pairs>>),
    /// A class or function named by `module.name`, never imported.
    Global(Rc<(String, String)>),
    /// A tensor storage, read when a tensor first uses it.
    Storage(Rc<StorageRef>),
    Tensor(Rc<Tensor>),
    /// Any other object: the call that would have made it, `[callable, args]` (kept,
    /// never run).
    Opaque(Rc<Items>),
    Mark,
}

const VAL_COST: u64 = std::mem::size_of::<Val>() as u64;
/// What the machine charges for a value on its stack or in its memo: the slot and the
/// slack of a growing `Vec` or `HashMap`.
const SLOT_COST: u64 = 2 * VAL_COST;
/// What it charges for each item moved into a container: the item and its buffer's
/// slack (a list of one item has room for four).
const ITEM_COST: u64 = 4 * VAL_COST;
/// What it charges for a new list or dict: its `Rc<RefCell<..>>` header, the
/// allocator's overhead and its slot in `Unpickler::containers`.
const CONTAINER_COST: u64 = 128;

/// At most this many characters of a string go into a message.
fn shorten(s: &str) -> String {
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s.to_owned()
    }
}

impl Val {
    /// What the value is, in a few words; never looks deeper than one level.
    fn describe(&self) -> String {
        match self {
            Val::Dict(d) => {
                let d = d.borrow();
                let keys: Vec<String> = d
                    .iter()
                    .take(8)
                    .map(|(k, _)| match k {
                        Val::Str(s) => format!("`{}`", shorten(s)),
                        other => other.kind_name(),
                    })
                    .collect();
                if keys.is_empty() {
                    "an empty dict".into()
                } else {
                    format!("a dict with keys {}", keys.join(", "))
                }
            }
            other => other.kind_name(),
        }
    }

    fn kind_name(&self) -> String {
        match self {
            Val::None => "None".into(),
            Val::Bool(_) => "a bool".into(),
            Val::Int(_) => "an int".into(),
            Val::Float(f) => format!("the float {f}"),
            Val::Str(_) => "a string".into(),
            Val::Bytes(b) => format!("{} bytes", b.len()),
            Val::Tuple(_) => "a tuple".into(),
            Val::List(_) => "a list".into(),
            Val::Dict(_) => "a dict".into(),
            Val::Global(g) => format!("the class {}.{}", shorten(&g.0), shorten(&g.1)),
            Val::Storage(..) => "a storage".into(),
            Val::Tensor(_) => "a single tensor".into(),
            Val::Opaque(o) => match o.first() {
                Some(Val::Global(g)) => format!("a {}.{} object", shorten(&g.0), shorten(&g.1)),
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

struct Unpickler<'a, 'r> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Val>,
    memo: HashMap<u32, Val>,
    archive: &'r mut Archive,
    budget: &'r Budget,
    /// The archive's `<name>/` prefix.
    prefix: String,
    /// Storages already read, as flat 1-D tensors, so views of one storage share it.
    storages: HashMap<String, (Kind, Tensor)>,
    /// Every list and dict made, so that dropping the machine can empty them and break
    /// the cycles a pickle can build (a dict that holds itself).
    containers: Vec<Val>,
}

type R<T> = std::result::Result<T, String>;

impl Drop for Unpickler<'_, '_> {
    fn drop(&mut self) {
        for c in &self.containers {
            match c {
                Val::List(l) => {
                    if let Ok(mut l) = l.try_borrow_mut() {
                        let items = std::mem::take(&mut l.0);
                        drop(l);
                        drop_iteratively(items);
                    }
                }
                Val::Dict(d) => {
                    if let Ok(mut d) = d.try_borrow_mut() {
                        let pairs = std::mem::take(&mut d.0);
                        drop(d);
                        drop(Pairs(pairs));
                    }
                }
                _ => {}
            }
        }
    }
}

impl<'a, 'r> Unpickler<'a, 'r> {
    fn new(data: &'a [u8], archive: &'r mut Archive, budget: &'r Budget, prefix: String) -> Self {
        Self {
            data,
            pos: 0,
            stack: Vec::new(),
            memo: HashMap::new(),
            archive,
            budget,
            prefix,
            storages: HashMap::new(),
            containers: Vec::new(),
        }
    }

    /// Charges `n` bytes of the machine's own memory.
    fn charge(&self, n: u64) -> R<()> {
        let at = self.pos;
        self.budget
            .charge(n, || format!("the pickle's values (at byte {at})"))
    }

    fn push(&mut self, v: Val) -> R<()> {
        self.charge(SLOT_COST)?;
        self.stack.push(v);
        Ok(())
    }

    /// A new list or dict, remembered so that its cycles can be broken.
    fn container(&mut self, v: Val) -> R<Val> {
        self.charge(CONTAINER_COST)?;
        self.containers.push(v.clone());
        Ok(v)
    }

    fn new_list(&mut self, items: Vec<Val>) -> R<Val> {
        self.container(Val::List(Rc::new(RefCell::new(Items(items)))))
    }

    fn new_dict(&mut self, pairs: Vec<(Val, Val)>) -> R<Val> {
        self.container(Val::Dict(Rc::new(RefCell::new(Pairs(pairs)))))
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("truncated pickle: {n} bytes wanted at byte {}", self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> R<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> R<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> R<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length that must fit in what is left of the pickle.
    fn len_of(&self, n: u64) -> R<usize> {
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.data.len() - self.pos)
            .ok_or_else(|| {
                format!(
                    "truncated pickle: a length of {n} bytes at byte {} runs past its end",
                    self.pos
                )
            })
    }

    fn line(&mut self) -> R<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated pickle (a line without its end)")?;
        self.charge(n as u64)?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> R<Val> {
        let at = self.pos;
        let b = self.take(n)?;
        self.charge(n as u64)?;
        let s = std::str::from_utf8(b)
            .map_err(|e| format!("invalid UTF-8 string at byte {at}: {e}"))?;
        Ok(Val::Str(Rc::from(s)))
    }

    fn pop(&mut self) -> R<Val> {
        self.stack
            .pop()
            .ok_or_else(|| format!("stack underflow at byte {}", self.pos))
    }

    fn top(&mut self) -> R<&mut Val> {
        let at = self.pos;
        self.stack
            .last_mut()
            .ok_or_else(|| format!("stack underflow at byte {at}"))
    }

    /// Pops everything above the topmost mark, and the mark, charging each as an item
    /// of the container it goes into.
    fn pop_mark(&mut self) -> R<Vec<Val>> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Val::Mark))
            .ok_or_else(|| format!("no mark on the stack at byte {}", self.pos))?;
        self.charge((self.stack.len() - at - 1) as u64 * ITEM_COST)?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn pairs(&self, items: Vec<Val>) -> R<Vec<(Val, Val)>> {
        if items.len() % 2 != 0 {
            return Err(format!(
                "an odd number of items ({}) for a dict at byte {}",
                items.len(),
                self.pos
            ));
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        Ok(pairs)
    }

    fn memo_put(&mut self, i: u32) -> R<()> {
        self.charge(SLOT_COST)?;
        let v = self.top()?.clone();
        self.memo.insert(i, v);
        Ok(())
    }

    fn run(&mut self) -> R<Val> {
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
                b'(' => self.push(Val::Mark)?,
                b'}' => {
                    let d = self.new_dict(Vec::new())?;
                    self.push(d)?
                }
                b']' | 0x8f => {
                    // 0x8f: EMPTY_SET, kept as a list
                    let l = self.new_list(Vec::new())?;
                    self.push(l)?
                }
                b')' => self.push(Val::Tuple(Rc::default()))?,
                b't' => {
                    self.charge(64)?; // the tuple's Rc header
                    let items = self.pop_mark()?;
                    self.push(Val::Tuple(Rc::new(Items(items))))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    self.charge(n as u64 * ITEM_COST + 64)?;
                    let at = self
                        .stack
                        .len()
                        .checked_sub(n)
                        .ok_or_else(|| format!("stack underflow at byte {}", self.pos))?;
                    let items = self.stack.split_off(at);
                    self.push(Val::Tuple(Rc::new(Items(items))))?;
                }
                b'l' | 0x91 => {
                    // 0x91: FROZENSET, kept as a list
                    let items = self.pop_mark()?;
                    let l = self.new_list(items)?;
                    self.push(l)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let d = self.new_dict(pairs)?;
                    self.push(d)?;
                }
                b'a' => {
                    self.charge(ITEM_COST)?;
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b's' => {
                    self.charge(2 * ITEM_COST)?;
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.set_items(pairs)?;
                }
                b'N' => self.push(Val::None)?,
                0x88 => self.push(Val::Bool(true))?,
                0x89 => self.push(Val::Bool(false))?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Val::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Val::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Val::Int(v as i64))?;
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as u64
                    } else {
                        self.u32()? as u64
                    };
                    let n = self.len_of(n)?;
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
                    self.push(Val::Int(i64::from_le_bytes(buf)))?;
                }
                b'I' | b'L' => {
                    let l = self.line()?;
                    let t = l.trim_end_matches('L');
                    let v = match t {
                        "01" => Val::Bool(true),
                        "00" => Val::Bool(false),
                        _ => Val::Int(
                            t.parse()
                                .map_err(|_| format!("bad integer `{}`", shorten(&l)))?,
                        ),
                    };
                    self.push(v)?;
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Val::Float(f64::from_be_bytes(a)))?;
                }
                b'F' => {
                    let l = self.line()?;
                    let f = l
                        .parse()
                        .map_err(|_| format!("bad float `{}`", shorten(&l)))?;
                    self.push(Val::Float(f))?;
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as u64,
                        0x8c => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len_of(n)?;
                    let v = self.utf8(n)?;
                    self.push(v)?;
                }
                b'T' | b'U' | b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'U' | b'C' => self.u8()? as u64,
                        b'T' | b'B' => self.u32()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len_of(n)?;
                    let b = self.take(n)?;
                    self.charge(n as u64)?;
                    self.push(Val::Bytes(Rc::from(b)))?;
                }
                b'V' => {
                    let l = self.line()?;
                    self.push(Val::Str(Rc::from(l)))?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Val::Global(Rc::new((module, name))))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Val::Str(m), Val::Str(n)) => {
                            self.charge((m.len() + n.len()) as u64)?;
                            self.push(Val::Global(Rc::new((m.to_string(), n.to_string()))))?
                        }
                        _ => {
                            return Err(format!(
                                "STACK_GLOBAL without two strings at byte {}",
                                self.pos
                            ))
                        }
                    }
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                b'p' => {
                    let i: u32 = self.line()?.parse().map_err(|_| "bad PUT index")?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| "memo too large")?;
                    self.memo_put(i)?;
                }
                b'h' | b'j' | b'g' => {
                    let i = match op {
                        b'h' => self.u8()? as u32,
                        b'j' => self.u32()?,
                        _ => self.line()?.parse().map_err(|_| "bad GET index")?,
                    };
                    // Shared, not copied: a value referenced 8000 times is held once.
                    let v = self
                        .memo
                        .get(&i)
                        .cloned()
                        .ok_or_else(|| format!("memo {i} is not set (at byte {})", self.pos))?;
                    self.push(v)?;
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?;
                }
                b'P' => return Err("text persistent ids are not written by torch.save".into()),
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(func, args)?;
                    self.push(v)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.new_object(cls, args)?;
                    self.push(v)?;
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.new_object(cls, args)?;
                    self.push(v)?;
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
            other => Err(format!("APPEND to {}", other.kind_name())),
        }
    }

    fn set_items(&mut self, pairs: Vec<(Val, Val)>) -> R<()> {
        match self.top()? {
            Val::Dict(d) => {
                d.borrow_mut().extend(pairs);
                Ok(())
            }
            Val::Opaque(_) => Ok(()),
            other => Err(format!("SETITEM on {}", other.kind_name())),
        }
    }

    /// `('storage', storage_type, key, location, numel)`: the storage's element type
    /// comes from its class; the bytes are read when a tensor first uses it.
    fn persistent_load(&mut self, pid: Val) -> R<Val> {
        let Val::Tuple(t) = pid else {
            return Err("persistent id is not a tuple".into());
        };
        match t.as_slice() {
            [Val::Str(tag), Val::Global(class), Val::Str(key), _, numel, ..]
                if &**tag == "storage" =>
            {
                let kind = storage_kind(&class.1).ok_or_else(|| {
                    format!(
                        "unsupported storage type {}.{}",
                        shorten(&class.0),
                        shorten(&class.1)
                    )
                })?;
                let numel = numel.int().filter(|&n| n >= 0).ok_or_else(|| {
                    format!(
                        "storage `{}{}`: its element count is {}, not a non-negative integer",
                        self.prefix,
                        shorten(key),
                        numel.kind_name()
                    )
                })?;
                Ok(Val::Storage(Rc::new(StorageRef {
                    kind,
                    key: key.to_string(),
                    numel,
                })))
            }
            _ => Err("persistent id is not a ('storage', type, key, location, numel) tuple".into()),
        }
    }

    fn new_object(&mut self, cls: Val, args: Val) -> R<Val> {
        match &cls {
            Val::Global(g) if g.0 == "collections" && g.1 == "OrderedDict" => {
                self.new_dict(Vec::new())
            }
            _ => Ok(Val::Opaque(Rc::new(Items(vec![cls, args])))),
        }
    }

    fn reduce(&mut self, mut func: Val, mut args: Val) -> R<Val> {
        // A loop, not recursion: `_rebuild_from_type_v2` may wrap itself to any depth.
        loop {
            let Val::Global(g) = &func else {
                return Ok(Val::Opaque(Rc::new(Items(vec![func, args]))));
            };
            let argv: Rc<Items> = match &args {
                Val::Tuple(t) => t.clone(),
                _ => Rc::default(),
            };
            match (g.0.as_str(), g.1.as_str()) {
                ("collections", "OrderedDict") => return self.new_dict(Vec::new()),
                ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                    return self.rebuild_tensor(&argv)
                }
                ("torch._utils", "_rebuild_parameter")
                | ("torch._utils", "_rebuild_parameter_with_state") => {
                    return Ok(argv.first().cloned().unwrap_or(Val::None))
                }
                // A tensor subclass: `(func, type, args, state)`; rebuild with `func(*args)`.
                ("torch._tensor", "_rebuild_from_type_v2")
                | ("torch._tensor", "_rebuild_from_type") => match argv.as_slice() {
                    [f, _, a, ..] => {
                        func = f.clone();
                        args = a.clone();
                    }
                    _ => return Err("_rebuild_from_type_v2 with too few arguments".into()),
                },
                _ => return Ok(Val::Opaque(Rc::new(Items(vec![func, args])))),
            }
        }
    }

    /// The flat 1-D tensor of a storage, read (once) from its zip entry after its size
    /// was checked against the entry and the budget.
    fn storage(&mut self, st: &StorageRef, entry: &str) -> R<Tensor> {
        if let Some((kind, t)) = self.storages.get(&st.key) {
            if *kind != st.kind || t.numel() as i64 != st.numel {
                return Err(format!(
                    "storage entry `{entry}` is used both as {} elements of {:?} and as {} elements of {:?}",
                    t.numel(),
                    kind,
                    st.numel,
                    st.kind
                ));
            }
            return Ok(t.shallow_clone());
        }
        let elt = st.kind.elt_size_in_bytes() as i64;
        let declared = self.archive.entry(entry)?.size;
        let nbytes = st
            .numel
            .checked_mul(elt)
            .filter(|&n| n as u64 == declared)
            .ok_or_else(|| {
                format!(
                    "storage entry `{entry}` holds {declared} bytes, but the pickle declares {} elements of \
                     {elt} bytes ({:?}) for it",
                    st.numel, st.kind
                )
            })?;
        self.budget
            .charge(nbytes as u64, || format!("storage entry `{entry}`"))?;
        let t = Tensor::f_zeros([st.numel], (st.kind, Device::Cpu))
            .map_err(|e| format!("storage entry `{entry}`: {}", tch_err(e)))?;
        if nbytes > 0 {
            // SAFETY: `t` is a new, contiguous CPU tensor of exactly `nbytes` bytes that
            // nothing else references yet.
            let buf =
                unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, nbytes as usize) };
            self.archive.read_exact(entry, buf)?;
        }
        self.storages
            .insert(st.key.clone(), (st.kind, t.shallow_clone()));
        Ok(t)
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks, ...)`.
    fn rebuild_tensor(&mut self, argv: &[Val]) -> R<Val> {
        let (Some(Val::Storage(st)), Some(offset), Some(size), Some(stride)) = (
            argv.first(),
            argv.get(1).and_then(Val::int),
            argv.get(2).and_then(Val::ints),
            argv.get(3).and_then(Val::ints),
        ) else {
            return Err("_rebuild_tensor_v2 with unexpected arguments".into());
        };
        let st = st.clone();
        let entry = format!("{}data/{}", self.prefix, st.key);
        let shown = shorten(&entry);
        let layout = || {
            let s: Vec<i64> = size.iter().copied().take(16).collect();
            let d: Vec<i64> = stride.iter().copied().take(16).collect();
            format!("a tensor of size {s:?}, stride {d:?} at offset {offset}")
        };
        if size.len() != stride.len() {
            return Err(format!(
                "storage entry `{shown}`: {} has {} sizes but {} strides",
                layout(),
                size.len(),
                stride.len()
            ));
        }
        if offset < 0 || size.iter().chain(&stride).any(|&x| x < 0) {
            return Err(format!(
                "storage entry `{shown}`: {} has a negative size, stride or offset",
                layout()
            ));
        }
        let numel = size
            .iter()
            .try_fold(1i64, |acc, &s| acc.checked_mul(s))
            .ok_or_else(|| {
                format!(
                    "storage entry `{shown}`: {} has more elements than 64 bits can count",
                    layout()
                )
            })?;
        // The last element the view reaches: offset + sum((size_i - 1) * stride_i).
        let last = if numel == 0 {
            Some(offset)
        } else {
            size.iter().zip(&stride).try_fold(offset, |acc, (&s, &d)| {
                (s - 1).checked_mul(d).and_then(|x| acc.checked_add(x))
            })
        };
        let limit = st.numel;
        let fits = match last {
            Some(l) if numel == 0 => l <= limit,
            Some(l) => l < limit,
            None => false,
        };
        if !fits {
            return Err(format!(
                "storage entry `{shown}`: {} reaches past the end of its storage of {limit} elements",
                layout()
            ));
        }
        let storage = self.storage(&st, &entry)?;
        let view = storage
            .f_as_strided(size.as_slice(), stride.as_slice(), Some(offset))
            .map_err(|e| format!("storage entry `{shown}`: {}: {}", layout(), tch_err(e)))?;
        if view.is_contiguous() {
            return Ok(Val::Tensor(Rc::new(view)));
        }
        // A transposed or strided view is copied out so that it owns contiguous memory,
        // as long as the copy is no larger than its storage (no overlap) and fits the
        // budget. An overlapping view (stride 0, ...) stays a view over the storage, as
        // libtorch keeps it: materialising it could take any amount of memory.
        let bytes = (numel as u64).saturating_mul(st.kind.elt_size_in_bytes() as u64);
        if numel <= limit && self.budget.fits(bytes) {
            self.budget.charge(bytes, String::new)?;
            let t = view
                .f_contiguous()
                .map_err(|e| format!("storage entry `{shown}`: {}: {}", layout(), tch_err(e)))?;
            return Ok(Val::Tensor(Rc::new(t)));
        }
        Ok(Val::Tensor(Rc::new(view)))
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
