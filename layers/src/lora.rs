//! Unmerged LoRA adapters (PEFT's `lora.Linear`) for the linear layers of this crate.
//!
//! A LoRA fine-tune adds to a linear layer `y = x W^T + b` the low-rank branch
//! `scale * B(A(dropout(x)))`. For inference terrahost normally folds it into `W` once
//! (`W += scale * B A`, see the `peft` module of the terratorch plugin), which costs
//! nothing per forward. Keeping the adapters separate instead needs the layer itself to
//! run the branch, and the layer lives inside a backbone that may come from any plugin.
//! So the adapters are not stored in the layers: whoever holds them (the PEFT wrapper)
//! opens an [`AdapterScope`] on the calling thread for the duration of one forward, and
//! every [`crate::packed_linear::PackedLinear`] asks [`delta`] for the branch of its
//! weight, matched by the weight's storage (data pointer, which a forward never moves).
//! Outside a scope the check is one thread-local flag read.
//!
//! The scope is thread-local and per copy of this crate: a backbone built by another
//! plugin library (with its own copy) never sees it. [`AdapterScope::close`] reports how
//! often each adapter ran, so the holder can tell a backbone whose linears did not take
//! part and refuse it instead of silently dropping the adapters.
use std::cell::{Cell, RefCell};
use tch::Tensor;

/// One LoRA adapter on (a block of output rows of) a linear layer's weight.
pub struct Adapter {
    /// The layer's full weight `[out, in]` (a shallow clone: it identifies the layer).
    pub weight: Tensor,
    /// The output rows the adapter adds to: `(start, len)`; `None` for all of them.
    /// QKVSep's q/k/v linears are row blocks of one fused qkv weight.
    pub rows: Option<(i64, i64)>,
    /// `lora_A` `[r, in]`.
    pub a: Tensor,
    /// `lora_B` `[len, r]`.
    pub b: Tensor,
    /// `lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA.
    pub scale: f64,
    /// `lora_dropout`, applied to the input of `A` in training mode only.
    pub dropout: f64,
}

struct Active {
    adapters: Vec<Adapter>,
    hits: Vec<usize>,
    train: bool,
}

thread_local! {
    static OPEN: Cell<bool> = const { Cell::new(false) };
    static ACTIVE: RefCell<Option<Active>> = const { RefCell::new(None) };
}

/// Adapters active on this thread until the scope is closed or dropped.
pub struct AdapterScope {
    closed: bool,
}

impl AdapterScope {
    /// Makes `adapters` active on this thread (training mode `train` decides dropout).
    /// Scopes do not nest: opening one replaces any open one.
    pub fn open(adapters: Vec<Adapter>, train: bool) -> Self {
        let hits = vec![0; adapters.len()];
        ACTIVE.with(|a| {
            *a.borrow_mut() = Some(Active {
                adapters,
                hits,
                train,
            })
        });
        OPEN.with(|o| o.set(true));
        Self { closed: false }
    }

    /// Ends the scope; returns how many times each adapter ran, in the order given.
    pub fn close(mut self) -> Vec<usize> {
        self.closed = true;
        take().map(|a| a.hits).unwrap_or_default()
    }
}

impl Drop for AdapterScope {
    fn drop(&mut self) {
        // A forward that failed still must not leave adapters behind for the next one.
        if !self.closed {
            take();
        }
    }
}

fn take() -> Option<Active> {
    OPEN.with(|o| o.set(false));
    ACTIVE.with(|a| a.borrow_mut().take())
}

/// The LoRA branch for a layer with weight `weight` on input `x` (`[..., in]` ->
/// `[..., out]`), or `None` when no open scope has an adapter for this weight. Several
/// adapters on row blocks of the same weight are summed into one `[..., out]` tensor.
pub fn delta(weight: &Tensor, x: &Tensor) -> Option<Tensor> {
    if !OPEN.with(Cell::get) {
        return None;
    }
    ACTIVE.with(|cell| {
        let mut guard = cell.borrow_mut();
        let active = guard.as_mut()?;
        let ptr = weight.data_ptr();
        let mut out: Option<Tensor> = None;
        for (i, ad) in active.adapters.iter().enumerate() {
            if ad.weight.data_ptr() != ptr {
                continue;
            }
            active.hits[i] += 1;
            let xin = if active.train && ad.dropout > 0.0 {
                x.dropout(ad.dropout, true)
            } else {
                x.shallow_clone()
            };
            // PEFT's order: B(A(x)) first, then the scale.
            let branch = xin
                .linear::<&Tensor>(&ad.a, None)
                .linear::<&Tensor>(&ad.b, None)
                * ad.scale;
            let full = match ad.rows {
                None => branch,
                Some((start, len)) => {
                    let out_features = weight.size()[0];
                    let mut shape = branch.size();
                    let last = shape.len() - 1;
                    // Zero blocks around this adapter's rows, as QKVSep concatenates
                    // q, k and v (an unadapted block adds nothing).
                    shape[last] = start;
                    let before = Tensor::zeros(&shape, (branch.kind(), branch.device()));
                    shape[last] = out_features - start - len;
                    let after = Tensor::zeros(&shape, (branch.kind(), branch.device()));
                    Tensor::cat(&[before, branch, after], -1)
                }
            };
            out = Some(match out {
                None => full,
                Some(acc) => acc + full,
            });
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn randn(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    }

    #[test]
    fn delta_is_scaled_b_a_x_on_its_rows_and_counts_hits() {
        let w = randn(&[6, 4]);
        let (a, b) = (randn(&[2, 4]), randn(&[2, 2]));
        let x = randn(&[3, 4]);
        let scope = AdapterScope::open(
            vec![Adapter {
                weight: w.shallow_clone(),
                rows: Some((2, 2)),
                a: a.shallow_clone(),
                b: b.shallow_clone(),
                scale: 0.5,
                dropout: 0.3,
            }],
            false,
        );
        let d = delta(&w, &x).expect("an adapter for w");
        let other = randn(&[6, 4]);
        assert!(delta(&other, &x).is_none());
        assert_eq!(scope.close(), vec![1]);
        // Computed here another way: rows 2..4 of x (B A)^T * 0.5, zeros elsewhere.
        let want_mid = x.matmul(&b.matmul(&a).transpose(0, 1)) * 0.5;
        assert!(d.narrow(1, 2, 2).allclose(&want_mid, 1e-5, 1e-6, false));
        assert_eq!(
            d.narrow(1, 0, 2).abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
        assert_eq!(
            d.narrow(1, 4, 2).abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
        assert!(
            delta(&w, &x).is_none(),
            "closed scopes leave nothing behind"
        );
    }

    #[test]
    fn a_dropped_scope_is_closed() {
        let w = randn(&[2, 2]);
        {
            let _scope = AdapterScope::open(
                vec![Adapter {
                    weight: w.shallow_clone(),
                    rows: None,
                    a: randn(&[1, 2]),
                    b: randn(&[2, 1]),
                    scale: 1.0,
                    dropout: 0.0,
                }],
                false,
            );
            assert!(delta(&w, &randn(&[1, 2])).is_some());
        }
        assert!(delta(&w, &randn(&[1, 2])).is_none());
    }
}
