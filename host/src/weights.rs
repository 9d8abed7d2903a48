//! Checkpoints: reading state_dicts and loading them into built modules, strictly.
use crate::error::{HostError, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tch::Tensor;
use terrahost_plugin_api::sdk::DynModule;

/// Keys PyTorch saves for BatchNorm that carry no numbers a forward pass uses. They
/// may be present or absent on either side.
fn tolerated(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
}

/// Reads a state_dict: `.safetensors`, or a `torch.save` archive (`.pt`, `.pth`,
/// `.ckpt`, `.bin`; a Lightning checkpoint's `state_dict` is unwrapped). See
/// [`terrahost_layers::checkpoint`].
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    terrahost_layers::checkpoint::read_state_dict(path)
        .map_err(|e| HostError::Weights(e.message().to_owned()))
}

/// What a load did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors copied into the model.
    pub loaded: usize,
    /// A prefix that was stripped from every checkpoint key (`model.` in Lightning checkpoints).
    pub stripped_prefix: Option<String>,
}

/// Loads `state` into `module`, strictly: every parameter and buffer of the module must
/// be in the checkpoint with the same shape, and the checkpoint may hold nothing else
/// (`num_batches_tracked` excepted). The error lists what is missing, unexpected or of
/// the wrong shape. Values are converted to the parameter's dtype and device. Keys
/// that all start with `model.` (a Lightning task's state_dict) are accepted too.
pub fn load_state_dict(module: &DynModule, state: Vec<(String, Tensor)>) -> Result<LoadReport> {
    let _span = tracing::info_span!("load_weights", module = module.label()).entered();
    let targets: BTreeMap<String, Tensor> = module.state_dict().into_iter().collect();
    let mut source: BTreeMap<String, Tensor> = state.into_iter().collect();
    let mut report = LoadReport::default();

    let matches =
        |src: &BTreeMap<String, Tensor>| src.keys().filter(|k| targets.contains_key(*k)).count();
    if matches(&source) == 0 && !source.is_empty() && source.keys().all(|k| k.starts_with("model."))
    {
        source = source
            .into_iter()
            .map(|(k, v)| (k["model.".len()..].to_owned(), v))
            .collect();
        report.stripped_prefix = Some("model.".to_owned());
    }

    let missing: Vec<&str> = targets
        .keys()
        .filter(|k| !source.contains_key(*k) && !tolerated(k))
        .map(String::as_str)
        .collect();
    let unexpected: Vec<&str> = source
        .keys()
        .filter(|k| !targets.contains_key(*k) && !tolerated(k))
        .map(String::as_str)
        .collect();
    let mut wrong_shape = Vec::new();
    for (k, t) in &targets {
        if let Some(s) = source.get(k) {
            if s.size() != t.size() {
                wrong_shape.push(format!(
                    "{k}: checkpoint {:?}, model {:?}",
                    s.size(),
                    t.size()
                ));
            }
        }
    }
    if !missing.is_empty() || !unexpected.is_empty() || !wrong_shape.is_empty() {
        let mut msg = format!("the checkpoint does not fit `{}`:", module.label());
        let list = |title: &str, items: &[String]| {
            let shown: Vec<&str> = items.iter().take(20).map(String::as_str).collect();
            let more = if items.len() > 20 {
                format!(", ... ({} more)", items.len() - 20)
            } else {
                String::new()
            };
            format!("\n  {title} ({}): {}{more}", items.len(), shown.join(", "))
        };
        if !missing.is_empty() {
            msg += &list(
                "missing keys",
                &missing.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            );
        }
        if !unexpected.is_empty() {
            msg += &list(
                "unexpected keys",
                &unexpected.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            );
        }
        if !wrong_shape.is_empty() {
            msg += &list("wrong shapes", &wrong_shape);
        }
        if let Some(p) = common_prefix_hint(&unexpected, &missing) {
            msg += &format!("\n  hint: {p}");
        }
        return Err(HostError::Weights(msg));
    }
    tch::no_grad(|| -> Result<()> {
        for (k, t) in &targets {
            if let Some(s) = source.get(k) {
                let mut dst = t.shallow_clone();
                let value = s.to_device(t.device()).to_kind(t.kind());
                dst.f_copy_(&value)
                    .map_err(|e| HostError::Weights(format!("copying `{k}`: {e}")))?;
                report.loaded += 1;
            }
        }
        Ok(())
    })?;
    tracing::info!(loaded = report.loaded, "weights loaded");
    Ok(report)
}

/// When every unexpected key is a missing key with one extra leading component, say so.
fn common_prefix_hint(unexpected: &[&str], missing: &[&str]) -> Option<String> {
    let first = unexpected.first()?;
    let (head, _) = first.split_once('.')?;
    let missing: BTreeSet<&str> = missing.iter().copied().collect();
    let all = unexpected.iter().all(|k| {
        k.strip_prefix(head)
            .and_then(|r| r.strip_prefix('.'))
            .is_some_and(|r| missing.contains(r))
    });
    all.then(|| format!("every unexpected key is a missing key under `{head}.`; was the checkpoint saved from a wrapper module?"))
}

/// Saves named tensors as `.safetensors`: into a temporary file beside `path`, then
/// renamed over it. A symbolic link at `path` is replaced, never written through (so
/// an output cannot be redirected to a file elsewhere), and a reader never sees half a
/// file.
pub fn write_tensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let owned: Vec<(&str, Tensor)> = tensors.iter().map(|(k, t)| (*k, t.contiguous())).collect();
    let tmp = partial_path(path);
    // A leftover (or planted) file or link under the temporary name goes first: the
    // writer below creates its file by name.
    let _ = std::fs::remove_file(&tmp);
    let written = Tensor::write_safetensors(&owned, &tmp)
        .map_err(|e| HostError::Usage(format!("cannot write {}: {e}", path.display())))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| HostError::io(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The temporary name an output is written under before it is renamed to `path`:
/// hidden, in the same directory (so the rename is atomic), unique to this process.
pub fn partial_path(path: &Path) -> std::path::PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{name}.{}.partial", std::process::id()))
}
