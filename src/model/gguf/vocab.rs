//! The vocabulary of a GGUF file (`tokenizer.ggml.*`) and the `tokenizer.json` it stands for, in
//! both directions: a file's metadata is rebuilt as the tokenizer.json its model family publishes,
//! and a tokenizer.json is written as the metadata llama.cpp's converter would write for it.

use std::collections::HashMap;

use serde_json::{Value as Json, json};

// Token types of `tokenizer.ggml.token_type` (llama.cpp's llama_token_type); UNUSED (5) and
// BYTE (6) pieces are plain vocabulary entries when read.
pub(super) const TOKEN_NORMAL: i64 = 1;
pub(super) const TOKEN_UNKNOWN: i64 = 2;
pub(super) const TOKEN_CONTROL: i64 = 3;
pub(super) const TOKEN_USER_DEFINED: i64 = 4;
const TOKEN_UNUSED: i64 = 5;
const TOKEN_BYTE: i64 = 6;

pub(super) const SUPPORTED_PRE: &str = "gpt-2, qwen2, deepseek-coder, starcoder, default";

/// Qwen2's split regex, from its tokenizer.json.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split(regex: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// The normalizer and pre-tokenizer of the tokenizer.json of the family `tokenizer.ggml.pre` names.
pub(super) fn byte_level_pre_tokenizer(pre: &str) -> Option<(Json, Json)> {
    let seq = |items: Vec<Json>| json!({"type": "Sequence", "pretokenizers": items});
    Some(match pre {
        // GPT-2's regex inside ByteLevel (SantaCoder, StarCoderBase and many fine-tunes).
        "gpt-2" | "gpt2" => (Json::Null, byte_level(true)),
        // llama.cpp's default for byte-level vocabularies names no published tokenizer.json: its
        // regexes, applied in turn as llama.cpp applies them.
        "default" => (
            Json::Null,
            seq(vec![
                split(r"[\p{P}\$\+<=>\^~\|]+"),
                split(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"),
                split(r"\p{N}+"),
                split(r"[0-9][0-9][0-9]"),
                byte_level(false),
            ]),
        ),
        "qwen2" => (
            json!({"type": "NFC"}),
            seq(vec![split(QWEN2_SPLIT), byte_level(false)]),
        ),
        "deepseek-coder" => (
            Json::Null,
            seq(vec![
                split(r"[\r\n]"),
                split(r"\s?\p{L}+"),
                split(r"\s?\p{P}+"),
                split("[\u{4e00}-\u{9fa5}\u{0800}-\u{4e00}\u{ac00}-\u{d7ff}]+"),
                json!({"type": "Digits", "individual_digits": true}),
                byte_level(false),
            ]),
        ),
        "starcoder" => (
            Json::Null,
            seq(vec![
                json!({"type": "Digits", "individual_digits": true}),
                byte_level(true),
            ]),
        ),
        _ => return None,
    })
}

/// An added-token entry; control and unknown tokens are special, user-defined ones are not.
fn added_token(id: usize, content: &str, special: bool) -> Json {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": !special, "special": special})
}

fn bos_processor(bos: Option<u32>, tokens: &[&str]) -> Json {
    match bos.and_then(|b| tokens.get(b as usize).map(|t| (b, *t))) {
        Some((id, piece)) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": piece, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": piece, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {piece: {"id": piece, "ids": [id], "tokens": [piece]}},
        }),
        None => Json::Null,
    }
}

pub(super) fn byte_level_json(
    tokens: &[&str],
    types: &[i64],
    merges: &[&str],
    normalizer: Json,
    pre_tokenizer: Json,
    bos: Option<u32>,
) -> Json {
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, (&piece, &kind)) in tokens.iter().zip(types).enumerate() {
        vocab.insert(piece.to_string(), json!(id));
        match kind {
            TOKEN_CONTROL => added.push(added_token(id, piece, true)),
            TOKEN_USER_DEFINED => added.push(added_token(id, piece, false)),
            _ => {}
        }
    }
    let merges: Vec<Json> = merges
        .iter()
        .filter_map(|m| m.split_once(' '))
        .map(|(a, b)| json!([a, b]))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": bos_processor(bos, tokens),
        "decoder": byte_level(true),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    })
}

