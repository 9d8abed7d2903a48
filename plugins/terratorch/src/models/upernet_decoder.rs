//! TerraTorch's UPerNet decoder (a pyramid pooling module on the deepest map plus an
//! FPN over the others), and the conv-BN-ReLU block its decoders share.
//! Mirrors `terratorch/models/decoders/upernet_decoder.py` (`UperNetDecoder`, `PPM`)
//! and `terratorch/models/decoders/utils.py` (`ConvModule`), as of TerraTorch 1.2.13 (which
//! differs from 1.2.11 only in dropping `scale_modules`; terrahost keeps it, with a warning).

use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{nn, Device, Tensor};
use terrahost_layers::norm::batch_norm2d;
use terrahost_plugin_api::{
    sdk::{Built, Entry, Model},
    ParamType, PluginError, Result,
};

/// TerraTorch's `ConvModule`: `conv` (no bias) -> `norm` (BatchNorm2d) -> ReLU.
#[derive(Debug)]
pub(crate) struct ConvModule {
    conv: nn::Conv2D,
    norm: nn::BatchNorm,
}

impl ConvModule {
    /// A `kernel` x `kernel` convolution with the given padding and dilation (stride 1).
    pub(crate) fn new(
        p: nn::Path,
        c_in: i64,
        c_out: i64,
        kernel: i64,
        padding: i64,
        dilation: i64,
    ) -> Self {
        let cfg = nn::ConvConfig {
            padding,
            dilation,
            bias: false,
            ..Default::default()
        };
        Self {
            conv: nn::conv2d(&p / "conv", c_in, c_out, kernel, cfg),
            norm: batch_norm2d(&p / "norm", c_out, 1e-5, 0.1),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(x.apply(&self.conv).apply_t(&self.norm, train).f_relu()?)
    }
}

/// `F.interpolate(x, size, mode="bilinear", align_corners)` on a `[B, C, H, W]` map.
pub(crate) fn resize_bilinear(x: &Tensor, size: &[i64], align_corners: bool) -> Result<Tensor> {
    Ok(x.f_upsample_bilinear2d([size[0], size[1]], align_corners, None, None)?)
}

/// The spatial size `[H, W]` of a `[B, C, H, W]` map.
fn hw(x: &Tensor) -> Vec<i64> {
    x.size()[2..].to_vec()
}

/// Arguments of [`UperNetDecoder`], with upstream defaults.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Output sizes of the adaptive pools of the pyramid pooling module.
    pub pool_scales: Vec<i64>,
    /// Width of every block (the decoder's out_channels).
    pub channels: i64,
    /// `align_corners` of every bilinear resize.
    pub align_corners: bool,
    /// Rescale four equal-size (ViT) maps to strides 4, 8, 16, 32 first: TerraTorch 1.2.11's
    /// `scale_modules`, which 1.2.12 removed (the LearnedInterpolateToPyramidal neck does it).
    pub scale_modules: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            pool_scales: vec![1, 2, 3, 6],
            channels: 256,
            align_corners: true,
            scale_modules: false,
        }
    }
}

/// The deprecated `scale_modules`: `fpn1` upsamples x4 (C/4), `fpn2` x2 (C/2), `fpn3`
/// keeps the map and `fpn4` halves it with a max pool.
#[derive(Debug)]
struct ScaleModules {
    fpn1_up1: nn::ConvTranspose2D,
    fpn1_bn: nn::BatchNorm,
    fpn1_up2: nn::ConvTranspose2D,
    fpn2_up: nn::ConvTranspose2D,
}

impl ScaleModules {
    fn new(p: &nn::Path, embed_dim: &[i64]) -> Self {
        let up = nn::ConvTransposeConfig {
            stride: 2,
            ..Default::default()
        };
        let (c0, c1) = (embed_dim[0], embed_dim[1]);
        Self {
            fpn1_up1: nn::conv_transpose2d(p / "fpn1" / 0, c0, c0 / 2, 2, up),
            fpn1_bn: batch_norm2d(p / "fpn1" / 1, c0 / 2, 1e-5, 0.1),
            fpn1_up2: nn::conv_transpose2d(p / "fpn1" / 3, c0 / 2, c0 / 4, 2, up),
            fpn2_up: nn::conv_transpose2d(p / "fpn2" / 0, c1, c1 / 2, 2, up),
        }
    }

    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let x0 = xs[0]
            .apply(&self.fpn1_up1)
            .apply_t(&self.fpn1_bn, train)
            .f_gelu("none")?
            .apply(&self.fpn1_up2);
        let x1 = xs[1].apply(&self.fpn2_up);
        let x3 = xs[3].f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?;
        Ok(vec![x0, x1, xs[2].shallow_clone(), x3])
    }
}

