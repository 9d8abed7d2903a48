//! Pretrained-checkpoint glue shared by every timm entry, mirroring what
//! `timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...))` does
//! around a family's `checkpoint_filter_fn`: reading the local file
//! (`timm/models/_builder.py`), `clean_state_dict` and `adapt_input_conv`
//! (`timm/models/_helpers.py`, `_manipulate.py`), and `load_state_dict`.
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use tch::{nn, Device, Kind, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Built, Model};
use terrahost_plugin_api::{ModuleBox, PluginError, Result};

/// A model that can take a checkpoint of its upstream family (keys as the checkpoint
/// stores them) into the VarStore it was built in.
pub(crate) trait LoadPretrained {
    /// Filters, renames and adapts `weights` as upstream does and copies them into `vs`.
    fn load_pretrained(&self, vs: &mut nn::VarStore, weights: Vec<(String, Tensor)>) -> Result<()>;
}

/// Builds a model with `make` in a fresh CPU VarStore, loads the checkpoint named by
/// `pretrained_cfg_overlay` when `pretrained=true`, and wraps it as `ctx`'s module.
pub(crate) fn build_model<M, F>(ctx: &BuildCtx<'_, '_>, make: F) -> Result<ModuleBox>
where
    M: Model + LoadPretrained,
    F: FnOnce(nn::Path) -> Result<M>,
{
    let qualified = ctx.qualified();
    let pretrained: bool = ctx.args.get("pretrained")?;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = make(vs.root()).map_err(|e| e.context(format_args!("`{qualified}`")))?;
    if pretrained {
        let weights = pretrained_weights(ctx)?;
        model
            .load_pretrained(&mut vs, weights)
            .map_err(|e| e.context(format_args!("`{qualified}` pretrained weights")))?;
    }
    Ok(Built::new(qualified, vs, model).boxed())
}

/// Reads the checkpoint named by `pretrained_cfg_overlay={"file": ...}` (`.safetensors` or a
/// `torch.save` file), or explains why `pretrained=true` cannot be honoured. Keys come back
/// as stored (see [`clean_checkpoint_key`]).
pub(crate) fn pretrained_weights(ctx: &BuildCtx<'_, '_>) -> Result<Vec<(String, Tensor)>> {
    let qualified = ctx.qualified();
    let overlay: Option<Map<String, Value>> = ctx.args.opt("pretrained_cfg_overlay")?;
    let file = overlay
        .as_ref()
        .and_then(|o| o.get("file"))
        .and_then(Value::as_str);
    let Some(file) = file else {
        return Err(PluginError::invalid_argument(format!(
            "`{qualified}` with pretrained=true would download weights from the timm / Hugging Face hub, \
             and terrahost makes no hub downloads: build it with pretrained=false and pass the checkpoint \
             with `terrahost run --weights <file>` (or give a local file as \
             pretrained_cfg_overlay={{\"file\": \"<path>.safetensors\"}})"
        )));
    };
    terrahost_layers::checkpoint::read_state_dict(std::path::Path::new(file)).map_err(|e| {
        e.context(format_args!(
            "`{qualified}`: pretrained_cfg_overlay.file `{file}`"
        ))
    })
}

/// A checkpoint key without the wrappers timm's `clean_state_dict` removes (`module.` from
/// DataParallel, `_orig_mod.` from `torch.compile`).
pub(crate) fn clean_checkpoint_key(mut k: String) -> String {
    for prefix in ["_orig_mod.", "module.", "_orig_mod."] {
        if let Some(rest) = k.strip_prefix(prefix) {
            k = rest.to_owned();
        }
    }
    k
}

/// Copies the tensors of `given` into the variables of `vs` with the same names, checking
/// shapes; variables `given` lacks keep their values.
pub(crate) fn copy_into(vs: &mut nn::VarStore, given: &BTreeMap<String, Tensor>) -> Result<()> {
    let mut vars = vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (k, v) in vars.iter_mut() {
            let Some(src) = given.get(k) else { continue };
            if src.size() != v.size() {
                return Err(PluginError::invalid_argument(format!(
                    "checkpoint tensor `{k}` has shape {:?}, the model expects {:?}",
                    src.size(),
                    v.size()
                )));
            }
            v.f_copy_(&src.f_to_device(v.device())?.f_to_kind(v.kind())?)?;
        }
        Ok(())
    })
}

/// Copies `given` into `vs` strictly: every variable must be given with its shape and
/// nothing else may be left over, as `load_state_dict(strict=True)`; `what` names the model
/// in errors.
pub(crate) fn load_strict(
    vs: &mut nn::VarStore,
    given: BTreeMap<String, Tensor>,
    what: &str,
) -> Result<()> {
    let vars = vs.variables();
    let missing: Vec<&String> = vars.keys().filter(|k| !given.contains_key(*k)).collect();
    let unexpected: Vec<&String> = given.keys().filter(|k| !vars.contains_key(*k)).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(PluginError::invalid_argument(format!(
            "the checkpoint does not fit this {what}: missing keys {missing:?}, unexpected keys {unexpected:?}"
        )));
    }
    copy_into(vs, &given)
}

/// Adapts the first-convolution weight stored under `key` in `given` to `in_chans` input
/// channels ([`adapt_input_conv`]) when its channel count differs.
pub(crate) fn adapt_first_conv(
    given: &mut BTreeMap<String, Tensor>,
    key: &str,
    in_chans: i64,
) -> Result<()> {
    if let Some(w) = given.get(key) {
        if w.size().get(1) != Some(&in_chans) {
            let adapted =
                adapt_input_conv(in_chans, w).map_err(|e| e.context(format_args!("`{key}`")))?;
            given.insert(key.to_owned(), adapted);
        }
    }
    Ok(())
}

/// timm's `adapt_input_conv` for a 3-channel pretrained first convolution: one input
/// channel sums the three, more repeat them (cut to `in_chans`) and scale by 3 / in_chans.
pub fn adapt_input_conv(in_chans: i64, w: &Tensor) -> Result<Tensor> {
    let size = w.size();
    if size.len() != 4 || size[1] != 3 {
        return Err(PluginError::invalid_argument(format!(
            "cannot adapt a first-convolution weight of shape {size:?} to {in_chans} input channels: only 3-channel \
             [O, 3, kH, kW] weights can be adapted"
        )));
    }
    let kind = w.kind();
    let w = w.f_to_kind(Kind::Float)?;
    let out = if in_chans == 1 {
        w.f_sum_dim_intlist(Some([1i64].as_slice()), true, Kind::Float)?
    } else {
        let repeat = (in_chans + 2) / 3;
        w.f_repeat([1, repeat, 1, 1])?
            .f_narrow(1, 0, in_chans)?
            .f_mul_scalar(3.0 / in_chans as f64)?
    };
    Ok(out.f_to_kind(kind)?)
}
