//! `infill train`'s dashboard: the run drawn on stderr's terminal as it goes. Training loss and
//! held-out bits per byte (overall and by language) against tokens seen, both on log-scaled axes;
//! progress, tokens/s, learning rate, time left, the next checkpoint and the best held-out figure.
//!
//! The dashboard is built from `train.log`'s lines alone ([`crate::train::log`]), so the same view
//! draws a run in this process ([`Live`], fed line by line) and one going on elsewhere
//! ([`watch`], which follows the run folder's `train.log`).

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::Frame;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line as TextLine, Span};
use ratatui::widgets::{Axis, Block, Chart, Dataset, GraphType, LineGauge, Paragraph};

use super::{Screen, TerminalGuard};
use crate::train::log::Line;
use crate::train::trainer::HeldOut;

/// Whether the dashboard shows this process's run (whose keys stop it) or watches another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Live,
    Watch,
}

/// Where the run stands, as far as its lines tell.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// No line yet.
    Waiting,
    Running,
    /// Asked to stop: the checkpoint and final evaluation are under way.
    Stopping,
    Ended {
        interrupted: bool,
    },
}

/// Steps whose pace estimates the time left.
const PACE_WINDOW: usize = 20;

/// Weight of each new loss in the smoothed curve.
const SMOOTHING: f64 = 0.2;

/// Colours of the held-out curves: overall first, then one per language.
const PALETTE: [Color; 7] = [
    Color::White,
    Color::Cyan,
    Color::Yellow,
    Color::Magenta,
    Color::Green,
    Color::Blue,
    Color::Red,
];

/// What the dashboard draws: the state built from a run's lines.
#[derive(Debug, Clone)]
pub struct Dashboard {
    title: String,
    mode: Mode,
    phase: Phase,
    origin: String,
    step: usize,
    steps: usize,
    tokens_seen: u64,
    tokens_per_s: f64,
    lr: f64,
    loss: f64,
    elapsed_s: f64,
    eval_every: usize,
    checkpoint_every: usize,
    checkpoint_interval_s: f64,
    /// The run's seconds at its last checkpoint (or at the session's start).
    last_checkpoint_s: f64,
    /// (step, elapsed seconds) of this session's latest steps.
    pace: VecDeque<(usize, f64)>,
    /// (tokens seen, loss) of every step, and the same smoothed.
    losses: Vec<(f64, f64)>,
    smoothed: Vec<(f64, f64)>,
    /// (tokens seen, held-out figure) at each evaluation.
    held: Vec<(f64, HeldOut)>,
    /// (step, bits per byte) of the best held-out figure so far.
    best: Option<(usize, f64)>,
}

impl Dashboard {
    pub fn new(title: impl Into<String>, mode: Mode) -> Self {
        Self {
            title: title.into(),
            mode,
            phase: Phase::Waiting,
            origin: String::new(),
            step: 0,
            steps: 0,
            tokens_seen: 0,
            tokens_per_s: 0.0,
            lr: 0.0,
            loss: f64::NAN,
            elapsed_s: 0.0,
            eval_every: 0,
            checkpoint_every: 0,
            checkpoint_interval_s: 0.0,
            last_checkpoint_s: 0.0,
            pace: VecDeque::new(),
            losses: Vec::new(),
            smoothed: Vec::new(),
            held: Vec::new(),
            best: None,
        }
    }

    /// Takes in one line of the run.
    pub fn apply(&mut self, line: &Line) {
        match line {
            Line::Start(s) => {
                self.phase = Phase::Running;
                self.origin.clone_from(&s.origin);
                (self.step, self.steps, self.tokens_seen) = (s.step, s.steps, s.tokens_seen);
                self.elapsed_s = s.elapsed_s;
                self.eval_every = s.eval_every;
                self.checkpoint_every = s.checkpoint_every;
                self.checkpoint_interval_s = s.checkpoint_interval_s;
                self.last_checkpoint_s = s.elapsed_s;
                self.pace.clear();
                self.pace.push_back((s.step, s.elapsed_s));
                self.held_out(s.step, s.tokens_seen, &s.held_out);
            }
            Line::Step(s) => {
                let e = &s.entry;
                if self.phase == Phase::Waiting {
                    self.phase = Phase::Running;
                }
                (self.step, self.tokens_seen) = (e.step, e.tokens_seen);
                (self.loss, self.lr, self.tokens_per_s) = (e.loss, e.lr, e.tokens_per_s);
                if s.steps > 0 {
                    self.steps = s.steps;
                }
                self.elapsed_s = s.elapsed_s;
                if s.checkpoint {
                    self.last_checkpoint_s = s.elapsed_s;
                }
                self.pace.push_back((e.step, s.elapsed_s));
                if self.pace.len() > PACE_WINDOW {
                    self.pace.pop_front();
                }
                let x = e.tokens_seen as f64;
                if e.loss.is_finite() && e.loss > 0.0 {
                    let last = self.smoothed.last().map_or(e.loss, |p| p.1);
                    self.losses.push((x, e.loss));
                    self.smoothed.push((x, last + SMOOTHING * (e.loss - last)));
                }
                if let Some(h) = &e.held_out {
                    self.held_out(e.step, e.tokens_seen, h);
                }
            }
            Line::End(e) => {
                self.phase = Phase::Ended {
                    interrupted: e.interrupted,
                };
                (self.step, self.steps, self.tokens_seen) = (e.step, e.steps, e.tokens_seen);
                self.elapsed_s = e.elapsed_s;
                self.held_out(e.step, e.tokens_seen, &e.held_out);
            }
        }
    }

