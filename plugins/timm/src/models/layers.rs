//! The pieces of `timm/layers/` (timm 1.0.31) every family here uses, from the shared
//! `terrahost-layers` crate: `LayerNorm` / `LayerNorm2d` (`norm.py`), `Mlp` (`mlp.py`),
//! `DropPath` (`drop.py`), a plain `Conv2d`, the stochastic-depth schedule of
//! `calculate_drop_path_rates`, and PyTorch's `nn.Linear` / `nn.Dropout`.
pub(crate) use terrahost_layers::conv::{Conv2d, ConvSpec};
pub(crate) use terrahost_layers::drop::{drop_path, drop_path_rate, dropout};
pub(crate) use terrahost_layers::linear::{trunc_normal, Linear, Mlp};
pub(crate) use terrahost_layers::norm::{LayerNorm, LN_EPS, TORCH_LN_EPS};
