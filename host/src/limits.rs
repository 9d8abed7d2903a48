//! Limits checked before anything is read or allocated: the files a user names
//! (configs, means/stds tables, inputs) must be regular files of bounded size, and a
//! tensor or a scene must fit the memory ceiling before it is allocated.
//!
//! Why: a FIFO given as `--config` would hang, `/dev/zero` would be read until the
//! machine runs out of memory, and a 47 KB GeoTIFF can declare a raster of terabytes.
//! Each check ends in one line that names the file or the shape and the ceiling, and
//! how to raise it:
//! - `TERRAHOST_MAX_TEXT_MB` (default 64): the largest config or means/stds file read;
//! - `TERRAHOST_MAX_TENSOR_GB` (default: 1/16 of the machine's physical memory): the
//!   largest input tensor terrahost allocates for a forward or a scene;
//! - `TERRAHOST_MAX_MEMORY_GB` (default: the memory available when terrahost starts,
//!   at least half the physical memory):
//!   the most memory the whole process may allocate ([`cap_process_memory`]).
//!
//! Layer counts and widths (`num_convs`, `depth`, `embed_dim`, ...) are not checked one
//! by one: every plugin has its own, and a plugin written tomorrow would escape a list.
//! The process ceiling covers them all. A model that would not fit fails at the first
//! allocation past the ceiling, inside libtorch, and that error reaches the user as one
//! line ([`explain_out_of_memory`]) instead of the kernel's OOM killer ending the host,
//! or the machine swapping, after minutes.
use std::io::Read;
use std::path::Path;

/// The environment variable with the text-file ceiling, in MiB.
pub const MAX_TEXT_MB_VAR: &str = "TERRAHOST_MAX_TEXT_MB";

/// The environment variable with the tensor ceiling, in GiB.
pub const MAX_TENSOR_GB_VAR: &str = "TERRAHOST_MAX_TENSOR_GB";

/// The environment variable with the whole process's memory ceiling, in GiB.
pub const MAX_MEMORY_GB_VAR: &str = "TERRAHOST_MAX_MEMORY_GB";

const DEFAULT_TEXT_MB: u64 = 64;

fn env_number(var: &str) -> Option<f64> {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
}

/// The largest config or means/stds file read, in bytes.
pub fn max_text_bytes() -> u64 {
    env_number(MAX_TEXT_MB_VAR).map_or(DEFAULT_TEXT_MB << 20, |mb| (mb * 1048576.0) as u64)
}

/// The largest single input tensor allocated for a forward or a scene, in bytes: the
/// override, else 1/16 of the machine's physical memory. The forward's activations
/// take many times its input (a ResNet-18 at full resolution, about 40 times), so an
/// input near the whole memory would only fail later, in the middle of the model.
pub fn max_tensor_bytes() -> u64 {
    if let Some(gb) = env_number(MAX_TENSOR_GB_VAR) {
        return (gb * 1073741824.0) as u64;
    }
    physical_memory().unwrap_or(16 << 30) / 16
}

/// The most memory the process may allocate, in bytes: the override, else the memory
/// the kernel says is available now (`MemAvailable`) but at least half the physical
/// memory, else 16 GiB. Never below 1 GiB, which libtorch and the plugins need to start
/// at all. The floor keeps a model that fits the machine from being refused only
/// because other programs held memory when terrahost started (parallel test runs);
/// the ceiling still stops a runaway build long before the OOM killer would.
pub fn max_memory_bytes() -> u64 {
    let bytes = match env_number(MAX_MEMORY_GB_VAR) {
        Some(gb) => (gb * 1073741824.0) as u64,
        None => match (available_memory(), physical_memory()) {
            (Some(a), Some(p)) => a.max(p / 2),
            (a, p) => a.or(p).unwrap_or(16 << 30),
        },
    };
    bytes.max(1 << 30)
}

