//! The learning-rate schedule: linear warmup, then cosine decay to a floor (as in nanoGPT).

/// Learning rate at `step` (0-based) of `total` steps.
pub fn learning_rate(step: usize, total: usize, warmup: usize, max_lr: f64, min_lr: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return max_lr * (step + 1) as f64 / warmup as f64;
    }
    if step >= total {
        return min_lr;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = (step - warmup) as f64 / span;
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    min_lr + cosine * (max_lr - min_lr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let lr = |s| learning_rate(s, 100, 10, 1e-3, 1e-4);
        assert!((lr(0) - 1e-4).abs() < 1e-12);
        assert!((lr(9) - 1e-3).abs() < 1e-12);
        assert!((lr(10) - 1e-3).abs() < 1e-12);
        assert!(
            (lr(55) - 5.5e-4).abs() < 1e-12,
            "halfway down the cosine: {}",
            lr(55)
        );
        assert!((lr(100) - 1e-4).abs() < 1e-12);
        assert!((lr(500) - 1e-4).abs() < 1e-12);
        assert!((1..100).all(|s| lr(s) <= lr(s - 1) || s <= 10));
        assert_eq!(learning_rate(0, 10, 0, 1.0, 0.0), 1.0);
    }
}