/// A SentencePiece BPE vocabulary as transformers' Llama converter writes it: merges derived
/// from the scores (a pair whose concatenation is a piece merges with that piece's score, higher
/// first), byte fallback to `<0xNN>` pieces, `▁` for spaces.
pub(super) fn sentencepiece_json(
    tokens: &[&str],
    types: &[i64],
    scores: &[f64],
    prefix_space: bool,
    bos: Option<u32>,
) -> Json {
    let mut vocab = serde_json::Map::new();
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut added = Vec::new();
    let mut unk = None;
    for (id, (&piece, &kind)) in tokens.iter().zip(types).enumerate() {
        vocab.insert(piece.to_string(), json!(id));
        ids.entry(piece).or_insert(id);
        match kind {
            TOKEN_CONTROL => added.push(added_token(id, piece, true)),
            TOKEN_UNKNOWN => {
                unk.get_or_insert(piece);
                added.push(added_token(id, piece, true));
            }
            TOKEN_USER_DEFINED => added.push(added_token(id, piece, false)),
            _ => {}
        }
    }
    let mergeable = |id: usize| matches!(types[id], TOKEN_NORMAL | TOKEN_USER_DEFINED);
    let mut merges: Vec<(f64, usize, usize, &str, &str)> = Vec::new();
    for (id, &piece) in tokens.iter().enumerate() {
        if !mergeable(id) {
            continue;
        }
        let mut local = Vec::new();
        for (at, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(at);
            if let (Some(&a), Some(&b)) = (ids.get(l), ids.get(r))
                && mergeable(a)
                && mergeable(b)
            {
                local.push((scores[id], a, b, l, r));
            }
        }
        local.sort_by_key(|&(_, a, b, _, _)| (a, b));
        merges.extend(local);
    }
    // Stable: equal scores keep the order of their pieces' ids.
    merges.sort_by(|x, y| y.0.total_cmp(&x.0));
    let merges: Vec<Json> = merges
        .iter()
        .map(|&(_, _, _, l, r)| json!([l, r]))
        .collect();
    let mut normalizers = Vec::new();
    if prefix_space {
        normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix_space {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": bos_processor(bos, tokens),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    })
}

/// A vocabulary as GGUF metadata: what llama.cpp's converter writes for a tokenizer.json.
#[derive(Debug)]
pub(super) struct Vocabulary {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: &'static str,
    /// `tokenizer.ggml.pre`, for byte-level vocabularies.
    pub pre: Option<&'static str>,
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    /// "a b" merges of a byte-level vocabulary, highest priority first.
    pub merges: Vec<String>,
    /// SentencePiece scores: a merged piece scores minus one minus the rank of its merge, so
    /// merging the highest score first reproduces the merge order.
    pub scores: Vec<f32>,
    pub add_space_prefix: bool,
    /// The id a post-processor puts before every text, if any.
    pub bos: Option<u32>,
}

/// Drops the keys that only shape offsets, so equal splitting compares equal.
fn canonical(v: &Json) -> Json {
    match v {
        Json::Object(map) => Json::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != "trim_offsets")
                .map(|(k, v)| (k.clone(), canonical(v)))
                .collect(),
        ),
        Json::Array(items) => Json::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The `tokenizer.ggml.pre` name whose tokenizer.json splits text as `normalizer` and
/// `pre_tokenizer` do.
fn pre_name(normalizer: &Json, pre_tokenizer: &Json) -> Option<&'static str> {
    let want = (canonical(normalizer), canonical(pre_tokenizer));
    ["gpt-2", "qwen2", "deepseek-coder", "starcoder", "default"]
        .into_iter()
        .find(|name| {
            byte_level_pre_tokenizer(name)
                .is_some_and(|(n, p)| (canonical(&n), canonical(&p)) == want)
        })
}

fn is_byte_level(decoder: &Json) -> bool {
    match decoder.get("type").and_then(Json::as_str) {
        Some("ByteLevel") => true,
        Some("Sequence") => decoder
            .get("decoders")
            .and_then(Json::as_array)
            .is_some_and(|d| d.iter().any(is_byte_level)),
        _ => false,
    }
}

/// The GGUF vocabulary of a tokenizer.json, padded to `vocab_size` tokens as the converter pads
/// (`[PADn]`, type UNUSED). An error says what cannot be represented.
pub(super) fn from_tokenizer_json(json: &Json, vocab_size: usize) -> Result<Vocabulary, String> {
    let model = &json["model"];
    if model.get("type").and_then(Json::as_str) != Some("BPE") {
        return Err("only BPE tokenizers can be written to GGUF".into());
    }
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or("tokenizer.json has no BPE vocabulary")?;
    let mut pieces: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut put = |id: u64, piece: &str, kind: i32| -> Result<(), String> {
        let slot = pieces.get_mut(id as usize).ok_or_else(|| {
            format!("token {id} ({piece:?}) is outside the model's {vocab_size} rows")
        })?;
        *slot = Some((piece.to_string(), kind));
        Ok(())
    };
    let unk = model.get("unk_token").and_then(Json::as_str);
    for (piece, id) in vocab {
        let id = id.as_u64().ok_or("a vocabulary id is not a number")?;
        let kind = if Some(piece.as_str()) == unk {
            TOKEN_UNKNOWN
        } else if piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>') {
            TOKEN_BYTE
        } else {
            TOKEN_NORMAL
        };
        put(id, piece, kind as i32)?;
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            continue;
        };
        let kind = if Some(content) == unk {
            TOKEN_UNKNOWN
        } else if added["special"].as_bool() == Some(true) {
            TOKEN_CONTROL
        } else {
            TOKEN_USER_DEFINED
        };
        put(id, content, kind as i32)?;
    }
    let (tokens, types): (Vec<String>, Vec<i32>) = pieces
        .into_iter()
        .enumerate()
        .map(|(id, p)| p.unwrap_or_else(|| (format!("[PAD{id}]"), TOKEN_UNUSED as i32)))
        .unzip();
    let merges: Vec<String> = model
        .get("merges")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(pair) => Some(format!(
                "{} {}",
                pair.first()?.as_str()?,
                pair.get(1)?.as_str()?
            )),
            _ => None,
        })
        .collect();
    let bos = json["post_processor"]["special_tokens"]
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(|t| t["ids"][0].as_u64())
        .filter(|_| {
            json["post_processor"]["single"][0]
                .get("SpecialToken")
                .is_some()
        })
        .map(|id| id as u32);
    if is_byte_level(&json["decoder"]) {
        let pre = pre_name(&json["normalizer"], &json["pre_tokenizer"]).ok_or(
            "its pre-tokenizer is none that llama.cpp names (gpt-2, qwen2, deepseek-coder, starcoder)",
        )?;
        return Ok(Vocabulary {
            model: "gpt2",
            pre: Some(pre),
            tokens,
            types,
            merges,
            scores: Vec::new(),
            add_space_prefix: false,
            bos,
        });
    }
    if model.get("byte_fallback").and_then(Json::as_bool) != Some(true) {
        return Err(
            "a tokenizer that is neither byte-level nor SentencePiece with byte fallback".into(),
        );
    }
    let mut rank: HashMap<String, usize> = HashMap::new();
    for (r, m) in merges.iter().enumerate() {
        rank.entry(m.replacen(' ', "", 1)).or_insert(r);
    }
    let scores = tokens
        .iter()
        .map(|t| rank.get(t).map_or(0.0, |&r| -1.0 - r as f32))
        .collect();
    Ok(Vocabulary {
        model: "llama",
        pre: None,
        tokens,
        types,
        merges: Vec::new(),
        scores,
        add_space_prefix: prepends_space(&json["normalizer"])
            || prepends_space(&json["pre_tokenizer"]),
        bos,
    })
}