    fn held_out(&mut self, step: usize, tokens: u64, h: &HeldOut) {
        if !h.bits_per_byte.is_finite() {
            return;
        }
        let x = tokens as f64;
        // A checkpoint's evaluation and the end's measure the same weights: keep one point.
        if self.held.last().is_some_and(|(t, _)| *t == x) {
            self.held.pop();
        }
        self.held.push((x, h.clone()));
        if self.best.is_none_or(|(_, b)| h.bits_per_byte < b) {
            self.best = Some((step, h.bits_per_byte));
        }
    }

    /// The person asked this run to stop; it checkpoints and evaluates first.
    pub fn stopping(&mut self) {
        if self.phase == Phase::Running {
            self.phase = Phase::Stopping;
        }
    }

    pub fn ended(&self) -> bool {
        matches!(self.phase, Phase::Ended { .. })
    }

    /// Seconds per step over the latest steps.
    fn seconds_per_step(&self) -> Option<f64> {
        let (&(s0, t0), &(s1, t1)) = (self.pace.front()?, self.pace.back()?);
        (s1 > s0 && t1 > t0).then(|| (t1 - t0) / (s1 - s0) as f64)
    }

    /// Seconds left until the planned last step, `since` seconds after the latest line.
    fn seconds_left(&self, since: f64) -> Option<f64> {
        let left = self.seconds_per_step()? * self.steps.saturating_sub(self.step) as f64;
        Some((left - since).max(0.0))
    }

    /// Draws the whole dashboard; `since` is the seconds since the latest line arrived.
    pub fn draw(&self, frame: &mut Frame, since: f64) {
        let area = frame.area();
        let figures = pack(self.figures(since), area.width.saturating_sub(2));
        let head_height = u16::try_from(figures.len())
            .unwrap_or(u16::MAX)
            .saturating_add(3);
        let [head, charts, foot] = Layout::vertical([
            Constraint::Length(head_height),
            Constraint::Min(0),
            Constraint::Length(1),
        ])
        .areas(area);
        self.draw_head(frame, head, figures);
        if charts.height >= 6 && charts.width >= 20 {
            let side_by_side = charts.width >= 2 * charts.height.max(20) + 20;
            let [a, b] = match side_by_side {
                true => Layout::horizontal([Constraint::Fill(1); 2]).areas(charts),
                false => Layout::vertical([Constraint::Fill(1); 2]).areas(charts),
            };
            let (loss, held) = (self.loss_curves(), self.held_out_curves());
            let domain = tokens_domain(loss.iter().chain(&held));
            LogChart::new("training loss (nats)", loss, domain).render(frame, a);
            LogChart::new("held-out bits/byte", held, domain).render(frame, b);
        }
        frame.render_widget(
            Paragraph::new(self.footer(since)).style(Style::default().add_modifier(Modifier::DIM)),
            foot,
        );
    }

    fn draw_head(&self, frame: &mut Frame, area: Rect, figures: Vec<TextLine<'static>>) {
        let block = Block::bordered().title(format!(" infill train · {} ", self.title));
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let [gauge, text] =
            Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(inner);
        let ratio = match self.steps {
            0 => 0.0,
            n => (self.step as f64 / n as f64).clamp(0.0, 1.0),
        };
        frame.render_widget(
            LineGauge::default()
                .ratio(ratio)
                .label(format!("step {} of {}", self.step, self.steps))
                .filled_style(Style::default().fg(Color::Cyan)),
            gauge,
        );
        frame.render_widget(Paragraph::new(figures), text);
    }

