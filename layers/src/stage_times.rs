//! Opt-in wall-clock times of the stages of one forward, for benchmarks that ask where the
//! time goes inside a plugin (a plugin's `tracing` has no subscriber, so spans would not
//! reach the host).
//!
//! With `TERRAHOST_STAGE_TIMES=<file>` in the environment, each forward that uses a
//! [`StageTimes`] appends one JSON line to that file: `{"what": ..., "stages_s": {name:
//! seconds, ...}}`. Without it, a [`StageTimes`] reads no clock and writes nothing.
use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

/// The environment variable that names the file the stage times go to.
pub const ENV: &str = "TERRAHOST_STAGE_TIMES";

fn target() -> Option<&'static str> {
    static TARGET: OnceLock<Option<String>> = OnceLock::new();
    TARGET
        .get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty()))
        .as_deref()
}

/// The stages of one forward, timed back to back; written when dropped.
pub struct StageTimes {
    what: &'static str,
    /// The file the line goes to; `None` when [`ENV`] is not set.
    target: Option<&'static str>,
    /// `None` when [`ENV`] is not set.
    last: Option<Instant>,
    stages: Vec<(&'static str, f64)>,
}

impl StageTimes {
    /// Starts timing the forward of `what` (the first stage starts now).
    pub fn start(what: &'static str) -> Self {
        Self::to(what, target())
    }

    fn to(what: &'static str, target: Option<&'static str>) -> Self {
        Self {
            what,
            target,
            last: target.map(|_| Instant::now()),
            stages: Vec::new(),
        }
    }

    /// Ends the stage `name` (the time since the previous stage ended).
    pub fn lap(&mut self, name: &'static str) {
        if let Some(t) = self.last {
            let now = Instant::now();
            self.stages.push((name, (now - t).as_secs_f64()));
            self.last = Some(now);
        }
    }
}

impl Drop for StageTimes {
    fn drop(&mut self) {
        let Some(path) = self.target else { return };
        if self.stages.is_empty() {
            return;
        }
        let stages: serde_json::Map<String, serde_json::Value> = self
            .stages
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).into()))
            .collect();
        let line = serde_json::json!({"what": self.what, "stages_s": stages});
        // A benchmark aid: a file that cannot be written loses the line, not the forward.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_forward_with_its_stages_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path: &'static str = Box::leak(
            dir.path()
                .join("t.jsonl")
                .to_string_lossy()
                .into_owned()
                .into_boxed_str(),
        );
        for _ in 0..2 {
            let mut t = StageTimes::to("model", Some(path));
            t.lap("a");
            t.lap("b");
        }
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["what"], "model");
        let stages = lines[1]["stages_s"].as_object().unwrap();
        assert_eq!(stages.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(stages.values().all(|v| v.as_f64().unwrap() >= 0.0));
        // Without a target nothing is timed or written.
        let mut off = StageTimes::to("model", None);
        off.lap("a");
        assert!(off.stages.is_empty());
    }
}
