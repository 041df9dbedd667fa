//! The pieces of a dataset for a trainer elsewhere ([`super::dataset`], which the scale/ package
//! trains on): the same corpus, split, FIM examples and tokens as `infill train`, made by this
//! crate's own code so that the two trainers learn the same task.
//!
//! A *bundle* holds documents as records of a language and a text, each a little-endian u32 length
//! and its UTF-8 bytes. It is mostly source text, so it compresses well for the trip to a machine
//! that has neither the repositories nor their licence files. A *shard* of an epoch is every
//! `shards`th document from the `shard`th, packed by [`super::fim::pack`] with a generator seeded
//! from the seed, the epoch and the shard: shards pack side by side on a machine's cores, and
//! every epoch draws fresh holes.

use std::io::Write;

use super::fim::{self, FimSettings};
use crate::model::Tokenizer;
use crate::rng::Rng;

/// Why a bundle or a shard could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the bundle is truncated at byte {0}: write it again")]
    Truncated(usize),
    #[error("the bundle holds text that is not UTF-8 at byte {0}: write it again")]
    NotUtf8(usize),
    #[error("a field of {0} bytes is too long for a bundle")]
    TooLong(usize),
    #[error("shard {shard} of {shards}: the shard must be below the number of shards")]
    NoSuchShard { shard: usize, shards: usize },
    #[error(transparent)]
    Tokenizer(#[from] crate::model::tokenizer::TokenizerError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Writes `(language, text)` documents as a bundle.
pub fn write_bundle<'a>(
    out: &mut impl Write,
    docs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), ExportError> {
    for (language, text) in docs {
        for field in [language, text] {
            let len = u32::try_from(field.len()).map_err(|_| ExportError::TooLong(field.len()))?;
            out.write_all(&len.to_le_bytes())?;
            out.write_all(field.as_bytes())?;
        }
    }
    Ok(())
}

/// The `(language, text)` documents of a bundle, in order.
pub fn read_bundle(bytes: &[u8]) -> Result<Vec<(String, String)>, ExportError> {
    let mut at = 0;
    let mut docs = Vec::new();
    while at < bytes.len() {
        let language = field(bytes, &mut at)?;
        docs.push((language, field(bytes, &mut at)?));
    }
    Ok(docs)
}

/// The length-prefixed field of `bytes` at `at`, which moves past it.
fn field(bytes: &[u8], at: &mut usize) -> Result<String, ExportError> {
    let start = *at;
    let len = bytes
        .get(start..start + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .ok_or(ExportError::Truncated(start))?;
    let len = u32::from_le_bytes(len) as usize;
    let text = bytes
        .get(start + 4..start + 4 + len)
        .ok_or(ExportError::Truncated(start))?;
    *at = start + 4 + len;
    String::from_utf8(text.to_vec()).map_err(|_| ExportError::NotUtf8(start + 4))
}

/// Which part of which epoch a [`pack_shard`] call packs, and how.
#[derive(Debug, Clone, Copy)]
pub struct ShardSpec {
    pub epoch: u64,
    pub shard: usize,
    pub shards: usize,
    pub seed: u64,
    pub fim: FimSettings,
    /// The trainer's window: fragments are cut to fit it with their FIM markers.
    pub seq_len: usize,
}

/// The token stream of one shard of one epoch of `docs`.
pub fn pack_shard(
    tokenizer: &Tokenizer,
    docs: &[(String, String)],
    spec: ShardSpec,
) -> Result<Vec<u32>, ExportError> {
    if spec.shard >= spec.shards {
        return Err(ExportError::NoSuchShard {
            shard: spec.shard,
            shards: spec.shards,
        });
    }
    let mine = docs
        .iter()
        .skip(spec.shard)
        .step_by(spec.shards)
        .map(|(language, text)| (text.as_str(), Some(language.as_str())));
    let mut rng = Rng::new(
        spec.seed
            ^ spec.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (spec.shard as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    Ok(fim::pack(
        tokenizer,
        mine,
        spec.fim,
        spec.seq_len,
        &mut rng,
    )?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::train::fim::tests::tokenizer;

    fn docs() -> Vec<(String, String)> {
        (0..7)
            .map(|i| {
                let text = format!("fn f{i}() -> u32 {{\n    let x = {i};\n    x * 2\n}}\n");
                ("rust".to_string(), text)
            })
            .chain([(
                "python".to_string(),
                "def é():\n    return 'ü'\n".to_string(),
            )])
            .collect()
    }

    #[test]
    fn a_bundle_reads_back_the_documents_it_was_written_from() {
        let docs = docs();
        let mut bytes = Vec::new();
        write_bundle(
            &mut bytes,
            docs.iter().map(|(l, t)| (l.as_str(), t.as_str())),
        )
        .unwrap();
        assert_eq!(read_bundle(&bytes).unwrap(), docs);
        // A cut anywhere inside is reported, never read as fewer documents.
        for cut in [1, 5, bytes.len() - 1] {
            assert!(
                matches!(read_bundle(&bytes[..cut]), Err(ExportError::Truncated(_))),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn the_shards_of_an_epoch_pack_every_document_once_and_epochs_differ() {
        let tok = tokenizer();
        let docs = docs();
        let spec = |epoch, shard, shards| ShardSpec {
            epoch,
            shard,
            shards,
            seed: 7,
            fim: FimSettings {
                fim_rate: 1.0,
                spm_rate: 0.5,
            },
            seq_len: 256,
        };
        let sep = tok.fim().file_sep.unwrap();
        let mut texts: Vec<String> = Vec::new();
        for shard in 0..3 {
            let stream = pack_shard(&tok, &docs, spec(0, shard, 3)).unwrap();
            for example in stream.split(|&t| t == sep) {
                texts.push(fim::reassemble(&tok, example));
            }
        }
        let mut want: Vec<String> = docs.iter().map(|(_, t)| t.clone()).collect();
        texts.sort();
        want.sort();
        assert_eq!(texts, want);
        assert!(matches!(
            pack_shard(&tok, &docs, spec(0, 3, 3)),
            Err(ExportError::NoSuchShard { .. })
        ));
        // The same epoch and shard draw the same holes; another epoch draws others.
        let one = |epoch| pack_shard(&tok, &docs, spec(epoch, 0, 1)).unwrap();
        assert_eq!(one(1), one(1));
        assert_ne!(one(1), one(2));
    }
}