    /// The figures under the progress bar, in groups that each start a row: the step's, the
    /// clock's, the held-out set's, how the run began.
    fn figures(&self, since: f64) -> Vec<Vec<Segment>> {
        let plain = |text: String| vec![Span::raw(text)];
        let mut groups = vec![vec![
            plain(format!(
                "loss {:.3} (smoothed {:.3})",
                self.loss,
                self.smoothed.last().map_or(f64::NAN, |p| p.1)
            )),
            plain(format!("lr {:.2e}", self.lr)),
            plain(format!("{:.0} tok/s", self.tokens_per_s)),
            plain(format!("{} tokens seen", tokens(self.tokens_seen as f64))),
        ]];
        let running = self.phase == Phase::Running;
        let now = self.elapsed_s + if running { since } else { 0.0 };
        let mut clock_group = vec![plain(format!("elapsed {}", clock(now)))];
        if running {
            clock_group.push(plain(match self.seconds_left(since) {
                Some(s) => format!("about {} left", clock(s)),
                None => "time left: timing the first steps".into(),
            }));
            if let Some(next) = self.next_checkpoint(since) {
                clock_group.push(plain(next));
            }
        }
        groups.push(clock_group);
        groups.push(match (self.held.first(), self.held.last(), self.best) {
            (Some((_, first)), Some((_, last)), Some((step, best))) => {
                let mut held = vec![plain(format!(
                    "held-out bits/byte {:.3} (start {:.3}, best {best:.3} at step {step})",
                    last.bits_per_byte, first.bits_per_byte
                ))];
                for (i, l) in last.by_language.iter().enumerate() {
                    held.push(vec![Span::styled(
                        format!("{} {:.3}", l.language, l.bits_per_byte),
                        Style::default().fg(colour(i + 1)),
                    )]);
                }
                held
            }
            _ => vec![plain("held-out bits/byte: not measured yet".into())],
        });
        if !self.origin.is_empty() {
            groups.push(vec![vec![Span::styled(
                self.origin.clone(),
                Style::default().add_modifier(Modifier::DIM),
            )]]);
        }
        groups
    }

    fn next_checkpoint(&self, since: f64) -> Option<String> {
        let every = self.checkpoint_every;
        if every == 0 {
            return None;
        }
        let next_step = ((self.step / every + 1) * every).min(self.steps.max(self.step + 1));
        let in_s = self.last_checkpoint_s + self.checkpoint_interval_s - self.elapsed_s - since;
        Some(format!(
            "next checkpoint at step {next_step} or in {}",
            clock(in_s.max(0.0))
        ))
    }

    fn footer(&self, since: f64) -> String {
        match (self.phase, self.mode) {
            (Phase::Waiting, _) => "waiting for the run's first line (q: quit)".into(),
            (Phase::Running, Mode::Live) => {
                "q or Ctrl-C: checkpoint and stop (continue later with --resume)".into()
            }
            (Phase::Running, Mode::Watch) => format!(
                "watching: last line {} ago   q: stop watching (the run goes on)",
                clock(since)
            ),
            (Phase::Stopping, _) => {
                "stopping: writing a checkpoint and measuring the held-out files".into()
            }
            (Phase::Ended { interrupted }, _) => format!(
                "{} at step {} of {}   q: quit",
                if interrupted { "stopped" } else { "finished" },
                self.step,
                self.steps
            ),
        }
    }

    /// The training loss, each step's and smoothed, against tokens seen.
    pub fn loss_curves(&self) -> Vec<Curve> {
        vec![
            Curve {
                name: None,
                points: self.losses.clone(),
                colour: Color::DarkGray,
                line: false,
            },
            Curve {
                name: Some("smoothed".into()),
                points: self.smoothed.clone(),
                colour: Color::Cyan,
                line: true,
            },
        ]
    }

    /// The held-out bits per byte, overall and by language, against tokens seen.
    pub fn held_out_curves(&self) -> Vec<Curve> {
        self.held_out_series()
            .into_iter()
            .enumerate()
            .map(|(i, (name, points))| Curve {
                name: Some(name),
                points,
                colour: colour(i),
                line: true,
            })
            .collect()
    }

