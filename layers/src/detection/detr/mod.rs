//! TerraTorch's DETR and Deformable DETR (`terratorch/models/detr/`, TerraTorch 1.2.13), the
//! inference path its `ObjectDetectionModelFactory` wrappers run (`terratorch_detr.py`):
//!
//! * `PositionEmbeddingSine` in [`position_encoding`];
//! * `torch.nn.MultiheadAttention`, as the transformers call it, in [`multihead_attention`];
//! * DETR's encoder-decoder `Transformer` in [`transformer`];
//! * the `MSDeformAttn` module around the deformable sampling in [`ms_deform_attn`];
//! * `DeformableTransformer` (single stage, no box refinement) in [`deformable_transformer`];
//! * the box head `MLP` in [`mlp`];
//! * DETR's and Deformable DETR's `PostProcess` in [`postprocess`].
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
