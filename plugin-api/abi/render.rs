//! Renders a type's full abi_stable layout, and every type reachable from it, as
//! deterministic text: the fingerprint that `plugin-api/tests/abi_fingerprint.rs` compares
//! with `plugin-api/abi/<version>.layout`.
//!
//! It is included with `#[path]` (by the test, and by the layout example that
//! scripts/abi/build_fixtures.sh compiles against the sources of old releases), so it
//! depends on abi_stable alone and names nothing from plugin-api.
//!
//! What is rendered is what abi_stable's layout check compares when a host loads a
//! library: type names and generic arguments, the package name, size, alignment, `repr`,
//! non-zeroness, the kind of data, every field's name, type and lifetimes, function
//! pointer signatures, enum variants and discriminants, prefix types (vtables and
//! modules: fields, where the prefix ends, which fields are conditional), tags and
//! whether extra checks exist. Left out, because the check ignores them and they change
//! without changing the layout: package versions, module paths and source lines. Types
//! are numbered in the order a depth-first walk from the root first meets them (fields
//! in declaration order), and a field names its type's number, so two types with the
//! same name (every `#[sabi_trait]` has a `VTable`) stay apart.
#![allow(dead_code)]

use abi_stable::type_layout::{TLData, TLField, TLFunction, TypeLayout};
use std::collections::HashMap;
use std::fmt::Write;

/// The header line of every rendering (the format's version: bump it when the text's
/// format changes, and regenerate every committed file).
pub const FORMAT: &str = "terrahost plugin-api layout fingerprint, format 1";

/// Renders `root` and everything reachable from it.
pub fn render(root: &'static TypeLayout) -> String {
    let mut w = Walker::default();
    w.visit(root);
    let mut out = String::new();
    writeln!(out, "# {FORMAT}").unwrap();
    writeln!(out, "# root: {}", name(root)).unwrap();
    writeln!(out, "# types: {}", w.order.len()).unwrap();
    for (i, lay) in w.order.iter().enumerate() {
        out.push('\n');
        w.render_type(&mut out, i, lay);
    }
    out
}

/// A type's name with its generic arguments, as abi_stable prints it (without the
/// trailing space it leaves after pointer types).
fn name(lay: &'static TypeLayout) -> String {
    lay.full_type().to_string().trim_end().to_owned()
}

#[derive(Default)]
struct Walker {
    /// Types in first-visit order.
    order: Vec<&'static TypeLayout>,
    /// A type's identity (abi_stable's own: its `UTypeId`) to its number.
    ids: HashMap<abi_stable::std_types::UTypeId, usize>,
}

impl Walker {
    fn id(&self, lay: &'static TypeLayout) -> usize {
        self.ids[&lay.get_utypeid()]
    }

    /// Numbers `lay` and, depth first, every type it refers to.
    fn visit(&mut self, lay: &'static TypeLayout) {
        let key = lay.get_utypeid();
        if self.ids.contains_key(&key) {
            return;
        }
        self.ids.insert(key, self.order.len());
        self.order.push(lay);
        for f in lay.phantom_fields().iter() {
            self.visit_field(&f);
        }
        match lay.data() {
            TLData::Primitive(_) | TLData::Opaque => {}
            TLData::Struct { fields } | TLData::Union { fields } => {
                for f in fields.iter() {
                    self.visit_field(&f);
                }
            }
            TLData::Enum(e) => {
                for f in e.fields.iter() {
                    self.visit_field(&f);
                }
            }
            TLData::PrefixType(p) => {
                for f in p.fields.iter() {
                    self.visit_field(&f);
                }
            }
        }
    }

    fn visit_field(&mut self, f: &TLField) {
        self.visit(f.layout());
        for func in f.function_range().iter() {
            for p in func.param_type_layouts.iter() {
                self.visit(p());
            }
            if let Some(r) = func.return_type_layout() {
                self.visit(r());
            }
        }
    }