    /// The held-out curves: overall, then each language, as (tokens seen, bits per byte).
    pub fn held_out_series(&self) -> Vec<(String, Vec<(f64, f64)>)> {
        let mut series = vec![(
            "all".to_string(),
            self.held
                .iter()
                .map(|(x, h)| (*x, h.bits_per_byte))
                .collect::<Vec<_>>(),
        )];
        for (x, h) in &self.held {
            for l in &h.by_language {
                let point = (*x, l.bits_per_byte);
                match series.iter_mut().find(|(name, _)| *name == l.language) {
                    Some((_, points)) => points.push(point),
                    None => series.push((l.language.clone(), vec![point])),
                }
            }
        }
        series
    }
}

/// One figure of the dashboard's head: spans kept on one row.
type Segment = Vec<Span<'static>>;

/// Space between figures on a row.
const GAP: &str = "   ";

/// Lays out groups of figures in rows of `width` columns: each group starts a row, and a figure
/// that does not fit after the others on its row starts the next.
fn pack(groups: Vec<Vec<Segment>>, width: u16) -> Vec<TextLine<'static>> {
    let width = usize::from(width);
    let mut rows = Vec::new();
    for group in groups {
        let mut row: Vec<Span<'static>> = Vec::new();
        let mut used = 0;
        for segment in group {
            let w: usize = segment.iter().map(Span::width).sum();
            if !row.is_empty() && used + GAP.len() + w > width {
                rows.push(TextLine::from(std::mem::take(&mut row)));
                used = 0;
            }
            if !row.is_empty() {
                row.push(Span::raw(GAP));
                used += GAP.len();
            }
            row.extend(segment);
            used += w;
        }
        if !row.is_empty() {
            rows.push(TextLine::from(row));
        }
    }
    rows
}

/// The tokens-seen range both charts share, in data units: from the least positive count to the
/// greatest.
fn tokens_domain<'a>(curves: impl Iterator<Item = &'a Curve>) -> [f64; 2] {
    let (lo, hi) = curves
        .flat_map(|c| c.points.iter())
        .map(|p| p.0)
        .filter(|x| *x > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
    match lo.is_finite() {
        true => [lo, hi],
        false => [1.0, 1.0],
    }
}

/// One curve of a chart: points in data units (tokens seen, a loss).
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub name: Option<String>,
    pub points: Vec<(f64, f64)>,
    pub colour: Color,
    /// Joined by a line; otherwise each point is a dot.
    pub line: bool,
}

/// A chart with both axes log-scaled: the curves' points as log10 of their values, the bounds
/// around them, and tick labels in data units at evenly spaced positions.
#[derive(Debug, Clone)]
pub struct LogChart {
    title: &'static str,
    curves: Vec<Curve>,
    pub x_bounds: [f64; 2],
    pub y_bounds: [f64; 2],
}

/// Tick labels on each axis.
const TICKS: usize = 3;

impl LogChart {
    /// `domain` is the range of tokens seen to show; points at zero tokens (the held-out figure
    /// before the first step) are drawn at its left edge, since a log axis has no zero.
    pub fn new(title: &'static str, curves: Vec<Curve>, domain: [f64; 2]) -> Self {
        let curves: Vec<Curve> = curves
            .into_iter()
            .map(|c| Curve {
                points: c
                    .points
                    .iter()
                    .filter(|p| p.1 > 0.0 && p.1.is_finite())
                    .map(|&(x, y)| (x.max(domain[0]).log10(), y.log10()))
                    .collect(),
                ..c
            })
            .collect();
        let span =
            |lo: f64, hi: f64, pad: f64| match (lo.is_finite() && hi.is_finite(), hi - lo > 1e-9) {
                (false, _) => [0.0, 1.0],
                (true, false) => [lo - pad, hi + pad],
                (true, true) => [lo - (hi - lo) * 0.05, hi + (hi - lo) * 0.05],
            };
        let x_bounds = span(domain[0].log10(), domain[1].log10(), 0.5);
        let ys = || curves.iter().flat_map(|c| c.points.iter()).map(|p| p.1);
        let y_bounds = span(
            ys().fold(f64::INFINITY, f64::min),
            ys().fold(f64::NEG_INFINITY, f64::max),
            0.05,
        );
        Self {
            title,
            curves,
            x_bounds,
            y_bounds,
        }
    }

    /// The curves as plotted: log10 of each value.
    pub fn plotted(&self) -> &[Curve] {
        &self.curves
    }

    /// Tick labels in data units, evenly spaced in log space from the lower bound to the upper.
    pub fn labels(bounds: [f64; 2], format: fn(f64) -> String) -> Vec<String> {
        (0..TICKS)
            .map(|i| {
                let at = bounds[0] + (bounds[1] - bounds[0]) * i as f64 / (TICKS - 1) as f64;
                format(10f64.powf(at))
            })
            .collect()
    }

