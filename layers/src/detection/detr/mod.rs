//! TerraTorch's DETR and Deformable DETR (`terratorch/models/detr/`, TerraTorch 1.2.13), the
//! inference path its `ObjectDetectionModelFactory` wrappers run (`terratorch_detr.py`):
//!
//! * [`position_encoding`]: `PositionEmbeddingSine`;
//! * [`multihead_attention`]: `torch.nn.MultiheadAttention` as the transformers call it;
//! * [`transformer`]: DETR's encoder-decoder `Transformer`;
//! * [`ms_deform_attn`]: the `MSDeformAttn` module around the deformable sampling;
//! * [`deformable_transformer`]: `DeformableTransformer` (single stage, no box refinement);
//! * [`mlp`]: the box head `MLP`;
//! * [`postprocess`]: DETR's and Deformable DETR's `PostProcess`.
//!
//! The tests are the factory's parity tests (`plugins/terratorch/src/tests_detr.rs`), whose
//! fixtures hold the intermediates of each piece.
pub mod deformable_transformer;
pub mod mlp;
pub mod ms_deform_attn;
pub mod multihead_attention;
pub mod position_encoding;
pub mod postprocess;
pub mod transformer;
