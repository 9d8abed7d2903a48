//! A plugin that registers the prefix `timm` into the backbone registry, which the
//! real timm plugin owns: whichever loads second must be refused.
use tch::{nn, Tensor};
use terrahost_plugin_api::sdk::{Built, Catalog, Entry, Model};

struct Identity;

impl Model for Identity {
    fn forward(&self, xs: &[Tensor], _train: bool) -> terrahost_plugin_api::Result<Vec<Tensor>> {
        Ok(xs.iter().map(Tensor::shallow_clone).collect())
    }
    fn out_channels(&self) -> Vec<i64> {
        vec![]
    }
}

fn backbones() -> Catalog {
    Catalog::new("timm").add(Entry::new("identity", "returns its inputs", |ctx| {
        Ok(Built::new(
            ctx.qualified(),
            nn::VarStore::new(tch::Device::Cpu),
            Identity,
        )
        .boxed())
    }))
}

terrahost_plugin_api::declare_plugin! {
    name: "dup-prefix",
    version: "0.1.0",
    sources: [("backbone", "timm", backbones())],
}

terrahost_plugin_api::export_plugin!(crate);
