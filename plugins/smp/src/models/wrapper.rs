//! TerraTorch's `SMPDecoderWrapper` and the `aux_*` handling of `SMPRegistry.build`,
//! from `terratorch/registry/smp_registry.py`, with smp's `ClassificationHead` from
//! `segmentation_models_pytorch/base/heads.py`.
//!
//! `SMPRegistry.build` creates a whole smp model around a dummy encoder, keeps only
//! `model.decoder` as the attribute `_smp_decoder`, and records the input channels
//! of the segmentation head smp made as `out_channels`.
//!
//! Keyword arguments that start with `aux_` are split off (prefix removed) and given
//! to the smp model as `aux_params`, so `aux_classes=3, aux_pooling="max"` becomes
//! `ClassificationHead(in_channels=channels[-1], classes=3, pooling="max")`. smp builds
//! that head (and raises on bad arguments), but the wrapper keeps only the decoder:
//! the head is in neither the wrapper's `state_dict` nor its forward, which returns
//! the decoder's mask features alone, never a `(mask, label)` tuple. [`AuxParams`]
//! mirrors exactly that: the arguments are checked as smp checks them, kept on the
//! wrapper for inspection, and add no parameters and no output.
use serde_json::{json, Value};
use tch::{nn, Device, Tensor};
use terrahost_plugin_api::sdk::{BuildCtx, Built, Entry, Model};
use terrahost_plugin_api::{ModuleBox, ParamType, PluginError, Result};

/// The attribute under which TerraTorch keeps the smp decoder: every parameter
/// name starts with `_smp_decoder.`.
pub const DECODER_ATTR: &str = "_smp_decoder";

/// Pooling of smp's `ClassificationHead`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuxPooling {
    /// `nn.AdaptiveAvgPool2d(1)` (smp's default).
    Avg,
    /// `nn.AdaptiveMaxPool2d(1)`.
    Max,
}

/// The activations smp's `Activation` knows by name (`None` is spelled as no value).
pub const AUX_ACTIVATIONS: [&str; 9] = [
    "identity",
    "sigmoid",
    "softmax2d",
    "softmax",
    "logsoftmax",
    "tanh",
    "argmax",
    "argmax2d",
    "clamp",
];

/// The arguments smp's `ClassificationHead` would be built with from TerraTorch's
/// `aux_*` keyword arguments. The head itself is discarded by TerraTorch's wrapper.
#[derive(Clone, Debug, PartialEq)]
pub struct AuxParams {
    /// Input channels: the deepest encoder map's (`encoder.out_channels[-1]`).
    pub in_channels: i64,
    /// Number of classes (`aux_classes`).
    pub classes: i64,
    /// Global pooling (`aux_pooling`, default `"avg"`).
    pub pooling: AuxPooling,
    /// Dropout probability before the linear layer (`aux_dropout`, default 0.2).
    pub dropout: f64,
    /// Activation name (`aux_activation`, default none).
    pub activation: Option<String>,
}

/// Names of the `aux_*` arguments every smp decoder entry declares.
pub const AUX_ARGS: [&str; 4] = [
    "aux_classes",
    "aux_pooling",
    "aux_dropout",
    "aux_activation",
];

impl AuxParams {
    /// Reads the `aux_*` arguments of an smp decoder entry: `None` when none is
    /// given (TerraTorch then passes `aux_params=None`), otherwise the head smp would
    /// build on `ctx.channels.last()`, with smp's errors for bad values.
    pub fn from_ctx(ctx: &BuildCtx<'_, '_>) -> Result<Option<Self>> {
        let q = ctx.qualified();
        if ctx.args.raw("aux_params").is_some() {
            return Err(PluginError::invalid_argument(format!(
                "argument `aux_params` of `{q}`: TerraTorch's SMPRegistry takes the auxiliary head's settings as \
                 separate `aux_`-prefixed arguments (it would turn `aux_params` into ClassificationHead(params=...), \
                 which smp rejects); pass e.g. `aux_classes=3, aux_pooling=\"max\"` instead"
            )));
        }
        if AUX_ARGS.iter().all(|a| ctx.args.raw(a).is_none()) {
            return Ok(None);
        }
        let Some(classes) = ctx.args.opt::<i64>("aux_classes")? else {
            let given: Vec<&str> = AUX_ARGS
                .iter()
                .copied()
                .filter(|a| ctx.args.raw(a).is_some())
                .collect();
            return Err(PluginError::invalid_argument(format!(
                "`{q}` got {} but no `aux_classes`: smp's ClassificationHead, which TerraTorch builds from the \
                 `aux_` arguments, needs the number of classes; add `aux_classes`",
                given.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")
            )));
        };
        ctx.args.ensure(
            classes >= 0,
            "aux_classes",
            format_args!("must be >= 0 (nn.Linear's output size), got {classes}"),
        )?;
        let pooling = match ctx.args.opt::<String>("aux_pooling")?.as_deref() {
            None | Some("avg") => AuxPooling::Avg,
            Some("max") => AuxPooling::Max,
            Some(other) => {
                return Err(PluginError::invalid_argument(format!(
                    "argument `aux_pooling` of `{q}`: Pooling should be one of ('max', 'avg'), got {other:?}"
                )))
            }
        };
        let dropout: f64 = ctx.args.get_or("aux_dropout", 0.2)?;
        ctx.args.ensure(
            (0.0..=1.0).contains(&dropout),
            "aux_dropout",
            format_args!("is a dropout probability and has to be between 0 and 1, got {dropout}"),
        )?;
        let activation: Option<String> = ctx.args.opt("aux_activation")?;
        if let Some(a) = &activation {
            if !AUX_ACTIVATIONS.contains(&a.as_str()) {
                return Err(PluginError::invalid_argument(format!(
                    "argument `aux_activation` of `{q}`: unknown activation {a:?} (smp knows: None, {})",
                    AUX_ACTIVATIONS.join(", ")
                )));
            }
        }
        let in_channels = ctx.channels.last().copied().unwrap_or(0);
        Ok(Some(Self {
            in_channels,
            classes,
            pooling,
            dropout,
            activation,
        }))
    }
}

