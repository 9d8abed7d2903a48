//! The plugin-author SDK: everything needed to turn `tch` models into registry entries
//! with a few lines, and to use modules that other plugins built.
//!
//! ```ignore
//! fn backbones() -> Catalog {
//!     Catalog::new("timm").add(
//!         Entry::new("resnet18", "ResNet-18 feature extractor", |ctx| {
//!             let vs = nn::VarStore::new(Device::Cpu);
//!             let model = ResNet::new(vs.root(), &Config::resnet18(ctx.args.get("in_chans")?))?;
//!             Ok(Built::new(ctx.qualified(), vs, model).boxed())
//!         })
//!         .opt("in_chans", ParamType::INT, json!(3), "input channels"),
//!     )
//! }
//! terrahost_plugin_api::declare_plugin! {
//!     name: "timm", version: env!("CARGO_PKG_VERSION"),
//!     sources: [("backbone", "timm", backbones())],
//! }
//! ```
use crate::args::Args;
use crate::error::{catch, catch_as, ErrorKind, PluginError, Result};
use crate::host::HostRef;
use crate::module::{
    Module, ModuleBox, Module_TO, NamedTensor, INPUT_NAMES_KWARG, PLUGIN_API_META_KEY,
};
use crate::params::{did_you_mean, BuildRequest, EntryInfo, ParamSpec, ParamType};
use crate::source::{Source, SourceBox, Source_TO};
use crate::tensor::{RDevice, TensorHandle, TensorRef};
use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{ROption, RResult, RStr, RString, RVec},
};
use serde_json::{Map, Value};
use std::collections::HashMap;
use tch::{nn, Device, Tensor};

