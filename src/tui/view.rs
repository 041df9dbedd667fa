//! Drawing the editor: line numbers, highlighted text, the selection, ghost text (dim, never part of
//! the document; a multi-line proposal pushes the lines below it down), the status bar and the
//! message line, and the help screen.

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Clear, Paragraph, Widget};

use super::app::overlay;
use super::app::viewport::MIN_SIZE;
use super::app::{App, MemoryState, Mode, ModelState, Viewport};
use super::config::Action;
use crate::model::score::TokenScore;
use crate::syntax::highlight::HighlightKind;
use crate::text::display;

/// Overlay marks of the visible lines (see `overlay_rows`).
type Rows = Vec<Vec<(usize, usize, usize)>>;

impl Widget for &App {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
            return;
        }
        let scores = self.overlay_rows();
        self.draw_text(buf, area, scores.as_ref());
        self.draw_status(buf, area);
        if let Some(token) = self.token_at_cursor() {
            let y = self.screen_cursor(area).map_or(0, |p| p.y);
            self.draw_inspector(buf, area, token, y);
        }
        if self.mode == Mode::Help {
            self.draw_help(buf, area);
        }
    }
}

impl App {
    /// Draws the editor over the whole frame and puts the terminal's cursor on the cursor.
    pub fn draw(&self, frame: &mut Frame) {
        let area = frame.area();
        frame.render_widget(self, area);
        if let Some(p) = self.screen_cursor(area) {
            frame.set_cursor_position(p);
        }
    }

    /// The cell of the cursor in `area`, when it is in view (a proposal shown at the cursor only
    /// pushes the lines after it down).
    pub fn screen_cursor(&self, area: Rect) -> Option<Position> {
        let v = &self.viewport;
        let c = self.buffer.cursor;
        let row = c.line.checked_sub(v.top).filter(|&r| r < v.rows)?;
        let col = display::column_of(self.buffer.doc.line(c.line), c.col, self.config.tab_width);
        let x = col.checked_sub(v.left).filter(|&x| x < v.width)?;
        Some(Position::new(
            area.x + (v.gutter + x) as u16,
            area.y + row as u16,
        ))
    }

    /// Rank buckets of the scored tokens on the visible lines: per line from `top`, (start, end,
    /// bucket) in bytes of the line. `None` when the overlay is off.
    fn overlay_rows(&self) -> Option<Rows> {
        if !self.overlay.on {
            return None;
        }
        let (doc, top) = (&self.buffer.doc, self.viewport.top);
        let valid = self.overlay.valid();
        let mut start = doc.byte_of(crate::text::Pos::new(top, 0));
        let bottom = (top + self.viewport.rows).min(doc.line_count());
        let mut rows = Vec::with_capacity(bottom - top);
        for i in top..bottom {
            let end = start + doc.line(i).len();
            let mut k = valid.partition_point(|s| s.end <= start);
            let mut row = Vec::new();
            while let Some(s) = valid.get(k).filter(|s| s.start < end) {
                row.push((
                    s.start.max(start) - start,
                    s.end.min(end) - start,
                    overlay::bucket(s.rank),
                ));
                k += 1;
            }
            rows.push(row);
            start = end + 1;
        }
        Some(rows)
    }

    fn bucket_style(&self, bucket: usize) -> Style {
        let s = Style::default();
        if self.config.no_color {
            return match bucket {
                0 => s,
                1 => s.add_modifier(Modifier::UNDERLINED),
                2 => s.add_modifier(Modifier::UNDERLINED | Modifier::BOLD),
                _ => s.add_modifier(Modifier::REVERSED),
            };
        }
        s.fg(match bucket {
            0 => Color::Green,
            1 => Color::Yellow,
            2 => Color::Red,
            _ => Color::Magenta,
        })
    }