/// Declares the `aux_*` arguments TerraTorch's SMPRegistry accepts for every smp model.
pub fn declare_aux(entry: Entry) -> Entry {
    entry
        .opt(
            "aux_classes",
            ParamType::INT,
            Value::Null,
            "classes of smp's auxiliary ClassificationHead on the deepest map; giving any aux_* argument makes \
             smp build that head, which TerraTorch's wrapper then discards (no parameters, no extra output)",
        )
        .opt(
            "aux_pooling",
            ParamType::STR,
            Value::Null,
            "auxiliary head pooling, \"avg\" or \"max\" (smp's default \"avg\"); needs aux_classes",
        )
        .opt(
            "aux_dropout",
            ParamType::FLOAT,
            Value::Null,
            "auxiliary head dropout in [0, 1] (smp's default 0.2); needs aux_classes",
        )
        .opt(
            "aux_activation",
            ParamType::STR,
            Value::Null,
            "auxiliary head activation: None, \"sigmoid\", \"softmax\", \"logsoftmax\", \"tanh\", ... (smp's default None); needs aux_classes",
        )
        .opt(
            "aux_params",
            ParamType::DICT,
            Value::Null,
            "not accepted as a dict: TerraTorch reads the auxiliary head's settings from aux_classes, aux_pooling, \
             aux_dropout and aux_activation",
        )
}

/// An smp decoder entry of the `decoder` registry: it takes the channel list,
/// declares the `aux_*` arguments and checks them (as smp would) before `build` runs.
/// Every smp decoder should be made with this, so that all of them take `aux_*`.
pub fn entry(
    name: &str,
    doc: &str,
    build: impl Fn(&BuildCtx<'_, '_>) -> Result<ModuleBox> + Send + Sync + 'static,
) -> Entry {
    declare_aux(
        Entry::new(name, doc, move |ctx| {
            AuxParams::from_ctx(ctx)?;
            build(ctx)
        })
        .takes_channels(),
    )
}

/// An smp decoder as TerraTorch hands it out: forward delegates to the decoder and
/// `out_channels` is what the next (TerraTorch) head must accept.
#[derive(Debug)]
pub struct SmpDecoderWrapper<D> {
    decoder: D,
    out_channels: i64,
    aux: Option<AuxParams>,
}

impl<D: Model> SmpDecoderWrapper<D> {
    /// Builds the decoder with `build` under `root / "_smp_decoder"` and wraps it.
    /// `out_channels` is the input width of smp's segmentation head for this decoder.
    pub fn new(
        root: nn::Path,
        out_channels: i64,
        build: impl FnOnce(nn::Path) -> Result<D>,
    ) -> Result<Self> {
        let decoder = build(&root / DECODER_ATTR)?;
        Ok(Self {
            decoder,
            out_channels,
            aux: None,
        })
    }

    /// Builds the wrapped decoder for an entry in a fresh CPU `VarStore`, with the
    /// entry's `aux_*` arguments, and boxes it as the registry hands it out.
    pub fn build(
        ctx: &BuildCtx<'_, '_>,
        out_channels: i64,
        build: impl FnOnce(nn::Path) -> Result<D>,
    ) -> Result<ModuleBox> {
        let aux = AuxParams::from_ctx(ctx)?;
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Self::new(vs.root(), out_channels, build)?.with_aux(aux);
        Ok(Built::new(ctx.qualified(), vs, model).boxed())
    }

    /// Records the auxiliary head smp would have built (and TerraTorch discarded).
    pub fn with_aux(mut self, aux: Option<AuxParams>) -> Self {
        self.aux = aux;
        self
    }

    /// The wrapped decoder.
    pub fn decoder(&self) -> &D {
        &self.decoder
    }

    /// The auxiliary head's settings, when `aux_*` arguments were given.
    pub fn aux_params(&self) -> Option<&AuxParams> {
        self.aux.as_ref()
    }
}

impl<D: Model> Model for SmpDecoderWrapper<D> {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        // Only the decoder's output: TerraTorch's wrapper never runs the aux head.
        self.decoder.forward(xs, train)
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.out_channels]
    }

    fn meta(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        if let Some(a) = &self.aux {
            m.insert(
                "aux_params".into(),
                json!({
                    "in_channels": a.in_channels,
                    "classes": a.classes,
                    "pooling": match a.pooling { AuxPooling::Avg => "avg", AuxPooling::Max => "max" },
                    "dropout": a.dropout,
                    "activation": a.activation,
                }),
            );
        }
        m
    }
}
