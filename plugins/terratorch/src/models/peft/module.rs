//! PEFT's `PeftModel` around a backbone (or a whole model) built by any plugin: an ABI
//! module that exposes the backbone's tensors under PEFT's keys ([`super::layout`]),
//! owns the LoRA matrices and the `original_module` copies, and runs the backbone with
//! the adapters merged into its weights or, with `peft_config.merge: false`, separate.
//!
//! It implements the ABI [`Module`] itself rather than going through the SDK's `Built`,
//! because `Built` exposes a child's keys under a prefix only, and PEFT renames keys
//! inside the backbone (`qkv.weight` -> `qkv.base_layer.weight`).
use super::config::LoraSpec;
use super::layout::{layout, AdapterSite, Entry, InnerTensor, Layout, Source};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use tch::{Device, Tensor};
use terrahost_layers::lora::{Adapter, AdapterScope};
use terrahost_plugin_api::reexports::abi_stable::std_types::{ROption, RResult, RString, RVec};
use terrahost_plugin_api::{
    error::catch_as, sdk::DynModule, ErrorKind, Module, NamedTensor, PluginError, RDevice, Result,
    TensorHandle, TensorRef,
};

/// (version, data pointer) of each tensor a merge read: the weight first.
type MergeKey = Vec<(i64, usize)>;

/// The adapters that add to one backbone weight, and what that weight held when they
/// were last merged into it.
struct MergeGroup {
    weight: Tensor,
    adapters: Vec<usize>,
    merged: Option<MergeKey>,
}

/// The PEFT model: see the module docs.
pub struct PeftModule {
    label: String,
    inner: DynModule,
    layout: Layout,
    /// `lora_A` and `lora_B` of each adapter of `layout.adapters`.
    lora: Vec<(Tensor, Tensor)>,
    /// The backbone weight each adapter adds to (a shallow clone: it follows moves).
    weights: Vec<Tensor>,
    /// The `original_module` copies, by backbone key.
    originals: Vec<(String, Tensor)>,
    /// The tensor behind every key of `layout.entries`, same order (shallow clones of
    /// the backbone's tensors, row views of them, or the tensors above).
    exposed: Vec<Tensor>,
    scale: f64,
    dropout: f64,
    merge: bool,
    train: bool,
    groups: Mutex<Vec<MergeGroup>>,
}

fn key_of(ts: &[&Tensor]) -> Result<MergeKey> {
    ts.iter()
        .map(|t| Ok((t.f_internal_version()?, t.data_ptr() as usize)))
        .collect()
}

/// The backbone's tensors by key (shallow clones).
type State = BTreeMap<String, Tensor>;

fn inner_tensor(inner: &State, key: &str) -> Result<Tensor> {
    inner.get(key).map(Tensor::shallow_clone).ok_or_else(|| {
        PluginError::build_failed(format!("peft: the backbone no longer has `{key}`"))
    })
}

