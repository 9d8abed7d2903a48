//! The `terratorch` plugin: TerraTorch's own components: necks, decoders, heads and the EncoderDecoderFactory.

pub mod models;

use models::{encoder_decoder_factory, fcn_decoder, identity_decoder, necks};
use serde_json::json;
use tch::{nn, Device};
use terrahost_plugin_api::{
    sdk::{Built, Catalog, Entry},
    ParamType,
};

/// The `terratorch` entries of the `backbone` registry.
fn backbones() -> Catalog {
    let mut c = Catalog::new("terratorch");
    c = models::prithvi_vit::backbone_entries()
        .into_iter()
        .fold(c, Catalog::add);
    c = models::terramind::backbone_entries()
        .into_iter()
        .fold(c, Catalog::add);
    c = models::terramind::REFUSED_BACKBONES
        .iter()
        .fold(c, |c, n| c.refuses(n, models::terramind::refusal(n)));
    c = models::torchgeo_resnet::entries()
        .into_iter()
        .fold(c, Catalog::add);
    c = models::torchgeo_vit::entries()
        .into_iter()
        .fold(c, Catalog::add);
    c = models::swin_v2::entries().into_iter().fold(c, Catalog::add);
    c = models::dofa_vit::entries()
        .into_iter()
        .fold(c, Catalog::add);
    c = models::dinov3::entries().into_iter().fold(c, Catalog::add);
    c = models::dinov3_convnext::entries()
        .into_iter()
        .fold(c, Catalog::add);
    c = models::mmearth_convnextv2::entries()
        .into_iter()
        .fold(c, Catalog::add);
    c.add(models::unet::entry())
        .add(models::identity_backbone::entry())
}

/// The `terratorch` entries of the `neck` registry.
fn necks() -> Catalog {
    necks::entries()
        .into_iter()
        .fold(Catalog::new("terratorch"), Catalog::add)
}

/// The `terratorch` entries of the `decoder` registry.
fn decoders() -> Catalog {
    Catalog::new("terratorch")
        .add(
            Entry::new(
                "FCNDecoder",
                "Fully convolutional decoder: `num_convs` blocks of ConvTranspose2d(2x2, stride 2), 3x3 conv, \
                 LayerNorm over channels and GELU applied to one feature map; each block doubles the size.",
                |ctx| {
                    let cfg = fcn_decoder::Config {
                        channels: ctx.args.get("channels")?,
                        num_convs: ctx.args.get("num_convs")?,
                        in_index: ctx.args.get("in_index")?,
                    };
                    let vs = nn::VarStore::new(Device::Cpu);
                    let model = fcn_decoder::FCNDecoder::new(vs.root(), &ctx.channels, &cfg)?;
                    Ok(Built::new(ctx.qualified(), vs, model).boxed())
                },
            )
            .opt("channels", ParamType::INT, json!(256), "width of every block (the decoder's out_channels)")
            .opt("num_convs", ParamType::INT, json!(4), "number of upsampling blocks (>= 1)")
            .opt("in_index", ParamType::INT, json!(-1), "which feature map to decode (negative counts from the end)")
            .takes_channels(),
        )
        .add(
            Entry::new(
                "IdentityDecoder",
                "Passes one feature map straight to the head; out_channels is that map's channel count.",
                |ctx| {
                    let cfg = identity_decoder::Config { out_index: ctx.args.get("out_index")? };
                    let model = identity_decoder::IdentityDecoder::new(&ctx.channels, &cfg)?;
                    Ok(Built::new(ctx.qualified(), nn::VarStore::new(Device::Cpu), model).boxed())
                },
            )
            .opt("out_index", ParamType::INT, json!(-1), "which feature map to return (negative counts from the end)")
            .takes_channels(),
        )
        .add(models::unet_decoder::entry())
        .add(models::upernet_decoder::entry())
        .add(models::linear_decoder::entry())
        .add(models::mlp_decoder::entry())
        .add(models::satmae_head::entry())
        .add(models::aspp_head::module_entry())
        .add(models::aspp_head::head_entry())
        .add(models::aspp_head::segmentation_entry())
        .add(models::aspp_head::regression_entry())
        // TerraTorch 1.2.13's SklearnDecoder is a scikit-learn estimator (fitted during
        // training, pickled with joblib next to the checkpoint), not a network: there are no
        // tensors to port, and unpickling it would execute the file.
        .refuses("SklearnDecoder", SKLEARN_DECODER_REFUSAL)
}