    fn draw_inspector(&self, buf: &mut Buffer, area: Rect, t: &TokenScore, cursor_y: u16) {
        let show = |text: &str| format!("{:?}", text);
        let mut lines = vec![
            format!(
                "p {:.3} · rank {} · entropy {:.2} bits",
                f64::from(t.logprob).exp(),
                t.rank,
                t.entropy_bits
            ),
            "model's top 5:".to_owned(),
        ];
        for (i, a) in t.top.iter().take(5).enumerate() {
            lines.push(format!("{}. {:<16} {:.3}", i + 1, show(&a.text), a.prob));
        }
        let w = (lines
            .iter()
            .map(|l| display::width(l, 1))
            .max()
            .unwrap_or(0)
            + 2)
        .max(display::width(&show(&t.text), 1) + 10)
        .min(area.width as usize) as u16;
        let h = (lines.len() as u16 + 2).min(area.height.saturating_sub(2));
        // Top right, or bottom right when the cursor is up there.
        let y = if cursor_y < h + 1 {
            area.height.saturating_sub(2 + h)
        } else {
            area.y
        };
        let rect = Rect::new(area.x + area.width - w, y, w, h);
        Clear.render(rect, buf);
        let text: Vec<Line> = lines.into_iter().map(Line::from).collect();
        let title = format!(" token {} ", show(&t.text));
        Paragraph::new(text)
            .block(Block::bordered().title(title))
            .render(rect, buf);
    }

    fn kind_style(&self, kind: HighlightKind) -> Style {
        let plain = self.config.no_color;
        let s = Style::default();
        match kind {
            HighlightKind::Keyword if plain => s.add_modifier(Modifier::BOLD),
            HighlightKind::Comment if plain => s.add_modifier(Modifier::ITALIC),
            _ if plain => s,
            HighlightKind::Keyword => s.fg(Color::Magenta),
            HighlightKind::Comment => s.fg(Color::Green).add_modifier(Modifier::ITALIC),
            HighlightKind::String => s.fg(Color::Yellow),
            HighlightKind::Number | HighlightKind::Constant => s.fg(Color::Cyan),
            HighlightKind::Function => s.fg(Color::Blue),
            HighlightKind::Type => s.fg(Color::LightCyan),
        }
    }

    /// One line of ghost text (starting at byte `start` of what is shown), split by token
    /// confidence when that is on: dim for p >= 0.5, yellow for 0.2..0.5, red below.
    fn ghost_runs(&self, line: &str, start: usize) -> Vec<(String, Style)> {
        let base = self.ghost_style();
        let confidence = match self.visible_ghost() {
            Some(g) if self.config.confidence_colours => g.shown_confidence(),
            _ => Vec::new(),
        };
        if confidence.is_empty() {
            return vec![(line.to_owned(), base)];
        }
        let style = |p: f32| match p {
            p if p >= 0.5 => base,
            _ if self.config.no_color => base.add_modifier(Modifier::UNDERLINED),
            p if p >= 0.2 => base.fg(Color::Yellow),
            _ => base.fg(Color::Red),
        };
        let mut out = Vec::new();
        let mut at = 0;
        let mut token_start = 0;
        for &(end, p) in &confidence {
            let (a, b) = (token_start.max(start), end.min(start + line.len()));
            token_start = end;
            if a >= b {
                continue;
            }
            // Token bytes can split a character: round down to boundaries, never overlap.
            let floor = |mut i: usize| {
                while !line.is_char_boundary(i) {
                    i -= 1;
                }
                i
            };
            let (a, b) = (floor(a - start).max(at), floor(b - start));
            if let Some(piece) = line.get(a..b).filter(|p| !p.is_empty()) {
                out.push((piece.to_owned(), style(p)));
                at = b;
            }
        }
        if let Some(rest) = line.get(at..).filter(|r| !r.is_empty()) {
            out.push((rest.to_owned(), base));
        }
        out
    }

    pub(super) fn ghost_style(&self) -> Style {
        let s = Style::default().add_modifier(Modifier::DIM | Modifier::ITALIC);
        if self.config.no_color {
            s
        } else {
            s.fg(self.config.ghost)
        }
    }