impl PeftModule {
    /// Wraps `inner` as PEFT's `get_peft_model(replace_qkv(inner), LoraConfig(...))`.
    pub fn new(inner: DynModule, spec: &LoraSpec) -> Result<Self> {
        let label = format!("PeftModel({})", inner.label());
        let params: BTreeSet<String> = inner
            .module()
            .named_parameters()
            .into_iter()
            .map(|nt| nt.name.into_string())
            .collect();
        let tensors: Vec<InnerTensor> = inner
            .state_dict()
            .into_iter()
            .map(|(k, t)| {
                let param = params.contains(&k);
                (k, t.size(), param)
            })
            .collect();
        let layout = layout(&tensors, spec)?;
        let state: State = inner.state_dict().into_iter().collect();
        // PEFT's init: A kaiming-uniform (a = sqrt(5), i.e. +-1/sqrt(in)), B zero, so an
        // unloaded adapter adds nothing.
        let lora = layout
            .adapters
            .iter()
            .map(|a| {
                let w = inner_tensor(&state, &a.weight)?;
                let opts = (w.kind(), w.device());
                let bound = 1.0 / (a.in_features as f64).sqrt();
                let am = Tensor::f_rand([spec.r, a.in_features], opts)? * (2.0 * bound) - bound;
                let bm = Tensor::f_zeros([a.out_features, spec.r], opts)?;
                Ok((am, bm))
            })
            .collect::<Result<Vec<_>>>()?;
        // ModulesToSaveWrapper deep-copies the module it keeps.
        let originals = layout
            .entries
            .iter()
            .filter_map(|e| match &e.source {
                Source::Original(k) => Some(k.clone()),
                _ => None,
            })
            .map(|k| {
                let t = inner_tensor(&state, &k)?.f_detach_copy()?;
                Ok((k, t))
            })
            .collect::<Result<Vec<_>>>()?;
        let weights = layout
            .adapters
            .iter()
            .map(|a| inner_tensor(&state, &a.weight))
            .collect::<Result<Vec<_>>>()?;
        let mut groups: Vec<MergeGroup> = Vec::new();
        for (i, a) in layout.adapters.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|g| layout.adapters[g.adapters[0]].weight == a.weight)
            {
                Some(g) => g.adapters.push(i),
                None => groups.push(MergeGroup {
                    weight: inner_tensor(&state, &a.weight)?,
                    adapters: vec![i],
                    merged: None,
                }),
            }
        }
        let mut me = Self {
            label,
            inner,
            layout,
            lora,
            weights,
            originals,
            exposed: Vec::new(),
            scale: spec.scale(),
            dropout: spec.dropout,
            merge: spec.merge,
            train: false,
            groups: Mutex::new(groups),
        };
        me.exposed = me.expose()?;
        Ok(me)
    }

    /// The label of the wrapped module.
    pub fn inner_label(&self) -> &str {
        self.inner.label()
    }

    /// The tensor behind every key (again after a device move, which replaces the
    /// storage the row views were cut from).
    fn expose(&self) -> Result<Vec<Tensor>> {
        let state: State = self.inner.state_dict().into_iter().collect();
        self.layout
            .entries
            .iter()
            .map(|e: &Entry| {
                Ok(match &e.source {
                    Source::Inner(k) => inner_tensor(&state, k)?,
                    // A view of the detached tensor writes through to the backbone's
                    // storage and shares its version counter.
                    Source::Rows { key, start, len } => inner_tensor(&state, key)?
                        .detach()
                        .f_narrow(0, *start, *len)?,
                    Source::LoraA(i) => self.lora[*i].0.shallow_clone(),
                    Source::LoraB(i) => self.lora[*i].1.shallow_clone(),
                    Source::Original(k) => self
                        .originals
                        .iter()
                        .find(|(o, _)| o == k)
                        .map(|(_, t)| t.shallow_clone())
                        .ok_or_else(|| {
                            PluginError::build_failed(format!("peft: no original copy of `{k}`"))
                        })?,
                })
            })
            .collect()
    }

    fn group_key(&self, g: &MergeGroup) -> Result<MergeKey> {
        let mut ts: Vec<&Tensor> = vec![&g.weight];
        for &i in &g.adapters {
            ts.push(&self.lora[i].0);
            ts.push(&self.lora[i].1);
        }
        key_of(&ts)
    }

    /// Folds the adapters into the backbone's weights, once per load: a weight is merged
    /// again only after it was overwritten (a checkpoint load bumps its version).
    fn ensure_merged(&self) -> Result<()> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        for g in groups.iter_mut() {
            let now = self.group_key(g)?;
            match &g.merged {
                Some(k) if *k == now => continue,
                Some(k) if k[0] == now[0] => {
                    let site: &AdapterSite = &self.layout.adapters[g.adapters[0]];
                    return Err(PluginError::forward_failed(format!(
                        "{}: the LoRA matrices of `{}` changed after they were merged into its weight; load the \
                         whole checkpoint again, or set peft_config.merge: false",
                        self.label, site.module
                    )));
                }
                _ => {}
            }
            tch::no_grad(|| -> Result<()> {
                let w = g.weight.detach();
                for &i in &g.adapters {
                    let (a, b) = &self.lora[i];
                    // PEFT's get_delta_weight: (B @ A) * scaling.
                    let delta = b
                        .f_matmul(a)?
                        .f_mul_scalar(self.scale)?
                        .f_to_kind(w.kind())?;
                    let mut rows = match self.layout.adapters[i].rows {
                        Some((start, len)) => w.f_narrow(0, start, len)?,
                        None => w.shallow_clone(),
                    };
                    let _ = rows.f_add_(&delta)?;
                }
                Ok(())
            })?;
            g.merged = Some(self.group_key(g)?);
        }
        Ok(())
    }

    /// Runs `f` (a forward of the backbone) with the adapters merged, or separate in an
    /// [`AdapterScope`] that every adapted linear layer must have taken part in.
    fn run<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.merge {
            self.ensure_merged()?;
            return f();
        }
        let adapters: Vec<Adapter> = self
            .layout
            .adapters
            .iter()
            .zip(&self.lora)
            .zip(&self.weights)
            .map(|((site, (a, b)), w)| Adapter {
                weight: w.shallow_clone(),
                rows: site.rows,
                a: a.shallow_clone(),
                b: b.shallow_clone(),
                scale: self.scale,
                dropout: self.dropout,
            })
            .collect();
        let scope = AdapterScope::open(adapters, self.train);
        let out = f();
        let hits = scope.close();
        let out = out?;
        if let Some(i) = hits.iter().position(|&h| h == 0) {
            return Err(PluginError::forward_failed(format!(
                "{}: the LoRA adapter of `{}` never ran: the backbone does not compute that layer with \
                 terrahost-layers' PackedLinear in this plugin, so its adapters cannot stay separate; leave \
                 peft_config.merge at its default (true)",
                self.label, self.layout.adapters[i].module
            )));
        }
        Ok(out)
    }

    fn named(&self, params: bool) -> RVec<NamedTensor<'_>> {
        self.layout
            .entries
            .iter()
            .zip(&self.exposed)
            .filter(|(e, _)| e.param == params)
            .map(|(e, t)| NamedTensor {
                name: e.name.as_str().into(),
                tensor: TensorRef::new(t),
            })
            .collect()
    }

    fn move_to(&mut self, device: Device) -> Result<()> {
        // Merged weights stay merged when they move: remember which were in sync.
        let in_sync: Vec<bool> = {
            let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            groups
                .iter()
                .map(|g| Ok(g.merged.as_ref() == Some(&self.group_key(g)?)))
                .collect::<Result<_>>()?
        };
        self.inner.to_device(device)?;
        for t in self
            .lora
            .iter_mut()
            .flat_map(|(a, b)| [a, b])
            .chain(self.originals.iter_mut().map(|(_, t)| t))
        {
            let moved = t.f_to_device(device)?;
            t.f_set_data(&moved)?;
        }
        self.exposed = self.expose()?;
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<Option<MergeKey>> = groups
            .iter()
            .zip(&in_sync)
            .map(|(g, &sync)| if sync { self.group_key(g).ok() } else { None })
            .collect();
        for (g, k) in groups.iter_mut().zip(keys) {
            g.merged = k;
        }
        Ok(())
    }

    fn guarded<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        catch_as(
            format_args!("{what} of `{}`", self.label),
            ErrorKind::FORWARD_FAILED,
            f,
        )
    }
}