    fn render(&self, frame: &mut Frame, area: Rect) {
        let datasets: Vec<Dataset> = self
            .curves
            .iter()
            .map(|c| {
                let d = Dataset::default()
                    .style(Style::default().fg(c.colour))
                    .data(&c.points);
                let d = match c.line {
                    true => d.marker(Marker::Braille).graph_type(GraphType::Line),
                    false => d.marker(Marker::Dot).graph_type(GraphType::Scatter),
                };
                match &c.name {
                    Some(name) => d.name(name.clone()),
                    None => d,
                }
            })
            .collect();
        let axis_style = Style::default().fg(Color::Gray);
        let chart = Chart::new(datasets)
            .block(Block::bordered().title(format!(" {} ", self.title)))
            .x_axis(
                Axis::default()
                    .title("tokens seen (log)")
                    .style(axis_style)
                    .bounds(self.x_bounds)
                    .labels(Self::labels(self.x_bounds, tokens)),
            )
            .y_axis(
                Axis::default()
                    .style(axis_style)
                    .bounds(self.y_bounds)
                    .labels(Self::labels(self.y_bounds, |v| format!("{v:.2}"))),
            )
            .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(2, 3)));
        frame.render_widget(chart, area);
    }
}

fn colour(i: usize) -> Color {
    PALETTE[i % PALETTE.len()]
}

/// A count of tokens, short: 950, 12k, 3.4M.
fn tokens(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.1}G", n / 1e9),
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e4 => format!("{:.0}k", n / 1e3),
        n if n >= 1e3 => format!("{:.1}k", n / 1e3),
        n => format!("{n:.0}"),
    }
}

/// Seconds as m:ss or h:mm:ss.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..3600 => format!("{}:{:02}", s / 60, s % 60),
        _ => format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60),
    }
}

