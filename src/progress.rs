//! Progress on standard error for long commands (indicatif), shown only on a terminal: a pipe or
//! a log file gets the results alone.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `total` steps labelled `label`, or a spinner while the total is unknown; hidden when
/// standard error is not a terminal.
pub fn bar(label: &str, total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(n) => ProgressBar::new(n).with_style(bar_style()),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{prefix}: {spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    let bar = bar.with_prefix(label.to_owned());
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        if total.is_none() {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// Turns a spinner from [`bar`] into a bar of `total` steps once the total is known.
pub fn set_total(bar: &ProgressBar, total: u64) {
    if bar.length().is_none() {
        bar.disable_steady_tick();
        bar.set_style(bar_style());
    }
    bar.set_length(total);
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix}: {bar:30} {pos}/{len} {msg} (ETA {eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}
