//! Hostile `torch.save` checkpoints (written by `scripts/hostile/make_checkpoints.py`,
//! without torch): each is read in a child process of this test binary under an
//! address-space limit (`ulimit -v`), which also measures how far its peak RSS grew
//! (VmHWM). A crash, a stack overflow or an allocation beyond the limit kills the child
//! and fails the test; so does a peak that grew more than the case allows. Errors must
//! be one line that names the file, the zip entry and the problem, with no C++ frames.
use std::path::PathBuf;
use std::process::Command;
use tch::Tensor;
use terrahost_layers::checkpoint::{read_state_dict, read_state_dict_with_budget, BUDGET_ENV};

const MIB: u64 = 1 << 20;
/// The default budget of these small files is about 64.5 MiB; what the reader keeps on
/// top of that (tensor headers, the zip index, the allocator's slack) stays small.
const DEFAULT_GROWTH: u64 = 112 * MIB;
/// Virtual memory the child may map beyond what it had when it started reading. libtorch
/// and glibc reserve address space generously, so this is larger than the RSS bound, and
/// still far below what any of these files would make a naive reader allocate.
const AS_HEADROOM: u64 = 1536 * MIB;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/hostile/checkpoints")
        .join(name)
}

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What a child reported.
#[derive(Debug)]
struct Outcome {
    ok: bool,
    /// The error message, or `key:size:contiguous:first:last;...` for each tensor.
    text: String,
    /// Lines in the error message (must be 1).
    lines: usize,
    /// Growth of the peak RSS while reading, in bytes.
    growth: u64,
}

/// Not a test: the body of the child process that [`read_in_child`] starts.
#[test]
#[ignore = "run in a child process by the other tests"]
fn child_reads_one_case() {
    let Ok(case) = std::env::var("HOSTILE_CASE") else {
        return;
    };
    let budget = std::env::var("HOSTILE_BUDGET")
        .ok()
        .map(|b| b.parse::<u64>().unwrap());
    // libtorch is initialised before the baseline.
    let _warm = Tensor::from_slice(&[1f32, 2.0])
        .f_sum(tch::Kind::Float)
        .unwrap();
    // Resets VmHWM to the current RSS (Linux >= 4.0); without it, growth is measured
    // from the start-up peak, which only makes the bound looser.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = status_kb("VmHWM:");
    let result = read_state_dict_with_budget(&PathBuf::from(&case), budget);
    let after = status_kb("VmHWM:");
    let growth = after.saturating_sub(before) * 1024;
    let (ok, text, lines) = match &result {
        Ok(sd) => {
            let parts: Vec<String> = sd
                .iter()
                .map(|(k, t)| {
                    let n = t.numel() as i64;
                    let flat = t.f_reshape([-1]).unwrap();
                    let first = if n > 0 {
                        flat.f_double_value(&[0]).unwrap()
                    } else {
                        f64::NAN
                    };
                    let last = if n > 0 {
                        flat.f_double_value(&[n - 1]).unwrap()
                    } else {
                        f64::NAN
                    };
                    format!("{k}:{:?}:{}:{first}:{last}", t.size(), t.is_contiguous())
                })
                .collect();
            (true, parts.join(";"), 1)
        }
        Err(e) => {
            let m = e.message().to_owned();
            let lines = m.lines().count();
            (false, m.replace('\n', "\\n"), lines)
        }
    };
    println!(
        "\nHOSTILE-RESULT\t{}\t{growth}\t{lines}\t{text}",
        if ok { "ok" } else { "err" }
    );
}

/// Reads `name` in a child process under an address-space limit; `budget` is passed to
/// `read_state_dict_with_budget`, `env` is set in the child.
fn read_in_child(name: &str, budget: Option<u64>, env: &[(&str, &str)]) -> Outcome {
    let path = fixture(name);
    assert!(
        path.is_file(),
        "missing fixture {name}: run scripts/hostile/make_checkpoints.py"
    );
    let exe = std::env::current_exe().unwrap();
    // The child maps what this process maps (the same binary, libtorch) before it reads.
    let limit_kb = (status_kb("VmSize:") * 1024 + AS_HEADROOM) / 1024;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -v {limit_kb} && exec \"$0\" \"$@\""))
        .arg(&exe)
        .args([
            "--exact",
            "child_reads_one_case",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HOSTILE_CASE", &path)
        .env_remove(BUDGET_ENV)
        .env("RUST_BACKTRACE", "0");
    if let Some(b) = budget {
        cmd.env("HOSTILE_BUDGET", b.to_string());
    } else {
        cmd.env_remove("HOSTILE_BUDGET");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name}: the child died ({:?}): the reader crashed or ran out of its {} MiB of address space\n\
         stdout: {stdout}\nstderr: {}",
        out.status,
        AS_HEADROOM / MIB,
        stderr.chars().take(4000).collect::<String>()
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("HOSTILE-RESULT\t").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!("{name}: the child printed no result\nstdout: {stdout}\nstderr: {stderr}")
        });
    let mut f = line.splitn(4, '\t');
    let ok = f.next() == Some("ok");
    let growth = f.next().unwrap().parse().unwrap();
    let lines = f.next().unwrap().parse().unwrap();
    let text = f.next().unwrap_or("").to_owned();
    Outcome {
        ok,
        text,
        lines,
        growth,
    }
}

