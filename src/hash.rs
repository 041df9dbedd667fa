//! FNV-1a, the hash infill uses wherever a stable, seedless hash is needed: the held-out split
//! (a file's path decides, the same in training and evaluation), duplicate detection, the
//! overlay's chunk boundaries and recovery-file names.

/// FNV-1a, 64 bits: a stable hash (the same on every platform and version) for paths and contents.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
