//! The tokenizer and the fill-in-the-middle template it implies.
//!
//! The template is read from the tokenizer's own special tokens, never from the model's name: a
//! fine-tune renamed on the hub keeps its tokens. Each token's exact bytes come from its vocabulary
//! entry (byte-level BPE or SentencePiece byte fallback), so streaming output never loses or invents
//! a byte, even when a character spans two tokens.

use std::collections::HashMap;

use tokenizers::DecoderWrapper;

/// Why a tokenizer cannot serve FIM completion.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("is not a valid tokenizer.json: {0}")]
    Invalid(String),
    #[error(
        "has no fill-in-the-middle tokens (looked for <|fim_prefix|>, <fim_prefix>, <fim-prefix>, \
         <｜fim▁begin｜> and <PRE>); use a FIM-trained model such as Qwen/Qwen2.5-Coder-0.5B"
    )]
    NoFimTokens,
    #[error(
        "has {vocab} tokens but config.json says vocab_size {config}; are they from the same model?"
    )]
    VocabMismatch { vocab: usize, config: usize },
}

/// Prefix-suffix-middle or suffix-prefix-middle order (Bavarian et al. 2022, section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FimOrder {
    #[default]
    Psm,
    Spm,
}

impl FimOrder {
    /// The lowercase name (as in `config.json` and on the command line).
    pub fn name(self) -> &'static str {
        match self {
            Self::Psm => "psm",
            Self::Spm => "spm",
        }
    }
}

/// The FIM special tokens of one tokenizer family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FimTemplate {
    /// Family name for messages, e.g. "qwen" or "starcoder".
    pub style: &'static str,
    pub prefix: u32,
    pub suffix: u32,
    pub middle: u32,
    /// Tokens that end the middle: end-of-text, end-of-middle, file separators, padding.
    pub stops: Vec<u32>,
    /// Tokens the tokenizer puts before every text (a BOS), if any.
    pub lead: Vec<u32>,
    /// End of a document (and of a middle, in training): `<|endoftext|>`, `</s>`, ...
    pub eos: Option<u32>,
    /// Separator between files in packed training data (`<|file_sep|>`), if the vocabulary has one.
    pub file_sep: Option<u32>,
    /// The token that opens a repository-level prompt (`<|repo_name|>`), if the vocabulary has one.
    pub repo_name: Option<u32>,
}

impl FimTemplate {
    /// The prompt markers, which can never be part of a middle.
    pub fn markers(&self) -> [u32; 3] {
        [self.prefix, self.suffix, self.middle]
    }
}

/// Token names of one template family; each slot lists accepted spellings.
type TemplateNames = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);

/// Known token names: (style, prefix, suffix, middle, extra stop tokens).
const TEMPLATES: &[TemplateNames] = &[
    (
        "qwen",
        &["<|fim_prefix|>"],
        &["<|fim_suffix|>"],
        &["<|fim_middle|>"],
        &[
            "<|endoftext|>",
            "<|fim_pad|>",
            "<|file_sep|>",
            "<|file_separator|>",
            "<|repo_name|>",
            "<|im_end|>",
        ],
    ),
    (
        "starcoder",
        &["<fim_prefix>"],
        &["<fim_suffix>"],
        &["<fim_middle>"],
        &["<|endoftext|>", "<file_sep>", "<fim_pad>"],
    ),
    (
        "santacoder",
        &["<fim-prefix>"],
        &["<fim-suffix>"],
        &["<fim-middle>"],
        &["<|endoftext|>", "<fim-pad>"],
    ),
    (
        "deepseek",
        &["<｜fim▁begin｜>"],
        &["<｜fim▁hole｜>"],
        &["<｜fim▁end｜>"],
        &["<｜end▁of▁sentence｜>", "<|EOT|>"],
    ),
    (
        "codellama",
        &["▁<PRE>", "<PRE>"],
        &["▁<SUF>", "<SUF>"],
        &["▁<MID>", "<MID>"],
        &["▁<EOT>", "<EOT>", "</s>"],
    ),
];

/// A text every tokenizer check encodes: code of several languages, non-ASCII text, runs of
/// spaces and tabs. Two tokenizers that encode it alike are taken for the same (a dataset's, an adapter's).
pub const PROBE: &str = "def área(width, height):\n    return width * height  # m²\n\n\
    fn main() {\n\tlet v: Vec<u8> = vec![1, 2];\n        println!(\"{:?} → {}\", v, \"日本\");\n}\n\
    const f = async (x) => { await x?.y ?? 0; };\n";

