//! Training a byte-level BPE tokenizer with the FIM special tokens (Qwen2.5-Coder's names), through
//! the tokenizers crate, so a model trained from scratch loads anywhere a Qwen tokenizer does.

use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// Special tokens, in id order from 0 (Qwen2.5-Coder's names and roles).
pub const SPECIAL_TOKENS: &[&str] = &[
    "<|endoftext|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
];

/// Trains a tokenizer of `vocab_size` entries on `texts`; returns its `tokenizer.json` text.
pub fn train<I, S>(texts: I, vocab_size: usize) -> anyhow::Result<String>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    let minimum = 256 + SPECIAL_TOKENS.len() + 1;
    if vocab_size < minimum {
        anyhow::bail!(
            "--vocab-size must be at least {minimum} (256 bytes, the special tokens, and one merge)"
        );
    }
    let specials = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| anyhow::anyhow!("training the tokenizer failed: {e}"))?;
    tokenizer
        .to_string(true)
        .map_err(|e| anyhow::anyhow!("writing the tokenizer failed: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn trained_tokenizer_round_trips_code_and_has_the_fim_template() {
        let texts = [
            "fn main() {\n    println!(\"héllo\");\n}\n",
            "def f(x):\n    return x + 1\n",
        ]
        .repeat(20);
        let json = train(texts.iter(), 300).unwrap();
        let tok = crate::model::Tokenizer::from_bytes(json.as_bytes(), 300).unwrap();
        assert_eq!(tok.fim().style, "qwen");
        assert_eq!(tok.fim().eos, Some(0));
        assert!(tok.fim().file_sep.is_some());
        let text = "fn main() { let s = \"€ ok\"; }\n\tx";
        assert_eq!(tok.decode(&tok.encode(text).unwrap()), text);
        assert!(train(texts.iter(), 100).is_err());
    }
}
