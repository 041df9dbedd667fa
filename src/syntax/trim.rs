//! Trimming a raw model proposal to a syntactic boundary.
//!
//! A pure function of (text before the cursor, proposal, text after the cursor, language). In order:
//!
//! 1. **Indentation**: lines after the first follow the file's style (tabs or spaces).
//! 2. **Scope**: with real code right of the cursor, inside a string or comment, or after text on
//!    the cursor's line that opens nothing (a bracket, `:`, `=` or `,` may go on below), the proposal
//!    ends at its first line break. Otherwise it may span lines but never past the end of the enclosing
//!    block: the first closing bracket that the proposal did not open (brace languages), or the first
//!    line indented less than the block (Python). At the start of a line of code (a whole-line
//!    hole) a proposal that breaks the line is whole lines, each cut at a line end and the last
//!    one ended by the hole's newline, so the line after stays a line of its own.
//! 3. **Repeats**: a tail that repeats the first lines after the cursor is dropped, and so is
//!    everything from the first line that repeats an earlier line of the proposal (a small model's
//!    loop); closing brackets and quotes that the rest of the line already supplies go too.
//! 4. **Syntax**: the longest remaining cut (whole proposal, then line ends, then token ends) is kept
//!    whose parse of prefix + cut + suffix has no more errors than prefix + suffix alone and whose last
//!    token does not run into the suffix. The baseline tree is parsed once and each candidate
//!    re-parsed incrementally. No valid cut means an empty result: a proposal invalid on its own is
//!    never shown. Without a grammar (unknown language) bracket balance stands in for the parse.
//!
//! Invariant (property-tested and fuzzed): the result, less a whole-line hole's newline, is a
//! prefix of the re-indented proposal. Nothing here panics on any input.

use serde::Serialize;
use tree_sitter::{InputEdit, Parser, Point, Tree};

use super::language::Language;
use crate::text::{before, from};

/// Why the proposal was cut (the last rule that shortened it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Kept whole.
    Unchanged,
    /// Empty or only whitespace.
    Empty,
    /// Cut at the end of the line: code right of the cursor, or inside a string or comment.
    LineScope,
    /// Cut where the enclosing block ends.
    BlockEnd,
    /// Dropped a tail that repeats the text after the cursor.
    SuffixRepeat,
    /// Dropped lines from the first that repeats an earlier line of the proposal: a small model
    /// caught in a loop (`pub mod a;` ten times).
    Repetition,
    /// Dropped closing brackets or quotes that the rest of the line supplies.
    SuffixClosers,
    /// Cut back to the longest point that adds no parse errors.
    ParseErrors,
    /// No cut is valid: nothing to show.
    Invalid,
}

/// A trimmed proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trimmed {
    pub text: String,
    pub reason: Reason,
}

/// Indentation of a file: tabs, or spaces of some width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Indent {
    Tabs,
    Spaces(usize),
    /// No indented line to learn from: leave the proposal as it is.
    Unknown,
}

/// A trimmer for one cursor position: holds the baseline parse of prefix + suffix.
pub struct Trimmer<'a> {
    prefix: &'a str,
    suffix: &'a str,
    lang: Option<&'a Language>,
    parser: Option<(Parser, Tree, usize)>,
    /// Byte range of the file (prefix + suffix) that `parser`'s baseline tree covers.
    window: (usize, usize),
    /// The baseline already has an error around the cursor: insertions inside it are judged by the
    /// error count alone.
    broken_at_cursor: bool,
    /// The cursor is inside a string or comment: the literal's token spans the cursor.
    in_literal: bool,
    /// There is code right of the cursor on its line.
    code_right: bool,
    /// The cursor's line up to the cursor.
    line_before: &'a str,
    single_line: bool,
    /// Text before the cursor on its line that opens nothing, and no single-line scope: the
    /// proposal's first line is kept alone when it is valid by itself.
    mid_line: bool,
    /// Whether the first line alone was valid, once generation has produced it.
    first_line_valid: Option<bool>,
    /// The cursor is at the start of a line of code (a whole-line hole, as in HumanEval's
    /// infilling tasks): a proposal that breaks the line is whole lines inserted before it,
    /// each ending in its newline.
    line_start: bool,
    indent: Indent,
    block: Block,
}

impl std::fmt::Debug for Trimmer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trimmer")
            .field("single_line", &self.single_line)
            .field("indent", &self.indent)
            .finish()
    }
}

/// How the enclosing block ends.
#[derive(Debug, Clone, Copy)]
enum Block {
    Braces,
    /// Python: stop at the first line indented less than `indent` (`opener`: or equal, because the
    /// cursor's line opens the block).
    Indented {
        indent: usize,
        opener: bool,
    },
}