/// UPerNet: lateral 1x1 convs and a PPM on the deepest map, a bilinear top-down path,
/// 3x3 FPN convs, everything resized to the first map and fused by `fpn_bottleneck`.
#[derive(Debug)]
pub struct UperNetDecoder {
    scale: Option<ScaleModules>,
    /// `psp_modules.{i}`: (pool size, `ConvModule` 1x1 under `.1`).
    psp_modules: Vec<(i64, ConvModule)>,
    bottleneck: ConvModule,
    lateral_convs: Vec<ConvModule>,
    fpn_convs: Vec<ConvModule>,
    fpn_bottleneck: ConvModule,
    n_inputs: usize,
    channels: i64,
    align_corners: bool,
}

impl UperNetDecoder {
    /// Builds the decoder for features with channels `embed_dim` under `p`.
    pub fn new(p: nn::Path, embed_dim: &[i64], cfg: &Config) -> Result<Self> {
        let bad = |what: String| {
            Err(PluginError::invalid_argument(format!(
                "UperNetDecoder: {what}"
            )))
        };
        if embed_dim.is_empty() || embed_dim.iter().any(|&c| c < 1) {
            return bad(format!(
                "the channel list must be non-empty and positive, got {embed_dim:?}"
            ));
        }
        if cfg.channels < 1 {
            return bad(format!("`channels` must be >= 1, got {}", cfg.channels));
        }
        if let Some(s) = cfg.pool_scales.iter().find(|&&s| s < 1) {
            return bad(format!(
                "`pool_scales` must all be >= 1, got {s} in {:?}",
                cfg.pool_scales
            ));
        }
        let (scale, dims) = if cfg.scale_modules {
            if embed_dim.len() < 4 || embed_dim[0] < 4 || embed_dim[1] < 2 {
                return bad(format!(
                    "`scale_modules` needs at least four feature maps, the first with >= 4 channels and the \
                     second with >= 2 (it divides them by 4 and 2), got the channel list {embed_dim:?}; \
                     consider the LearnedInterpolateToPyramidal neck instead"
                ));
            }
            let dims = vec![
                embed_dim[0] / 4,
                embed_dim[1] / 2,
                embed_dim[2],
                embed_dim[3],
            ];
            (Some(ScaleModules::new(&p, embed_dim)), dims)
        } else {
            (None, embed_dim.to_vec())
        };
        let ch = cfg.channels;
        let last = *dims.last().expect("non-empty");
        let psp = &p / "psp_modules";
        let psp_modules = cfg
            .pool_scales
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, ConvModule::new(&psp / i / 1, last, ch, 1, 0, 1)))
            .collect();
        let bottleneck = ConvModule::new(
            &p / "bottleneck",
            last + cfg.pool_scales.len() as i64 * ch,
            ch,
            3,
            1,
            1,
        );
        let (lat, fpn) = (&p / "lateral_convs", &p / "fpn_convs");
        let lateral_convs = dims[..dims.len() - 1]
            .iter()
            .enumerate()
            .map(|(i, &c)| ConvModule::new(&lat / i, c, ch, 1, 0, 1))
            .collect();
        let fpn_convs = (0..dims.len() - 1)
            .map(|i| ConvModule::new(&fpn / i, ch, ch, 3, 1, 1))
            .collect();
        let fpn_bottleneck =
            ConvModule::new(&p / "fpn_bottleneck", dims.len() as i64 * ch, ch, 3, 1, 1);
        Ok(Self {
            scale,
            psp_modules,
            bottleneck,
            lateral_convs,
            fpn_convs,
            fpn_bottleneck,
            n_inputs: if cfg.scale_modules {
                4
            } else {
                embed_dim.len()
            },
            channels: ch,
            align_corners: cfg.align_corners,
        })
    }

    /// The PPM branch: the deepest map, its pooled-and-resized copies, fused to `channels`.
    fn psp_forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let size = hw(x);
        let mut outs = vec![x.shallow_clone()];
        for (scale, conv) in &self.psp_modules {
            let pooled = conv.forward(&x.f_adaptive_avg_pool2d([*scale, *scale])?, train)?;
            outs.push(resize_bilinear(&pooled, &size, self.align_corners)?);
        }
        self.bottleneck.forward(&Tensor::f_cat(&outs, 1)?, train)
    }
}

