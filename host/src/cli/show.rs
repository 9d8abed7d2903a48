//! `terrahost show`, as the engine answers it (the front hands it names only the live
//! source can resolve, such as timm's `arch.tag`); printed by
//! [`terrahost_index::render::show`].
use terrahost::{plugins::meta, Host, HostError};

pub fn run(host: &Host, registry: &str, name: &str, json: bool) -> Result<(), HostError> {
    let (qualified, info) = host.describe(registry, name)?;
    terrahost_index::render::show(registry, &qualified, &meta::entry_meta(&info), json)
        .map_err(super::stdout_error)
}