/// Caps the memory this process (and what it starts) may allocate at
/// [`max_memory_bytes`], with `RLIMIT_DATA`, which counts the heap and anonymous
/// mappings (every tensor) but not the mapped libraries or files. The limit is only
/// ever lowered: a tighter one set by the caller (`ulimit -d`) stays. Returns the
/// ceiling now in force.
pub fn cap_process_memory() -> u64 {
    let want = max_memory_bytes();
    #[cfg(target_os = "linux")]
    if let Some(mut lim) = data_limit() {
        let cur = lim.rlim_cur;
        if cur != libc::RLIM_INFINITY && cur <= want as libc::rlim_t {
            return cur;
        }
        let mut new = want as libc::rlim_t;
        if lim.rlim_max != libc::RLIM_INFINITY {
            new = new.min(lim.rlim_max);
        }
        lim.rlim_cur = new;
        // SAFETY: setrlimit only reads the struct passed.
        if unsafe { libc::setrlimit(libc::RLIMIT_DATA, &lim) } == 0 {
            tracing::debug!("memory ceiling {} ({MAX_MEMORY_GB_VAR})", human(new));
            return new;
        }
    }
    want
}

/// Rewrites an allocation failure from libtorch ("DefaultCPUAllocator: not enough
/// memory: you tried to allocate N bytes") so that it says what to do: the model or the
/// input is too large for the ceiling. Other messages pass unchanged.
pub fn explain_out_of_memory(message: &str) -> String {
    if !is_out_of_memory(message) || message.contains(MAX_MEMORY_GB_VAR) {
        return message.to_owned();
    }
    let asked = message
        .split("you tried to allocate ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.trim_end_matches('.').parse::<u64>().ok())
        .map(|n| format!(" (an allocation of {} failed)", human(n)))
        .unwrap_or_default();
    // What was being done ("building `X` failed in libtorch"), without libtorch's own
    // wording ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: ...").
    let cut = ["[enforce fail", "DefaultCPUAllocator"]
        .iter()
        .filter_map(|m| message.find(m))
        .min()
        .unwrap_or(message.len());
    let head = message[..cut].trim_end_matches([' ', ':']);
    format!(
        "{head}: out of memory{asked} under terrahost's ceiling of {}; check layer counts and widths (depth, num_convs, channels) and input sizes, or raise {MAX_MEMORY_GB_VAR}",
        human(current_memory_ceiling())
    )
}

/// Whether `message` is libtorch's allocation failure.
pub fn is_out_of_memory(message: &str) -> bool {
    message.contains("not enough memory") || message.contains("can't allocate memory")
}

/// The `RLIMIT_DATA` in force, or [`max_memory_bytes`] where there is none.
fn current_memory_ceiling() -> u64 {
    #[cfg(target_os = "linux")]
    if let Some(lim) = data_limit().filter(|l| l.rlim_cur != libc::RLIM_INFINITY) {
        return lim.rlim_cur;
    }
    max_memory_bytes()
}

/// This process's `RLIMIT_DATA`, if the kernel answers.
#[cfg(target_os = "linux")]
fn data_limit() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    (unsafe { libc::getrlimit(libc::RLIMIT_DATA, &mut lim) } == 0).then_some(lim)
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The machine's physical memory in bytes, if the platform says.
fn physical_memory() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads system configuration.
        let (pages, size) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if pages > 0 && size > 0 {
            return Some(pages as u64 * size as u64);
        }
    }
    None
}

fn describe_kind(m: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = m.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if m.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file, without blocking on a FIFO (the
/// descriptor is opened non-blocking and judged by `fstat`, so the file judged is the
/// file read). `what` names the option in the error (`--config`).
pub fn open_regular(path: &Path, what: &str) -> Result<(std::fs::File, u64), String> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options
        .open(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{what} {} is {}, not a regular file; pass a file",
            path.display(),
            describe_kind(&meta)
        ));
    }
    Ok((file, meta.len()))
}