impl Model for UperNetDecoder {
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let enough = if self.scale.is_some() {
            xs.len() >= 4
        } else {
            xs.len() == self.n_inputs
        };
        if !enough {
            return Err(PluginError::forward_failed(format!(
                "UperNetDecoder was built for {} feature maps but received {}",
                self.n_inputs,
                xs.len()
            )));
        }
        let scaled;
        let inputs: &[Tensor] = match &self.scale {
            Some(s) => {
                scaled = s.forward(xs, train)?;
                &scaled
            }
            None => xs,
        };
        let mut laterals: Vec<Tensor> = self
            .lateral_convs
            .iter()
            .zip(inputs)
            .map(|(conv, x)| conv.forward(x, train))
            .collect::<Result<_>>()?;
        laterals.push(self.psp_forward(&inputs[self.n_inputs - 1], train)?);
        // Top-down: each level adds the (resized) level above it.
        let n = laterals.len();
        for i in (1..n).rev() {
            let up = resize_bilinear(&laterals[i], &hw(&laterals[i - 1]), self.align_corners)?;
            laterals[i - 1] = laterals[i - 1].f_add(&up)?;
        }
        let mut outs: Vec<Tensor> = self
            .fpn_convs
            .iter()
            .zip(&laterals)
            .map(|(conv, x)| conv.forward(x, train))
            .collect::<Result<_>>()?;
        outs.push(laterals[n - 1].shallow_clone());
        let size = hw(&outs[0]);
        for o in outs.iter_mut().skip(1) {
            *o = resize_bilinear(o, &size, self.align_corners)?;
        }
        Ok(vec![self
            .fpn_bottleneck
            .forward(&Tensor::f_cat(&outs, 1)?, train)?])
    }

    fn out_channels(&self) -> Vec<i64> {
        vec![self.channels]
    }
}

/// The `UperNetDecoder` registry entry.
pub(crate) fn entry() -> Entry {
    Entry::new(
        "UperNetDecoder",
        "UPerNet (from MMSegmentation): a pyramid pooling module on the last feature map, lateral 1x1 and \
         FPN 3x3 conv-BN-ReLU blocks over the others, fused at the first map's size; out_channels is `channels`.",
        |ctx| {
            let cfg = Config {
                pool_scales: ctx.args.get("pool_scales")?,
                channels: ctx.args.get("channels")?,
                align_corners: ctx.args.get("align_corners")?,
                scale_modules: false,
            };
            // TerraTorch 1.2.12 removed the argument (its constructor raises on any value),
            // while 1.2.11 configs and checkpoints still carry it: build the 1.2.11 model and
            // say that the newer reference refuses the config.
            let cfg = match ctx.args.opt::<bool>("scale_modules")? {
                None => cfg,
                Some(true) => {
                    terrahost_plugin_api::warn!(
                        "`scale_modules` was removed in TerraTorch 1.2.12, which refuses it: building \
                         TerraTorch 1.2.11's model (fpn1/fpn2 rescaling inside the decoder); for 1.2.12 \
                         and later drop it and add the LearnedInterpolateToPyramidal neck before the \
                         decoder (the same layers, under the neck's keys)"
                    );
                    Config { scale_modules: true, ..cfg }
                }
                Some(false) => {
                    terrahost_plugin_api::warn!(
                        "`scale_modules: false` changes nothing, but TerraTorch 1.2.12 and later refuse \
                         the argument: drop it"
                    );
                    cfg
                }
            };
            let vs = nn::VarStore::new(Device::Cpu);
            let model = UperNetDecoder::new(vs.root(), &ctx.channels, &cfg)?;
            Ok(Built::new(ctx.qualified(), vs, model).boxed())
        },
    )
    .opt("pool_scales", ParamType::INT_LIST, json!([1, 2, 3, 6]), "output sizes of the pyramid pooling module's pools")
    .opt("channels", ParamType::INT, json!(256), "width of every block (the decoder's out_channels)")
    .opt("align_corners", ParamType::BOOL, json!(true), "align_corners of the bilinear resizes")
    .opt(
        "scale_modules",
        ParamType::BOOL,
        json!(null),
        "TerraTorch 1.2.11 only (1.2.12 and later refuse it; terrahost builds it with a warning): rescale \
         four equal-size (ViT) maps by x4, x2, x1, /2 first; null means not given (False)",
    )
    .takes_channels()
}
