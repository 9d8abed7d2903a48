//! TerraTorch's prediction heads, which the task models put on top of a decoder. They
//! are not registry entries upstream, so they are plain structs here.
//! Mirrors `terratorch/models/heads/segmentation_head.py`, `regression_head.py` and
//! `scalar_head.py` (`ClassificationHead` is upstream's deprecated alias of `ScalarHead`).
//!
//! Each head keeps its layers in an `nn.Sequential` called `head`, so its parameters are
//! `head.{i}...` relative to the head module (`head.head.{i}...` inside a task model).

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module as _, nn::ModuleT as _, Tensor};
use terrahost_plugin_api::{sdk::Model, PluginError, Result};

fn zero() -> f64 {
    0.0
}

fn one() -> i64 {
    1
}

fn yes() -> bool {
    true
}

fn check_dropout(head: &str, p: f64) -> Result<()> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(PluginError::invalid_argument(format!(
            "{head}: `dropout` must be between 0 and 1, got {p}"
        )))
    }
}

fn check_positive(head: &str, name: &str, values: &[i64]) -> Result<()> {
    match values.iter().find(|&&v| v < 1) {
        Some(v) => Err(PluginError::invalid_argument(format!(
            "{head}: `{name}` must be >= 1, got {v}"
        ))),
        None => Ok(()),
    }
}

fn single_input<'a>(head: &str, xs: &'a [Tensor]) -> Result<&'a Tensor> {
    match xs {
        [x] => Ok(x),
        _ => Err(PluginError::forward_failed(format!(
            "{head} takes one tensor, got {}",
            xs.len()
        ))),
    }
}

// ---------------------------------------------------------------------------------
// SegmentationHead
// ---------------------------------------------------------------------------------

/// Arguments of [`SegmentationHead`] (upstream names and defaults).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SegmentationHeadConfig {
    /// Channels of the decoder output.
    pub in_channels: i64,
    /// Number of classes (output channels).
    pub num_classes: i64,
    /// Widths of optional 3x3 conv + ReLU blocks before the classifier.
    #[serde(default)]
    pub channel_list: Option<Vec<i64>>,
    /// Dropout before the classifier (elementwise, `nn.Dropout`).
    #[serde(default = "zero")]
    pub dropout: f64,
}

/// `[conv3x3 + ReLU]* -> dropout -> conv1x1(num_classes)`.
#[derive(Debug)]
pub struct SegmentationHead {
    blocks: Vec<nn::Conv2D>,
    dropout: f64,
    classifier: nn::Conv2D,
    num_classes: i64,
}

impl SegmentationHead {
    /// Builds the head under `p` (parameters `head.0.{i}.0.*` and `head.2.*`).
    pub fn new(p: nn::Path, cfg: &SegmentationHeadConfig) -> Result<Self> {
        const NAME: &str = "SegmentationHead";
        check_positive(NAME, "in_channels", &[cfg.in_channels])?;
        check_positive(NAME, "num_classes", &[cfg.num_classes])?;
        check_dropout(NAME, cfg.dropout)?;
        let seq = &p / "head";
        let widths = cfg.channel_list.clone().unwrap_or_default();
        check_positive(NAME, "channel_list", &widths)?;
        let conv3 = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let mut c_in = cfg.in_channels;
        let mut blocks = Vec::new();
        for (i, &c) in widths.iter().enumerate() {
            blocks.push(nn::conv2d(&seq / 0 / i / 0, c_in, c, 3, conv3));
            c_in = c;
        }
        let classifier = nn::conv2d(&seq / 2, c_in, cfg.num_classes, 1, Default::default());
        Ok(Self {
            blocks,
            dropout: cfg.dropout,
            classifier,
            num_classes: cfg.num_classes,
        })
    }

    /// `[B, C, H, W] -> [B, num_classes, H, W]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        for conv in &self.blocks {
            x = conv.forward(&x).f_relu()?;
        }
        if self.dropout > 0.0 {
            x = x.f_dropout(self.dropout, train)?;
        }
        Ok(self.classifier.forward(&x))
    }

    /// The number of output channels.
    pub fn num_classes(&self) -> i64 {
        self.num_classes
    }
}