/// Reads the text file `path` (a config, a means/stds table): a regular file of at
/// most [`max_text_bytes`], in UTF-8. The errors never quote the file's content.
pub fn read_text(path: &Path, what: &str) -> Result<String, String> {
    let (file, len) = open_regular(path, what)?;
    let max = max_text_bytes();
    if len > max {
        return Err(format!(
            "{what} {} is {} bytes, more than the {} MiB a text file may be here; is it the right file? ({MAX_TEXT_MB_VAR} raises the limit)",
            path.display(),
            len,
            max >> 20
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take`: a file that grows while it is read stops at the limit.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if bytes.len() as u64 > max {
        return Err(format!(
            "{what} {} grew past {} MiB while it was read",
            path.display(),
            max >> 20
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{what} {} is not UTF-8 text (invalid byte at offset {}); is it the right file?",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// Checks that a tensor of `shape` with `bytes_per_element` fits [`max_tensor_bytes`]
/// before it is allocated. `what` names it in the error.
pub fn check_tensor(what: &str, shape: &[i64], bytes_per_element: u64) -> Result<(), String> {
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(u64::try_from(d).ok()?));
    let bytes = elements.and_then(|e| e.checked_mul(bytes_per_element));
    let max = max_tensor_bytes();
    match bytes {
        Some(b) if b <= max => Ok(()),
        _ => Err(format!(
            "{what} of shape {shape:?} would need {} of memory, more than the {} this machine allows ({MAX_TENSOR_GB_VAR} raises the limit)",
            bytes.map_or_else(|| "more than 2^64 bytes".to_owned(), human),
            human(max)
        )),
    }
}

/// `bytes` as KiB, MiB, GiB or TiB with one decimal.
pub fn human(bytes: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_and_directories_are_not_read() {
        let e = read_text(Path::new("/dev/zero"), "--config").unwrap_err();
        assert!(e.contains("a character device"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = read_text(dir.path(), "--config").unwrap_err();
        assert!(e.contains("a directory"), "{e}");
        #[cfg(unix)]
        {
            let fifo = dir.path().join("fifo");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            // Returns at once: no writer is waited for.
            let e = read_text(&fifo, "--config").unwrap_err();
            assert!(e.contains("a FIFO"), "{e}");
        }
    }

    #[test]
    fn binary_files_are_refused_without_quoting_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.yaml");
        std::fs::write(&f, b"secret\xff\xfe").unwrap();
        let e = read_text(&f, "--config").unwrap_err();
        assert!(e.contains("not UTF-8") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn tensors_are_checked_before_allocation() {
        assert!(check_tensor("input", &[1, 3, 224, 224], 4).is_ok());
        let e = check_tensor("--input-shape", &[1, 3, 1_000_000, 1_000_000], 4).unwrap_err();
        assert!(
            e.contains("10.9 TiB") && e.contains(MAX_TENSOR_GB_VAR),
            "{e}"
        );
        let e = check_tensor("x", &[i64::MAX, i64::MAX], 4).unwrap_err();
        assert!(e.contains("2^64"), "{e}");
    }

    #[test]
    fn libtorch_allocation_failures_say_what_to_do() {
        let e = explain_out_of_memory(
            "building FCNDecoder failed: DefaultCPUAllocator: not enough memory: you tried to allocate 2359296 bytes.",
        );
        let e2 = explain_out_of_memory(
            "building FCNDecoder failed: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 2359296 bytes. Error code 12 (Cannot allocate memory)",
        );
        assert_eq!(e, e2);
        assert!(
            e.starts_with(
                "building FCNDecoder failed: out of memory (an allocation of 2.2 MiB failed)"
            ) && e.contains(MAX_MEMORY_GB_VAR)
                && !e.contains("DefaultCPUAllocator"),
            "{e}"
        );
        assert_eq!(explain_out_of_memory("no such entry"), "no such entry");
    }
}
