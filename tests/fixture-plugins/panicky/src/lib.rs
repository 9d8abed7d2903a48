//! A plugin whose entries fail in every way a plugin can: panicking in build, panicking
//! in forward, and a real convolution that gets the wrong channel count. The host must
//! turn each into an error and go on.
use serde_json::json;
use tch::{nn, nn::Module as _, Tensor};
use terrahost_plugin_api::{
    params::ParamType,
    sdk::{Built, Catalog, Entry, Model},
    Result,
};

struct PanicsInForward;

impl Model for PanicsInForward {
    fn forward(&self, _xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        panic!("deliberate panic in forward")
    }
    fn out_channels(&self) -> Vec<i64> {
        vec![1]
    }
}

/// A 3x3 convolution; `in_channels` decides what input it accepts.
struct Conv(nn::Conv2D);

impl Model for Conv {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        // The infallible `forward` panics inside tch on a channel mismatch; the SDK
        // catches that and reports it as a forward error.
        Ok(vec![self.0.forward(&xs[0])])
    }
    fn out_channels(&self) -> Vec<i64> {
        vec![4]
    }
}

fn backbones() -> Catalog {
    Catalog::new("panicky")
        .add(Entry::new(
            "build_panics",
            "panics while building",
            |_ctx| panic!("deliberate panic in build"),
        ))
        .add(Entry::new(
            "forward_panics",
            "builds, then panics in forward",
            |ctx| {
                Ok(Built::new(
                    ctx.qualified(),
                    nn::VarStore::new(tch::Device::Cpu),
                    PanicsInForward,
                )
                .boxed())
            },
        ))
        .add(
            Entry::new("conv", "a 3x3 convolution to 4 channels", |ctx| {
                let vs = nn::VarStore::new(tch::Device::Cpu);
                let c = ctx.args.get::<i64>("in_channels")?;
                let conv = nn::conv2d(vs.root() / "conv", c, 4, 3, Default::default());
                Ok(Built::new(ctx.qualified(), vs, Conv(conv)).boxed())
            })
            .opt("in_channels", ParamType::INT, json!(3), "input channels"),
        )
}

terrahost_plugin_api::declare_plugin! {
    name: "panicky",
    version: "0.1.0",
    sources: [("backbone", "panicky", backbones())],
}

terrahost_plugin_api::export_plugin!(crate);
