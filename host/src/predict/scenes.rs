//! Which scenes a run predicts: a file, a directory filtered by `img_grep` (TerraTorch's
//! `sorted(glob.glob(os.path.join(data_root, image_grep)))`), or a glob; sorted by
//! path, then cut into `--shard K/N` by position, so every machine of a cluster job
//! that lists the same inputs takes a disjoint, deterministic share.
use crate::error::{HostError, Result};
use globset::{GlobBuilder, GlobMatcher};
use std::path::{Path, PathBuf};

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn matcher(pattern: &str) -> Result<GlobMatcher> {
    Ok(GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| HostError::Usage(format!("bad glob `{pattern}`: {e}")))?
        .compile_matcher())
}

/// Python's `glob.glob(root/pattern)`, component by component (`*` does not cross `/`
/// and does not match names starting with `.`, as in Python).
pub fn glob_under(root: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let mut current = vec![root.to_path_buf()];
    let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let mut next = Vec::new();
        for dir in &current {
            if !has_glob_chars(part) {
                let p = dir.join(part);
                if p.exists() {
                    next.push(p);
                }
                continue;
            }
            let m = matcher(part)?;
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && !part.starts_with('.') {
                    continue;
                }
                if m.is_match(&name) && (last || e.path().is_dir()) {
                    next.push(e.path());
                }
            }
        }
        current = next;
    }
    let mut files: Vec<PathBuf> = current.into_iter().filter(|p| p.is_file()).collect();
    files.sort();
    Ok(files)
}

/// The scenes named by `--input` (or the config's `predict_data_root`).
pub fn list_inputs(input: &Path, img_grep: &str) -> Result<Vec<PathBuf>> {
    let text = input.to_string_lossy();
    if input.is_dir() {
        return glob_under(input, img_grep);
    }
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    if has_glob_chars(&text) {
        // Split off the longest leading part without glob characters.
        let comps: Vec<&str> = text.split('/').collect();
        let first = comps
            .iter()
            .position(|c| has_glob_chars(c))
            .unwrap_or(comps.len());
        let root = comps[..first].join("/");
        let root = if root.is_empty() {
            if text.starts_with('/') {
                "/".to_owned()
            } else {
                ".".to_owned()
            }
        } else {
            root
        };
        let files = glob_under(Path::new(&root), &comps[first..].join("/"))?;
        return Ok(if root == "." && !text.starts_with("./") {
            files
                .into_iter()
                .map(|p| p.strip_prefix(".").map(Path::to_path_buf).unwrap_or(p))
                .collect()
        } else {
            files
        });
    }
    Err(HostError::Usage(format!(
        "--input {}: no such file or directory",
        input.display()
    )))
}

/// `K/N` with 1 <= K <= N... given as 0-based `K` in `0..N` (Slurm's
/// `$SLURM_ARRAY_TASK_ID` and Kubernetes' `$JOB_COMPLETION_INDEX` start at 0).
pub fn parse_shard(text: &str) -> Result<(usize, usize)> {
    let bad = || {
        HostError::Usage(format!(
            "--shard `{text}`: expected K/N with 0 <= K < N, e.g. 0/4 (K is 0-based, as \
             $SLURM_ARRAY_TASK_ID and $JOB_COMPLETION_INDEX)"
        ))
    };
    let (k, n) = text.split_once('/').ok_or_else(bad)?;
    let k: usize = k.trim().parse().map_err(|_| bad())?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    if n == 0 || k >= n {
        return Err(bad());
    }
    Ok((k, n))
}

/// The scenes of shard `k` of `n`: every `n`-th scene of the sorted list, from the `k`-th.
pub fn shard<T>(items: Vec<T>, k: usize, n: usize) -> Vec<T> {
    items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % n == k)
        .map(|(_, x)| x)
        .collect()
}

/// `<out_dir>/<stem>_<suffix>.tif` (`os.path.splitext(basename)[0]`).
pub fn output_path(out_dir: &Path, input: &Path, suffix: &str) -> PathBuf {
    output_path_with(out_dir, input, suffix, "tif")
}

/// `<out_dir>/<stem>_<suffix>.<ext>`: the raster outputs' naming for other kinds of file
/// (the detections' `.gpkg` / `.geojson`).
pub fn output_path_with(out_dir: &Path, input: &Path, suffix: &str, ext: &str) -> PathBuf {
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = match name.rfind('.') {
        Some(i) if i > 0 => name[..i].to_owned(),
        _ => name,
    };
    out_dir.join(format!("{stem}_{suffix}.{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_sorted_inputs() {
        let items: Vec<usize> = (0..10).collect();
        let mut all: Vec<usize> = (0..3).flat_map(|k| shard(items.clone(), k, 3)).collect();
        all.sort();
        assert_eq!(all, items);
        assert_eq!(shard(items, 1, 3), vec![1, 4, 7]);
        assert_eq!(parse_shard("2/4").unwrap(), (2, 4));
        assert!(parse_shard("4/4").is_err());
        assert!(parse_shard("a").is_err());
    }

    #[test]
    fn globs_match_like_python_glob() {
        let d = tempfile::tempdir().unwrap();
        for n in ["b.tif", "a.tif", ".hidden.tif", "c.txt"] {
            std::fs::write(d.path().join(n), "").unwrap();
        }
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/d.tif"), "").unwrap();
        let names = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter()
                .map(|p| p.strip_prefix(d.path()).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(
            names(glob_under(d.path(), "*.tif").unwrap()),
            vec!["a.tif", "b.tif"]
        );
        assert_eq!(
            names(glob_under(d.path(), "*/*.tif").unwrap()),
            vec!["sub/d.tif"]
        );
        let pattern = format!("{}/*.tif", d.path().display());
        assert_eq!(
            names(list_inputs(Path::new(&pattern), "*").unwrap()),
            vec!["a.tif", "b.tif"]
        );
        assert_eq!(
            output_path(Path::new("out"), Path::new("x/scene.v1.tif"), "pred"),
            PathBuf::from("out/scene.v1_pred.tif")
        );
    }
}