/// Whether a normalizer or pre-tokenizer puts a `▁` before the text: a `Prepend` normalizer
/// (transformers' legacy Llama converter) or a `Metaspace` that prepends.
fn prepends_space(step: &Json) -> bool {
    match step.get("type").and_then(Json::as_str) {
        Some("Prepend") => true,
        Some("Metaspace") => {
            matches!(
                step.get("prepend_scheme").and_then(Json::as_str),
                Some("first" | "always")
            ) || step.get("add_prefix_space").and_then(Json::as_bool) == Some(true)
        }
        Some("Sequence") => ["normalizers", "pretokenizers"]
            .iter()
            .filter_map(|k| step.get(*k).and_then(Json::as_array))
            .flatten()
            .any(prepends_space),
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Every pre-tokenizer name gives a tokenizer.json the tokenizers crate reads and runs.
    #[test]
    fn every_named_pre_tokenizer_builds_a_working_tokenizer() {
        let tokens: Vec<String> = (0..=255u8)
            .map(|b| byte_level_alphabet(b).to_string())
            .chain(["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"].map(String::from))
            .collect();
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let mut types = vec![TOKEN_NORMAL; 256];
        types.extend([TOKEN_CONTROL; 3]);
        for pre in SUPPORTED_PRE.split(", ") {
            let (normalizer, pre_tokenizer) = byte_level_pre_tokenizer(pre).unwrap();
            let json = byte_level_json(&refs, &types, &[], normalizer, pre_tokenizer, None);
            let tok = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{pre}: {e}"));
            let text = "fn main() { let x = 12345; } // café 😀";
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(ids.get_ids().len(), text.len(), "{pre}: one token per byte");
            assert_eq!(
                pre_name(
                    &byte_level_pre_tokenizer(pre).unwrap().0,
                    &byte_level_pre_tokenizer(pre).unwrap().1
                ),
                Some(pre),
                "{pre}"
            );
        }
        assert!(byte_level_pre_tokenizer("mystery").is_none());
    }

    /// GPT-2's printable stand-in for a byte.
    fn byte_level_alphabet(b: u8) -> char {
        let printable =
            (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        if printable {
            char::from(b)
        } else {
            let shift = (0..b)
                .filter(|&x| {
                    !((b'!'..=b'~').contains(&x)
                        || (0xA1..=0xAC).contains(&x)
                        || (0xAE..=0xFF).contains(&x))
                })
                .count();
            char::from_u32(256 + shift as u32).unwrap_or('?')
        }
    }
}