/// A model implemented inside a plugin. Its parameters live in the `nn::VarStore`
/// handed to [`Built::new`] together with it.
pub trait Model: Send + 'static {
    /// Runs the model. `train` is the module's training flag (dropout, BatchNorm).
    fn forward(&self, xs: &[Tensor], train: bool) -> Result<Vec<Tensor>>;

    /// The channels of each output (TerraTorch's `out_channels`).
    fn out_channels(&self) -> Vec<i64>;

    /// Whether the model ends in its own prediction head.
    fn includes_head(&self) -> bool {
        false
    }

    /// Modules this model holds that were built elsewhere (through the host), each
    /// with the `state_dict` prefix it sits under (`encoder`, `decoder`, `neck.0`).
    fn children(&self) -> Vec<(&str, &DynModule)> {
        Vec::new()
    }

    /// The same children, mutably (for `set_train` and `to_device`).
    fn children_mut(&mut self) -> Vec<(&str, &mut DynModule)> {
        Vec::new()
    }

    /// Runs the model with keyword arguments (see [`Module::forward_kw`]); models that
    /// take none need not implement it.
    fn forward_kw(
        &self,
        xs: &[Tensor],
        kwargs: &Map<String, Value>,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let _ = kwargs;
        self.forward(xs, train)
    }

    /// Facts a composer needs (see [`Module::meta`]), such as a backbone's `patch_size`.
    fn meta(&self) -> Map<String, Value> {
        Map::new()
    }

    /// TerraTorch's `prepare_features_for_image_model`: turns this backbone's outputs
    /// into image-like maps. `None` (the default) when the backbone has no such step.
    fn prepare_features(&self, xs: &[Tensor]) -> Option<Result<Vec<Tensor>>> {
        let _ = xs;
        None
    }

    /// Runs the model on named inputs, in the caller's order: TerraTorch's dict of
    /// tensors by modality (they cross as [`Module::forward_kw`] with
    /// [`INPUT_NAMES_KWARG`]). The default refuses, naming the inputs: a model that takes
    /// one tensor has no use for names.
    fn forward_named(
        &self,
        xs: &[(String, Tensor)],
        kwargs: &Map<String, Value>,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let _ = (kwargs, train);
        Err(PluginError::invalid_argument(format!(
            "this model takes no named inputs (got {}); pass one tensor `input` instead",
            xs.iter()
                .map(|(n, _)| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// Adapts a [`Model`] and the `VarStore` that owns its parameters into an ABI
/// [`Module`]. Every call is guarded by `catch_unwind`.
pub struct Built<M: Model> {
    name: String,
    vs: nn::VarStore,
    model: M,
    train: bool,
}

impl<M: Model> Built<M> {
    /// Wraps `model`, whose parameters live in `vs`, under the display name `name`.
    /// Starts in eval mode, as a model loaded for inference.
    pub fn new(name: impl Into<String>, vs: nn::VarStore, model: M) -> Self {
        Self {
            name: name.into(),
            vs,
            model,
            train: false,
        }
    }

    /// Erases the type into an owned ABI module.
    pub fn boxed(self) -> ModuleBox {
        Module_TO::from_value(self, TD_Opaque)
    }

    /// The wrapped model.
    pub fn model(&self) -> &M {
        &self.model
    }

    fn collect(&self, want_params: bool) -> RVec<NamedTensor<'_>> {
        let mut out: Vec<NamedTensor<'_>> = Vec::new();
        {
            let vars = self.vs.variables_.lock().unwrap_or_else(|e| e.into_inner());
            for (name, t) in vars.named_variables.iter() {
                // Parameters require grad; buffers (created with `*_no_train`) do not.
                if t.requires_grad() == want_params {
                    // SAFETY: the tensor object lives in `self.vs` for as long as `self`
                    // is borrowed, and nothing adds variables after construction.
                    let r = unsafe { TensorRef::from_raw(t.as_ptr()) };
                    out.push(NamedTensor {
                        name: name.as_str().into(),
                        tensor: r,
                    });
                }
            }
        }
        for (prefix, child) in self.model.children() {
            let theirs = if want_params {
                child.module().named_parameters()
            } else {
                child.module().named_buffers()
            };
            out.extend(theirs.into_iter().map(|nt| NamedTensor {
                name: format!("{prefix}.{}", nt.name).into(),
                tensor: nt.tensor,
            }));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.into()
    }
}

impl<M: Model> Module for Built<M> {
    fn forward(&self, inputs: RVec<TensorHandle>) -> RResult<RVec<TensorHandle>, PluginError> {
        let _span = tracing::debug_span!("forward", module = %self.name).entered();
        catch_as(
            format_args!("forward of `{}`", self.name),
            ErrorKind::FORWARD_FAILED,
            || {
                let xs: Vec<Tensor> = inputs.into_iter().map(TensorHandle::into_tensor).collect();
                let ys = self.model.forward(&xs, self.train).map_err(|e| {
                    e.with_kind_if_torch(ErrorKind::FORWARD_FAILED)
                        .context(format_args!("forward of `{}`", self.name))
                })?;
                Ok(ys.into_iter().map(TensorHandle::new).collect())
            },
        )
        .into()
    }

    fn forward_kw(
        &self,
        inputs: RVec<TensorHandle>,
        kwargs: RString,
    ) -> RResult<RVec<TensorHandle>, PluginError> {
        let _span = tracing::debug_span!("forward", module = %self.name).entered();
        catch_as(
            format_args!("forward of `{}`", self.name),
            ErrorKind::FORWARD_FAILED,
            || {
                let mut kwargs = parse_kwargs(&self.name, kwargs.as_str())?;
                let xs: Vec<Tensor> = inputs.into_iter().map(TensorHandle::into_tensor).collect();
                let ys = match kwargs.remove(INPUT_NAMES_KWARG) {
                    Some(names) => {
                        let named = name_inputs(&self.name, &names, xs)?;
                        self.model.forward_named(&named, &kwargs, self.train)
                    }
                    None => self.model.forward_kw(&xs, &kwargs, self.train),
                }
                .map_err(|e| {
                    e.with_kind_if_torch(ErrorKind::FORWARD_FAILED)
                        .context(format_args!("forward of `{}`", self.name))
                })?;
                Ok(ys.into_iter().map(TensorHandle::new).collect())
            },
        )
        .into()
    }

    fn meta(&self) -> RString {
        guarded(&self.name, "meta", || {
            let mut meta = self.model.meta();
            meta.insert(PLUGIN_API_META_KEY.into(), crate::API_VERSION.into());
            Value::Object(meta).to_string().into()
        })
    }

    fn prepare_features(
        &self,
        inputs: RVec<TensorHandle>,
    ) -> RResult<ROption<RVec<TensorHandle>>, PluginError> {
        catch_as(
            format_args!("prepare_features of `{}`", self.name),
            ErrorKind::FORWARD_FAILED,
            || {
                let xs: Vec<Tensor> = inputs.into_iter().map(TensorHandle::into_tensor).collect();
                match self.model.prepare_features(&xs) {
                    None => Ok(ROption::RNone),
                    Some(ys) => {
                        let ys = ys.map_err(|e| {
                            e.with_kind_if_torch(ErrorKind::FORWARD_FAILED)
                                .context(format_args!("prepare_features of `{}`", self.name))
                        })?;
                        Ok(ROption::RSome(
                            ys.into_iter().map(TensorHandle::new).collect(),
                        ))
                    }
                }
            },
        )
        .into()
    }

    fn out_channels(&self) -> RVec<i64> {
        guarded(&self.name, "out_channels", || {
            self.model.out_channels().into()
        })
    }

    fn includes_head(&self) -> bool {
        guarded(&self.name, "includes_head", || self.model.includes_head())
    }

    fn named_parameters(&self) -> RVec<NamedTensor<'_>> {
        guarded(&self.name, "named_parameters", || self.collect(true))
    }

    fn named_buffers(&self) -> RVec<NamedTensor<'_>> {
        guarded(&self.name, "named_buffers", || self.collect(false))
    }

    fn set_train(&mut self, train: bool) {
        let name = self.name.clone();
        guarded(&name, "set_train", || {
            self.train = train;
            for (_, child) in self.model.children_mut() {
                child.set_train(train);
            }
        })
    }

    fn to_device(&mut self, device: RDevice) -> RResult<(), PluginError> {
        let name = self.name.clone();
        catch(format_args!("moving `{name}` to a device"), || {
            self.vs.set_device(Device::from(device));
            for (_, child) in self.model.children_mut() {
                child.to_device(Device::from(device))?;
            }
            Ok(())
        })
        .into()
    }
}

/// Pairs the inputs with the names of [`INPUT_NAMES_KWARG`] (a list of strings, one per
/// input).
fn name_inputs(module: &str, names: &Value, xs: Vec<Tensor>) -> Result<Vec<(String, Tensor)>> {
    let names: Vec<String> = serde_json::from_value(names.clone()).map_err(|_| {
        PluginError::invalid_argument(format!(
            "`{INPUT_NAMES_KWARG}` of a forward of `{module}` must be a list of strings, got {names}"
        ))
    })?;
    if names.len() != xs.len() {
        return Err(PluginError::invalid_argument(format!(
            "a forward of `{module}` got {} input names for {} tensors",
            names.len(),
            xs.len()
        )));
    }
    Ok(names.into_iter().zip(xs).collect())
}

/// Keyword arguments as they cross the boundary: a JSON object.
fn parse_kwargs(module: &str, text: &str) -> Result<Map<String, Value>> {
    serde_json::from_str(text).map_err(|e| {
        PluginError::invalid_argument(format!(
            "forward keyword arguments of `{module}` are not a JSON object: {e}"
        ))
    })
}

/// Runs an infallible ABI method inside `catch_unwind`. These methods only read what
/// the model decided at construction, so a panic here is a bug in the plugin: it is
/// logged and the neutral value returned, rather than unwinding into the host.
fn guarded<T: Default>(module: &str, method: &str, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            tracing::error!(
                module,
                method,
                "plugin panicked: {}",
                crate::error::panic_message(p.as_ref())
            );
            T::default()
        }
    }
}

/// A module built by any plugin (or by this one), held by value: the host keeps its
/// models in these, and a factory keeps the parts it built through the host.
pub struct DynModule {
    label: String,
    module: ModuleBox,
}

impl DynModule {
    /// Wraps `module`, naming it `label` in error messages.
    pub fn new(label: impl Into<String>, module: ModuleBox) -> Self {
        Self {
            label: label.into(),
            module,
        }
    }

    /// The name used in messages (normally the qualified registry name).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Runs the module on shallow clones of `xs` (no data is copied).
    pub fn forward(&self, xs: &[Tensor]) -> Result<Vec<Tensor>> {
        let inputs: RVec<TensorHandle> = xs
            .iter()
            .map(|t| TensorHandle::new(t.shallow_clone()))
            .collect();
        let out = self.module.forward(inputs).into_result()?;
        Ok(out.into_iter().map(TensorHandle::into_tensor).collect())
    }

    /// Runs the module with keyword arguments (see [`Module::forward_kw`]).
    pub fn forward_kw(&self, xs: &[Tensor], kwargs: &Map<String, Value>) -> Result<Vec<Tensor>> {
        let inputs: RVec<TensorHandle> = xs
            .iter()
            .map(|t| TensorHandle::new(t.shallow_clone()))
            .collect();
        let kwargs = Value::Object(kwargs.clone()).to_string();
        let out = self
            .module
            .forward_kw(inputs, kwargs.into())
            .into_result()?;
        Ok(out.into_iter().map(TensorHandle::into_tensor).collect())
    }

    /// Runs the module on named inputs (TerraTorch's dict of tensors by modality), in
    /// `xs` order, with keyword arguments: shallow clones cross through
    /// [`Module::forward_kw`] with [`INPUT_NAMES_KWARG`]. A module whose `meta` lacks
    /// [`PLUGIN_API_META_KEY`] was built by a plugin compiled against plugin-api 0.2.0
    /// or older, which would ignore the names: it is refused with an error saying so.
    pub fn forward_named(
        &self,
        xs: &[(String, Tensor)],
        kwargs: &Map<String, Value>,
    ) -> Result<Vec<Tensor>> {
        let names: Vec<&str> = xs.iter().map(|(n, _)| n.as_str()).collect();
        if !self.meta().contains_key(PLUGIN_API_META_KEY) {
            return Err(PluginError::invalid_argument(format!(
                "`{}` cannot take named inputs ({}): it was built by a plugin compiled against plugin-api \
                 0.2.0 or older, which predates them; rebuild that plugin against plugin-api {} or later",
                self.label,
                names.join(", "),
                crate::API_VERSION
            )));
        }
        let mut kwargs = kwargs.clone();
        kwargs.insert(INPUT_NAMES_KWARG.into(), names.into());
        let tensors: Vec<Tensor> = xs.iter().map(|(_, t)| t.shallow_clone()).collect();
        self.forward_kw(&tensors, &kwargs)
    }

    /// See [`Module::meta`]; an unreadable answer counts as no facts.
    pub fn meta(&self) -> Map<String, Value> {
        match serde_json::from_str(self.module.meta().as_str()) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }

    /// See [`Module::prepare_features`].
    pub fn prepare_features(&self, xs: &[Tensor]) -> Result<Option<Vec<Tensor>>> {
        let inputs: RVec<TensorHandle> = xs
            .iter()
            .map(|t| TensorHandle::new(t.shallow_clone()))
            .collect();
        let out = self.module.prepare_features(inputs).into_result()?;
        Ok(out
            .into_option()
            .map(|v| v.into_iter().map(TensorHandle::into_tensor).collect()))
    }

    /// See [`Module::out_channels`].
    pub fn out_channels(&self) -> Vec<i64> {
        self.module.out_channels().into_vec()
    }

    /// See [`Module::includes_head`].
    pub fn includes_head(&self) -> bool {
        self.module.includes_head()
    }

    /// See [`Module::set_train`].
    pub fn set_train(&mut self, train: bool) {
        self.module.set_train(train)
    }

    /// See [`Module::to_device`].
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        self.module.to_device(device.into()).into_result()
    }

    /// Parameters and buffers together, as `(state_dict key, tensor)`, sorted by key.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut all: Vec<(String, Tensor)> = self
            .module
            .named_parameters()
            .into_iter()
            .chain(self.module.named_buffers())
            .map(|nt| (nt.name.into_string(), nt.tensor.shallow_clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The ABI object.
    pub fn module(&self) -> &ModuleBox {
        &self.module
    }

    /// The ABI object, mutably.
    pub fn module_mut(&mut self) -> &mut ModuleBox {
        &mut self.module
    }

    /// Unwraps the ABI object.
    pub fn into_inner(self) -> ModuleBox {
        self.module
    }
}

type BuildFn = dyn Fn(&BuildCtx<'_, '_>) -> Result<ModuleBox> + Send + Sync;

/// One registry entry: its description and how to build it.
pub struct Entry {
    info: EntryInfo,
    build: Box<BuildFn>,
}

impl Entry {
    /// An entry called `name` with one paragraph of `doc`, built by `build`.
    pub fn new(
        name: &str,
        doc: &str,
        build: impl Fn(&BuildCtx<'_, '_>) -> Result<ModuleBox> + Send + Sync + 'static,
    ) -> Self {
        Self {
            info: EntryInfo {
                name: name.into(),
                doc: doc.into(),
                takes_channels: false,
                params: RVec::new(),
                accepts_extra: false,
                includes_head: false,
            },
            build: Box::new(build),
        }
    }
    /// Adds a parameter.
    pub fn param(mut self, p: ParamSpec) -> Self {
        self.info.params.push(p);
        self
    }
    /// Adds a parameter with a default.
    pub fn opt(self, name: &str, ty: ParamType, default: Value, doc: &str) -> Self {
        self.param(ParamSpec::optional(name, ty, default, doc))
    }
    /// Adds a required parameter.
    pub fn req(self, name: &str, ty: ParamType, doc: &str) -> Self {
        self.param(ParamSpec::required(name, ty, doc))
    }
    /// Declares a keyword the upstream constructor swallows through `**kwargs` and never
    /// reads: it is accepted, the host warns naming it, and the build never sees it.
    /// `why` is shown by `terrahost show`.
    pub fn ignores(self, name: &str, why: &str) -> Self {
        self.param(ParamSpec::ignored(name, why))
    }
    /// Marks the entry as taking the channel list first (decoders, necks).
    pub fn takes_channels(mut self) -> Self {
        self.info.takes_channels = true;
        self
    }
    /// Lets unknown keyword arguments through to the entry.
    pub fn accepts_extra(mut self) -> Self {
        self.info.accepts_extra = true;
        self
    }
    /// The entry's description.
    pub fn info(&self) -> &EntryInfo {
        &self.info
    }
}

/// What an entry's build function receives.
pub struct BuildCtx<'a, 'h> {
    /// The entry name inside its source.
    pub name: &'a str,
    /// The prefix of the source (`timm`).
    pub prefix: &'a str,
    /// The validated arguments, defaults filled in.
    pub args: Args,
    /// The channel list, when the entry takes one (checked to be present).
    pub channels: Vec<i64>,
    /// The host's registries.
    pub host: HostRef<'h>,
}

impl BuildCtx<'_, '_> {
    /// `prefix_name`, for messages and module labels.
    pub fn qualified(&self) -> String {
        format!("{}_{}", self.prefix, self.name)
    }

    /// Builds `name` from the host's `registry`, for composition across plugins.
    pub fn build(
        &self,
        registry: &str,
        name: &str,
        args: &Map<String, Value>,
        channels: Option<&[i64]>,
    ) -> Result<DynModule> {
        let req = BuildRequest::new(args, channels);
        let m = self
            .host
            .build(RStr::from(registry), RStr::from(name), req)
            .into_result()?;
        Ok(DynModule::new(name, m))
    }
}

/// A name that is not an entry itself but is built by one (see [`Catalog::resolve_with`]),
/// such as timm's `convnext_large.fb_in22k`: the architecture `convnext_large` with the
/// pretrained tag `fb_in22k`.
pub struct Alias {
    /// The entry that builds the name.
    pub entry: String,
    /// What the name adds to the entry, put before the entry's doc by `describe`.
    pub note: String,
}

/// How a catalog reads a name that is not one of its entries: `None` when the name is
/// nothing to it, `Some(Err(why))` when the name is malformed for it (not found, with `why`
/// as the message), `Some(Ok(alias))` when an entry builds it.
type ResolveFn = dyn Fn(&str) -> Option<std::result::Result<Alias, String>> + Send + Sync;

/// A registry source made of [`Entry`]s: the usual way a plugin implements
/// [`Source`].
pub struct Catalog {
    prefix: String,
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    includes_heads: bool,
    resolve: Option<Box<ResolveFn>>,
    refused: HashMap<String, String>,
}

impl Catalog {
    /// An empty catalog for the source `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            entries: Vec::new(),
            index: HashMap::new(),
            includes_heads: false,
            resolve: None,
            refused: HashMap::new(),
        }
    }

    /// Lets names that are not entries resolve to an entry through `f` (see [`ResolveFn`]):
    /// `contains`, `describe` and `build` then agree on them (described and built as the
    /// entry, under the name asked for, the alias's note first in the doc), while `names`
    /// lists the entries only.
    pub fn resolve_with(
        mut self,
        f: impl Fn(&str) -> Option<std::result::Result<Alias, String>> + Send + Sync + 'static,
    ) -> Self {
        self.resolve = Some(Box::new(f));
        self
    }

    /// Refuses `name`, a registration of the reference that this source does not build
    /// (yet): it is not an entry (not listed, `contains` is false), but describing or
    /// building it answers [`ErrorKind::NOT_SUPPORTED`] with `why`, which the host
    /// reports instead of "not found".
    pub fn refuses(mut self, name: &str, why: impl Into<String>) -> Self {
        self.refused.insert(name.to_owned(), why.into());
        self
    }

    /// Marks every entry of this source, added before or after, as making the final
    /// prediction itself ([`EntryInfo::includes_head`]), as TerraTorch's registries for
    /// mmseg heads declare `includes_head = True`.
    pub fn includes_heads(mut self) -> Self {
        self.includes_heads = true;
        for e in &mut self.entries {
            e.info.includes_head = true;
        }
        self
    }

    /// Adds an entry. A second entry with the same name is a programming error in the
    /// plugin and panics when the sources are created, which the host reports.
    #[allow(clippy::should_implement_trait)] // a builder step, not arithmetic
    pub fn add(mut self, entry: Entry) -> Self {
        if let Err(e) = self.try_add(entry) {
            panic!("{e}");
        }
        self
    }

    /// Adds an entry, refusing an invalid or duplicate name.
    pub fn try_add(&mut self, entry: Entry) -> Result<()> {
        let name = entry.info.name.to_string();
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(PluginError::invalid_argument(format!(
                "invalid entry name {name:?} for source `{}`: names are non-empty and have no spaces",
                self.prefix
            )));
        }
        if self.index.contains_key(&name) {
            return Err(PluginError::invalid_argument(format!(
                "duplicate entry `{name}` in source `{}`",
                self.prefix
            )));
        }
        let mut entry = entry;
        entry.info.includes_head |= self.includes_heads;
        self.index.insert(name, self.entries.len());
        self.entries.push(entry);
        Ok(())
    }

    /// The source's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Erases the type into an owned ABI source.
    pub fn into_source(self) -> SourceBox {
        Source_TO::from_value(self, TD_Opaque)
    }

    /// The entry called `name`, or the one an alias resolves `name` to (with the alias).
    fn lookup(&self, name: &str) -> Result<(&Entry, Option<Alias>)> {
        if let Some(why) = self.refused.get(name) {
            return Err(PluginError::new(ErrorKind::NOT_SUPPORTED, why.clone()));
        }
        if let Some(&i) = self.index.get(name) {
            return Ok((&self.entries[i], None));
        }
        match self.resolve.as_ref().and_then(|f| f(name)) {
            Some(Ok(alias)) => match self.index.get(alias.entry.as_str()) {
                Some(&i) => Ok((&self.entries[i], Some(alias))),
                None => Err(PluginError::not_found(format!(
                    "`{name}` resolves to `{}`, which is not in source `{}`",
                    alias.entry, self.prefix
                ))),
            },
            Some(Err(why)) => Err(PluginError::not_found(why)),
            None => {
                let hint = did_you_mean(name, self.entries.iter().map(|e| e.info.name.as_str()))
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                Err(PluginError::not_found(format!(
                    "`{name}` is not in source `{}`{hint}",
                    self.prefix
                )))
            }
        }
    }

    /// The description of `name`: its entry's, renamed and with the alias's note first
    /// when `name` is an alias.
    fn info_of(&self, name: &str) -> Result<EntryInfo> {
        let (entry, alias) = self.lookup(name)?;
        let mut info = entry.info.clone();
        if let Some(alias) = alias {
            info.name = name.into();
            info.doc = format!("{} {}", alias.note, info.doc).into();
        }
        Ok(info)
    }
}

