//! Prompt text → CLIP conditioning, the way A1111 builds it (prompts.md §1.6–1.8): attention
//! segments are tokenized separately, packed into 75-token chunks (comma backtrack, `BREAK`,
//! textual-inversion slots), each chunk framed with BOS/EOS to 77 tokens, encoded through CLIP
//! with clip skip, weighted by the emphasis multipliers, and concatenated along the token axis.
//!
//! Attention parsing itself (`(x:1.2)`, `[x]`, `BREAK` markers) is A1111 syntax and lives in
//! `compat::prompt`; this module receives its output as `(text, multiplier)` segments, with
//! `BREAK` markers as `("BREAK", -1.0)`.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use tch::{Kind, Tensor};

use crate::clip::tokenizer::{ClipTokenizer, BOS, EOS, MAX_TOKENS};
use crate::clip::ClipTextModel;
use crate::error::{Error, Result};
use crate::weights::{is_float, open_file};

/// A1111's "Emphasis mode" setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EmphasisMode {
    /// Multiply by the weights, then restore the original mean (A1111's default).
    #[default]
    Original,
    /// Multiply by the weights only.
    NoNorm,
    /// Parse brackets away but apply no weights.
    Ignore,
    /// No parsing at all (the caller passes the whole text as one segment of weight 1).
    None,
}

/// A textual-inversion embedding: `vectors` `[n, width]` replace `n` token slots.
#[derive(Debug)]
pub struct Embedding {
    /// The file stem: what a prompt must contain to use it.
    pub name: String,
    pub vectors: Tensor,
}

impl Embedding {
    /// Reads an embedding file in any layout of formats.md §9.1: A1111/rinongal `.pt`
    /// (`string_to_param`), kohya `.safetensors` (`emb_params`), diffusers `.bin` (one
    /// `{token: vector}` entry). The name is the file stem, as A1111 names embeddings.
    pub fn load(path: &Path) -> Result<Embedding> {
        let src = open_file(path)?;
        let bad = |reason: &str| Error::UnknownFormat { file: path.into(), reason: reason.into() };
        let float_names: Vec<String> = {
            let mut v: Vec<String> =
                src.names().into_iter().filter(|n| src.info(n).is_some_and(|i| is_float(i.kind))).collect();
            v.sort();
            v
        };
        let pick = if float_names.iter().any(|n| n == "emb_params") {
            vec!["emb_params".to_string()]
        } else {
            let params: Vec<String> =
                float_names.iter().filter(|n| n.starts_with("string_to_param.")).cloned().collect();
            if params.is_empty() {
                float_names.clone()
            } else {
                params
            }
        };
        if float_names.iter().any(|n| n == "clip_l" || n == "clip_g") {
            return Err(bad("an SDXL embedding (clip_l/clip_g); SDXL is not supported yet"));
        }
        let [name] = pick.as_slice() else {
            return Err(bad("not a textual-inversion embedding: expected exactly one vector tensor"));
        };
        let t = src.read(name)?.to_kind(Kind::Float);
        let vectors = match t.dim() {
            1 => t.unsqueeze(0),
            2 => t,
            _ => return Err(bad("embedding tensor is neither [n, width] nor [width]")),
        };
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        Ok(Embedding { name: stem, vectors })
    }

    pub fn slots(&self) -> usize {
        self.vectors.size()[0] as usize
    }

    pub fn width(&self) -> i64 {
        self.vectors.size()[1]
    }
}

/// Candidate embeddings for one first token: (name token ids, embedding), longest first.
type Candidates = Vec<(Vec<i64>, Rc<Embedding>)>;

/// Textual-inversion replacement: (batch index, token offset, vectors `[n, width]`).
pub type EmbeddingFix<'a> = (usize, usize, &'a Tensor);

/// Embeddings indexed by the first token of their name, longest candidates first.
#[derive(Default)]
pub struct EmbeddingDb {
    by_first_token: HashMap<i64, Candidates>,
}