/// Baselines with more errors than this are "hopeless": the parse no longer says much.
const HOPELESS_ERRORS: usize = 64;
/// Text kept on each side of the cursor for the trimmer's parse.
const CONTEXT_BYTES: usize = 64 * 1024;
/// Most candidate cuts tried by parsing.
const MAX_CANDIDATES: usize = 24;

impl<'a> Trimmer<'a> {
    /// Parses prefix + suffix once; `lang` of `None` uses the indentation and bracket rules only.
    pub fn new(prefix: &'a str, suffix: &'a str, lang: Option<&'a Language>) -> Self {
        // The trimmer only ever keeps a prefix of the proposal, so it needs the text near the
        // cursor, not a 100 MB file: bound the parse.
        let prefix = crate::text::tail_lines(prefix, CONTEXT_BYTES);
        let suffix = crate::text::head_lines(suffix, CONTEXT_BYTES);
        let full = lang.and_then(|l| {
            let mut parser = Parser::new();
            parser.set_language(&l.grammar()).ok()?;
            let tree = parser.parse([prefix, suffix].concat(), None)?;
            Some((parser, tree))
        });
        let cursor = prefix.len();
        let line_before = prefix.rsplit('\n').next().unwrap_or_default();
        let line_rest = suffix.split('\n').next().unwrap_or_default();
        let in_literal = match (&full, lang) {
            (Some((_, tree)), Some(l)) => inside_literal(tree, cursor, l),
            _ => false,
        } || heuristic_inside_literal(line_before, lang);
        let code_right = !line_rest.trim().is_empty();
        let single_line = code_right || in_literal;
        // Text before the cursor on its line: the person is finishing that line, unless it ends
        // in an opener whose body or value goes on below (a single-line scope says more).
        let before = line_before.trim_end();
        let mid_line = !single_line
            && !before.is_empty()
            && !before.ends_with(['{', '(', '[', ':', '=', ','])
            && !before.ends_with("->");
        let line_start = line_before.is_empty() && code_right && !in_literal;
        let broken_at_cursor = full
            .as_ref()
            .is_some_and(|(_, tree)| error_overlaps(tree, cursor, cursor, true));
        // Candidates are checked against the item around the cursor, not the whole file: parsing a
        // function is far cheaper than re-parsing 2,000 lines, and errors elsewhere do not count.
        let window = full
            .as_ref()
            .map_or((0, prefix.len() + suffix.len()), |(_, tree)| {
                window(tree, cursor)
            });
        let parser = full.and_then(|(mut parser, tree)| {
            let tree = if window == (0, prefix.len() + suffix.len()) {
                tree
            } else {
                let text = [prefix.get(window.0..)?, suffix.get(..window.1 - cursor)?].concat();
                parser.parse(text, None)?
            };
            let errors = super::error_count(&tree);
            (errors <= HOPELESS_ERRORS).then_some((parser, tree, errors))
        });
        let block = if lang.is_some_and(|l| l.trim.indent_blocks) {
            python_block(prefix)
        } else {
            Block::Braces
        };
        Self {
            prefix,
            suffix,
            lang,
            parser,
            window,
            broken_at_cursor,
            in_literal,
            code_right,
            line_before,
            single_line,
            mid_line,
            first_line_valid: None,
            line_start,
            indent: file_indent(prefix, suffix),
            block,
        }
    }

    /// Whether the proposal must stay on the cursor's line.
    pub fn single_line(&self) -> bool {
        self.single_line
    }

    /// True once `partial` (a proposal being generated) has certainly passed the end of what will be
    /// kept: generation can stop.
    pub fn is_closed(&mut self, partial: &str) -> bool {
        if self.single_line && !self.line_start {
            return partial.contains('\n');
        }
        if self.mid_line && partial.contains('\n') {
            let valid = match self.first_line_valid {
                Some(v) => v,
                None => {
                    let v = !self.trim_line(partial).text.is_empty();
                    self.first_line_valid = Some(v);
                    v
                }
            };
            if valid {
                return true;
            }
        }
        let cut = self
            .block_end(partial)
            .or_else(|| self.suffix_repeat(partial))
            .or_else(|| repeated_line(partial));
        // Closed once a line exists after the cut (the cut line itself may still be growing).
        cut.is_some_and(|c| {
            partial
                .get(c..)
                .is_some_and(|rest| rest.trim_start_matches([' ', '\t']).contains('\n'))
        })
    }