impl Model for SegmentationHead {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        Ok(vec![
            self.forward_t(single_input("SegmentationHead", xs)?, train)?
        ])
    }
    fn out_channels(&self) -> Vec<i64> {
        vec![self.num_classes]
    }
    fn includes_head(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------------
// RegressionHead
// ---------------------------------------------------------------------------------

/// The activations `final_act` can name (upstream imports any `module.Class` and
/// instantiates it without arguments; these are the argument-free `torch.nn` ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `torch.nn.Identity`
    Identity,
    /// `torch.nn.ReLU`
    ReLU,
    /// `torch.nn.ReLU6`
    ReLU6,
    /// `torch.nn.Sigmoid`
    Sigmoid,
    /// `torch.nn.Tanh`
    Tanh,
    /// `torch.nn.Softplus` (beta 1, threshold 20)
    Softplus,
    /// `torch.nn.GELU` (exact)
    GELU,
    /// `torch.nn.SiLU`
    SiLU,
    /// `torch.nn.ELU` (alpha 1)
    ELU,
    /// `torch.nn.LeakyReLU` (slope 0.01)
    LeakyReLU,
    /// `torch.nn.Mish`
    Mish,
    /// `torch.nn.Hardsigmoid`
    Hardsigmoid,
    /// `torch.nn.Hardswish`
    Hardswish,
    /// `torch.nn.LogSigmoid`
    LogSigmoid,
}