impl EmbeddingDb {
    /// Indexes `embeddings` with `tokenizer`. Embeddings whose width differs from the text
    /// encoder's (`width`) are skipped, as A1111 skips them.
    pub fn new(tokenizer: &ClipTokenizer, embeddings: Vec<Rc<Embedding>>, width: i64) -> Self {
        let mut by_first_token: HashMap<i64, Candidates> = HashMap::new();
        for e in embeddings {
            if e.width() != width {
                tracing::warn!(embedding = %e.name, width = e.width(), expected = width, "embedding skipped: wrong width");
                continue;
            }
            let ids = tokenizer.encode(&e.name);
            if let Some(&first) = ids.first() {
                by_first_token.entry(first).or_default().push((ids, e));
            }
        }
        for candidates in by_first_token.values_mut() {
            candidates.sort_by_key(|(ids, _)| std::cmp::Reverse(ids.len()));
        }
        EmbeddingDb { by_first_token }
    }

    /// The embedding whose name's tokens start at `tokens[0]`, with that name's token count.
    fn find(&self, tokens: &[i64]) -> Option<(usize, &Rc<Embedding>)> {
        let candidates = self.by_first_token.get(tokens.first()?)?;
        candidates.iter().find(|(ids, _)| tokens.starts_with(ids)).map(|(ids, e)| (ids.len(), e))
    }
}

/// One 77-token chunk: BOS, 75 slots, EOS.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub tokens: Vec<i64>,
    pub multipliers: Vec<f64>,
    /// (offset in `tokens`, embedding) for each textual-inversion insertion.
    pub fixes: Vec<(usize, Rc<Embedding>)>,
}