    /// Trims one proposal.
    pub fn trim(&mut self, proposal: &str) -> Trimmed {
        if !self.line_start {
            return self.trim_in_line(proposal);
        }
        // At a line start, a proposal that breaks the line is whole lines; one that does not
        // is text before the line's code (`pub ` before `fn`), or, when that does not parse, a
        // line of its own.
        let breaks = proposal.trim_end_matches([' ', '\t']).contains('\n');
        if breaks {
            let lines = self.trim_lines(proposal);
            if !lines.text.is_empty() {
                return lines;
            }
        }
        let in_line = self.trim_in_line(proposal);
        if breaks || !in_line.text.is_empty() {
            return in_line;
        }
        let lines = self.trim_lines(proposal);
        if lines.text.is_empty() {
            in_line
        } else {
            lines
        }
    }

    /// The proposal trimmed to end on the cursor's line or within its block.
    fn trim_in_line(&mut self, proposal: &str) -> Trimmed {
        if self.mid_line {
            let line = self.trim_line(proposal);
            if !line.text.is_empty() {
                return line;
            }
        }
        self.trim_scoped(proposal)
    }

    /// At the start of a line of code: the longest run of the proposal's whole lines, within the
    /// block and short of the suffix's own lines, that parses, ended by the hole's newline (the
    /// line the cursor is on stays a line of its own).
    fn trim_lines(&mut self, proposal: &str) -> Trimmed {
        let text = reindent(proposal, self.indent);
        let mut end = text.len();
        let mut reason = Reason::Unchanged;
        // Whole lines: a block that ends inside a line (`})`, `};`, `} else {`) ends with it.
        let line_end = |at: usize| {
            text.get(at..)
                .and_then(|rest| rest.find('\n'))
                .map_or(text.len(), |nl| at + nl)
        };
        for (cut, why) in [
            (self.block_end(&text).map(line_end), Reason::BlockEnd),
            (self.suffix_repeat(before(&text, end)), Reason::SuffixRepeat),
            (repeated_line(before(&text, end)), Reason::Repetition),
        ] {
            if let Some(c) = cut.filter(|&c| c < end) {
                end = c;
                reason = why;
            }
        }
        // A line that opens a block whose body is already the suffix's first line (indented
        // deeper) ends the hole: what the proposal writes after it would be a second body.
        let body = self.suffix.split('\n').next().unwrap_or_default();
        let mut at = 0;
        for line in before(&text, end).split('\n') {
            let opens = line.trim_end().ends_with([':', '{', '(', '['])
                && !line.trim_start().starts_with(['#', '/']);
            if opens && indent_width(body) > indent_width(line) {
                let cut = at + line.len();
                if cut < end {
                    end = cut;
                    reason = Reason::BlockEnd;
                }
                break;
            }
            at += line.len() + 1;
        }
        // The parse decides whether the last line is whole, as it does for every cut.
        let whole = before(&text, end);
        let mut cuts = vec![whole.len()];
        cuts.extend(whole.match_indices('\n').map(|(i, _)| i).rev());
        for (n, cut) in cuts.into_iter().take(MAX_CANDIDATES).enumerate() {
            let lines = before(whole, cut).trim_end();
            if lines.trim().is_empty() {
                continue;
            }
            let candidate = format!("{lines}\n");
            let valid = match self.parser.is_some() {
                true => self.valid(&candidate),
                false => balanced_prefix(&candidate, false) == candidate.len(),
            };
            if valid {
                if n > 0 {
                    reason = Reason::ParseErrors;
                }
                return Trimmed {
                    text: candidate,
                    reason,
                };
            }
        }
        Trimmed {
            text: String::new(),
            reason: Reason::Invalid,
        }
    }

    /// The proposal trimmed as if it had to end on the cursor's line.
    fn trim_line(&mut self, proposal: &str) -> Trimmed {
        let single_line = std::mem::replace(&mut self.single_line, true);
        let line = self.trim_scoped(proposal);
        self.single_line = single_line;
        line
    }

