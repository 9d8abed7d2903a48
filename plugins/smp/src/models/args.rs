//! Reading the keyword arguments smp's models share (`decoder_use_norm` and its
//! deprecated aliases, `decoder_interpolation`, `decoder_attention_type`, dropout
//! probabilities, `decoder_channels`), as TerraTorch's `SMPRegistry.build` passes them
//! on, with errors that name the argument.
use super::blocks::{AttentionType, Interpolation, NormConfig};
use serde_json::{json, Value};
use terrahost_plugin_api::sdk::{BuildCtx, Entry};
use terrahost_plugin_api::{ParamType, PluginError, Result};

/// Wraps a reason from one of the `parse`/`from_smp` functions into an error naming
/// argument `name` of the entry being built.
fn invalid(ctx: &BuildCtx<'_, '_>, name: &str, why: String) -> PluginError {
    PluginError::invalid_argument(format!("argument `{name}` of `{}`: {why}", ctx.qualified()))
}

/// Names the entry being built in the error of a build-time check (`r`), e.g. a
/// `Config::validate`.
pub fn in_entry(ctx: &BuildCtx<'_, '_>, r: Result<()>) -> Result<()> {
    r.map_err(|e| e.context(format_args!("`{}`", ctx.qualified())))
}

/// smp's `decoder_use_norm`, overridden by the deprecated `decoder_use_batchnorm`
/// when that is given (as every smp model that takes both does).
pub fn use_norm(ctx: &BuildCtx<'_, '_>) -> Result<NormConfig> {
    use_norm_or(ctx, "decoder_use_batchnorm")
}

/// `decoder_use_norm`, letting the model's deprecated alias (`alias`, popped from
/// smp's `**kwargs`, e.g. PSPNet's `psp_use_batchnorm`) win when it is given.
pub fn use_norm_or(ctx: &BuildCtx<'_, '_>, alias: &str) -> Result<NormConfig> {
    let (name, v) = match ctx.args.raw(alias) {
        Some(v) => (alias, v.clone()),
        None => (
            "decoder_use_norm",
            ctx.args
                .raw("decoder_use_norm")
                .cloned()
                .unwrap_or(json!("batchnorm")),
        ),
    };
    NormConfig::from_smp(&v).map_err(|why| invalid(ctx, name, why))
}

/// Declares `decoder_use_norm` and its deprecated alias `decoder_use_batchnorm`.
pub fn declare_use_norm(entry: Entry) -> Entry {
    entry
        .opt(
            "decoder_use_norm",
            ParamType::ANY,
            json!("batchnorm"),
            "norm after each conv: true/false, \"batchnorm\", \"identity\", \"layernorm\", \"instancenorm\", or {\"type\": ..., **kwargs}",
        )
        .opt(
            "decoder_use_batchnorm",
            ParamType::ANY,
            Value::Null,
            "deprecated alias of decoder_use_norm; overrides it when given",
        )
}

/// smp's `decoder_interpolation` (an `F.interpolate` mode).
pub fn interpolation(ctx: &BuildCtx<'_, '_>) -> Result<Interpolation> {
    let mode: String = ctx.args.get("decoder_interpolation")?;
    interpolation_named(ctx, "decoder_interpolation", &mode)
}

/// Parses the interpolation mode `value` that argument `name` gave.
pub fn interpolation_named(
    ctx: &BuildCtx<'_, '_>,
    name: &str,
    value: &str,
) -> Result<Interpolation> {
    Interpolation::parse(value).map_err(|why| invalid(ctx, name, why))
}

/// smp's `decoder_attention_type`: `None` or `"scse"`.
pub fn attention_type(ctx: &BuildCtx<'_, '_>) -> Result<Option<AttentionType>> {
    ctx.args
        .opt::<String>("decoder_attention_type")?
        .map(|s| AttentionType::parse(&s))
        .transpose()
        .map_err(|why| invalid(ctx, "decoder_attention_type", why))
}

/// Checks a dropout probability as `nn.Dropout` does.
pub fn check_dropout(ctx: &BuildCtx<'_, '_>, name: &str, p: f64) -> Result<()> {
    ctx.args.ensure(
        (0.0..=1.0).contains(&p),
        name,
        format_args!("is a dropout probability: it must lie in [0, 1], got {p}"),
    )
}

/// The length check smp makes between `encoder_depth` and `decoder_channels`, with
/// TerraTorch's depth (`len(channels) - 1`) spelled out.
pub fn check_depth(ctx: &BuildCtx<'_, '_>, n_decoder_channels: usize) -> Result<()> {
    let depth = ctx.channels.len().saturating_sub(1);
    if depth != n_decoder_channels {
        return Err(PluginError::invalid_argument(format!(
            "`{}`: Model depth is {depth}, but you provide `decoder_channels` for {n_decoder_channels} blocks. \
             (The depth is the length of the channel list {:?} minus one; pass `decoder_channels` with {depth} \
             values.)",
            ctx.qualified(),
            ctx.channels
        )));
    }
    Ok(())
}

/// `decoder_channels` of a U-Net-like model (MAnet, UNet++): one positive width per
/// encoder stage ([`check_depth`], [`check_positive`]).
pub fn check_stage_channels(ctx: &BuildCtx<'_, '_>, decoder_channels: &[i64]) -> Result<()> {
    check_depth(ctx, decoder_channels.len())?;
    check_positive(ctx, "decoder_channels", decoder_channels)
}

/// Checks that every channel count of argument `name` is positive.
pub fn check_positive(ctx: &BuildCtx<'_, '_>, name: &str, values: &[i64]) -> Result<()> {
    match values.iter().find(|&&c| c <= 0) {
        Some(c) => Err(PluginError::invalid_argument(format!(
            "argument `{name}` of `{}` must hold positive channel counts, got {c} in {values:?}",
            ctx.qualified()
        ))),
        None => Ok(()),
    }
}
