//! What every benchmark prints beside its figures: the processor they were measured on, and
//! percentiles.

/// The processor's model name, its vector extensions that matter here, and the threads used.
pub fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let flags = field("flags");
    let vector: Vec<&str> = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]
        .into_iter()
        .filter(|f| flags.split(' ').any(|x| x == *f))
        .collect();
    format!(
        "{} ({}), {} threads",
        field("model name"),
        vector.join(", "),
        rayon::current_num_threads()
    )
}

/// The `p` quantile of `v` (sorted in place), nearest rank; NaN for no values.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}