    /// Rules 1 to 4 within the scope `single_line` sets.
    fn trim_scoped(&mut self, proposal: &str) -> Trimmed {
        if proposal.trim().is_empty() {
            return Trimmed {
                text: String::new(),
                reason: Reason::Empty,
            };
        }
        let text = reindent(proposal, self.indent);
        let mut end = text.len();
        let mut reason = Reason::Unchanged;
        let mut cut = |new_end: usize, why: Reason, end: &mut usize| {
            if new_end < *end {
                *end = new_end;
                reason = why;
            }
        };
        if self.single_line {
            if let Some(nl) = text.find('\n') {
                cut(nl, Reason::LineScope, &mut end);
            }
            // Code right of the cursor: one statement, never a second one after a separator.
            if self.code_right {
                // Brackets still open on the cursor's line (`for (|`) make the proposal's `;` inner.
                let line_before = self.line_before;
                let open = top_level_semicolon(line_before, 0).1.max(0);
                // A `for` header separates its clauses with semicolons (C, Go, Java, JavaScript).
                let for_header = line_before.trim_start().starts_with("for ")
                    || line_before.trim_start().starts_with("for(");
                let semi = if for_header {
                    None
                } else {
                    top_level_semicolon(before(&text, end), open).0
                };
                if let Some(semi) = semi {
                    cut(semi, Reason::LineScope, &mut end);
                }
            }
            let closers = self.supplied_closers(before(&text, end));
            cut(closers.0, closers.1, &mut end);
            // With code to the right, a bracket the proposal did not open belongs to the suffix.
            if self.code_right {
                cut(
                    balanced_prefix(before(&text, end), true),
                    Reason::SuffixClosers,
                    &mut end,
                );
            }
        } else {
            if let Some(b) = self.block_end(&text) {
                // Closers and separators right after the block's end go with it (`})`, `};`).
                let rest = from(&text, b);
                let tail = rest.len() - rest.trim_start_matches([')', ']', '}', ';', ',']).len();
                cut(b + tail, Reason::BlockEnd, &mut end);
            }
            if let Some(r) = self.suffix_repeat(before(&text, end)) {
                cut(r, Reason::SuffixRepeat, &mut end);
            }
            if let Some(r) = repeated_line(before(&text, end)) {
                cut(r, Reason::Repetition, &mut end);
            }
        }
        if reason != Reason::Unchanged {
            end = trim_end_len(&text, end);
        }
        let candidate = before(&text, end);
        let kept = match self.parser.is_some() {
            true => self.longest_valid(candidate),
            false => Some(balanced_prefix(candidate, self.single_line)),
        };
        match kept {
            Some(k) if !before(candidate, k).trim().is_empty() => {
                if k < end {
                    // Cut back by the parse (or the bracket rule): drop trailing blanks too.
                    end = trim_end_len(candidate, k);
                    reason = if self.parser.is_some() {
                        Reason::ParseErrors
                    } else {
                        Reason::BlockEnd
                    };
                }
                Trimmed {
                    text: before(candidate, end).to_string(),
                    reason,
                }
            }
            _ if matches!(reason, Reason::SuffixRepeat | Reason::SuffixClosers) => Trimmed {
                text: String::new(),
                reason,
            },
            _ => Trimmed {
                text: String::new(),
                reason: Reason::Invalid,
            },
        }
    }

    /// End of the enclosing block in `text`, if the proposal reaches it.
    fn block_end(&self, text: &str) -> Option<usize> {
        match self.block {
            Block::Braces => brace_block_end(text, self.lang.is_some_and(|l| l.name == "rust")),
            Block::Indented { indent, opener } => {
                let mut pos = 0usize;
                for (i, line) in text.split('\n').enumerate() {
                    if i > 0 && !line.trim().is_empty() {
                        let w = indent_width(line);
                        if w < indent || (opener && w <= indent) {
                            return Some(pos.saturating_sub(1));
                        }
                    }
                    pos += line.len() + 1;
                }
                None
            }
        }
    }

    /// Where a tail of `text` that repeats the lines after the cursor starts (cut before it).
    fn suffix_repeat(&self, text: &str) -> Option<usize> {
        // At a line start the suffix's first line is a whole line of its own.
        let after: Vec<&str> = self
            .suffix
            .split('\n')
            .skip(usize::from(!self.line_start))
            .map(str::trim_end)
            .filter(|l| !l.trim().is_empty())
            .collect();
        let first = *after.first()?;
        let line_before = self.line_before;
        let lines: Vec<&str> = text.split('\n').collect();
        let mut pos = 0usize;
        for (i, line) in lines.iter().enumerate() {
            let full = if i == 0 {
                if !line_before.trim().is_empty() {
                    pos += line.len() + 1;
                    continue;
                }
                format!("{line_before}{line}")
            } else {
                (*line).to_string()
            };
            if full.trim_end() == first {
                let rest = lines
                    .iter()
                    .skip(i + 1)
                    .map(|l| l.trim_end())
                    .filter(|l| !l.trim().is_empty());
                if rest.zip(after.iter().skip(1)).all(|(a, b)| a == *b) {
                    return Some(pos.saturating_sub(1));
                }
            }
            pos += line.len() + 1;
        }
        None
    }