    /// Styled pieces of line `i` between bytes `from` and `to`: syntax colours, or the overlay's
    /// rank colours when it is on (`scores`, per line from `top`).
    fn pieces(
        &self,
        i: usize,
        from: usize,
        to: usize,
        scores: Option<&Rows>,
    ) -> Vec<(String, Style)> {
        let text = self.buffer.doc.line(i);
        let mut cuts = vec![from, to];
        let marks: Vec<(usize, usize, Style)> = match scores {
            Some(rows) => rows
                .get(i - self.viewport.top)
                .map(|r| {
                    r.iter()
                        .map(|&(a, b, k)| (a, b, self.bucket_style(k)))
                        .collect()
                })
                .unwrap_or_default(),
            None => self
                .viewport
                .spans(i)
                .iter()
                .map(|&(a, b, k)| (a, b, self.kind_style(k)))
                .collect(),
        };
        let spans = marks.as_slice();
        for &(a, b, _) in spans {
            cuts.extend([a, b]);
        }
        let selection = self.buffer.selection().and_then(|(a, b)| {
            (a.line <= i && i <= b.line).then(|| {
                let s = if a.line == i { a.col } else { 0 };
                // A selected line break shows as one selected cell after the text.
                let e = if b.line == i { b.col } else { text.len() };
                (s, e)
            })
        });
        if let Some((a, b)) = selection {
            cuts.extend([a, b]);
        }
        cuts.retain(|&c| c >= from && c <= to && text.is_char_boundary(c));
        cuts.sort_unstable();
        cuts.dedup();
        let mut out = Vec::new();
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let Some(piece) = text.get(a..b) else {
                continue;
            };
            let mut style = spans
                .iter()
                .find(|&&(s, e, _)| s <= a && b <= e)
                .map_or_else(Style::default, |&(_, _, style)| style);
            if selection.is_some_and(|(s, e)| s <= a && b <= e) {
                style = style.add_modifier(Modifier::REVERSED);
            }
            out.push((piece.to_owned(), style));
        }
        if let Some((_, e)) = selection
            && e == text.len()
            && to == text.len()
            && self.buffer.selection().is_some_and(|(_, b)| b.line > i)
        {
            out.push((
                " ".to_owned(),
                Style::default().add_modifier(Modifier::REVERSED),
            ));
        }
        out
    }

    /// Draws the text rows.
    fn draw_text(&self, buf: &mut Buffer, area: Rect, scores: Option<&Rows>) {
        let Viewport {
            rows,
            width,
            gutter,
            top,
            left,
            ..
        } = self.viewport;
        let (doc, cursor) = (&self.buffer.doc, self.buffer.cursor);
        let tab = self.config.tab_width;
        let ghost = self
            .visible_ghost()
            .map(|g| g.shown().to_owned())
            .unwrap_or_default();
        let number_style = if self.config.no_color {
            Style::default().add_modifier(Modifier::DIM)
        } else {
            Style::default().fg(Color::DarkGray)
        };
        let x0 = area.x + gutter as u16;
        let mut row = 0usize;
        let mut line = top;
        while row < rows && line < doc.line_count() {
            let y = area.y + row as u16;
            let number = format!("{:>w$} ", line + 1, w = gutter - 1);
            let style = if line == cursor.line {
                number_style.add_modifier(Modifier::BOLD)
            } else {
                number_style
            };
            buf.set_stringn(area.x, y, &number, gutter, style);
            let len = doc.line(line).len();
            if line == cursor.line {
                let c = cursor.col;
                if !ghost.is_empty() {
                    // before + ghost line 1; ghost lines 2..n-1; ghost line n + after.
                    let ghost_lines: Vec<&str> = ghost.split('\n').collect();
                    let last = ghost_lines.len() - 1;
                    let mut offset = 0;
                    for (k, g) in ghost_lines.iter().enumerate() {
                        let start = offset;
                        offset += g.len() + 1;
                        if row >= rows {
                            break;
                        }
                        let y = area.y + row as u16;
                        let mut segs = if k == 0 {
                            self.pieces(line, 0, c, scores)
                        } else {
                            Vec::new()
                        };
                        segs.extend(self.ghost_runs(g, start));
                        if k == last {
                            segs.extend(self.pieces(line, c, len, scores));
                        }
                        paint(buf, x0, y, width, left, &segs, tab);
                        row += 1;
                    }
                    line += 1;
                    continue;
                }
            }
            paint(
                buf,
                x0,
                y,
                width,
                left,
                &self.pieces(line, 0, len, scores),
                tab,
            );
            row += 1;
            line += 1;
        }
    }

    fn draw_status(&self, buf: &mut Buffer, area: Rect) {
        let y = area.y + area.height - 2;
        let bar = Style::default().add_modifier(Modifier::REVERSED);
        let name = self.file.path.display().to_string();
        let modified = if self.buffer.doc.is_modified() {
            " [+]"
        } else {
            ""
        };
        let lang = self.file.language.map_or("text", |l| l.name.as_str());
        let line = self.buffer.doc.line(self.buffer.cursor.line);
        let column = line
            .get(..self.buffer.cursor.col)
            .map_or(0, |s| s.chars().count())
            + 1;
        let ending = if self.buffer.doc.uses_crlf() {
            " CRLF"
        } else {
            ""
        };
        let left = format!(
            " {name}{modified} │ {lang}{ending} │ Ln {}, Col {column}",
            self.buffer.cursor.line + 1
        );
        let activity = match &self.completion.model {
            ModelState::Loading => "loading model…",
            ModelState::Unavailable(_) => "no model",
            ModelState::Ready(_) if self.adapters.switching() => "switching adapter…",
            ModelState::Ready(_) if self.is_thinking() => "thinking…",
            ModelState::Ready(_) => "idle",
        };
        // The model's name, then what it measured and shows; the activity always.
        // `brief` is `shown` with the memory's source left out, for a narrow terminal.
        let (model, stats, shown, brief) = match &self.completion.model {
            ModelState::Loading | ModelState::Unavailable(_) => Default::default(),
            ModelState::Ready(name) => {
                let short = name
                    .rsplit(['/', '\\'])
                    .find(|s| !s.is_empty())
                    .unwrap_or(name);
                let alternatives = self
                    .visible_ghost()
                    .filter(|g| g.proposals.len() > 1)
                    .map(|g| format!(" │ {}/{}", g.index + 1, g.proposals.len()))
                    .unwrap_or_default();
                let stats = self
                    .completion
                    .last
                    .as_ref()
                    .map(|p| {
                        format!(
                            " │ {:.0} ms · {:.0} tok/s",
                            p.first_token_ms, p.tokens_per_second
                        )
                    })
                    .unwrap_or_default();
                let overlay = match (
                    self.overlay.on,
                    self.overlay.is_scoring(),
                    self.overlay.last,
                ) {
                    (true, true, _) => " │ overlay: scoring…".to_owned(),
                    // How long the last refresh took.
                    (true, false, Some((_, ms))) => format!(" │ overlay {ms:.0} ms"),
                    (true, false, None) => " │ overlay".to_owned(),
                    _ => String::new(),
                };
                let from_memory = || {
                    self.completion
                        .last
                        .as_ref()
                        .is_some_and(|p| p.from_memory >= 0.5)
                };
                let memory_brief = match &self.completion.memory {
                    MemoryState::Ready { .. } if from_memory() => " │ from memory".to_owned(),
                    _ => String::new(),
                };
                let memory = match &self.completion.memory {
                    MemoryState::Off => String::new(),
                    MemoryState::Building { .. } => " │ memory: indexing…".to_owned(),
                    // A proposal that came mostly from repository memory says so, and where
                    // it was found.
                    MemoryState::Ready { .. } if from_memory() => {
                        match self
                            .completion
                            .last
                            .as_ref()
                            .and_then(|p| p.source.as_ref())
                        {
                            Some(source) => {
                                format!(" │ from memory: {}", self.short_source(source))
                            }
                            None => " │ from memory".to_owned(),
                        }
                    }
                    MemoryState::Ready { files, .. } => format!(" │ memory {files} files"),
                };
                // The adapter applied on top of the model, if any.
                let model = match self.adapters.active_name() {
                    Some(adapter) => format!("{short} + {adapter}"),
                    None => short.to_owned(),
                };
                (
                    model,
                    stats,
                    format!("{alternatives}{overlay}{memory}"),
                    format!("{alternatives}{overlay}{memory_brief}"),
                )
            }
        };
        let w = area.width as usize;
        // At least one blank between the sides.
        let fits = |l: &str, r: &str| display::width(l, 1) + display::width(r, 1) < w;
        let mut left = left;
        let mut right = match model.is_empty() {
            true => format!("{activity} "),
            false => format!("{model}{stats}{shown} │ {activity} "),
        };
        // Too narrow for the whole path: the file name is what matters.
        let short = self
            .file
            .path
            .file_name()
            .map_or(name.clone(), |n| n.to_string_lossy().into_owned());
        if !fits(&left, &right) {
            left = left.replacen(&name, &short, 1);
        }
        // Still too narrow: the model's name goes first, then its timings, then the proposal's
        // number and the overlay's state; what it is doing stays, and never runs into the
        // cursor's position.
        if !fits(&left, &right) {
            right = format!("{stats}{shown} │ {activity} ");
        }
        if !fits(&left, &right) {
            right = format!("{shown} │ {activity} ");
        }
        if !fits(&left, &right) {
            right = format!("{brief} │ {activity} ");
        }
        if !fits(&left, &right) {
            right = format!(" │ {activity} ");
        }
        if !fits(&left, &right) {
            // Then the file name and the cursor's position alone.
            let position = format!(" │ Ln {}, Col {column}", self.buffer.cursor.line + 1);
            let room = w.saturating_sub(
                display::width(&position, 1) + display::width(&right, 1) + modified.len() + 2,
            );
            let chars: Vec<char> = short.chars().collect();
            let name = if chars.len() > room {
                let tail: String = chars[chars.len() - room.saturating_sub(1)..]
                    .iter()
                    .collect();
                format!("…{tail}")
            } else {
                short
            };
            left = format!(" {name}{modified}{position}");
        }
        let fill = w.saturating_sub(display::width(&left, 1) + display::width(&right, 1));
        let text = format!("{left}{}{right}", " ".repeat(fill));
        buf.set_stringn(area.x, y, &text, w, bar);

        let y = y + 1;
        let (text, style) = match (&self.mode, &self.message) {
            (Mode::GoToLine(input), _) => (
                format!(
                    "Go to line: {input}   [1-{} · Enter go · Esc cancel]",
                    self.buffer.doc.line_count()
                ),
                Style::default(),
            ),
            (Mode::Find { query, .. }, m) => {
                let note = m
                    .as_ref()
                    .map(|m| format!("   ({})", m.text))
                    .unwrap_or_default();
                (
                    format!("Find: {query}{note}   [Enter next · ↑ previous · Esc done]"),
                    Style::default(),
                )
            }
            (Mode::Recover(offer), _) => {
                let age = offer
                    .written
                    .and_then(|t| t.elapsed().ok())
                    .map(|d| format!(" from {} ago", human(d)))
                    .unwrap_or_default();
                (
                    format!(
                        "Unsaved text of this file was recovered{age}: [r] restore it · [d] discard it · any other key keeps it for later"
                    ),
                    Style::default().add_modifier(Modifier::BOLD),
                )
            }
            (_, Some(m)) if m.error => (
                m.text.clone(),
                if self.config.no_color {
                    Style::default().add_modifier(Modifier::BOLD)
                } else {
                    Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
                },
            ),
            (_, Some(m)) => (m.text.clone(), Style::default()),
            (_, None) => (
                "F1 help · Ctrl-S save · Ctrl-Q quit · Ctrl-F find · Tab accepts a proposal"
                    .to_owned(),
                Style::default().add_modifier(Modifier::DIM),
            ),
        };
        if self.overlay.on && self.mode == Mode::Normal && self.message.is_none() {
            // The overlay's legend instead of the key hints.
            let mut segs = vec![("overlay rank: ".to_owned(), Style::default())];
            for (k, label) in ["top 10", "top 100", "top 1000", "beyond"]
                .iter()
                .enumerate()
            {
                segs.push(((*label).to_owned(), self.bucket_style(k)));
                segs.push(("  ".to_owned(), Style::default()));
            }
            segs.push((
                "· F3 / Shift-F3 next / previous surprise · F2 off".to_owned(),
                Style::default(),
            ));
            paint(buf, area.x, y, w, 0, &segs, 1);
            return;
        }
        buf.set_stringn(area.x, y, &text, w, style);
    }

    fn draw_help(&self, buf: &mut Buffer, area: Rect) {
        let k = |a| self.config.keys_for(a);
        let lines = [
            "Completions".to_owned(),
            format!("  {:<22} accept the whole proposal", k(Action::Accept)),
            format!("  {:<22} accept the next word", k(Action::AcceptWord)),
            format!("  {:<22} accept the next line", k(Action::AcceptLine)),
            format!("  {:<22} dismiss", k(Action::Dismiss)),
            format!(
                "  {:<22} next / previous proposal",
                format!(
                    "{}, {}",
                    k(Action::NextAlternative),
                    k(Action::PreviousAlternative)
                )
            ),
            format!("  {:<22} ask now", k(Action::Trigger)),
            "  typing what the proposal shows keeps the rest of it".to_owned(),
            "  F4 colours a proposal by how sure the model is of each token".to_owned(),
            "  F6 goes to where a proposal from repository memory was found".to_owned(),
            "  F7 next LoRA adapter (--adapter, one or more), then the base model".to_owned(),
            String::new(),
            "Probability overlay".to_owned(),
            "  F2 on/off: every token coloured by the rank the model gave it".to_owned(),
            "  F3 / Shift-F3 next / previous token outside the model's top 10".to_owned(),
            String::new(),
            "Editing".to_owned(),
            "  Ctrl-S save · Ctrl-Q quit · Ctrl-Z undo · Ctrl-Y redo".to_owned(),
            "  Ctrl-C / Ctrl-X / Ctrl-V copy, cut, paste (the line without a selection)".to_owned(),
            "  Shift+arrows select · Ctrl-A all · Ctrl-F find · Ctrl-G go to line".to_owned(),
            "  Ctrl-←/→ by word · Home/End · PgUp/PgDn · Ctrl-Home/End".to_owned(),
            "  Tab / Shift-Tab indent / dedent (no proposal shown)".to_owned(),
            String::new(),
            "any key closes this help".to_owned(),
        ];
        let w = (lines
            .iter()
            .map(|l| display::width(l, 1))
            .max()
            .unwrap_or(0)
            + 4)
        .min(area.width as usize) as u16;
        let h = (lines.len() as u16 + 2).min(area.height);
        let rect = Rect::new(
            area.x + (area.width - w) / 2,
            area.y + (area.height - h) / 2,
            w,
            h,
        );
        Clear.render(rect, buf);
        let text: Vec<Line> = lines.into_iter().map(Line::from).collect();
        Paragraph::new(text)
            .block(Block::bordered().title(" infill help "))
            .render(rect, buf);
    }
}

/// Paints styled segments in one row from screen column `left` on, `width` cells wide.
fn paint(
    buf: &mut Buffer,
    x0: u16,
    y: u16,
    width: usize,
    left: usize,
    segs: &[(String, Style)],
    tab: usize,
) {
    let mut col = 0;
    for (text, style) in segs {
        for cell in display::cells_from(text, tab, col) {
            col = cell.col + cell.width;
            if col <= left {
                continue;
            }
            if cell.col >= left + width {
                return;
            }
            if cell.col < left || col > left + width {
                // A wide character cut by an edge: show the visible part as blanks.
                let from = cell.col.max(left);
                let to = col.min(left + width);
                let x = x0 + (from - left) as u16;
                buf.set_stringn(x, y, " ".repeat(to - from), to - from, *style);
                continue;
            }
            let x = x0 + (cell.col - left) as u16;
            buf.set_stringn(x, y, cell.glyph(), cell.width, *style);
        }
    }
}

fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}