impl Source for Catalog {
    fn names(&self) -> RVec<RString> {
        guarded(&self.prefix, "names", || {
            self.entries.iter().map(|e| e.info.name.clone()).collect()
        })
    }

    fn contains(&self, name: RStr<'_>) -> bool {
        guarded(&self.prefix, "contains", || {
            // No did-you-mean work here: `contains` is on the host's path for every bare name.
            self.index.contains_key(name.as_str())
                || matches!(
                    self.resolve.as_ref().and_then(|f| f(name.as_str())),
                    Some(Ok(alias)) if self.index.contains_key(alias.entry.as_str())
                )
        })
    }

    fn describe(&self, name: RStr<'_>) -> RResult<EntryInfo, PluginError> {
        if name.as_str() == crate::source::REFUSALS_NAME {
            return RResult::ROk(crate::source::refusals_entry(
                self.refused
                    .iter()
                    .map(|(n, why)| (n.as_str(), why.as_str())),
            ));
        }
        catch(format_args!("describing `{}_{name}`", self.prefix), || {
            self.info_of(name.as_str())
        })
        .into()
    }

    fn build(
        &self,
        name: RStr<'_>,
        request: BuildRequest,
        host: HostRef<'_>,
    ) -> RResult<ModuleBox, PluginError> {
        let qualified = format!("{}_{}", self.prefix, name);
        let _span = tracing::info_span!("build", entry = %qualified).entered();
        catch_as(
            format_args!("building `{qualified}`"),
            ErrorKind::BUILD_FAILED,
            || {
                let (entry, _) = self.lookup(name.as_str())?;
                let args = entry.info.validate(&qualified, &request.parse_args()?)?;
                let channels = match (entry.info.takes_channels, request.channels()) {
                    (true, None) => {
                        return Err(PluginError::invalid_argument(format!(
                            "`{qualified}` needs the channel list of the features it receives \
                         (for example --channels 64,128,256,512)"
                        )))
                    }
                    (_, c) => c.unwrap_or_default(),
                };
                let ctx = BuildCtx {
                    name: name.as_str(),
                    prefix: &self.prefix,
                    args: Args::new(qualified.clone(), args),
                    channels,
                    host,
                };
                let (built, warnings) = crate::warnings::collect(|| (entry.build)(&ctx));
                let module = built.map_err(|e| e.with_kind_if_torch(ErrorKind::BUILD_FAILED))?;
                Ok(if warnings.is_empty() {
                    module
                } else {
                    Module_TO::from_value(
                        Warned {
                            inner: module,
                            warnings,
                        },
                        TD_Opaque,
                    )
                })
            },
        )
        .into()
    }
}