    /// Drops trailing text the rest of the line already supplies: closers always, anything else when
    /// three characters or more repeat.
    fn supplied_closers(&self, text: &str) -> (usize, Reason) {
        let rest = self
            .suffix
            .split('\n')
            .next()
            .unwrap_or_default()
            .trim_start();
        let mut best = 0;
        for k in rest
            .char_indices()
            .skip(1)
            .map(|(i, _)| i)
            .chain([rest.len()])
        {
            if rest
                .get(..k)
                .is_some_and(|piece| !piece.is_empty() && text.ends_with(piece))
            {
                best = k;
            }
        }
        let piece = before(rest, best);
        if best == 0 {
            return (text.len(), Reason::Unchanged);
        }
        let closers_only = piece
            .chars()
            .all(|c| ")]}>\"'`;,".contains(c) || c.is_whitespace());
        if closers_only {
            (text.len() - best, Reason::SuffixClosers)
        } else if piece.trim().chars().count() >= 3 {
            (text.len() - best, Reason::SuffixRepeat)
        } else {
            (text.len(), Reason::Unchanged)
        }
    }

    /// The longest cut of `candidate` that parses without new errors and ends on a token boundary.
    fn longest_valid(&mut self, candidate: &str) -> Option<usize> {
        let mut cuts = vec![candidate.len()];
        if !self.single_line {
            cuts.extend(candidate.match_indices('\n').map(|(i, _)| i).rev());
        }
        let first_line = candidate.find('\n').unwrap_or(candidate.len());
        cuts.extend(token_ends(before(candidate, first_line)).into_iter().rev());
        cuts.dedup();
        cuts.into_iter()
            .filter(|&c| candidate.get(..c).is_some_and(|t| !t.trim().is_empty()))
            .take(MAX_CANDIDATES)
            .find(|&c| self.valid(before(candidate, c)))
    }

    fn valid(&mut self, middle: &str) -> bool {
        let (broken_at_cursor, in_literal) = (self.broken_at_cursor, self.in_literal);
        let Some((parser, base, base_errors)) = self.parser.as_mut() else {
            return true;
        };
        let (ws, we) = self.window;
        let prefix = from(self.prefix, ws);
        let suffix = before(self.suffix, we.saturating_sub(self.prefix.len()));
        let cursor = prefix.len();
        let text = [prefix, middle, suffix].concat();
        let start = point_after(Point::new(0, 0), prefix);
        let mut edited = base.clone();
        edited.edit(&InputEdit {
            start_byte: cursor,
            old_end_byte: cursor,
            new_end_byte: cursor + middle.len(),
            start_position: start,
            old_end_position: start,
            new_end_position: point_after(start, middle),
        });
        let Some(tree) = parser.parse(&text, Some(&edited)) else {
            return false;
        };
        let end = cursor + middle.len();
        if super::error_count(&tree) > *base_errors
            || errors_inside(&tree, cursor, end)
            || (!broken_at_cursor && error_overlaps(&tree, cursor, end, false))
        {
            return false;
        }
        // The last token of the middle must end where the middle ends, not run on into the suffix.
        let end = cursor + middle.trim_end().len();
        if end == cursor || in_literal {
            return true;
        }
        tree.root_node()
            .descendant_for_byte_range(end - 1, end)
            .is_none_or(|leaf| leaf.end_byte() <= end)
    }
}

/// Items longer than this many lines are searched for a smaller one around the cursor.
const WINDOW_LINES: usize = 300;

/// The byte range of the largest syntax node around `cursor` spanning at most [`WINDOW_LINES`]
/// lines (a function, a class), or of the neighbours when the cursor sits between two.
fn window(tree: &Tree, cursor: usize) -> (usize, usize) {
    let mut node = tree.root_node();
    loop {
        let range = (node.start_byte(), node.end_byte());
        if node.end_position().row - node.start_position().row <= WINDOW_LINES {
            return range;
        }
        let mut walk = node.walk();
        let children: Vec<_> = node.children(&mut walk).collect();
        match children
            .iter()
            .position(|c| c.start_byte() <= cursor && cursor <= c.end_byte())
        {
            Some(i) if !children[i].is_error() => node = children[i],
            Some(_) => return range,
            None => {
                // Between two children: from the one before to the one after.
                let before = children.iter().rev().find(|c| c.end_byte() <= cursor);
                let after = children.iter().find(|c| c.start_byte() >= cursor);
                return (
                    before.map_or(range.0, |c| c.start_byte()),
                    after.map_or(range.1, |c| c.end_byte()),
                );
            }
        }
    }
}