/// Why `SklearnDecoder` (TerraTorch 1.2.13) is refused.
pub const SKLEARN_DECODER_REFUSAL: &str =
    "`SklearnDecoder` (TerraTorch 1.2.13) is a scikit-learn estimator, fitted during training and loaded \
     from a joblib pickle that the checkpoint names (`sklearn_model_path`), not a network: terrahost runs no \
     scikit-learn and unpickles nothing, so it cannot build it; use a network decoder (LinearDecoder, \
     MLPDecoder, IdentityDecoder with the classification head) instead";

/// The `terratorch` entries of the `full_model` registry.
fn full_models() -> Catalog {
    let mut c = Catalog::new("terratorch");
    c = models::prithvi_vit::full_model_entries()
        .into_iter()
        .fold(c, Catalog::add);
    c = models::terramind::REFUSED_FULL_MODELS
        .iter()
        .fold(c, |c, n| c.refuses(n, models::terramind::refusal(n)));
    NOT_PORTED_FULL_MODELS
        .iter()
        .fold(c, |c, (n, why)| c.refuses(n, *why))
}

/// TerraTorch's other full-model registrations, refused with the reason.
const NOT_PORTED_FULL_MODELS: [(&str, &str); 5] = [
    (
        "flextec_v1_s2l2a",
        "FlexTEC (`flextec_v1_s2l2a`) is not ported to terrahost yet",
    ),
    ("terracodec_v1_elic_s2l2a", TERRACODEC),
    ("terracodec_v1_fp_s2l2a", TERRACODEC),
    ("terracodec_v1_tt_s2l1c", TERRACODEC),
    ("terracodec_v1_tt_s2l2a", TERRACODEC),
];

const TERRACODEC: &str = "TerraCodec's learned image codecs (`terracodec_v1_*`: compression models with entropy coders, not encoders for a decoder) are not ported to terrahost yet";

/// The `terratorch` entries of the `model_factory` registry.
fn model_factories() -> Catalog {
    Catalog::new("terratorch")
        .add(encoder_decoder_factory::entry())
        .add(models::prithvi_model_factory::entry())
        .add(models::clay_model_factory::entry())
        .add(models::clay1_5_model_factory::entry())
        .add(models::full_model_factory::entry())
        .add(models::generic_model_factory::entry())
        .add(models::generic_unet_model_factory::entry())
        .refuses(
            "SatMAEModelFactory",
            models::clay_model_factory::SATMAE_REFUSAL,
        )
        .add(models::object_detection::entry())
}

terrahost_plugin_api::declare_plugin! {
    name: "terratorch",
    version: env!("CARGO_PKG_VERSION"),
    sources: [
        ("backbone", "terratorch", backbones()),
        ("neck", "terratorch", necks()),
        ("decoder", "terratorch", decoders()),
        ("full_model", "terratorch", full_models()),
        ("model_factory", "terratorch", model_factories()),
    ],
}

#[cfg(test)]
mod tests_decoders;
#[cfg(test)]
mod tests_detr;
#[cfg(test)]
mod tests_dinov3;
#[cfg(test)]
mod tests_dofa;
#[cfg(test)]
mod tests_entries;
#[cfg(test)]
mod tests_factories;
#[cfg(test)]
mod tests_mmearth_convnextv2;
#[cfg(test)]
mod tests_necks;
#[cfg(test)]
mod tests_object_detection;
#[cfg(test)]
mod tests_peft;
#[cfg(test)]
mod tests_prithvi;
#[cfg(test)]
mod tests_terramind;
#[cfg(test)]
mod tests_torchgeo;
#[cfg(test)]
mod tests_torchgeo_vit;
#[cfg(test)]
mod tests_unet_identity;