/// Whether a key asks to stop: q, Esc or Ctrl-C (raw mode delivers Ctrl-C as a key).
fn is_quit(key: &event::KeyEvent) -> bool {
    key.kind == KeyEventKind::Press
        && match key.code {
            KeyCode::Char('q') | KeyCode::Esc => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// How often the dashboard looks for keys, and redraws the clocks.
const TICK: Duration = Duration::from_millis(250);

type Term = ratatui::Terminal<CrosstermBackend<Box<dyn std::io::Write + Send>>>;

/// The terminal on stderr, full screen; restored when the guard drops.
fn terminal() -> anyhow::Result<(TerminalGuard, Term)> {
    let guard = TerminalGuard::enter(Screen::Stderr)?;
    let terminal = ratatui::Terminal::new(CrosstermBackend::new(Screen::Stderr.writer()))?;
    Ok((guard, terminal))
}

/// The dashboard of the run in this process, drawn by a thread of its own while the run trains.
/// q or Ctrl-C sets `stop`, which the training loop checks after each step.
pub struct Live {
    lines: Option<Sender<Line>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    /// Said by the thread once it gave the terminal back.
    done: Receiver<()>,
}

/// How long closing the dashboard waits for its thread. A thread waiting in crossterm's
/// `event::read` (which has no timeout, and was once seen to wait there after `poll` said an
/// event was ready) is left behind rather than keeping the run from ending.
const FINISH_WAIT: Duration = Duration::from_secs(2);

impl Live {
    /// Takes over stderr's terminal; an error (no terminal, say) leaves it as it was.
    pub fn start(title: &str, stop: &'static AtomicBool) -> anyhow::Result<Live> {
        let (guard, mut terminal) = terminal()?;
        let (tx, rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let mut dashboard = Dashboard::new(title, Mode::Live);
        let thread = std::thread::Builder::new()
            .name("dashboard".into())
            .spawn(move || {
                let result = live_loop(&mut terminal, &mut dashboard, &rx, stop);
                drop(guard);
                let _ = done_tx.send(());
                result
            })?;
        Ok(Live {
            lines: Some(tx),
            thread: Some(thread),
            done,
        })
    }

    pub fn send(&self, line: &Line) {
        if let Some(tx) = &self.lines {
            let _ = tx.send(line.clone());
        }
    }

    /// Closes the dashboard and gives the terminal back.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        self.lines = None;
        if self.thread.is_some() && self.done.recv_timeout(FINISH_WAIT).is_err() {
            // The thread is stuck reading a key: give the terminal back from here and leave it.
            tracing::warn!(
                "the dashboard did not close in time; the terminal is restored without it"
            );
            TerminalGuard::restore(Screen::Stderr);
            self.thread = None;
            return Ok(());
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => anyhow::bail!("the training dashboard failed; train.log has the run"),
            None => Ok(()),
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn live_loop(
    terminal: &mut Term,
    dashboard: &mut Dashboard,
    lines: &Receiver<Line>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut latest = Instant::now();
    loop {
        loop {
            match lines.try_recv() {
                Ok(line) => {
                    dashboard.apply(&line);
                    latest = Instant::now();
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(()),
            }
        }
        if stop.load(Ordering::Relaxed) {
            dashboard.stopping();
        }
        terminal.draw(|f| dashboard.draw(f, latest.elapsed().as_secs_f64()))?;
        if event::poll(TICK)?
            && let Event::Key(key) = event::read()?
            && is_quit(&key)
        {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Follows a growing `train.log`: the complete lines added since the last read.
struct Follow {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl Follow {
    fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("train.log"),
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// New lines, parsed and as written, and whether the log was rewritten from the start (a
    /// `--resume` truncates it, an `--overwrite` replaces it), in which case they are all its
    /// lines.
    fn read(&mut self) -> std::io::Result<(bool, Vec<(Line, String)>)> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((false, Vec::new())),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let restarted = len < self.offset;
        if restarted {
            self.offset = 0;
            self.partial.clear();
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let read = file.read_to_end(&mut self.partial)?;
        self.offset += read as u64;
        // A line still being written stays for the next read.
        let complete = self
            .partial
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let done: Vec<u8> = self.partial.drain(..complete).collect();
        let lines = String::from_utf8_lossy(&done)
            .lines()
            .filter_map(|text| Some((Line::parse(text)?, text.to_string())))
            .collect();
        Ok((restarted, lines))
    }

    /// Seconds since the log last changed.
    fn age(&self) -> f64 {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

/// `infill train --watch RUN_DIR`: draws the run whose `--out` is `dir`, going on in another
/// process (or on another machine that writes the same folder), until q. With `plain`, prints its
/// lines to stdout as they come instead, and returns once the run's session ends.
pub fn watch(dir: &Path, plain: bool) -> anyhow::Result<()> {
    if !dir.is_dir() {
        anyhow::bail!(
            "{}: no such run folder; pass the --out of an `infill train` run",
            dir.display()
        );
    }
    let mut follow = Follow::new(dir);
    if plain {
        loop {
            let (_, lines) = follow.read()?;
            for (_, text) in &lines {
                crate::outln!("{text}")?;
            }
            if lines.last().is_some_and(|l| matches!(l.0, Line::End(_))) {
                return Ok(());
            }
            std::thread::sleep(TICK);
        }
    }
    let (_guard, mut terminal) = terminal()?;
    let title = dir.display().to_string();
    let mut dashboard = Dashboard::new(title.clone(), Mode::Watch);
    loop {
        let (restarted, lines) = follow.read()?;
        if restarted {
            dashboard = Dashboard::new(title.clone(), Mode::Watch);
        }
        for (line, _) in &lines {
            dashboard.apply(line);
        }
        terminal.draw(|f| dashboard.draw(f, follow.age()))?;
        if event::poll(TICK)?
            && let Event::Key(key) = event::read()?
            && is_quit(&key)
        {
            return Ok(());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::train::log::{End, Start, Step};
    use crate::train::trainer::{LanguageHeldOut, LogEntry};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn held(step: usize) -> HeldOut {
        let bpb = 3.0 / (1.0 + step as f64 / 10.0);
        HeldOut {
            loss: bpb * 2.0,
            bits_per_byte: bpb,
            tokens: 500,
            by_language: vec![
                LanguageHeldOut {
                    language: "rust".into(),
                    bits_per_byte: bpb * 0.9,
                    tokens: 300,
                },
                LanguageHeldOut {
                    language: "python".into(),
                    bits_per_byte: bpb * 1.2,
                    tokens: 200,
                },
            ],
        }
    }

    /// A scripted run: 100 steps planned, 40 done at half a second each, an evaluation every 10
    /// steps and a checkpoint at step 20.
    fn script() -> Vec<Line> {
        let mut lines = vec![Line::Start(Start {
            step: 0,
            steps: 100,
            tokens_seen: 0,
            elapsed_s: 0.0,
            origin: "from scratch (Tiny)".into(),
            eval_every: 10,
            checkpoint_every: 30,
            checkpoint_interval_s: 120.0,
            held_out: held(0),
        })];
        for step in 1..=40 {
            lines.push(Line::Step(Step {
                entry: LogEntry {
                    step,
                    loss: 4.0 * (step as f64).powf(-0.3),
                    lr: 1e-3,
                    grad_norm: 1.0,
                    tokens_seen: 1024 * step as u64,
                    tokens_per_s: 2048.0,
                    held_out: step.is_multiple_of(10).then(|| held(step)),
                },
                steps: 100,
                elapsed_s: step as f64 * 0.5,
                checkpoint: step == 20,
            }));
        }
        lines
    }

    fn dashboard(mode: Mode) -> Dashboard {
        let mut d = Dashboard::new("runs/demo", mode);
        for line in script() {
            d.apply(&line);
        }
        d
    }

    fn screen(d: &Dashboard, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| d.draw(f, 0.0)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..height)
            .map(|y| (0..width).map(|x| buffer[(x, y)].symbol()).collect())
            .collect()
    }

    fn row_of(rows: &[String], text: &str) -> usize {
        rows.iter()
            .position(|r| r.contains(text))
            .unwrap_or_else(|| panic!("no {text:?} in\n{}", rows.join("\n")))
    }

    fn plotted_cells(rows: &[String]) -> usize {
        rows.iter()
            .flat_map(|r| r.chars())
            .filter(|c| ('\u{2801}'..='\u{28ff}').contains(c) || *c == '•')
            .count()
    }

    #[test]
    fn a_wide_terminal_shows_the_figures_and_both_charts_side_by_side() {
        let rows = screen(&dashboard(Mode::Live), 120, 36);
        row_of(&rows, "infill train · runs/demo");
        row_of(&rows, "step 40 of 100");
        row_of(&rows, "2048 tok/s");
        row_of(&rows, "41k tokens seen");
        // 60 steps left at 0.5 s each; the checkpoint was at step 20, 10 s in, every 120 s.
        row_of(&rows, "about 0:30 left");
        row_of(&rows, "next checkpoint at step 60 or in 1:50");
        let bpb = held(40).bits_per_byte;
        row_of(
            &rows,
            &format!("held-out bits/byte {bpb:.3} (start 3.000, best {bpb:.3} at step 40)"),
        );
        row_of(&rows, "rust 0.540");
        row_of(&rows, "q or Ctrl-C: checkpoint and stop");
        let loss = row_of(&rows, "┌ training loss (nats)");
        assert_eq!(loss, row_of(&rows, "┌ held-out bits/byte"));
        assert!(rows[loss].find("training loss") < rows[loss].find("┌ held-out bits/byte"));
        for legend in ["smoothed", "python", "all"] {
            row_of(&rows, legend);
        }
        row_of(&rows, "tokens seen (log)");
        assert!(plotted_cells(&rows) > 40, "{}", rows.join("\n"));
    }

    #[test]
    fn a_narrow_terminal_stacks_the_charts() {
        let rows = screen(&dashboard(Mode::Watch), 70, 40);
        let loss = row_of(&rows, "┌ training loss (nats)");
        let held = row_of(&rows, "┌ held-out bits/byte");
        assert!(held > loss + 5, "{}", rows.join("\n"));
        row_of(&rows, "watching: last line 0:00 ago");
        // The figures wrap to the width rather than being cut.
        row_of(&rows, "next checkpoint at step 60 or in 1:50");
        row_of(&rows, "python 0.720");
        row_of(&rows, "from scratch (Tiny)");
        assert!(plotted_cells(&rows) > 40, "{}", rows.join("\n"));
    }

    #[test]
    fn a_tiny_terminal_keeps_the_figures_and_drops_the_charts() {
        let rows = screen(&dashboard(Mode::Live), 40, 9);
        row_of(&rows, "step 40 of 100");
        assert_eq!(plotted_cells(&rows), 0);
    }

    #[test]
    fn stopping_and_the_end_are_said() {
        let mut d = dashboard(Mode::Live);
        d.stopping();
        row_of(&screen(&d, 100, 30), "stopping: writing a checkpoint");
        d.apply(&Line::End(End {
            step: 40,
            steps: 100,
            tokens_seen: 40 * 1024,
            elapsed_s: 21.0,
            interrupted: true,
            held_out: held(45),
        }));
        assert!(d.ended());
        let rows = screen(&d, 100, 30);
        row_of(&rows, "stopped at step 40 of 100");
        // The end's evaluation replaces the step's at the same tokens: one point, the best.
        assert_eq!(d.held_out_series()[0].1.len(), 5);
        row_of(
            &rows,
            &format!("best {:.3} at step 40", held(45).bits_per_byte),
        );
    }

    /// The curves plot what the lines said: each evaluation's figure overall and by language,
    /// at its tokens, and the loss of every step.
    #[test]
    fn the_curves_hold_the_runs_figures() {
        let d = dashboard(Mode::Live);
        let series = d.held_out_series();
        let names: Vec<&str> = series.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["all", "rust", "python"]);
        let at = |step: usize| (1024.0 * step as f64, held(step));
        let expected: Vec<(f64, f64)> = [0, 10, 20, 30, 40]
            .iter()
            .map(|&s| {
                let (x, h) = at(s);
                (if s == 0 { 0.0 } else { x }, h.by_language[1].bits_per_byte)
            })
            .collect();
        assert_eq!(series[2].1, expected);
        let losses = &d.loss_curves()[0].points;
        assert_eq!(losses.len(), 40);
        assert_eq!(losses[9], (10240.0, 4.0 * 10f64.powf(-0.3)));
    }

    /// Both axes are log-scaled: points are plotted as log10 of their values, zero tokens sits at
    /// the left edge, the bounds enclose every point, and the labels read back the data units.
    #[test]
    fn log_charts_place_points_and_labels_where_the_values_are() {
        let curve = Curve {
            name: None,
            points: vec![(0.0, 8.0), (100.0, 4.0), (10_000.0, 2.0), (1e6, 1.0)],
            colour: Color::White,
            line: true,
        };
        let chart = LogChart::new("t", vec![curve.clone()], tokens_domain([curve].iter()));
        let plotted = &chart.plotted()[0].points;
        let expected = [
            (2.0, 8f64.log10()),
            (2.0, 4f64.log10()),
            (4.0, 2f64.log10()),
            (6.0, 0.0),
        ];
        for (p, e) in plotted.iter().zip(expected) {
            assert!(
                (p.0 - e.0).abs() < 1e-12 && (p.1 - e.1).abs() < 1e-12,
                "{p:?}"
            );
        }
        let [x0, x1] = chart.x_bounds;
        assert!(x0 < 2.0 && x1 > 6.0 && (x0 + x1 - 8.0).abs() < 1e-9);
        let [y0, y1] = chart.y_bounds;
        assert!(y0 < 0.0 && y1 > 8f64.log10());
        let labels = LogChart::labels([2.0, 6.0], tokens);
        assert_eq!(labels, ["100", "10k", "1.0M"]);
        let labels = LogChart::labels([0.0, 2f64.log10()], |v| format!("{v:.2}"));
        assert_eq!(labels, ["1.00", "1.41", "2.00"]);
    }

    #[test]
    fn the_log_is_followed_line_by_line_and_a_rewrite_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.log");
        let lines: Vec<String> = script()[..3].iter().map(Line::to_json).collect();
        let read = |follow: &mut Follow| {
            let (restarted, read) = follow.read().unwrap();
            let texts: Vec<String> = read.iter().map(|(_, t)| t.clone()).collect();
            let parsed: Vec<Line> = read.into_iter().map(|(l, _)| l).collect();
            (restarted, parsed, texts)
        };
        let mut follow = Follow::new(dir.path());
        assert_eq!(read(&mut follow), (false, vec![], vec![]));
        // The second line is half written: it waits for the rest.
        let (whole, half) = lines[1].split_at(20);
        std::fs::write(&path, format!("{}\n{whole}", lines[0])).unwrap();
        assert_eq!(
            read(&mut follow),
            (false, script()[..1].to_vec(), lines[..1].to_vec())
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, format!("{half}\n{}\n", lines[2]).as_bytes()).unwrap();
        assert_eq!(
            read(&mut follow),
            (false, script()[1..3].to_vec(), lines[1..3].to_vec())
        );
        // A resume truncates the log: the reader starts again from its first line.
        std::fs::write(&path, format!("{}\n", lines[0])).unwrap();
        assert_eq!(
            read(&mut follow),
            (true, script()[..1].to_vec(), lines[..1].to_vec())
        );
    }

    #[test]
    fn figures_read_short() {
        assert_eq!(tokens(950.0), "950");
        assert_eq!(tokens(1_500.0), "1.5k");
        assert_eq!(tokens(41_000.0), "41k");
        assert_eq!(tokens(3_400_000.0), "3.4M");
        assert_eq!(clock(75.4), "1:15");
        assert_eq!(clock(3_725.0), "1:02:05");
    }
}