/// Trims `proposal` for a cursor between `prefix` and `suffix`.
pub fn trim(prefix: &str, proposal: &str, suffix: &str, lang: Option<&Language>) -> Trimmed {
    Trimmer::new(prefix, suffix, lang).trim(proposal)
}

/// Does an error lie within the inserted bytes (not merely around them, as a baseline error that
/// the insertion sits in would)?
fn errors_inside(tree: &Tree, start: usize, end: usize) -> bool {
    let mut stack = vec![tree.root_node()];
    while let Some(node) = stack.pop() {
        let (s, e) = (node.start_byte(), node.end_byte());
        if node.is_missing() && start < s && s < end {
            return true;
        }
        if node.is_error() && start <= s && e <= end && s < e {
            return true;
        }
        if node.has_error() && s <= end && e >= start {
            let mut walk = node.walk();
            stack.extend(node.children(&mut walk));
        }
    }
    false
}

/// Does an error node overlap `start..end` (or, with `touching`, contain the position `start`)?
fn error_overlaps(tree: &Tree, start: usize, end: usize, touching: bool) -> bool {
    let mut stack = vec![tree.root_node()];
    while let Some(node) = stack.pop() {
        let (s, e) = (node.start_byte(), node.end_byte());
        let hit = if touching {
            (node.is_error() && s < start && start < e) || (node.is_missing() && s == start)
        } else {
            (node.is_error() && s < end && e > start)
                || (node.is_missing() && start < s && s <= end)
        };
        if hit {
            return true;
        }
        if node.has_error() && s <= end && e >= start {
            let mut walk = node.walk();
            stack.extend(node.children(&mut walk));
        }
    }
    false
}

/// Where the first line of `text` that repeats an earlier one starts (cut before it), ignoring
/// indentation. Lines of closers and separators only (`}`, `});`, `],`) and blank ones
/// legitimately recur and are not counted.
fn repeated_line(text: &str) -> Option<usize> {
    let mut seen: Vec<&str> = Vec::new();
    let mut pos = 0usize;
    for line in text.split('\n') {
        let key = line.trim();
        // The last line may still be growing: only a whole line counts.
        let whole = pos + line.len() < text.len();
        if whole && key.chars().any(char::is_alphanumeric) {
            if seen.contains(&key) {
                return Some(pos.saturating_sub(1));
            }
            seen.push(key);
        }
        pos += line.len() + 1;
    }
    None
}

/// The first `;` outside brackets and quotes, starting `depth` brackets deep; also the final depth.
fn top_level_semicolon(text: &str, depth: i64) -> (Option<usize>, i64) {
    let mut depth = depth;
    let mut quote: Option<char> = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']' | '}') => depth -= 1,
            (None, ';') if depth <= 0 => return (Some(i), depth),
            _ => {}
        }
    }
    (None, depth)
}

fn point_after(mut p: Point, text: &str) -> Point {
    for (i, line) in text.split('\n').enumerate() {
        if i == 0 {
            p.column += line.len();
        } else {
            p.row += 1;
            p.column = line.len();
        }
    }
    p
}

/// Is the cursor strictly inside a string, or inside (or at the end of) a comment?
fn inside_literal(tree: &Tree, cursor: usize, lang: &Language) -> bool {
    let mut node = tree.root_node().descendant_for_byte_range(cursor, cursor);
    while let Some(n) = node {
        let (start, end) = (n.start_byte(), n.end_byte());
        if lang.is_string_kind(n.kind()) && start < cursor && cursor < end {
            return true;
        }
        if lang.is_comment_kind(n.kind()) && start < cursor && cursor <= end {
            return true;
        }
        node = n.parent();
    }
    false
}

/// Line-based fallback: an odd number of double quotes, or a line comment token outside them.
fn heuristic_inside_literal(line_before: &str, lang: Option<&Language>) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    let comment = lang.and_then(|l| l.line_comment.as_deref());
    for (i, c) in line_before.char_indices() {
        match c {
            '\\' if in_string => escaped = !escaped,
            '"' if !escaped => in_string = !in_string,
            _ => escaped = false,
        }
        if c != '\\' {
            escaped = false;
        }
        if !in_string
            && comment.is_some_and(|tok| line_before.get(i..).is_some_and(|r| r.starts_with(tok)))
        {
            return true;
        }
    }
    in_string
}