/// Reads `name` (default budget) and checks that it fails with one line naming the
/// file and containing each of `expected`, within `max_growth` bytes of peak RSS.
fn assert_refused(name: &str, expected: &[&str], max_growth: u64) -> Outcome {
    let o = read_in_child(name, None, &[]);
    assert_refused_outcome(name, &o, expected, max_growth);
    o
}

fn assert_refused_outcome(name: &str, o: &Outcome, expected: &[&str], max_growth: u64) {
    assert!(!o.ok, "{name}: read without an error: {}", o.text);
    assert_eq!(
        o.lines, 1,
        "{name}: the message is not one line: {}",
        o.text
    );
    assert!(
        o.text.contains(name),
        "{name}: the message does not name the file: {}",
        o.text
    );
    for frag in ["frame #", "Exception raised from", "\\n"] {
        assert!(
            !o.text.contains(frag),
            "{name}: C++ frames or a line break reach the user: {}",
            o.text
        );
    }
    for e in expected {
        assert!(
            o.text.contains(e),
            "{name}: the message lacks `{e}`: {}",
            o.text
        );
    }
    assert!(
        o.growth <= max_growth,
        "{name}: peak RSS grew by {} MiB (at most {} MiB allowed): {}",
        o.growth / MIB,
        max_growth / MIB,
        o.text
    );
}

#[test]
fn a_dict_that_holds_itself_is_not_a_state_dict() {
    assert_refused(
        "self_reference.pt",
        &[
            "archive/data.pkl",
            "not a state_dict",
            "a dict with keys `state_dict`",
        ],
        DEFAULT_GROWTH,
    );
}

/// A million levels: within a budget large enough to build them, the machine builds,
/// searches and drops them without recursion; within the default budget it refuses them.
fn deep(name: &str, holds: &str) {
    let o = read_in_child(name, Some(1024 * MIB), &[]);
    assert_refused_outcome(
        name,
        &o,
        &["archive/data.pkl", "not a state_dict", holds],
        512 * MIB,
    );
    let o = read_in_child(name, None, &[]);
    assert!(
        !o.ok && o.lines == 1 && o.text.contains(name),
        "{name}: {o:?}"
    );
    assert!(
        o.growth <= DEFAULT_GROWTH,
        "{name}: grew {} MiB",
        o.growth / MIB
    );
}

#[test]
fn lists_nested_a_million_deep_do_not_overflow_the_stack() {
    deep("deep_lists.pt", "a list");
}

#[test]
fn tuples_nested_a_million_deep_do_not_overflow_the_stack() {
    deep("deep_tuples.pt", "a tuple");
}

#[test]
fn dicts_nested_a_million_deep_are_searched_without_recursion() {
    deep("deep_dicts.pt", "a dict with keys `state_dict`");
}

#[test]
fn memo_references_share_their_value() {
    // [s] * 8000 with a 1 MB string: 8 GB if each reference copied it.
    assert_refused(
        "memo_bomb.pt",
        &["archive/data.pkl", "not a state_dict", "`hparams`"],
        DEFAULT_GROWTH,
    );
    let o = read_in_child("benign_memo_shared.ckpt", None, &[]);
    assert!(o.ok, "{o:?}");
    assert_eq!(o.text, "w:[6]:true:1:6");
    assert!(o.growth <= DEFAULT_GROWTH, "grew {} MiB", o.growth / MIB);
}

#[test]
fn a_stride_0_view_stays_a_view() {
    // 2^29 elements over a 4-byte storage: 2 GiB if materialised.
    let o = read_in_child("stride0_view.pt", None, &[]);
    assert!(o.ok, "{o:?}");
    assert_eq!(o.text, "w:[536870912]:false:7:7");
    assert!(o.growth <= 32 * MIB, "grew {} MiB", o.growth / MIB);
}