/// How a vocabulary entry maps to bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceEncoding {
    /// GPT-2 byte-level BPE: each byte is written as one printable character.
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xNN>` a raw byte.
    SentencePiece,
}

/// A tokenizer plus what infill needs from it.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    fim: FimTemplate,
    /// Exact bytes of every token id (special tokens map to their content).
    bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
    /// SentencePiece with a prepended `▁` (Llama, CodeLlama): every encoded text gains a leading
    /// space, which a text continuing another (a FIM suffix or middle) must not have.
    prepends_space: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("fim", &self.fim)
            .field("vocab", &self.bytes.len())
            .finish()
    }
}

impl Tokenizer {
    /// Reads a `tokenizer.json`. `vocab_size` is the model's (its embedding rows), checked against it.
    pub fn from_bytes(json: &[u8], vocab_size: usize) -> Result<Self, TokenizerError> {
        Self::from_bytes_with_fim(json, vocab_size, None)
    }

    /// [`from_bytes`](Self::from_bytes), with the prefix, suffix and middle token ids taken from
    /// `fim` where the model names them (a GGUF file's metadata) rather than from the vocabulary.
    pub fn from_bytes_with_fim(
        json: &[u8],
        vocab_size: usize,
        fim_ids: Option<[u32; 3]>,
    ) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| TokenizerError::Invalid(e.to_string()))?;
        let size = inner.get_vocab_size(true);
        let vocab: HashMap<String, u32> = inner.get_vocab(true);
        let max_id = vocab.values().copied().max().map_or(0, |m| m as usize + 1);
        if max_id > vocab_size {
            return Err(TokenizerError::VocabMismatch {
                vocab: size.max(max_id),
                config: vocab_size,
            });
        }
        let mut fim = detect_template(&inner, &vocab).ok_or(TokenizerError::NoFimTokens)?;
        if let Some([prefix, suffix, middle]) = fim_ids
            && [prefix, suffix, middle]
                .iter()
                .all(|&id| (id as usize) < max_id)
        {
            (fim.prefix, fim.suffix, fim.middle) = (prefix, suffix, middle);
        }
        let encoding = piece_encoding(inner.get_decoder());
        let added = inner.get_added_vocabulary().get_added_tokens_decoder();
        let mut bytes = vec![Vec::new(); max_id];
        let mut special = vec![false; max_id];
        for (piece, &id) in &vocab {
            let slot = id as usize;
            if let Some(tok) = added.get(&id) {
                bytes[slot] = tok.content.as_bytes().to_vec();
                special[slot] = tok.special;
            } else {
                bytes[slot] = piece_bytes(piece, encoding);
            }
        }
        let mut tok = Self {
            inner,
            fim,
            bytes,
            special,
            prepends_space: false,
        };
        let probe = tok.encode("a")?;
        tok.prepends_space = probe
            .first()
            .is_some_and(|&id| tok.token_bytes(id).first() == Some(&b' '));
        Ok(tok)
    }

    pub fn fim(&self) -> &FimTemplate {
        &self.fim
    }

    /// Token ids of `text`, without any special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Invalid(e.to_string()))
    }

    /// Whether encoding adds a leading space (SentencePiece's prepended `▁`).
    pub fn prepends_space(&self) -> bool {
        self.prepends_space
    }

    /// Token ids of `text` as the continuation of other text: without the leading space a
    /// SentencePiece tokenizer would add (Meta's `encode_infilling`: encode "☺" + text and drop
    /// the tokens of "☺"). Equal to [`encode`](Self::encode) for byte-level tokenizers.
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encode_continuation_with_offsets(text)
            .map(|(ids, _)| ids)
    }

    /// [`encode_continuation`](Self::encode_continuation) with each token's start offset in `text`.
    pub fn encode_continuation_with_offsets(
        &self,
        text: &str,
    ) -> Result<(Vec<u32>, Vec<usize>), TokenizerError> {
        if !self.prepends_space {
            return self.encode_with_offsets(text);
        }
        const MARK: &str = "☺";
        let (ids, offsets) = self.encode_with_offsets(&format!("{MARK}{text}"))?;
        Ok(ids
            .into_iter()
            .zip(offsets)
            .filter(|(_, start)| *start >= MARK.len())
            .map(|(id, start)| (id, start - MARK.len()))
            .unzip())
    }

    /// Token ids with the byte offset where each token starts.
    pub fn encode_with_offsets(
        &self,
        text: &str,
    ) -> Result<(Vec<u32>, Vec<usize>), TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Invalid(e.to_string()))?;
        Ok((
            enc.get_ids().to_vec(),
            enc.get_offsets().iter().map(|(start, _)| *start).collect(),
        ))
    }

    /// The exact bytes of one token (empty for an unknown id).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// The token's text, with bytes of an incomplete character shown as U+FFFD.
    pub fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.token_bytes(id)).into_owned()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// Text of `ids` from the tokens' exact bytes (special tokens included as written).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The `tokenizer.json` text, for writing a trained model's directory.
    pub fn to_json(&self) -> Result<String, TokenizerError> {
        self.inner
            .to_string(false)
            .map_err(|e| TokenizerError::Invalid(e.to_string()))
    }

    /// Assembles a FIM prompt from already encoded prefix and suffix tokens.
    pub fn fim_prompt(&self, prefix: &[u32], suffix: &[u32], order: FimOrder) -> Vec<u32> {
        let f = &self.fim;
        let mut out = Vec::with_capacity(prefix.len() + suffix.len() + 4 + f.lead.len());
        out.extend_from_slice(&f.lead);
        match order {
            FimOrder::Psm => {
                out.push(f.prefix);
                out.extend_from_slice(prefix);
                out.push(f.suffix);
                out.extend_from_slice(suffix);
                out.push(f.middle);
            }
            // The SPM variant of Bavarian et al. (appendix D) as StarCoder and Qwen train it:
            // <prefix><suffix>S<middle>P, so the prefix runs straight into the middle.
            FimOrder::Spm => {
                out.push(f.prefix);
                out.push(f.suffix);
                out.extend_from_slice(suffix);
                out.push(f.middle);
                out.extend_from_slice(prefix);
            }
        }
        out
    }
}

fn detect_template(
    tok: &tokenizers::Tokenizer,
    vocab: &HashMap<String, u32>,
) -> Option<FimTemplate> {
    let find = |names: &[&str]| names.iter().find_map(|n| vocab.get(*n).copied());
    for (style, p, s, m, stops) in TEMPLATES {
        let (Some(prefix), Some(suffix), Some(middle)) = (find(p), find(s), find(m)) else {
            continue;
        };
        let mut stop_ids: Vec<u32> = stops
            .iter()
            .filter_map(|n| vocab.get(*n).copied())
            .collect();
        stop_ids.sort_unstable();
        stop_ids.dedup();
        // A post-processor that adds a BOS shows it on an empty input.
        let lead = tok
            .encode("", true)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default();
        return Some(FimTemplate {
            style,
            prefix,
            suffix,
            middle,
            stops: stop_ids,
            lead,
            eos: find(&[
                "<|endoftext|>",
                "</s>",
                "<｜end▁of▁sentence｜>",
                "▁<EOT>",
                "<EOT>",
            ]),
            file_sep: find(&["<|file_sep|>", "<file_sep>", "<|file_separator|>"]),
            repo_name: find(&["<|repo_name|>", "<repo_name>"]),
        });
    }
    None
}

fn piece_encoding(decoder: Option<&DecoderWrapper>) -> PieceEncoding {
    fn is_byte_level(d: &DecoderWrapper) -> bool {
        match d {
            DecoderWrapper::ByteLevel(_) => true,
            DecoderWrapper::Sequence(seq) => seq.get_decoders().iter().any(is_byte_level),
            _ => false,
        }
    }
    match decoder {
        Some(d) if is_byte_level(d) => PieceEncoding::ByteLevel,
        Some(_) => PieceEncoding::SentencePiece,
        None => PieceEncoding::ByteLevel,
    }
}

/// The bytes a vocabulary entry stands for.
fn piece_bytes(piece: &str, encoding: PieceEncoding) -> Vec<u8> {
    match encoding {
        PieceEncoding::ByteLevel => {
            let table = byte_level_inverse();
            piece
                .chars()
                .map(|c| table.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .unwrap_or_else(|| piece.as_bytes().to_vec())
        }
        PieceEncoding::SentencePiece => {
            if let Some(hex) = piece.strip_prefix("<0x").and_then(|r| r.strip_suffix('>'))
                && let Ok(b) = u8::from_str_radix(hex, 16)
            {
                return vec![b];
            }
            piece.replace('▁', " ").into_bytes()
        }
    }
}

/// Inverse of GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the other 68 bytes
/// are shifted to U+0100 and up in byte order.
fn byte_level_inverse() -> &'static HashMap<char, u8> {
    static TABLE: std::sync::OnceLock<HashMap<char, u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let printable =
            |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let mut shifted = 0u32;
        (0..=255u8)
            .map(|b| {
                let c = if printable(b) {
                    char::from(b)
                } else {
                    shifted += 1;
                    char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
                };
                (c, b)
            })
            .collect()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_maps_space_and_newline_like_gpt2() {
        let t = byte_level_inverse();
        assert_eq!(t.len(), 256);
        assert_eq!(t[&'Ġ'], b' ');
        assert_eq!(t[&'Ċ'], b'\n');
        assert_eq!(t[&'ĉ'], b'\t');
        assert_eq!(t[&'a'], b'a');
    }

    #[test]
    fn sentencepiece_pieces_decode_spaces_and_byte_fallback() {
        assert_eq!(piece_bytes("▁foo", PieceEncoding::SentencePiece), b" foo");
        assert_eq!(piece_bytes("<0x0A>", PieceEncoding::SentencePiece), b"\n");
        assert_eq!(
            piece_bytes("<0xE2>", PieceEncoding::SentencePiece),
            vec![0xE2]
        );
    }
}