/// The Python block the cursor is in: its indentation, and whether the cursor's line opens it.
fn python_block(prefix: &str) -> Block {
    let mut lines = prefix.rsplit('\n');
    let current = lines.next().unwrap_or_default();
    let width = indent_width;
    if !current.trim().is_empty() {
        return Block::Indented {
            indent: width(current),
            opener: current.trim_end().ends_with(':'),
        };
    }
    match lines.find(|l| !l.trim().is_empty()) {
        Some(prev) if prev.trim_end().ends_with(':') => Block::Indented {
            indent: width(prev),
            opener: true,
        },
        Some(prev) if current.is_empty() => Block::Indented {
            indent: width(prev),
            opener: false,
        },
        _ => Block::Indented {
            indent: width(current),
            opener: false,
        },
    }
}

/// Width of a line's indentation, a tab counting 8 (as Python's tokenizer counts it).
fn indent_width(line: &str) -> usize {
    line.chars()
        .take_while(|c| *c == ' ' || *c == '\t')
        .map(|c| if c == '\t' { 8 } else { 1 })
        .sum()
}

/// The first closing bracket that `text` did not open ends the enclosing block (included).
fn brace_block_end(text: &str, rust: bool) -> Option<usize> {
    let mut depth: i64 = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if let Some(q) = quote {
            match c {
                '\\' if !escaped => {
                    escaped = true;
                    continue;
                }
                '\n' if q != '`' => quote = None,
                _ if c == q && !escaped => quote = None,
                _ => {}
            }
            escaped = false;
            continue;
        }
        match c {
            '"' | '`' => quote = Some(c),
            '\'' if !rust => quote = Some(c),
            '/' if chars.peek().is_some_and(|(_, n)| *n == '/') => {
                // Line comment: skip to the line end.
                for (_, n) in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
            }
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth < 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// Without a grammar: the longest prefix (whole, or cut at a line end) whose brackets never close
/// more than they opened; on one line, trailing unmatched closers are dropped.
fn balanced_prefix(text: &str, single_line: bool) -> usize {
    let mut depth: i64 = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth < 0 {
                    return if single_line {
                        i
                    } else {
                        text.get(..i).and_then(|t| t.rfind('\n')).unwrap_or(i)
                    };
                }
            }
            _ => {}
        }
    }
    text.len()
}

/// Byte offsets in `line` where a token ends (a word or a punctuation run followed by something else).
fn token_ends(line: &str) -> Vec<usize> {
    #[derive(PartialEq)]
    enum Class {
        Word,
        Space,
        Punct,
    }
    let class = |c: char| {
        if c.is_alphanumeric() || c == '_' {
            Class::Word
        } else if c.is_whitespace() {
            Class::Space
        } else {
            Class::Punct
        }
    };
    let mut out = Vec::new();
    let mut prev: Option<(Class, char)> = None;
    for (i, c) in line.char_indices() {
        if let Some((p, pc)) = &prev
            && *p != Class::Space
            && (class(c) != *p || *p == Class::Punct && "([{)]};,".contains(*pc))
        {
            out.push(i);
        }
        prev = Some((class(c), c));
    }
    out
}

fn trim_end_len(text: &str, end: usize) -> usize {
    text.get(..end).map_or(end, |t| t.trim_end().len())
}

/// The file's indentation: tabs when most indented lines start with a tab, else spaces of the most
/// common step between consecutive indentation levels.
fn file_indent(prefix: &str, suffix: &str) -> Indent {
    let (mut tabs, mut spaces) = (0usize, 0usize);
    // The cursor's own line counts even when it holds only indentation.
    let cursor_line = prefix.rsplit('\n').next().unwrap_or_default();
    if cursor_line.trim().is_empty() {
        tabs += usize::from(cursor_line.starts_with('\t'));
        spaces += usize::from(cursor_line.starts_with(' '));
    }
    let mut steps = [0usize; 9];
    let mut last = 0usize;
    for line in prefix.split('\n').chain(suffix.split('\n')) {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with('\t') {
            tabs += 1;
        } else if line.starts_with(' ') {
            spaces += 1;
        }
        let width = line.len() - line.trim_start_matches(' ').len();
        if width > last && width - last <= 8 {
            steps[width - last] += 1;
        }
        last = width;
    }
    if tabs > spaces {
        return Indent::Tabs;
    }
    if tabs == 0 && spaces == 0 {
        return Indent::Unknown;
    }
    let step = (2..=8)
        .max_by_key(|&s| (steps[s], usize::from(s == 4)))
        .unwrap_or(4);
    Indent::Spaces(if steps[step] == 0 { 4 } else { step })
}

