//! `terrahost list`, as the engine answers it (printed by
//! [`terrahost_index::render::list`], as the front prints it).
use terrahost::{Host, HostError, RegistryRef};
use terrahost_index::out::Failure;
use terrahost_index::render::{self, Group};

fn groups(host: &Host, registry: &str) -> Option<Vec<Group>> {
    let registry_ref = host.registry(registry)?;
    let slots = match &registry_ref {
        RegistryRef::Multi(r) => r.sources(),
        RegistryRef::Plain(r) => r.sources(),
    };
    let mut out: Vec<Group> = slots
        .iter()
        .map(|s| Group {
            prefix: s.prefix.clone(),
            plugin: s.plugin.clone(),
            names: s.names(),
        })
        .collect();
    if let RegistryRef::Plain(r) = registry_ref {
        out.push(Group {
            prefix: "host".into(),
            plugin: "host".into(),
            names: r.local_names(),
        });
    }
    Some(out)
}

pub fn run(
    host: &Host,
    registry: Option<&str>,
    filter: Option<&str>,
    json: bool,
) -> Result<(), HostError> {
    render::list(registry, filter, json, &|r| groups(host, r)).map_err(|f| match f {
        Failure::Message(m) => HostError::Usage(m),
        Failure::Stdout(e) => super::stdout_error(e),
    })
}