/// A built module with the warnings its build recorded ([`crate::warnings`]), added to
/// its `meta`; everything else is the module's own.
struct Warned {
    inner: ModuleBox,
    warnings: Vec<String>,
}

impl Module for Warned {
    fn forward(&self, inputs: RVec<TensorHandle>) -> RResult<RVec<TensorHandle>, PluginError> {
        self.inner.forward(inputs)
    }
    fn out_channels(&self) -> RVec<i64> {
        self.inner.out_channels()
    }
    fn includes_head(&self) -> bool {
        self.inner.includes_head()
    }
    fn named_parameters(&self) -> RVec<NamedTensor<'_>> {
        self.inner.named_parameters()
    }
    fn named_buffers(&self) -> RVec<NamedTensor<'_>> {
        self.inner.named_buffers()
    }
    fn set_train(&mut self, train: bool) {
        self.inner.set_train(train)
    }
    fn to_device(&mut self, device: RDevice) -> RResult<(), PluginError> {
        self.inner.to_device(device)
    }
    fn forward_kw(
        &self,
        inputs: RVec<TensorHandle>,
        kwargs: RString,
    ) -> RResult<RVec<TensorHandle>, PluginError> {
        self.inner.forward_kw(inputs, kwargs)
    }
    fn meta(&self) -> RString {
        guarded("warnings", "meta", || {
            let mut meta = match serde_json::from_str::<Value>(self.inner.meta().as_str()) {
                Ok(Value::Object(m)) => m,
                _ => Map::new(),
            };
            let list = meta
                .entry(crate::warnings::META_KEY)
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = list {
                items.extend(self.warnings.iter().cloned().map(Value::String));
            }
            Value::Object(meta).to_string().into()
        })
    }
    fn prepare_features(
        &self,
        inputs: RVec<TensorHandle>,
    ) -> RResult<ROption<RVec<TensorHandle>>, PluginError> {
        self.inner.prepare_features(inputs)
    }
}