impl Module for PeftModule {
    fn forward(&self, inputs: RVec<TensorHandle>) -> RResult<RVec<TensorHandle>, PluginError> {
        self.guarded("forward", || {
            self.run(|| self.inner.module().forward(inputs).into_result())
        })
        .into()
    }

    fn out_channels(&self) -> RVec<i64> {
        self.inner.module().out_channels()
    }

    fn includes_head(&self) -> bool {
        self.inner.module().includes_head()
    }

    fn named_parameters(&self) -> RVec<NamedTensor<'_>> {
        self.named(true)
    }

    fn named_buffers(&self) -> RVec<NamedTensor<'_>> {
        self.named(false)
    }

    fn set_train(&mut self, train: bool) {
        self.train = train;
        self.inner.set_train(train);
    }

    fn to_device(&mut self, device: RDevice) -> RResult<(), PluginError> {
        let label = self.label.clone();
        catch_as(
            format_args!("moving `{label}` to a device"),
            ErrorKind::FORWARD_FAILED,
            || self.move_to(Device::from(device)),
        )
        .into()
    }

    fn forward_kw(
        &self,
        inputs: RVec<TensorHandle>,
        kwargs: RString,
    ) -> RResult<RVec<TensorHandle>, PluginError> {
        self.guarded("forward", || {
            self.run(|| self.inner.module().forward_kw(inputs, kwargs).into_result())
        })
        .into()
    }

    fn meta(&self) -> RString {
        self.inner.module().meta()
    }

    fn prepare_features(
        &self,
        inputs: RVec<TensorHandle>,
    ) -> RResult<ROption<RVec<TensorHandle>>, PluginError> {
        // Reshapes tokens into maps; no weight is involved.
        self.inner.module().prepare_features(inputs)
    }
}
