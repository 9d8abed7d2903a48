//! Plugin-directory benchmarks (issue 10): interleaved A/B, medians, one run.
//!
//! 1. `terrahost list --json` with the four plugins, cold (`--no-cache`: every file
//!    scanned in a child) against warm (answered from the registry cache by the front,
//!    which maps no libtorch), interleaved A B A B: the medians, and the median and
//!    spread (min–max) of the warm/cold ratio pair by pair; then the warm front against
//!    `terrahost-engine --version` (the cost of mapping libtorch at all);
//! 2. `terrahost plugins --json` with 100 small plugin libraries (copies of the
//!    `panicky` fixture whose name and prefix are patched to `pk00000`..`pk00099`):
//!    cold, warm, and after one file changed;
//! 3. the scan cost per new plugin (the slope between 100 and 1 new files);
//! 4. `terrahost run` of the foundation fixture model, whole-process wall, with a warm
//!    cache (lazy: the three libraries the model needs) against `--no-cache`.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use terrahost_testkit::{build_dir, built_library, real_plugins, Fixture, PLUGINS};

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

/// The median and the range of the pair-by-pair ratios `a[i] / b[i]`.
fn ratios(a: &[Duration], b: &[Duration]) -> String {
    let mut r: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.as_secs_f64() / y.as_secs_f64())
        .collect();
    r.sort_by(f64::total_cmp);
    format!(
        "median {:.3} (spread {:.3}–{:.3}, {} pairs)",
        r[r.len() / 2],
        r[0],
        r[r.len() - 1],
        r.len()
    )
}

fn timed(dir: &Path, cache: Option<&Path>, args: &[&str]) -> Duration {
    let mut cmd = Command::new(build_dir().join("terrahost"));
    cmd.arg("--plugin-dir").arg(dir);
    match cache {
        Some(c) => cmd.arg("--cache").arg(c),
        None => cmd.arg("--no-cache"),
    };
    let t = Instant::now();
    let out = cmd.args(args).output().unwrap();
    let elapsed = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

/// `n` copies of the panicky fixture with distinct names and prefixes.
fn many_plugins(dir: &Path, n: usize) {
    let lib = std::fs::read(built_library("terrahost_fixture_panicky")).unwrap();
    let needle = b"panicky";
    for i in 0..n {
        let name = format!("pk{i:05}");
        let mut copy = lib.clone();
        let mut at = 0;
        while let Some(p) = copy[at..].windows(needle.len()).position(|w| w == needle) {
            copy[at + p..at + p + needle.len()].copy_from_slice(name.as_bytes());
            at += p + needle.len();
        }
        std::fs::write(dir.join(format!("lib{name}.so")), copy).unwrap();
    }
}

fn main() {
    // TERRAHOST_BENCH_REPS: fewer repetitions for a quick look (default 10)
    let reps: usize = std::env::var("TERRAHOST_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let work = tempfile::tempdir().unwrap();

    // 1. list, cold vs warm, interleaved
    let dir = real_plugins(&PLUGINS);
    let cache = work.path().join("list.json");
    timed(dir.path(), Some(&cache), &["list", "--json"]);
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        cold.push(timed(dir.path(), None, &["list", "--json"]));
        warm.push(timed(dir.path(), Some(&cache), &["list", "--json"]));
    }
    let ratio = ratios(&warm, &cold);
    let (c, w) = (median(cold), median(warm));
    println!(
        "`terrahost list --json`, 4 plugins: cold {c:.1} ms, warm {w:.1} ms (target <= 20 ms); warm/cold {ratio}"
    );
    let (mut ver, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        Command::new(build_dir().join("terrahost-engine"))
            .arg("--version")
            .output()
            .unwrap();
        ver.push(t.elapsed());
        warm.push(timed(dir.path(), Some(&cache), &["list", "--json"]));
    }
    let ratio = ratios(&warm, &ver);
    println!(
        "`terrahost-engine --version` {:.1} ms (mapping libtorch) vs the front's warm list {:.1} ms; warm/engine {ratio}",
        median(ver),
        median(warm),
    );

    // 2. 100 plugins: cold, warm, one changed
    let many = tempfile::tempdir().unwrap();
    many_plugins(many.path(), 100);
    let cache = work.path().join("many.json");
    let out = Command::new(build_dir().join("terrahost"))
        .arg("--plugin-dir")
        .arg(many.path())
        .arg("--cache")
        .arg(&cache)
        .args(["plugins", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["loaded"].as_array().unwrap().len(), 100, "{v:#}");
    let (mut cold, mut warm, mut changed, mut one_new) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let victim = many.path().join("libpk00042.so");
    for i in 0..reps {
        cold.push(timed(many.path(), None, &["plugins", "--json"]));
        warm.push(timed(many.path(), Some(&cache), &["plugins", "--json"]));
        // one file changed: append a byte (the cache key changes, the library still loads)
        let mut bytes = std::fs::read(&victim).unwrap();
        bytes.push(i as u8);
        std::fs::write(&victim, bytes).unwrap();
        changed.push(timed(many.path(), Some(&cache), &["plugins", "--json"]));
        // a scan of a single new file in a directory of one:
        let single = tempfile::tempdir().unwrap();
        many_plugins(single.path(), 1);
        one_new.push(timed(single.path(), None, &["plugins", "--json"]));
    }
    let (wr, chr) = (ratios(&warm, &cold), ratios(&changed, &cold));
    let (c, w, ch, one) = (median(cold), median(warm), median(changed), median(one_new));
    println!("`terrahost plugins --json`, 100 plugins: cold {c:.1} ms, warm {w:.1} ms, one changed {ch:.1} ms; warm/cold {wr}; changed/cold {chr}");
    println!(
        "scan cost per new plugin: {:.2} ms ((cold 100 - cold 1) / 99)",
        (c - one) / 99.0
    );

    // 4. run of the foundation fixture model, lazy (warm cache) vs --no-cache
    let fx = Fixture::load("factory_segmentation");
    let config = fx.dir.join("config.yaml");
    let args = [
        "run",
        "--config",
        config.to_str().unwrap(),
        "--input-shape",
        "1,3,64,64",
        "--json",
    ];
    let cache = work.path().join("run.json");
    timed(dir.path(), Some(&cache), &args);
    let (mut lazy, mut nocache) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        lazy.push(timed(dir.path(), Some(&cache), &args));
        nocache.push(timed(dir.path(), None, &args));
    }
    let r = ratios(&lazy, &nocache);
    let (l, n) = (median(lazy), median(nocache));
    println!("`terrahost run` (factory_segmentation): warm cache {l:.1} ms, no cache {n:.1} ms; warm/no-cache {r}");
}