#[test]
fn malformed_layouts_are_refused_without_cpp_frames() {
    let g = DEFAULT_GROWTH;
    let e = "archive/data/0";
    assert_refused(
        "offset_past_end.pt",
        &[e, "offset 10", "past the end of its storage of 6 elements"],
        g,
    );
    assert_refused("negative_size.pt", &[e, "[-1, 3]", "negative size"], g);
    assert_refused("stride_overflow.pt", &[e, "past the end of its storage"], g);
    assert_refused(
        "numel_overflow.pt",
        &[e, "more elements than 64 bits can count"],
        g,
    );
    assert_refused("size_stride_mismatch.pt", &[e, "2 sizes but 1 strides"], g);
    assert_refused(
        "storage_numel_mismatch.pt",
        &[e, "holds 24 bytes", "268435456 elements of 4 bytes"],
        g,
    );
    assert_refused("missing_storage.pt", &["archive/data/7", "missing"], g);
    assert_refused(
        "garbage_pickle.pt",
        &["archive/data.pkl", "unsupported pickle opcode 0xff"],
        g,
    );
}

#[test]
fn a_truncated_archive_says_truncated() {
    assert_refused(
        "truncated.pt",
        &[
            "truncated (its central directory is missing)",
            "download it again",
        ],
        DEFAULT_GROWTH,
    );
}

#[test]
fn forged_zip64_sizes_are_refused_before_allocating() {
    let b = ["archive/data/0", "read budget", BUDGET_ENV];
    let o = assert_refused("zip64_2pow40.pt", &b, DEFAULT_GROWTH);
    assert!(o.text.contains("1099511627776"), "{}", o.text);
    let o = assert_refused("zip64_2pow63.pt", &b, DEFAULT_GROWTH);
    assert!(o.text.contains("9223372036854775808"), "{}", o.text);
}

#[test]
fn zip_bombs_stop_at_the_budget() {
    let g = DEFAULT_GROWTH;
    // Honest headers: refused before decompressing.
    assert_refused(
        "zipbomb_storage.pt",
        &["archive/data/0", "134217728", "read budget"],
        g,
    );
    assert_refused("zipbomb_pickle.pt", &["archive/data.pkl", "read budget"], g);
    // Lying headers: decompression stops one byte past the declared size.
    assert_refused(
        "zipbomb_storage_lying.pt",
        &[
            "archive/data/0",
            "decompresses to more than the 24 bytes it declares",
        ],
        g,
    );
    assert_refused(
        "zipbomb_pickle_lying.pt",
        &[
            "archive/data.pkl",
            "decompresses to more than the 64 bytes it declares",
        ],
        g,
    );
}

#[test]
fn the_budget_can_be_raised_by_the_environment() {
    // 128 MiB of zeros is what the honest bomb holds: with 256 MiB it reads.
    let o = read_in_child("zipbomb_storage.pt", None, &[(BUDGET_ENV, "256")]);
    assert!(o.ok, "{o:?}");
    assert_eq!(o.text, "w:[6]:true:0:0");
    assert!(o.growth <= 200 * MIB, "grew {} MiB", o.growth / MIB);
    let o = read_in_child("zipbomb_storage.pt", None, &[(BUDGET_ENV, "lots")]);
    assert!(
        !o.ok && o.text.contains(BUDGET_ENV) && o.text.contains("`lots`"),
        "{o:?}"
    );
}

#[test]
fn a_budget_parameter_limits_even_a_benign_file() {
    let p = fixture("benign_state_dict.pt");
    let e = read_state_dict_with_budget(&p, Some(64)).unwrap_err();
    let m = e.message();
    assert!(
        m.contains("benign_state_dict.pt")
            && m.contains("archive/data.pkl")
            && m.contains("read budget"),
        "{m}"
    );
    assert!(read_state_dict_with_budget(&p, Some(MIB)).is_ok());
}

#[test]
fn benign_views_read_as_libtorch_keeps_them() {
    let sd = read_state_dict(&fixture("benign_state_dict.pt")).unwrap();
    let names: Vec<&str> = sd.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["w", "w.t", "row", "expand"]);
    let get = |k: &str| sd.iter().find(|(n, _)| n == k).unwrap().1.shallow_clone();
    let w = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.]).reshape([2, 3]);
    assert!(get("w").equal(&w));
    assert!(get("w.t").equal(&w.tr()) && get("w.t").is_contiguous());
    assert!(get("row").equal(&Tensor::from_slice(&[4f32, 5., 6.])));
    let expand = get("expand");
    assert!(expand.equal(&Tensor::from_slice(&[1f32, 2., 3.]).expand([4, 3], false)));
    // Overlapping (stride 0): a view over the 6-element storage, as torch.load gives it.
    assert_eq!(expand.stride(), [0, 1]);
}

#[test]
fn every_hostile_file_is_refused_in_process_too() {
    // Without a child: nothing here may crash this process either.
    let dir = fixture("");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with("benign_") && n != "stride0_view.pt")
        .collect();
    names.sort();
    assert!(names.len() >= 20, "{names:?}");
    for n in &names {
        if n.starts_with("deep_") {
            continue; // these are read in children above, with their budget
        }
        let e = read_state_dict(&dir.join(n)).expect_err(n);
        assert!(
            e.message().contains(n.as_str()) && e.message().lines().count() == 1,
            "{e}"
        );
    }
}