    fn render_type(&self, out: &mut String, i: usize, lay: &'static TypeLayout) {
        let (package, _version) = lay.package_and_version();
        writeln!(out, "#{i} {}", name(lay)).unwrap();
        writeln!(
            out,
            "  package {package}; size {}; align {}; repr {:?}; nonzero {}; data {:?}",
            lay.size(),
            lay.alignment(),
            lay.repr_attr(),
            lay.is_nonzero(),
            lay.data_discriminant(),
        )
        .unwrap();
        let g = lay.generics();
        if g.lifetime_count() != 0 || !g.const_params().is_empty() {
            writeln!(
                out,
                "  generics: {} lifetime(s), const params {:?}",
                g.lifetime_count(),
                g.const_params()
            )
            .unwrap();
        }
        let tag = lay.tag().to_string();
        if !tag.trim().is_empty() && tag.trim() != "null" {
            writeln!(out, "  tag: {}", tag.replace('\n', " ")).unwrap();
        }
        if lay.extra_checks().is_some() {
            writeln!(out, "  extra checks: yes").unwrap();
        }
        for f in lay.phantom_fields().iter() {
            self.render_field(out, "phantom", &f);
        }
        match lay.data() {
            TLData::Primitive(p) => writeln!(out, "  primitive {p:?}").unwrap(),
            TLData::Opaque => writeln!(out, "  opaque").unwrap(),
            TLData::Struct { fields } | TLData::Union { fields } => {
                for f in fields.iter() {
                    self.render_field(out, "field", &f);
                }
            }
            TLData::Enum(e) => {
                writeln!(
                    out,
                    "  enum {:?}; discriminants {:?}",
                    e.exhaustiveness, e.discriminants
                )
                .unwrap();
                let mut fields = e.fields.iter();
                let names = e.variant_names.as_str().split(';');
                for (name, &count) in names.zip(e.field_count.iter()) {
                    writeln!(out, "  variant {name} ({count} field(s))").unwrap();
                    for _ in 0..count {
                        if let Some(f) = fields.next() {
                            self.render_field(out, "  field", &f);
                        }
                    }
                }
            }
            TLData::PrefixType(p) => {
                let n = p.fields.len();
                let conditional: Vec<usize> = (0..n)
                    .filter(|&k| p.conditional_prefix_fields.at(k).is_conditional())
                    .collect();
                let accessible: Vec<usize> = (0..n)
                    .filter(|&k| p.accessible_fields.at(k).is_accessible())
                    .collect();
                writeln!(
                    out,
                    "  prefix: {n} field(s), the prefix ends before field {}; conditional {conditional:?}; accessible {accessible:?}",
                    p.first_suffix_field
                )
                .unwrap();
                for f in p.fields.iter() {
                    self.render_field(out, "field", &f);
                }
            }
        }
    }

    fn render_field(&self, out: &mut String, what: &str, f: &TLField) {
        let lay = f.layout();
        write!(
            out,
            "  {what} {}: {} -> #{}",
            f.name(),
            name(lay),
            self.id(lay)
        )
        .unwrap();
        let lts = f.lifetime_indices();
        if !lts.as_slice().is_empty() {
            write!(out, " lifetimes {:?}", lts.as_slice()).unwrap();
        }
        out.push('\n');
        for func in f.function_range().iter() {
            writeln!(out, "    {}", self.signature(&func)).unwrap();
        }
    }

    fn signature(&self, func: &TLFunction) -> String {
        // abi_stable stores the names as one string, each followed by a separator; an
        // unnamed parameter has an empty name.
        let names: Vec<&str> = func.param_names.as_str().split([',', ';']).collect();
        let params: Vec<String> = func
            .param_type_layouts
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let lay = p();
                let name = names
                    .get(k)
                    .copied()
                    .filter(|n| !n.is_empty())
                    .unwrap_or("_");
                format!("{name}: {} #{}", self::name(lay), self.id(lay))
            })
            .collect();
        let ret = match func.return_type_layout() {
            Some(r) => {
                let lay = r();
                format!("{} #{}", name(lay), self.id(lay))
            }
            None => "()".to_owned(),
        };
        let lts = func.paramret_lifetime_indices.as_slice();
        let lts = if lts.is_empty() {
            String::new()
        } else {
            format!(" lifetimes {lts:?}")
        };
        let bound = func.bound_lifetimes.as_str();
        let bound = if bound.is_empty() {
            String::new()
        } else {
            format!("for<{}> ", bound.replace(';', ", "))
        };
        let unsafety = if func.fn_qualifs.is_unsafe() {
            "unsafe "
        } else {
            ""
        };
        format!(
            "fn {}: {bound}{unsafety}fn({}) -> {ret}{lts}",
            func.name,
            params.join(", ")
        )
    }
}
