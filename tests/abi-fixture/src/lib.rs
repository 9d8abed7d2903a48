//! The ABI-matrix fixture: the README's "Writing a plugin" example, one neck entry
//! `Scale` that multiplies every input by a learned scalar `weight` initialised from the
//! float argument `init`. scripts/abi/build_fixtures.sh builds it against plugin-api at
//! each released version; its name and prefix come from the environment so that the
//! builds of all versions load side by side (`abi_0_2_1` with prefix `abi021`).
//!
//! Only SDK calls that every 0.2.x release has are used, so the same source builds
//! against all of them.
use serde_json::json;
use tch::{nn, Tensor};
use terrahost_plugin_api::{
    params::ParamType,
    sdk::{Built, Catalog, Entry, Model},
    Result,
};

/// The plugin's name (`abi_0_2_1`).
const NAME: &str = env!("TERRAHOST_ABI_FIXTURE_NAME");
/// The neck source's prefix (`abi021`: a prefix has no `_`).
const PREFIX: &str = env!("TERRAHOST_ABI_FIXTURE_PREFIX");

struct Scale {
    w: Tensor,
}

impl Model for Scale {
    fn forward(&self, xs: &[Tensor], _train: bool) -> Result<Vec<Tensor>> {
        Ok(xs.iter().map(|x| x * &self.w).collect())
    }
    fn out_channels(&self) -> Vec<i64> {
        vec![]
    }
}

fn necks() -> Catalog {
    Catalog::new(PREFIX).add(
        Entry::new(
            "Scale",
            "multiplies every feature map by a learned scalar",
            |ctx| {
                let vs = nn::VarStore::new(tch::Device::Cpu);
                let init = ctx.args.get::<f64>("init")?;
                let w = vs.root().var("weight", &[1], nn::Init::Const(init));
                Ok(Built::new(ctx.qualified(), vs, Scale { w }).boxed())
            },
        )
        .takes_channels()
        .opt("init", ParamType::FLOAT, json!(1.0), "initial scale"),
    )
}

terrahost_plugin_api::declare_plugin! {
    name: NAME,
    version: env!("CARGO_PKG_VERSION"),
    sources: [("neck", PREFIX, necks())],
}
terrahost_plugin_api::export_plugin!(crate);
