//! Model families, one file each.

pub mod ann_head;
pub mod apc_head;
pub mod aspp_head;
pub mod conv_module;
pub mod da_head;
pub mod decode_base_b;
pub mod decode_head;
pub mod dm_head;
pub mod dpt_head;
pub mod ema_head;
pub mod enc_head;
pub mod fcn_head;
pub mod fpn_head;
pub mod gc_head;
pub mod ham_head;
pub mod isa_head;
pub mod lraspp_head;
pub mod nl_head;
pub mod ocr_head;
pub mod psp_head;
pub mod segformer_head;
pub mod sep_fcn_head;
pub mod setr_mla_head;
pub mod setr_up_head;
pub mod stdc_head;
pub mod uper_head;
