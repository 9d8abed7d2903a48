//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`: the seeds, every input
//! the fuzzer kept for new coverage, and every crash it ever found) through the same
//! functions the fuzz targets call (`fuzz/src/lib.rs`, included here). CI thus guards
//! each of them without running the fuzzer; `scripts/fuzz.sh` runs the fuzzer itself.
#[path = "../../fuzz/src/lib.rs"]
mod targets;

use terrahost_testkit::workspace_root;

#[test]
fn every_committed_fuzz_input_is_answered_without_a_panic() {
    let corpus = workspace_root().join("fuzz/corpus");
    for target in targets::TARGETS {
        let dir = corpus.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no corpus", dir.display());
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let caught = std::panic::catch_unwind(|| targets::run(target, &data));
            assert!(caught.is_ok(), "{target}: {} panicked", f.display());
        }
    }
}