/// Converts leading tabs to spaces or spaces to tabs, in lines after the first, to the file's style.
fn reindent(proposal: &str, style: Indent) -> String {
    let mut out = String::with_capacity(proposal.len());
    for (i, line) in proposal.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let body = line.trim_start_matches([' ', '\t']);
        let lead = before(line, line.len() - body.len());
        if i == 0 || lead.is_empty() {
            out.push_str(line);
            continue;
        }
        match style {
            Indent::Tabs if lead.contains(' ') => {
                let width: usize = lead.chars().map(|c| if c == '\t' { 4 } else { 1 }).sum();
                out.extend(std::iter::repeat_n('\t', width / 4));
                out.extend(std::iter::repeat_n(' ', width % 4));
            }
            Indent::Spaces(w) if lead.contains('\t') => {
                out.extend(
                    lead.chars()
                        .flat_map(|c| std::iter::repeat_n(' ', if c == '\t' { w } else { 1 })),
                );
            }
            _ => out.push_str(lead),
        }
        out.push_str(body);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::string_slice)]
mod tests {
    use super::*;

    #[test]
    fn indentation_follows_the_file() {
        assert_eq!(file_indent("fn a() {\n\tx();\n}\n", ""), Indent::Tabs);
        assert_eq!(
            file_indent("def a():\n  if x:\n    y()\n", ""),
            Indent::Spaces(2)
        );
        assert_eq!(
            reindent("x\n    y\n        z", Indent::Tabs),
            "x\n\ty\n\t\tz"
        );
        assert_eq!(reindent("x\n\ty", Indent::Spaces(2)), "x\n  y");
    }

    #[test]
    fn brace_block_end_ignores_brackets_in_strings_and_comments() {
        assert_eq!(brace_block_end("a(\"}\")\n}\nb", false), Some(8));
        assert_eq!(brace_block_end("a // }\n}", false), Some(8));
        assert_eq!(brace_block_end("if x { y }", false), None);
    }

    #[test]
    fn generation_can_stop_once_the_unit_is_closed() {
        let reg = crate::syntax::Registry::builtin().unwrap();
        let rust = reg.by_name("rust").ok();
        let mut block = Trimmer::new("fn f() {\n    ", "\n}\n", rust);
        assert!(!block.is_closed("let x = 1;\n    let y"));
        assert!(
            !block.is_closed("let x = 1;\n}"),
            "the closing line may still grow"
        );
        assert!(block.is_closed("let x = 1;\n}\n\nfn g"));
        let mut line = Trimmer::new("let v = ", ";\n", rust);
        assert!(line.single_line());
        assert!(!line.is_closed("compute("));
        assert!(line.is_closed("compute();\n"));
        let py = reg.by_name("python").ok();
        let mut body = Trimmer::new("def f():\n    ", "\n", py);
        assert!(!body.is_closed("x = 1\n    return x"));
        assert!(body.is_closed("x = 1\n    return x\n\ndef g():\n"));
        // Finishing a line: closed at its end when the line is valid alone, else it goes on.
        let mut finish = Trimmer::new("fn f() {\n    let x = compute", "\n}\n", rust);
        assert!(!finish.is_closed("(1);"));
        assert!(finish.is_closed("(1);\n"));
        let mut opens = Trimmer::new("fn f(x: bool) {\n    if x", "\n}\n", rust);
        assert!(!opens.is_closed(" {\n"));
        assert!(!opens.is_closed(" {\n        g();\n"));
        // A loop: closed once the repeated line is whole.
        let mut top = Trimmer::new("pub mod a;\n", "\n", rust);
        assert!(!top.is_closed("pub mod b;\npub mod b;"));
        assert!(top.is_closed("pub mod b;\npub mod b;\n"));
    }

    #[test]
    fn the_window_is_the_item_around_the_cursor() {
        let reg = crate::syntax::Registry::builtin().unwrap();
        let rust = reg.by_name("rust").ok();
        let items: String = (0..400)
            .map(|i| format!("fn f{i}() {{\n    let x = {i};\n}}\n"))
            .collect();
        let at = items.find("fn f200").unwrap() + "fn f200() {\n".len();
        let (prefix, suffix) = items.split_at(at);
        let t = Trimmer::new(prefix, suffix, rust);
        let (ws, we) = t.window;
        assert!(
            items[ws..we].starts_with("fn f200()") && items[ws..we].ends_with('}'),
            "{:?}",
            &items[ws..we]
        );
    }

    #[test]
    fn token_ends_split_words_and_punctuation() {
        assert_eq!(token_ends("foo(a, b)"), vec![3, 4, 5, 6, 8]);
    }
}