/// A host with empty registries, for building entries that compose nothing (plugin
/// unit tests). Asking it for anything is a not-found error.
pub struct NoHost;

impl crate::host::Host for NoHost {
    fn contains(&self, _: RStr<'_>, _: RStr<'_>) -> bool {
        false
    }
    fn names(&self, _: RStr<'_>) -> RVec<RString> {
        RVec::new()
    }
    fn describe(&self, registry: RStr<'_>, name: RStr<'_>) -> RResult<EntryInfo, PluginError> {
        RResult::RErr(PluginError::not_found(format!(
            "no host registries here: `{name}` in `{registry}`"
        )))
    }
    fn build(
        &self,
        registry: RStr<'_>,
        name: RStr<'_>,
        _: BuildRequest,
    ) -> RResult<ModuleBox, PluginError> {
        RResult::RErr(PluginError::not_found(format!(
            "no host registries here: `{name}` in `{registry}`"
        )))
    }
}

impl NoHost {
    /// A borrowed handle to the empty host.
    pub fn handle() -> HostRef<'static> {
        static NO_HOST: NoHost = NoHost;
        crate::host::Host_TO::from_ptr(abi_stable::sabi_types::RRef::new(&NO_HOST), TD_Opaque)
    }
}

/// Builds `name` from this plugin's own `sources`, in process and without a host: the
/// way a plugin's unit tests run an entry (`registry` is `"neck"`, `"decoder"`, ...;
/// `name` is the entry's name with or without the source's prefix). Entries that build
/// parts of other plugins need a real host (`terrahost build` or the integration tests
/// of the host crate), since [`NoHost`] has empty registries.
///
/// ```no_run
/// # use terrahost_plugin_api::{sdk, SourceEntry, Result};
/// # fn plugin_sources() -> Result<Vec<SourceEntry>> { Ok(vec![]) }
/// # fn main() -> Result<()> {
/// use terrahost_plugin_api::reexports::{serde_json::json, tch::{Kind, Tensor}};
/// let args = json!({"init": 2.0}).as_object().cloned().unwrap_or_default();
/// let scale = sdk::build_in_process(&plugin_sources()?, "neck", "mine_Scale", &args, Some(&[8]))?;
/// let x = Tensor::ones([1, 8, 4, 4], (Kind::Float, tch::Device::Cpu));
/// # use terrahost_plugin_api::reexports::tch;
/// let y = scale.forward(&[x])?;
/// assert_eq!(scale.out_channels(), vec![8]);
/// # Ok(()) }
/// ```
pub fn build_in_process(
    sources: &[crate::SourceEntry],
    registry: &str,
    name: &str,
    args: &Map<String, Value>,
    channels: Option<&[i64]>,
) -> Result<DynModule> {
    let in_registry = || sources.iter().filter(|s| s.registry.as_str() == registry);
    // `prefix_name` routes to that source; a bare name is looked up source by source.
    let routed = in_registry().find_map(|s| {
        name.strip_prefix(s.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('_'))
            .filter(|rest| s.source.contains(RStr::from(*rest)))
            .map(|rest| (s, rest))
    });
    let (source, entry) = routed
        .or_else(|| {
            in_registry()
                .find(|s| s.source.contains(RStr::from(name)))
                .map(|s| (s, name))
        })
        .ok_or_else(|| {
            let known: Vec<String> = in_registry()
                .flat_map(|s| {
                    let prefix = s.prefix.to_string();
                    s.source
                        .names()
                        .into_iter()
                        .map(move |n| format!("{prefix}_{n}"))
                })
                .collect();
            PluginError::not_found(format!(
                "no `{name}` in this plugin's `{registry}` sources (it has: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        })?;
    let request = BuildRequest::new(args, channels);
    let module = source
        .source
        .build(RStr::from(entry), request, NoHost::handle())
        .into_result()?;
    Ok(DynModule::new(entry, module))
}

/// Replaces this library's panic hook (each plugin has its own copy of std) with one
/// that logs at debug level instead of printing to stderr: every panic in plugin code
/// is caught at the boundary and reported to the host as an error value, so printing
/// it as well would only add noise. `TERRAHOST_PLUGIN_PANICS=1` keeps the default hook.
pub fn quiet_panics() {
    if std::env::var_os("TERRAHOST_PLUGIN_PANICS").is_none() {
        std::panic::set_hook(Box::new(|info| {
            tracing::debug!("plugin panic (caught): {info}")
        }));
    }
}

/// Declares a plugin: defines `plugin_manifest()` and `plugin_sources()` in the
/// calling crate. [`export_plugin!`] then exports them as the root module of a shared
/// library.
///
/// ```ignore
/// terrahost_plugin_api::declare_plugin! {
///     name: "smp",
///     version: env!("CARGO_PKG_VERSION"),
///     sources: [("decoder", "smp", decoders())],
/// }
/// terrahost_plugin_api::export_plugin!(crate); // in the crate built as the cdylib
/// ```
/// Each source is `(registry, prefix, expression returning a Catalog)`. The
/// expressions run when the host asks for the sources (once, after the version checks),
/// inside `catch_unwind`.
///
/// Declaring and exporting are separate so that a plugin's code can live in an `rlib`
/// that several plugins share a process with (tests, benchmarks, embedding the host
/// with plugins linked in), while a thin `cdylib` crate exports it: a shared library
/// has exactly one root-module symbol, and two of them cannot be linked together.
#[macro_export]
macro_rules! declare_plugin {
    (
        name: $name:expr,
        version: $version:expr,
        sources: [ $( ($registry:expr, $prefix:expr, $make:expr) ),* $(,)? ] $(,)?
    ) => {
        /// This plugin's manifest (name, version, what it was built against, sources).
        pub fn plugin_manifest() -> $crate::Manifest {
            $crate::Manifest::current(
                $name,
                $version,
                vec![$($crate::SourceDecl { registry: $registry.into(), prefix: $prefix.into() }),*],
            )
        }

        /// This plugin's registry sources, freshly created.
        pub fn plugin_sources() -> $crate::Result<Vec<$crate::SourceEntry>> {
            Ok(vec![$($crate::SourceEntry {
                registry: $registry.into(),
                prefix: $prefix.into(),
                source: $crate::sdk::Catalog::into_source($make),
            }),*])
        }
    };
}

/// Exports the plugin declared with [`declare_plugin!`] in crate `$krate` (a path such
/// as `crate` or `terrahost_timm`) as this shared library's root module. Use it once,
/// in the crate built as `cdylib`.
#[macro_export]
macro_rules! export_plugin {
    ($krate:path) => {
        extern "C" fn __terrahost_manifest() -> $crate::Manifest {
            use $krate as plugin;
            // Building a manifest only copies constants; if even that panics the
            // library is broken beyond reporting, and aborting beats unwinding into C.
            match ::std::panic::catch_unwind(plugin::plugin_manifest) {
                Ok(m) => m,
                Err(_) => ::std::process::abort(),
            }
        }

        extern "C" fn __terrahost_sources() -> $crate::reexports::abi_stable::std_types::RResult<
            $crate::reexports::abi_stable::std_types::RVec<$crate::SourceEntry>,
            $crate::PluginError,
        > {
            use $krate as plugin;
            $crate::sdk::quiet_panics();
            $crate::error::catch("creating the plugin's sources", plugin::plugin_sources)
                .map($crate::reexports::abi_stable::std_types::RVec::from)
                .into()
        }

        /// The root module the host loads.
        pub fn __terrahost_root_module() -> $crate::PluginRoot_Ref {
            use $crate::reexports::abi_stable::prefix_type::PrefixTypeTrait;
            $crate::PluginRoot {
                manifest: __terrahost_manifest,
                sources: __terrahost_sources,
            }
            .leak_into_prefix()
        }

        // What `#[abi_stable::export_root_module]` generates, written with `$crate`
        // paths so that a plugin crate needs no direct dependency on abi_stable: the
        // library header abi_stable's loader looks up by this (mangled) symbol name,
        // which a unit test checks against abi_stable's ROOT_MODULE_LOADER_NAME.
        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader:
            $crate::reexports::abi_stable::library::LibHeader = {
            extern "C" fn __terrahost_erased_root_module(
            ) -> $crate::reexports::abi_stable::library::RootModuleResult {
                $crate::reexports::abi_stable::library::__call_root_module_loader(
                    __terrahost_root_module,
                )
            }
            // SAFETY: the constructor returns the root module type it is declared with
            // (PluginRoot_Ref), whose layout the loader checks (CheckTypeLayout::Yes).
            unsafe {
                $crate::reexports::abi_stable::library::LibHeader::from_constructor::<
                    $crate::PluginRoot_Ref,
                >(
                    __terrahost_erased_root_module,
                    $crate::reexports::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `export_plugin!` spells out the symbol `#[abi_stable::export_root_module]` would
    /// export; abi_stable's loader finds the library header only under this name.
    #[test]
    fn export_plugin_exports_the_header_under_abi_stables_name() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    /// Adds the tensor of each name times its position in the model's list.
    struct Weighted;

    impl Model for Weighted {
        fn forward(&self, xs: &[Tensor], _: bool) -> Result<Vec<Tensor>> {
            Ok(xs.iter().map(Tensor::shallow_clone).collect())
        }
        fn out_channels(&self) -> Vec<i64> {
            vec![]
        }
        fn forward_named(
            &self,
            xs: &[(String, Tensor)],
            kwargs: &Map<String, Value>,
            _: bool,
        ) -> Result<Vec<Tensor>> {
            assert!(
                !kwargs.contains_key(INPUT_NAMES_KWARG),
                "the names are taken out"
            );
            let order = ["a", "b"];
            let mut acc = Tensor::zeros([1], (tch::Kind::Float, Device::Cpu));
            for (n, t) in xs {
                let w =
                    order.iter().position(|o| o == n).ok_or_else(|| {
                        PluginError::invalid_argument(format!("unknown input `{n}`"))
                    })? as f64
                        + 1.0;
                acc += t * w;
            }
            Ok(vec![acc, Tensor::from(kwargs.len() as i64)])
        }
    }

    fn module(m: impl Model) -> DynModule {
        DynModule::new(
            "m",
            Built::new("m", nn::VarStore::new(Device::Cpu), m).boxed(),
        )
    }

    fn one(v: f32) -> Tensor {
        Tensor::from_slice(&[v])
    }

    #[test]
    fn named_inputs_cross_with_their_names_and_keyword_arguments() {
        let m = module(Weighted);
        assert_eq!(m.meta()[PLUGIN_API_META_KEY], crate::API_VERSION);
        let mut kw = Map::new();
        kw.insert("image_size".into(), serde_json::json!([4, 4]));
        let named = vec![("b".to_owned(), one(10.0)), ("a".to_owned(), one(1.0))];
        let ys = m.forward_named(&named, &kw).unwrap();
        assert_eq!(ys[0].double_value(&[0]), 21.0); // 10 * 2 + 1 * 1
        assert_eq!(
            ys[1].int64_value(&[]),
            1,
            "the other keyword arguments arrive"
        );
        // positional calls are unchanged
        assert_eq!(m.forward(&[one(3.0)]).unwrap()[0].double_value(&[0]), 3.0);
        // a model error comes back as an error value
        let e = m
            .forward_named(&[("c".to_owned(), one(1.0))], &Map::new())
            .unwrap_err();
        assert!(e.message().contains("unknown input `c`"), "{e}");
    }

    #[test]
    fn a_model_without_named_inputs_refuses_them_by_name() {
        struct Plain;
        impl Model for Plain {
            fn forward(&self, xs: &[Tensor], _: bool) -> Result<Vec<Tensor>> {
                Ok(xs.iter().map(Tensor::shallow_clone).collect())
            }
            fn out_channels(&self) -> Vec<i64> {
                vec![]
            }
        }
        let e = module(Plain)
            .forward_named(&[("S2L2A".to_owned(), one(1.0))], &Map::new())
            .unwrap_err();
        assert!(
            e.message().contains("no named inputs") && e.message().contains("`S2L2A`"),
            "{e}"
        );
    }

    #[test]
    fn names_must_match_the_tensors() {
        let m = module(Weighted);
        let mut kw = Map::new();
        kw.insert(INPUT_NAMES_KWARG.into(), serde_json::json!(["a", "b"]));
        let e = m.forward_kw(&[one(1.0)], &kw).unwrap_err();
        assert!(e.message().contains("2 input names for 1 tensors"), "{e}");
        kw.insert(INPUT_NAMES_KWARG.into(), serde_json::json!([1]));
        let e = m.forward_kw(&[one(1.0)], &kw).unwrap_err();
        assert!(e.message().contains("list of strings"), "{e}");
    }

    /// A module as a plugin built against plugin-api 0.2.0 exports it: the same vtable,
    /// and a `meta` without `plugin_api`. Named inputs are refused before they reach it
    /// (its `forward_kw` would ignore the names and run on the tensors).
    #[test]
    fn a_module_from_a_plugin_api_0_2_0_plugin_is_not_sent_named_inputs() {
        struct Old;
        impl Module for Old {
            fn forward(&self, _: RVec<TensorHandle>) -> RResult<RVec<TensorHandle>, PluginError> {
                panic!("must not be called")
            }
            fn out_channels(&self) -> RVec<i64> {
                RVec::new()
            }
            fn includes_head(&self) -> bool {
                false
            }
            fn named_parameters(&self) -> RVec<NamedTensor<'_>> {
                RVec::new()
            }
            fn named_buffers(&self) -> RVec<NamedTensor<'_>> {
                RVec::new()
            }
            fn set_train(&mut self, _: bool) {}
            fn to_device(&mut self, _: RDevice) -> RResult<(), PluginError> {
                RResult::ROk(())
            }
            fn forward_kw(
                &self,
                _: RVec<TensorHandle>,
                _: RString,
            ) -> RResult<RVec<TensorHandle>, PluginError> {
                panic!("must not be called")
            }
            fn meta(&self) -> RString {
                "{\"patch_size\": [16, 16]}".into()
            }
            fn prepare_features(
                &self,
                _: RVec<TensorHandle>,
            ) -> RResult<ROption<RVec<TensorHandle>>, PluginError> {
                RResult::ROk(ROption::RNone)
            }
        }
        let m = DynModule::new("timm_resnet18", Module_TO::from_value(Old, TD_Opaque));
        let e = m
            .forward_named(&[("S2L2A".to_owned(), one(1.0))], &Map::new())
            .unwrap_err();
        assert!(
            e.message().contains("`timm_resnet18`")
                && e.message().contains("S2L2A")
                && e.message().contains("plugin-api 0.2.0")
                && e.message().contains("rebuild"),
            "{e}"
        );
    }

    /// Refused names reach a scan through the reserved `__refusals__` entry, sorted; a
    /// source that predates it (any not-found answer) has none; the reserved name is
    /// not an entry.
    #[test]
    fn refused_names_travel_as_the_reserved_describe_entry() {
        use crate::source::{refusals_of, REFUSALS_NAME};
        let source = Catalog::new("t")
            .refuses("zeta_tim", "the TiM variants are not built yet")
            .refuses("alpha_v01", "v0.1 is not built")
            .into_source();
        assert_eq!(
            refusals_of(&source),
            vec![
                ("alpha_v01".to_owned(), "v0.1 is not built".to_owned()),
                (
                    "zeta_tim".to_owned(),
                    "the TiM variants are not built yet".to_owned()
                ),
            ]
        );
        assert!(!source.contains(REFUSALS_NAME.into()));
        assert!(source.names().is_empty());
        // What a source built before plugin-api 0.2.3 answers: not found.
        struct Old;
        impl Source for Old {
            fn names(&self) -> RVec<RString> {
                RVec::new()
            }
            fn contains(&self, _: RStr<'_>) -> bool {
                false
            }
            fn describe(&self, name: RStr<'_>) -> RResult<EntryInfo, PluginError> {
                RResult::RErr(PluginError::not_found(format!("no `{name}`")))
            }
            fn build(
                &self,
                _: RStr<'_>,
                _: BuildRequest,
                _: HostRef<'_>,
            ) -> RResult<ModuleBox, PluginError> {
                RResult::RErr(PluginError::not_found("none"))
            }
        }
        assert!(refusals_of(&Source_TO::from_value(Old, TD_Opaque)).is_empty());
    }
}