impl PartialEq for Embedding {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// A prompt text packed into chunks, with A1111's token count (shown as "75/150" in its UI).
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkedText {
    pub chunks: Vec<Chunk>,
    pub token_count: usize,
    /// Names of the embeddings used, in order of first use.
    pub embeddings_used: Vec<String>,
}

struct Builder {
    chunks: Vec<Chunk>,
    tokens: Vec<i64>,
    multipliers: Vec<f64>,
    fixes: Vec<(usize, Rc<Embedding>)>,
    last_comma: Option<usize>,
    token_count: usize,
}

impl Builder {
    fn close(&mut self, is_last: bool) {
        let real = self.tokens.len();
        self.token_count += if is_last { real } else { MAX_TOKENS };
        let mut tokens = Vec::with_capacity(MAX_TOKENS + 2);
        tokens.push(BOS);
        tokens.append(&mut self.tokens);
        tokens.resize(MAX_TOKENS + 1, EOS);
        tokens.push(EOS);
        let mut multipliers = Vec::with_capacity(MAX_TOKENS + 2);
        multipliers.push(1.0);
        multipliers.append(&mut self.multipliers);
        multipliers.resize(MAX_TOKENS + 2, 1.0);
        // Fix offsets count from the chunk start including BOS.
        let fixes = std::mem::take(&mut self.fixes).into_iter().map(|(o, e)| (o + 1, e)).collect();
        self.chunks.push(Chunk { tokens, multipliers, fixes });
        self.last_comma = None;
    }
}

/// Packs attention segments into chunks exactly as A1111's `tokenize_line`.
/// `comma_backtrack` is the `comma_padding_backtrack` setting (default 20).
pub fn chunk_text(
    tokenizer: &ClipTokenizer,
    segments: &[(String, f64)],
    embeddings: &EmbeddingDb,
    comma_backtrack: usize,
) -> ChunkedText {
    let comma = tokenizer.token_to_id(",</w>");
    let mut b = Builder {
        chunks: Vec::new(),
        tokens: Vec::new(),
        multipliers: Vec::new(),
        fixes: Vec::new(),
        last_comma: None,
        token_count: 0,
    };
    let mut used: Vec<String> = Vec::new();
    for (text, weight) in segments {
        if text == "BREAK" && *weight == -1.0 {
            b.close(false);
            continue;
        }
        let tokens = tokenizer.encode(text);
        let mut pos = 0;
        while pos < tokens.len() {
            let token = tokens[pos];
            if Some(token) == comma {
                b.last_comma = Some(b.tokens.len());
            } else if comma_backtrack != 0 && b.tokens.len() == MAX_TOKENS {
                if let Some(last_comma) = b.last_comma.filter(|&c| MAX_TOKENS - c <= comma_backtrack) {
                    // Move everything after the comma to the next chunk.
                    let split = last_comma + 1;
                    let moved_tokens = b.tokens.split_off(split);
                    let moved_mults = b.multipliers.split_off(split);
                    b.close(false);
                    b.tokens = moved_tokens;
                    b.multipliers = moved_mults;
                }
            }
            if b.tokens.len() == MAX_TOKENS {
                b.close(false);
            }
            if let Some((name_len, emb)) = embeddings.find(&tokens[pos..]) {
                let slots = emb.slots();
                if b.tokens.len() + slots > MAX_TOKENS {
                    b.close(false);
                }
                b.fixes.push((b.tokens.len(), emb.clone()));
                b.tokens.extend(std::iter::repeat_n(0, slots));
                b.multipliers.extend(std::iter::repeat_n(*weight, slots));
                if !used.contains(&emb.name) {
                    used.push(emb.name.clone());
                }
                pos += name_len;
                continue;
            }
            b.tokens.push(token);
            b.multipliers.push(*weight);
            pos += 1;
        }
    }
    if !b.tokens.is_empty() || b.chunks.is_empty() {
        b.close(true);
    }
    ChunkedText { chunks: b.chunks, token_count: b.token_count, embeddings_used: used }
}

fn empty_chunk() -> Chunk {
    let mut tokens = vec![EOS; MAX_TOKENS + 2];
    tokens[0] = BOS;
    Chunk { tokens, multipliers: vec![1.0; MAX_TOKENS + 2], fixes: Vec::new() }
}

/// Encodes several texts in one batch, as A1111 encodes the schedule texts of one prompt:
/// texts with fewer chunks get empty chunks; each chunk index runs through CLIP as a batch and
/// is weighted with the emphasis mode (Original restores the mean over the whole batch of that
/// chunk index); the chunks are concatenated along the token axis → `[texts, 77·n, width]`.
pub fn encode_texts(
    clip: &ClipTextModel,
    texts: &[ChunkedText],
    clip_skip: usize,
    emphasis: EmphasisMode,
) -> Tensor {
    let n_chunks = texts.iter().map(|t| t.chunks.len()).max().unwrap_or(1);
    let empty = empty_chunk();
    let mut outputs = Vec::with_capacity(n_chunks);
    for i in 0..n_chunks {
        let chunks: Vec<&Chunk> = texts.iter().map(|t| t.chunks.get(i).unwrap_or(&empty)).collect();
        let ids: Vec<i64> = chunks.iter().flat_map(|c| c.tokens.iter().copied()).collect();
        let ids = Tensor::from_slice(&ids).reshape([chunks.len() as i64, (MAX_TOKENS + 2) as i64]);
        let fixes: Vec<EmbeddingFix> = chunks
            .iter()
            .enumerate()
            .flat_map(|(b, c)| c.fixes.iter().map(move |(offset, e)| (b, *offset, &e.vectors)))
            .collect();
        let z = clip.encode_with_embeddings(&ids, &fixes, clip_skip);
        let z = match emphasis {
            EmphasisMode::Ignore | EmphasisMode::None => z,
            EmphasisMode::Original | EmphasisMode::NoNorm => {
                let m: Vec<f32> =
                    chunks.iter().flat_map(|c| c.multipliers.iter().map(|&m| m as f32)).collect();
                let m = Tensor::from_slice(&m)
                    .reshape([chunks.len() as i64, (MAX_TOKENS + 2) as i64, 1])
                    .to_device(z.device())
                    .to_kind(z.kind());
                if emphasis == EmphasisMode::Original {
                    let original_mean = z.mean(z.kind());
                    let weighted = &z * m;
                    let new_mean = weighted.mean(z.kind());
                    weighted * (original_mean / new_mean)
                } else {
                    z * m
                }
            }
        };
        outputs.push(z);
    }
    Tensor::cat(&outputs, 1)
}

/// Makes conditionings of different lengths equal by repeating each one's last token vector,
/// as A1111 does for the different prompts of one batch.
pub fn pad_to_same_length(conds: &[Tensor]) -> Vec<Tensor> {
    let longest = conds.iter().map(|c| c.size()[1]).max().unwrap_or(0);
    conds
        .iter()
        .map(|c| {
            let len = c.size()[1];
            if len == longest {
                c.shallow_clone()
            } else {
                let last = c.narrow(1, len - 1, 1).repeat([1, longest - len, 1]);
                Tensor::cat(&[c.shallow_clone(), last], 1)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize) -> String {
        vec!["cat"; n].join(" ")
    }

    fn real_tokens(c: &Chunk) -> usize {
        // Real tokens are followed by EOS padding; the tokenizer never emits EOS itself.
        c.tokens[1..=MAX_TOKENS].iter().take_while(|&&t| t != EOS).count()
    }

    fn chunk(text: &str, backtrack: usize) -> ChunkedText {
        let tok = ClipTokenizer::new().unwrap();
        chunk_text(&tok, &[(text.to_string(), 1.0)], &EmbeddingDb::default(), backtrack)
    }

    // The worked chunk examples of prompts.md §1.6 ("cat" is one token).
    #[test]
    fn chunk_comma_within_backtrack_moves_tail_to_next_chunk() {
        let c = chunk(&format!("{}, {}", words(60), words(19)), 20);
        assert_eq!(c.chunks.iter().map(real_tokens).collect::<Vec<_>>(), vec![61, 19]);
        assert_eq!(c.token_count, 94);
    }

    #[test]
    fn chunk_backtrack_zero_splits_at_75() {
        let c = chunk(&format!("{}, {}", words(60), words(19)), 0);
        assert_eq!(c.chunks.iter().map(real_tokens).collect::<Vec<_>>(), vec![75, 5]);
        assert_eq!(c.token_count, 80);
    }

    #[test]
    fn chunk_comma_too_far_back_is_ignored() {
        let c = chunk(&format!("{}, {}", words(54), words(25)), 20);
        assert_eq!(c.chunks.iter().map(real_tokens).collect::<Vec<_>>(), vec![75, 5]);
    }

    #[test]
    fn chunk_break_markers_close_chunks_even_when_empty() {
        let tok = ClipTokenizer::new().unwrap();
        let segs = vec![
            ("a".to_string(), 1.0),
            ("BREAK".to_string(), -1.0),
            ("BREAK".to_string(), -1.0),
            ("b".to_string(), 1.0),
        ];
        let c = chunk_text(&tok, &segs, &EmbeddingDb::default(), 20);
        assert_eq!(c.chunks.iter().map(real_tokens).collect::<Vec<_>>(), vec![1, 0, 1]);
        assert_eq!(c.token_count, 151);
    }

    #[test]
    fn chunk_empty_prompt_is_one_padding_chunk() {
        let c = chunk("", 20);
        assert_eq!(c.chunks.len(), 1);
        assert_eq!(c.token_count, 0);
        assert_eq!(c.chunks[0], empty_chunk());
    }

    #[test]
    fn chunk_embedding_reserves_slots_and_records_fix() {
        let tok = ClipTokenizer::new().unwrap();
        let emb = Rc::new(Embedding {
            name: "EasyNegative".into(),
            vectors: Tensor::ones([3, 8], tch::kind::FLOAT_CPU),
        });
        let db = EmbeddingDb::new(&tok, vec![emb], 8);
        let c = chunk_text(&tok, &[("a easynegative, b".to_string(), 1.2)], &db, 20);
        let chunk = &c.chunks[0];
        assert_eq!(chunk.fixes.len(), 1);
        let offset = chunk.fixes[0].0;
        assert_eq!(&chunk.tokens[offset..offset + 3], &[0, 0, 0]);
        assert_eq!(chunk.multipliers[offset], 1.2);
        assert_eq!(c.embeddings_used, vec!["EasyNegative".to_string()]);
        // "a" + 3 slots + "," + "b"
        assert_eq!(c.token_count, 6);
    }
}
