//! CLIP: the BPE tokenizer and the text transformer that turns prompts into conditioning.

pub mod text_model;
pub mod tokenizer;

pub use text_model::{ClipConfig, ClipTextModel};
