//! The scan's plain data ([`terrahost_index::meta`], re-exported here) and its
//! conversions to and from the plugin-api's ABI types ([`Manifest`], [`EntryInfo`],
//! [`ParamSpec`]), field by field. A field added there must be added in both places.
use abi_stable::std_types::ROption;
pub use terrahost_index::meta::*;
use terrahost_plugin_api::{EntryInfo, Manifest, ParamSpec, ParamType, SourceDecl};

/// The manifest as data.
pub fn manifest_meta(m: &Manifest) -> ManifestMeta {
    ManifestMeta {
        name: m.name.to_string(),
        version: m.version.to_string(),
        api_version: m.api_version.to_string(),
        torch_version: m.torch_version.to_string(),
        tch_version: m.tch_version.to_string(),
        cxx11_abi: m.cxx11_abi,
        target: m.target.to_string(),
        sources: m
            .sources
            .iter()
            .map(|d| (d.registry.to_string(), d.prefix.to_string()))
            .collect(),
    }
}

/// The ABI manifest again.
pub fn to_manifest(m: &ManifestMeta) -> Manifest {
    Manifest {
        name: m.name.as_str().into(),
        version: m.version.as_str().into(),
        api_version: m.api_version.as_str().into(),
        torch_version: m.torch_version.as_str().into(),
        tch_version: m.tch_version.as_str().into(),
        cxx11_abi: m.cxx11_abi,
        target: m.target.as_str().into(),
        sources: m
            .sources
            .iter()
            .map(|(r, p)| SourceDecl {
                registry: r.as_str().into(),
                prefix: p.as_str().into(),
            })
            .collect(),
    }
}

/// An entry's description as data.
pub fn entry_meta(e: &EntryInfo) -> EntryMeta {
    EntryMeta {
        name: e.name.to_string(),
        doc: e.doc.to_string(),
        takes_channels: e.takes_channels,
        accepts_extra: e.accepts_extra,
        includes_head: e.includes_head,
        params: e
            .params
            .iter()
            .map(|p| ParamMeta {
                name: p.name.to_string(),
                ty: p.ty.0,
                default: p.default.as_ref().into_option().map(|d| d.to_string()),
                doc: p.doc.to_string(),
            })
            .collect(),
    }
}

/// The ABI description again.
pub fn to_info(e: &EntryMeta) -> EntryInfo {
    EntryInfo {
        name: e.name.as_str().into(),
        doc: e.doc.as_str().into(),
        takes_channels: e.takes_channels,
        params: e
            .params
            .iter()
            .map(|p| ParamSpec {
                name: p.name.as_str().into(),
                ty: ParamType(p.ty),
                default: match &p.default {
                    Some(d) => ROption::RSome(d.as_str().into()),
                    None => ROption::RNone,
                },
                doc: p.doc.as_str().into(),
            })
            .collect(),
        accepts_extra: e.accepts_extra,
        includes_head: e.includes_head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_descriptions_survive_the_round_trip() {
        let info = EntryInfo {
            name: "x".into(),
            doc: "an entry".into(),
            takes_channels: true,
            params: vec![
                ParamSpec::optional("a", ParamType::INT, serde_json::json!(3), "a number"),
                ParamSpec::required("b", ParamType::STR_LIST, "names"),
                ParamSpec::ignored("c", "swallowed"),
            ]
            .into(),
            accepts_extra: true,
            includes_head: false,
        };
        let meta = entry_meta(&info);
        let text = serde_json::to_string(&meta).unwrap();
        let back: EntryMeta = serde_json::from_str(&text).unwrap();
        assert_eq!(to_info(&back), info);
        for p in info.params.iter().zip(&meta.params) {
            assert_eq!(p.0.ty.name(), p.1.type_name());
        }
        let m = Manifest::current(
            "p",
            "1.0.0",
            vec![SourceDecl {
                registry: "neck".into(),
                prefix: "p".into(),
            }],
        );
        assert_eq!(to_manifest(&manifest_meta(&m)), m);
    }
}