impl Activation {
    const ALL: [(&'static str, Activation); 14] = [
        ("Identity", Self::Identity),
        ("ReLU", Self::ReLU),
        ("ReLU6", Self::ReLU6),
        ("Sigmoid", Self::Sigmoid),
        ("Tanh", Self::Tanh),
        ("Softplus", Self::Softplus),
        ("GELU", Self::GELU),
        ("SiLU", Self::SiLU),
        ("ELU", Self::ELU),
        ("LeakyReLU", Self::LeakyReLU),
        ("Mish", Self::Mish),
        ("Hardsigmoid", Self::Hardsigmoid),
        ("Hardswish", Self::Hardswish),
        ("LogSigmoid", Self::LogSigmoid),
    ];

    /// Parses a dotted class path such as `torch.nn.ReLU`.
    pub fn parse(path: &str) -> Result<Self> {
        let (module, class) = path.rsplit_once('.').unwrap_or(("", path));
        let known_module = matches!(
            module,
            "torch.nn" | "torch.nn.modules.activation" | "torch.nn.modules.linear"
        );
        match Self::ALL.iter().find(|(n, _)| *n == class) {
            Some((_, a)) if known_module => Ok(*a),
            _ => Err(PluginError::invalid_argument(format!(
                "RegressionHead: `final_act` `{path}` is not supported; use one of {}",
                Self::ALL
                    .iter()
                    .map(|(n, _)| format!("torch.nn.{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Applies the activation.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Identity => x.shallow_clone(),
            Self::ReLU => x.f_relu()?,
            Self::ReLU6 => x.f_relu6()?,
            Self::Sigmoid => x.f_sigmoid()?,
            Self::Tanh => x.f_tanh()?,
            Self::Softplus => x.f_softplus()?,
            Self::GELU => x.f_gelu("none")?,
            Self::SiLU => x.f_silu()?,
            Self::ELU => x.f_elu()?,
            Self::LeakyReLU => x.f_leaky_relu()?,
            Self::Mish => x.f_mish()?,
            Self::Hardsigmoid => x.f_hardsigmoid()?,
            Self::Hardswish => x.f_hardswish()?,
            Self::LogSigmoid => x.f_log_sigmoid()?,
        })
    }
}

/// Arguments of [`RegressionHead`] (upstream names and defaults).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegressionHeadConfig {
    /// Channels of the decoder output.
    pub in_channels: i64,
    /// Number of regressed variables (output channels).
    #[serde(default = "one")]
    pub num_outputs: i64,
    /// Final activation as a class path (`torch.nn.ReLU`); none by default.
    #[serde(default)]
    pub final_act: Option<String>,
    /// Number of learned 2x PixelShuffle upscaling layers in front.
    #[serde(default)]
    pub learned_upscale_layers: i64,
    /// Widths of optional 3x3 conv + BatchNorm + ReLU blocks before the final conv.
    #[serde(default)]
    pub channel_list: Option<Vec<i64>>,
    /// Accepted for compatibility; upstream ignores it (the blocks always have BatchNorm).
    #[serde(default = "yes")]
    pub batch_norm: bool,
    /// Channel dropout (`nn.Dropout2d`) before the final conv.
    #[serde(default = "zero")]
    pub dropout: f64,
}

/// Upstream `PixelShuffleUpscale`: conv3x3(c -> 4c) -> PixelShuffle(2) -> BN -> ReLU.
#[derive(Debug)]
struct PixelShuffleUpscale {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl PixelShuffleUpscale {
    fn new(p: nn::Path, c: i64) -> Self {
        let cfg = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        Self {
            conv: nn::conv2d(&p / "conv", c, c * 4, 3, cfg),
            bn: nn::batch_norm2d(&p / "bn", c, Default::default()),
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // [B, C, H, W] -> [B, 4C, H, W] -> [B, C, 2H, 2W]
        let up = self.conv.forward(x).f_pixel_shuffle(2)?;
        Ok(self.bn.forward_t(&up, train).f_relu()?)
    }
}

/// `[PixelShuffle upscale]* -> [conv3x3 + BN + ReLU]* -> Dropout2d -> conv1x1 -> final_act`.
#[derive(Debug)]
pub struct RegressionHead {
    upscale: Vec<PixelShuffleUpscale>,
    blocks: Vec<(nn::Conv2D, nn::BatchNorm)>,
    dropout: f64,
    last: nn::Conv2D,
    final_act: Activation,
    num_outputs: i64,
}

impl RegressionHead {
    /// Builds the head under `p`. The `head` Sequential holds only the stages that
    /// exist, so indices shift: without upscaling or blocks the final conv is `head.1`.
    pub fn new(p: nn::Path, cfg: &RegressionHeadConfig) -> Result<Self> {
        const NAME: &str = "RegressionHead";
        check_positive(NAME, "in_channels", &[cfg.in_channels])?;
        check_positive(NAME, "num_outputs", &[cfg.num_outputs])?;
        check_dropout(NAME, cfg.dropout)?;
        if cfg.learned_upscale_layers < 0 {
            return Err(PluginError::invalid_argument(format!(
                "{NAME}: `learned_upscale_layers` must be >= 0, got {}",
                cfg.learned_upscale_layers
            )));
        }
        let final_act = match &cfg.final_act {
            Some(path) => Activation::parse(path)?,
            None => Activation::Identity,
        };
        let seq = &p / "head";
        let mut idx = 0i64;
        let mut upscale = Vec::new();
        if cfg.learned_upscale_layers != 0 {
            for j in 0..cfg.learned_upscale_layers {
                upscale.push(PixelShuffleUpscale::new(&seq / idx / j, cfg.in_channels));
            }
            idx += 1;
        }
        let mut c_in = cfg.in_channels;
        let mut blocks = Vec::new();
        if let Some(widths) = &cfg.channel_list {
            check_positive(NAME, "channel_list", widths)?;
            let conv3 = nn::ConvConfig {
                padding: 1,
                bias: false,
                ..Default::default()
            };
            for (j, &c) in widths.iter().enumerate() {
                let block = &seq / idx / j;
                blocks.push((
                    nn::conv2d(&block / 0, c_in, c, 3, conv3),
                    nn::batch_norm2d(&block / 1, c, Default::default()),
                ));
                c_in = c;
            }
            idx += 1;
        }
        // the Dropout2d takes one slot, the final conv the next
        let last = nn::conv2d(
            &seq / (idx + 1),
            c_in,
            cfg.num_outputs,
            1,
            Default::default(),
        );
        Ok(Self {
            upscale,
            blocks,
            dropout: cfg.dropout,
            last,
            final_act,
            num_outputs: cfg.num_outputs,
        })
    }

    /// `[B, C, H, W] -> [B, num_outputs, H * 2^k, W * 2^k]` for `k` upscale layers.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        for up in &self.upscale {
            x = up.forward_t(&x, train)?;
        }
        for (conv, bn) in &self.blocks {
            x = bn.forward_t(&conv.forward(&x), train).f_relu()?;
        }
        if self.dropout > 0.0 {
            x = x.f_feature_dropout(self.dropout, train)?;
        }
        self.final_act.apply(&self.last.forward(&x))
    }

    /// The number of output channels.
    pub fn num_outputs(&self) -> i64 {
        self.num_outputs
    }
}

impl Model for RegressionHead {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        Ok(vec![
            self.forward_t(single_input("RegressionHead", xs)?, train)?
        ])
    }
    fn out_channels(&self) -> Vec<i64> {
        vec![self.num_outputs]
    }
    fn includes_head(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------------
// ScalarHead / ClassificationHead
// ---------------------------------------------------------------------------------

/// Arguments of [`ScalarHead`] (upstream names and defaults).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScalarHeadConfig {
    /// Channels of the decoder output.
    pub in_dim: i64,
    /// Number of regressed variables; takes precedence over `num_classes`.
    #[serde(default)]
    pub num_outputs: Option<i64>,
    /// Number of classes.
    #[serde(default)]
    pub num_classes: Option<i64>,
    /// Widths of optional Linear + ReLU blocks before the last Linear.
    #[serde(default)]
    pub dim_list: Option<Vec<i64>>,
    /// Dropout before the last Linear (`nn.Dropout`).
    #[serde(default = "zero")]
    pub dropout: f64,
    /// Average the tokens first and then apply the layers (instead of the reverse).
    #[serde(default)]
    pub linear_after_pool: bool,
}

/// Arguments of [`ClassificationHead`] (the same as [`ScalarHeadConfig`]).
pub type ClassificationHeadConfig = ScalarHeadConfig;

/// Classification / scalar regression head: treats the `H*W` positions as tokens,
/// applies `[Linear + ReLU]* -> dropout -> Linear` per token and averages the tokens
/// (or averages first with `linear_after_pool`).
#[derive(Debug)]
pub struct ScalarHead {
    blocks: Vec<nn::Linear>,
    dropout: f64,
    last: nn::Linear,
    linear_after_pool: bool,
    num_outputs: i64,
}

/// Upstream's deprecated name for [`ScalarHead`].
pub type ClassificationHead = ScalarHead;

impl ScalarHead {
    /// Builds the head under `p` (parameters `head.0.{i}.0.*` and `head.2.*`).
    pub fn new(p: nn::Path, cfg: &ScalarHeadConfig) -> Result<Self> {
        const NAME: &str = "ScalarHead";
        let num_outputs = match (cfg.num_outputs, cfg.num_classes) {
            (Some(n), _) | (None, Some(n)) => n,
            (None, None) => {
                return Err(PluginError::invalid_argument(format!(
                    "{NAME}: `num_outputs` or `num_classes` must be given"
                )))
            }
        };
        check_positive(NAME, "in_dim", &[cfg.in_dim])?;
        check_positive(NAME, "num_outputs/num_classes", &[num_outputs])?;
        check_dropout(NAME, cfg.dropout)?;
        let widths = cfg.dim_list.clone().unwrap_or_default();
        check_positive(NAME, "dim_list", &widths)?;
        let seq = &p / "head";
        let mut d_in = cfg.in_dim;
        let mut blocks = Vec::new();
        for (i, &d) in widths.iter().enumerate() {
            blocks.push(nn::linear(&seq / 0 / i / 0, d_in, d, Default::default()));
            d_in = d;
        }
        let last = nn::linear(&seq / 2, d_in, num_outputs, Default::default());
        Ok(Self {
            blocks,
            dropout: cfg.dropout,
            last,
            linear_after_pool: cfg.linear_after_pool,
            num_outputs,
        })
    }

    fn layers(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        for lin in &self.blocks {
            x = lin.forward(&x).f_relu()?;
        }
        if self.dropout > 0.0 {
            x = x.f_dropout(self.dropout, train)?;
        }
        Ok(self.last.forward(&x))
    }

    /// `[B, C, H, W] -> [B, num_outputs]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let dims = x.size();
        if dims.len() < 2 {
            return Err(PluginError::forward_failed(format!(
                "ScalarHead expects at least [B, C], got shape {dims:?}"
            )));
        }
        // [B, C, H, W] -> [B, H*W, C]
        let tokens = x.f_reshape([dims[0], dims[1], -1])?.f_permute([0, 2, 1])?;
        if self.linear_after_pool {
            let pooled = tokens.f_mean_dim(Some(&[1i64][..]), false, None)?;
            self.layers(&pooled, train)
        } else {
            Ok(self
                .layers(&tokens, train)?
                .f_mean_dim(Some(&[1i64][..]), false, None)?)
        }
    }

    /// The number of outputs.
    pub fn num_outputs(&self) -> i64 {
        self.num_outputs
    }
}

impl Model for ScalarHead {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        Ok(vec![self.forward_t(single_input("ScalarHead", xs)?, train)?])
    }
    fn out_channels(&self) -> Vec<i64> {
        vec![self.num_outputs]
    }
    fn includes_head(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn keys(vs: &nn::VarStore) -> Vec<(String, Vec<i64>)> {
        let mut k: Vec<(String, Vec<i64>)> = vs
            .variables()
            .into_iter()
            .map(|(k, v)| (k, v.size()))
            .collect();
        k.sort();
        k
    }

    /// Reference keys minus `num_batches_tracked` (tch keeps no such buffer).
    fn reference(keys: &[(&str, &[i64])]) -> Vec<(String, Vec<i64>)> {
        let mut k: Vec<(String, Vec<i64>)> = keys
            .iter()
            .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
            .map(|(k, s)| (k.to_string(), s.to_vec()))
            .collect();
        k.sort();
        k
    }

    fn x(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    }

    // All reference key lists below were printed from terratorch 1.2.11 heads.

    #[test]
    fn segmentation_head_without_blocks() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = SegmentationHeadConfig {
            in_channels: 8,
            num_classes: 3,
            channel_list: None,
            dropout: 0.0,
        };
        let head = SegmentationHead::new(vs.root(), &cfg).unwrap();
        assert_eq!(
            keys(&vs),
            reference(&[("head.2.weight", &[3, 8, 1, 1]), ("head.2.bias", &[3])])
        );
        assert_eq!(
            head.forward_t(&x(&[2, 8, 5, 6]), false).unwrap().size(),
            vec![2, 3, 5, 6]
        );
    }

    #[test]
    fn regression_head_stage_indices_shift() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg: RegressionHeadConfig =
            serde_json::from_value(serde_json::json!({"in_channels": 8})).unwrap();
        RegressionHead::new(vs.root(), &cfg).unwrap();
        assert_eq!(
            keys(&vs),
            reference(&[("head.1.weight", &[1, 8, 1, 1]), ("head.1.bias", &[1])])
        );

        let vs = nn::VarStore::new(Device::Cpu);
        let cfg: RegressionHeadConfig = serde_json::from_value(serde_json::json!(
            {"in_channels": 8, "num_outputs": 2, "learned_upscale_layers": 2, "channel_list": [4]}
        ))
        .unwrap();
        let head = RegressionHead::new(vs.root(), &cfg).unwrap();
        let expected = reference(&[
            ("head.0.0.conv.weight", &[32, 8, 3, 3]),
            ("head.0.0.conv.bias", &[32]),
            ("head.0.0.bn.weight", &[8]),
            ("head.0.0.bn.bias", &[8]),
            ("head.0.0.bn.running_mean", &[8]),
            ("head.0.0.bn.running_var", &[8]),
            ("head.0.0.bn.num_batches_tracked", &[]),
            ("head.0.1.conv.weight", &[32, 8, 3, 3]),
            ("head.0.1.conv.bias", &[32]),
            ("head.0.1.bn.weight", &[8]),
            ("head.0.1.bn.bias", &[8]),
            ("head.0.1.bn.running_mean", &[8]),
            ("head.0.1.bn.running_var", &[8]),
            ("head.0.1.bn.num_batches_tracked", &[]),
            ("head.1.0.0.weight", &[4, 8, 3, 3]),
            ("head.1.0.1.weight", &[4]),
            ("head.1.0.1.bias", &[4]),
            ("head.1.0.1.running_mean", &[4]),
            ("head.1.0.1.running_var", &[4]),
            ("head.1.0.1.num_batches_tracked", &[]),
            ("head.3.weight", &[2, 4, 1, 1]),
            ("head.3.bias", &[2]),
        ]);
        assert_eq!(keys(&vs), expected);
        assert_eq!(
            head.forward_t(&x(&[1, 8, 3, 3]), false).unwrap().size(),
            vec![1, 2, 12, 12]
        );

        let vs = nn::VarStore::new(Device::Cpu);
        let cfg: RegressionHeadConfig = serde_json::from_value(
            serde_json::json!({"in_channels": 8, "learned_upscale_layers": 1}),
        )
        .unwrap();
        RegressionHead::new(vs.root(), &cfg).unwrap();
        let k: Vec<String> = keys(&vs).into_iter().map(|(k, _)| k).collect();
        assert!(k.contains(&"head.2.weight".to_string()), "{k:?}");
    }

    #[test]
    fn regression_head_final_act_and_unknown_args() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg: RegressionHeadConfig = serde_json::from_value(
            serde_json::json!({"in_channels": 4, "final_act": "torch.nn.Sigmoid"}),
        )
        .unwrap();
        let head = RegressionHead::new(vs.root(), &cfg).unwrap();
        let y = head.forward_t(&(x(&[1, 4, 3, 3]) * 100.0), false).unwrap();
        assert!(y.min().double_value(&[]) >= 0.0 && y.max().double_value(&[]) <= 1.0);
        assert!(Activation::parse("torch.nn.Softmax").is_err());
        assert!(Activation::parse("mypkg.ReLU").is_err());
        assert_eq!(
            Activation::parse("torch.nn.ReLU").unwrap(),
            Activation::ReLU
        );
        let e = serde_json::from_value::<RegressionHeadConfig>(
            serde_json::json!({"in_channels": 4, "num_classes": 2}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("num_classes"), "{e}");
    }

    #[test]
    fn scalar_head_keys_and_pooling() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg: ScalarHeadConfig = serde_json::from_value(
            serde_json::json!({"in_dim": 8, "num_outputs": 2, "dim_list": [6, 4]}),
        )
        .unwrap();
        let head = ScalarHead::new(vs.root(), &cfg).unwrap();
        let expected = reference(&[
            ("head.0.0.0.weight", &[6, 8]),
            ("head.0.0.0.bias", &[6]),
            ("head.0.1.0.weight", &[4, 6]),
            ("head.0.1.0.bias", &[4]),
            ("head.2.weight", &[2, 4]),
            ("head.2.bias", &[2]),
        ]);
        assert_eq!(keys(&vs), expected);
        assert_eq!(
            head.forward_t(&x(&[3, 8, 2, 5]), false).unwrap().size(),
            vec![3, 2]
        );

        // Without hidden layers the head is affine, so pooling before or after agrees.
        let vs = nn::VarStore::new(Device::Cpu);
        let base = ScalarHeadConfig {
            in_dim: 5,
            num_outputs: None,
            num_classes: Some(3),
            dim_list: None,
            dropout: 0.0,
            linear_after_pool: false,
        };
        let a = ScalarHead::new(vs.root() / "a", &base).unwrap();
        let b = ScalarHead {
            blocks: vec![],
            dropout: 0.0,
            last: nn::Linear {
                ws: a.last.ws.shallow_clone(),
                bs: a.last.bs.as_ref().map(|t| t.shallow_clone()),
            },
            linear_after_pool: true,
            num_outputs: 3,
        };
        let input = x(&[2, 5, 3, 3]);
        let diff = (a.forward_t(&input, false).unwrap() - b.forward_t(&input, false).unwrap())
            .abs()
            .max();
        assert!(diff.double_value(&[]) < 1e-5);
        let e = ScalarHead::new(
            vs.root() / "c",
            &ScalarHeadConfig {
                num_classes: None,
                ..base
            },
        )
        .unwrap_err();
        assert!(
            e.message().contains("num_outputs") && e.message().contains("num_classes"),
            "{e}"
        );
    }

    #[test]
    fn dropout_is_active_only_in_training() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = SegmentationHeadConfig {
            in_channels: 4,
            num_classes: 2,
            channel_list: Some(vec![8]),
            dropout: 0.5,
        };
        let head = SegmentationHead::new(vs.root(), &cfg).unwrap();
        let input = x(&[1, 4, 8, 8]);
        let e1 = head.forward_t(&input, false).unwrap();
        let e2 = head.forward_t(&input, false).unwrap();
        assert!(e1.allclose(&e2, 0.0, 0.0, false));
        let t1 = head.forward_t(&input, true).unwrap();
        assert!(!t1.allclose(&e1, 1e-6, 1e-6, false));
        let bad = SegmentationHeadConfig {
            dropout: 1.5,
            ..cfg
        };
        assert!(SegmentationHead::new(vs.root() / "x", &bad).is_err());
    }
}
