//! The editor driven through its real event handling and drawing, on ratatui's `TestBackend`, with
//! the model replaced by replies the test writes: what a user types and sees, screen by screen.

use std::path::Path;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use infill::model::score::TokenScore;
use infill::syntax::Registry;
use infill::text::Pos;
use infill::tui::{self, App, Config, Event, FileInfo};
use infill::worker::{AdapterRequest, Job, MemoryRequest, Proposal, Reply, Request, ScoreRequest};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::{Color, Modifier};

const W: u16 = 60;
const H: u16 = 12;

struct Ed {
    app: App,
    term: Terminal<TestBackend>,
    now: Instant,
    requests: Vec<Request>,
    scores: Vec<ScoreRequest>,
    memories: Vec<MemoryRequest>,
    adapters: Vec<AdapterRequest>,
    _dir: Option<tempfile::TempDir>,
}

fn file_info(path: &Path) -> FileInfo {
    FileInfo {
        path: path.to_path_buf(),
        language: Registry::builtin().unwrap().for_path(path),
        disk: infill::tui::DiskStamp::of(path),
        recovery: None,
    }
}

fn config() -> Config {
    Config::parse("", false).unwrap()
}

impl Ed {
    /// An editor on `text` (file `name` in a temporary directory, written to disk), model ready.
    fn new(name: &str, text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let app = App::new(text, file_info(&path), config(), None);
        Self::with_app(app, Some(dir))
    }

    fn with_app(mut app: App, dir: Option<tempfile::TempDir>) -> Self {
        let now = Instant::now();
        app.handle(
            Event::Worker(Reply::Ready {
                model: "fixture".into(),
            }),
            now,
        );
        let mut ed = Self {
            app,
            term: Terminal::new(TestBackend::new(W, H)).unwrap(),
            now,
            requests: Vec::new(),
            scores: Vec::new(),
            memories: Vec::new(),
            adapters: Vec::new(),
            _dir: dir,
        };
        ed.collect();
        ed.draw();
        ed
    }

    fn path(&self) -> std::path::PathBuf {
        self._dir.as_ref().unwrap().path().join("a.py")
    }

    fn key(&mut self, code: KeyCode, mods: KeyModifiers) -> &mut Self {
        self.app
            .handle(Event::Key(KeyEvent::new(code, mods)), self.now);
        self.collect();
        self.draw();
        self
    }

    fn press(&mut self, code: KeyCode) -> &mut Self {
        self.key(code, KeyModifiers::NONE)
    }

    fn ctrl(&mut self, c: char) -> &mut Self {
        self.key(KeyCode::Char(c), KeyModifiers::CONTROL)
    }

    fn alt(&mut self, code: KeyCode) -> &mut Self {
        self.key(code, KeyModifiers::ALT)
    }

    fn typed(&mut self, s: &str) -> &mut Self {
        for c in s.chars() {
            let code = if c == '\n' {
                KeyCode::Enter
            } else {
                KeyCode::Char(c)
            };
            self.press(code);
        }
        self
    }

    /// Lets the debounce pass.
    fn idle(&mut self) -> &mut Self {
        self.now += Duration::from_millis(500);
        self.app.tick(self.now);
        self.collect();
        self.draw();
        self
    }

    fn collect(&mut self) {
        for job in self.app.take_requests() {
            match job {
                Job::Complete(r) => self.requests.push(r),
                Job::Score(r) => self.scores.push(r),
                Job::Lines(r) => panic!("the editor asked for line scores: {r:?}"),
                Job::Memory(r) => self.memories.push(r),
                Job::Adapter(r) => self.adapters.push(r),
            }
        }
    }

    fn reply(&mut self, reply: Reply) -> &mut Self {
        self.app.handle(Event::Worker(reply), self.now);
        self.collect();
        self.draw();
        self
    }

    fn done(&mut self, id: u64, text: &str) -> &mut Self {
        self.done_with(id, text, Vec::new())
    }

    /// A finished proposal whose tokens end at the given bytes with the given probabilities.
    fn done_with(&mut self, id: u64, text: &str, confidence: Vec<(usize, f32)>) -> &mut Self {
        self.reply(Reply::Done {
            id,
            proposal: Proposal {
                text: text.into(),
                tokens: 3,
                first_token_ms: 12.0,
                total_ms: 30.0,
                tokens_per_second: 90.0,
                stop: infill::model::generate::StopReason::EndToken,
                confidence,
                cache: Default::default(),
                from_memory: 0.0,
                source: None,
            },
        })
    }

    /// Asks for a proposal now (Ctrl-Space) and answers it with `text`.
    fn propose(&mut self, text: &str) -> &mut Self {
        self.key(KeyCode::Char(' '), KeyModifiers::CONTROL);
        let id = self.requests.last().expect("Ctrl-Space asks at once").id;
        self.done(id, text)
    }

    fn draw(&mut self) {
        let area = self.term.size().unwrap();
        self.app.layout(area.width, area.height);
        let app = &self.app;
        self.term.draw(|f| app.draw(f)).unwrap();
    }

    fn screen(&self) -> Vec<String> {
        let buf = self.term.backend().buffer();
        (0..H)
            .map(|y| {
                let mut s = String::new();
                let mut x = 0;
                while x < W {
                    let symbol = buf[(x, y)].symbol();
                    s.push_str(symbol);
                    // A wide character covers the next cell too.
                    x += infill::text::display::width(symbol, 1).max(1) as u16;
                }
                s.trim_end().to_owned()
            })
            .collect()
    }

    /// The cells of row `y` from column `x` on whose text is `text`, and their style.
    fn style_of(&self, y: u16, text: &str) -> ratatui::style::Style {
        let row = &self.screen()[y as usize];
        let x = row
            .find(text)
            .unwrap_or_else(|| panic!("{text:?} not on row {y}: {row:?}"));
        let col = infill::text::display::width(&row[..x], 1) as u16;
        self.term.backend().buffer()[(col, y)].style()
    }

    fn text(&self) -> String {
        self.app.document().text()
    }
}

#[test]
fn typing_waits_for_idle_then_asks_once_with_the_text_around_the_cursor() {
    let mut ed = Ed::new("a.py", "def add(a, b):\n\nprint(add(1, 2))\n");
    ed.press(KeyCode::Down).typed("    re");
    assert!(ed.requests.is_empty(), "no request before the debounce");
    ed.idle();
    assert_eq!(ed.requests.len(), 1);
    let r = &ed.requests[0];
    assert_eq!(r.prefix, "def add(a, b):\n    re");
    assert_eq!(r.suffix, "\nprint(add(1, 2))\n");
    assert_eq!(r.language.map(|l| l.name.as_str()), Some("python"));
    assert!(ed.app.is_thinking());
    assert!(ed.screen()[H as usize - 2].contains("thinking"));
}

#[test]
fn ghost_text_is_dim_streams_in_and_tab_makes_it_real_text() {
    let mut ed = Ed::new("a.py", "def add(a, b):\n    ");
    ed.press(KeyCode::Down).press(KeyCode::End);
    ed.key(KeyCode::Char(' '), KeyModifiers::CONTROL);
    let id = ed.requests[0].id;
    ed.reply(Reply::Partial {
        id,
        text: "return a".into(),
    });
    assert_eq!(ed.screen()[1], " 2     return a");
    let ghost = ed.style_of(1, "return a");
    assert!(ghost.add_modifier.contains(Modifier::DIM), "{ghost:?}");
    assert_eq!(ghost.fg, Some(Color::DarkGray));
    assert_eq!(
        ed.text(),
        "def add(a, b):\n    ",
        "ghost text is not in the document"
    );
    ed.done(id, "return a + b");
    assert_eq!(ed.screen()[1], " 2     return a + b");
    assert!(ed.screen()[H as usize - 2].contains("12 ms · 90 tok/s"));

    ed.press(KeyCode::Tab);
    assert_eq!(ed.text(), "def add(a, b):\n    return a + b");
    assert_eq!(ed.app.cursor(), Pos::new(1, 16));
    let accepted = ed.style_of(1, "a + b");
    assert!(
        !accepted.add_modifier.contains(Modifier::DIM),
        "{accepted:?}"
    );
    // One undo step takes the whole proposal back.
    ed.ctrl('z');
    assert_eq!(ed.text(), "def add(a, b):\n    ");
}

#[test]
fn accept_word_and_accept_line_take_part_of_the_proposal() {
    let mut ed = Ed::new("a.py", "x = ");
    ed.press(KeyCode::End)
        .propose("compute(a, b)\ny = 2\nz = 3");
    ed.key(KeyCode::Right, KeyModifiers::CONTROL);
    assert_eq!(ed.text(), "x = compute");
    assert_eq!(ed.app.ghost_text(), "(a, b)\ny = 2\nz = 3");
    ed.key(KeyCode::Down, KeyModifiers::CONTROL);
    assert_eq!(ed.text(), "x = compute(a, b)");
    // The proposal now starts on a new line: accepting a line takes that line.
    ed.alt(KeyCode::Enter);
    assert_eq!(ed.text(), "x = compute(a, b)\ny = 2");
    ed.press(KeyCode::Tab);
    assert_eq!(ed.text(), "x = compute(a, b)\ny = 2\nz = 3");
    assert_eq!(ed.app.ghost_text(), "");
    ed.idle();
    assert_eq!(
        ed.requests.len(),
        2,
        "accepting all asks for what comes next"
    );
}

#[test]
fn typing_what_the_ghost_shows_keeps_the_rest_without_asking_again() {
    let mut ed = Ed::new("a.py", "");
    ed.propose("return a + b");
    let asked = ed.requests.len();
    ed.typed("ret");
    assert_eq!(ed.app.ghost_text(), "urn a + b");
    ed.idle();
    assert_eq!(ed.requests.len(), asked, "type-through sends no request");
    // A character that differs drops the proposal and asks again after the debounce.
    ed.typed("x");
    assert_eq!(ed.app.ghost_text(), "");
    ed.idle();
    assert_eq!(ed.requests.len(), asked + 1);
    assert_eq!(ed.text(), "retx");
}

/// A proposal is remembered for the text around the cursor: deleting a character and typing it
/// again, or undoing back, shows it at once without asking the model.
#[test]
fn typing_back_over_a_deleted_character_shows_the_earlier_proposal_at_once() {
    let mut ed = Ed::new("a.py", "def f(a, b):\n    ");
    ed.ctrl('g')
        .typed("2")
        .press(KeyCode::Enter)
        .press(KeyCode::End);
    ed.typed("r").propose("eturn a + b");
    let asked = ed.requests.len();
    ed.press(KeyCode::Backspace);
    assert_eq!(ed.app.ghost_text(), "");
    ed.typed("r");
    assert_eq!(ed.app.ghost_text(), "eturn a + b", "shown at once");
    assert!(ed.screen().concat().contains("return a + b"));
    ed.idle();
    assert_eq!(
        ed.requests.len(),
        asked,
        "no request for a remembered proposal"
    );
    // Tab accepts it like any other.
    ed.press(KeyCode::Tab);
    assert_eq!(ed.text(), "def f(a, b):\n    return a + b");
    // Undoing the accept goes back to where it was shown, and so does the proposal.
    ed.ctrl('z');
    assert_eq!(ed.text(), "def f(a, b):\n    r");
    assert_eq!(ed.app.ghost_text(), "eturn a + b");
    // Other text is not matched by it: typing something else asks the model.
    ed.press(KeyCode::Backspace).typed("x").idle();
    assert_eq!(ed.app.ghost_text(), "");
    assert_eq!(ed.requests.len(), asked + 1);
}

/// `infill edit --adapter A --adapter B`: A goes on once the model is ready, before anything is
/// proposed; F7 goes to B, then to the base model, then to A again, each a request to the worker
/// (the model is not loaded again); what the model before proposed is neither shown nor
/// remembered, and an adapter that fails to apply leaves the one before, with the reason.
#[test]
fn f7_switches_adapters_and_forgets_what_the_model_before_proposed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.py");
    std::fs::write(&path, "def f(a, b):\n    ").unwrap();
    let mut app = App::new("def f(a, b):\n    ", file_info(&path), config(), None);
    let (tuned, other) = (dir.path().join("run/adapter"), dir.path().join("b"));
    app.set_adapters(vec![tuned.clone(), other.clone()]);
    let mut ed = Ed::with_app(app, Some(dir));
    let first = ed
        .adapters
        .pop()
        .expect("the first adapter, once the model is ready");
    assert_eq!(first.dir.as_deref(), Some(tuned.as_path()));
    assert!(ed.screen().concat().contains("switching adapter…"));
    ed.reply(Reply::Adapter { id: first.id });
    assert!(
        ed.screen().concat().contains("fixture + run │"),
        "{:?}",
        ed.screen()
    );
    ed.ctrl('g')
        .typed("2")
        .press(KeyCode::Enter)
        .press(KeyCode::End);
    ed.typed("r").propose("eturn a + b");
    assert_eq!(ed.app.ghost_text(), "eturn a + b");
    // F7: the other adapter; the proposal goes, and typing back to it does not bring it back.
    ed.press(KeyCode::F(7));
    assert_eq!(ed.app.ghost_text(), "");
    let second = ed.adapters.pop().unwrap();
    assert_eq!(second.dir.as_deref(), Some(other.as_path()));
    let asked = ed.requests.len();
    ed.reply(Reply::Adapter { id: second.id });
    assert!(
        ed.screen().concat().contains("fixture + b │"),
        "{:?}",
        ed.screen()
    );
    assert_eq!(
        ed.requests.len(),
        asked + 1,
        "the adapted model is asked at once"
    );
    ed.press(KeyCode::Backspace).typed("r");
    assert_eq!(
        ed.app.ghost_text(),
        "",
        "the model before's proposal is forgotten"
    );
    // F7 after the last: the base model alone.
    ed.press(KeyCode::F(7));
    let base = ed.adapters.pop().unwrap();
    assert_eq!(base.dir, None);
    ed.reply(Reply::Adapter { id: base.id });
    let screen = ed.screen().concat();
    assert!(
        screen.contains("fixture │") && !screen.contains(" + "),
        "{screen}"
    );
    // Then the first again; it fails here, and the base stays, with the reason said.
    ed.press(KeyCode::F(7));
    let again = ed.adapters.pop().unwrap();
    assert_eq!(again.dir.as_deref(), Some(tuned.as_path()));
    ed.reply(Reply::Failed {
        id: again.id,
        message: "no adapter_config.json".into(),
    });
    let screen = ed.screen().concat();
    assert!(
        screen.contains("adapter run not applied: no adapter_config.json"),
        "{screen}"
    );
    assert!(
        screen.contains("fixture │") && !screen.contains("fixture +"),
        "{screen}"
    );
    // Without adapters F7 says how to give some.
    let mut plain = Ed::new("a.py", "x");
    plain.press(KeyCode::F(7));
    assert!(plain.adapters.is_empty());
    assert!(plain.screen().concat().contains("--adapter"));
}

#[test]
fn a_keystroke_cancels_the_generation_and_its_late_reply_is_dropped() {
    let mut ed = Ed::new("a.py", "");
    ed.typed("a").idle();
    let first = ed.requests[0].clone();
    ed.typed("b");
    assert!(first.is_cancelled(), "typing cancels the request in flight");
    ed.done(first.id, "STALE");
    assert_eq!(ed.app.ghost_text(), "");
    assert!(!ed.screen().concat().contains("STALE"));
    ed.idle();
    let second = ed.requests[1].clone();
    assert!(!second.is_cancelled());
    assert_eq!(second.prefix, "ab");
    // Esc dismisses a proposal and cancels its request.
    ed.press(KeyCode::Esc);
    assert!(second.is_cancelled());
}

#[test]
fn a_multi_line_proposal_pushes_the_following_lines_down() {
    let mut ed = Ed::new("a.py", "def f():\n    \nprint(f())\n");
    ed.press(KeyCode::Down)
        .press(KeyCode::End)
        .propose("x = 1\n    return x");
    let screen = ed.screen();
    assert_eq!(screen[0], " 1 def f():");
    assert_eq!(screen[1], " 2     x = 1");
    assert_eq!(
        screen[2], "       return x",
        "a virtual line without a number"
    );
    assert_eq!(screen[3], " 3 print(f())");
    assert!(
        ed.style_of(2, "return x")
            .add_modifier
            .contains(Modifier::DIM)
    );
}

#[test]
fn the_rest_of_the_line_follows_a_proposal_made_mid_line() {
    let mut ed = Ed::new("a.py", "foo()\n");
    ed.press(KeyCode::Right)
        .press(KeyCode::Right)
        .press(KeyCode::Right)
        .press(KeyCode::Right);
    ed.propose("a, b");
    assert_eq!(ed.screen()[0], " 1 foo(a, b)");
    assert!(!ed.style_of(0, ")").add_modifier.contains(Modifier::DIM));
}

#[test]
fn alternatives_are_sampled_on_demand_and_cycle() {
    let mut ed = Ed::new("a.py", "");
    ed.propose("first");
    ed.alt(KeyCode::Char(']'));
    let alt = ed.requests.last().unwrap().clone();
    assert!(
        alt.settings.sampling.temperature > 0.0,
        "alternatives are sampled"
    );
    assert_eq!(
        ed.app.ghost_text(),
        "first",
        "shown until the alternative arrives"
    );
    ed.done(alt.id, "second");
    assert_eq!(ed.app.ghost_text(), "second");
    assert!(
        ed.screen()[H as usize - 2].contains("2/2"),
        "{:?}",
        ed.screen()[H as usize - 2]
    );
    // Alt-p and Alt-n (and Alt-]): keys every terminal delivers, unlike Alt-[ (ESC [).
    ed.alt(KeyCode::Char('p'));
    assert_eq!(ed.app.ghost_text(), "first");
    ed.alt(KeyCode::Char('n'));
    assert_eq!(ed.app.ghost_text(), "second");
    ed.alt(KeyCode::Char('p'));
    ed.alt(KeyCode::Char(']'));
    assert_eq!(ed.app.ghost_text(), "second");
}

#[test]
fn saving_writes_the_document_not_the_ghost_and_keeps_crlf() {
    let mut ed = Ed::new("a.py", "a = 1\r\nb = 2\r\n");
    ed.press(KeyCode::Down)
        .press(KeyCode::End)
        .typed("\nc = 3")
        .propose(" + 4");
    assert_eq!(ed.app.ghost_text(), " + 4");
    ed.ctrl('s');
    let disk = std::fs::read(ed.path()).unwrap();
    assert_eq!(disk, b"a = 1\r\nb = 2\r\nc = 3\r\n");
    assert!(!ed.screen()[H as usize - 2].contains("[+]"));
    assert!(ed.app.message().unwrap().contains("saved"));
}

/// A new file is saved as a POSIX text file (its last line ends in a newline); a file keeps its
/// own convention, a missing final newline included.
#[test]
fn saving_ends_a_new_file_with_a_newline_and_keeps_a_files_convention() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.py");
    let app = App::new("", file_info(&path), config(), None);
    let mut ed = Ed::with_app(app, None);
    ed.typed("x = 1").ctrl('s');
    assert_eq!(std::fs::read(&path).unwrap(), b"x = 1\n");
    let mut ed = Ed::new("a.py", "y = 2");
    ed.press(KeyCode::End).typed("0").ctrl('s');
    assert_eq!(std::fs::read(ed.path()).unwrap(), b"y = 20");
}

#[test]
fn a_file_changed_on_disk_is_not_overwritten_without_asking() {
    let mut ed = Ed::new("a.py", "old\n");
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(ed.path(), "someone else's text, longer\n").unwrap();
    ed.typed("x").ctrl('s');
    assert!(ed.app.message().unwrap().contains("changed on disk"));
    assert_eq!(
        std::fs::read_to_string(ed.path()).unwrap(),
        "someone else's text, longer\n"
    );
    ed.ctrl('s');
    assert_eq!(std::fs::read_to_string(ed.path()).unwrap(), "xold\n");
}

#[test]
fn a_failed_save_says_why_and_keeps_the_changes() {
    let mut ed = Ed::new("a.py", "keep\n");
    let blocker = ed
        .path()
        .with_file_name(format!(".a.py.infill-tmp{}", std::process::id()));
    std::fs::create_dir(&blocker).unwrap();
    ed.typed("new ").ctrl('s');
    let msg = ed.app.message().unwrap().to_owned();
    assert!(
        msg.starts_with("not saved") && msg.contains("a.py"),
        "{msg}"
    );
    assert!(ed.app.document().is_modified());
    assert_eq!(std::fs::read_to_string(ed.path()).unwrap(), "keep\n");
    assert!(ed.screen()[H as usize - 1].contains("not saved"));
}

#[test]
fn quitting_with_unsaved_changes_asks_first() {
    let mut ed = Ed::new("a.py", "");
    ed.typed("x").ctrl('q');
    assert!(!ed.app.should_quit());
    assert!(ed.screen()[H as usize - 1].contains("unsaved changes"));
    ed.press(KeyCode::Left).ctrl('q');
    assert!(!ed.app.should_quit(), "another key cancels the question");
    ed.ctrl('q').ctrl('q');
    assert!(ed.app.should_quit());
}

#[test]
fn editing_keys_do_what_editors_do() {
    let mut ed = Ed::new("a.py", "def f(x):");
    ed.press(KeyCode::End).typed("\nif x:\nreturn 1");
    assert_eq!(ed.text(), "def f(x):\n    if x:\n        return 1");
    ed.press(KeyCode::Home);
    assert_eq!(
        ed.app.cursor(),
        Pos::new(2, 8),
        "Home goes to the first non-blank"
    );
    ed.key(KeyCode::End, KeyModifiers::SHIFT);
    ed.ctrl('x');
    assert_eq!(ed.text(), "def f(x):\n    if x:\n        ");
    ed.ctrl('v').ctrl('v');
    assert_eq!(ed.text(), "def f(x):\n    if x:\n        return 1return 1");
    ed.key(KeyCode::Backspace, KeyModifiers::CONTROL);
    assert_eq!(ed.text(), "def f(x):\n    if x:\n        return 1return ");
    ed.ctrl('z');
    assert_eq!(ed.text(), "def f(x):\n    if x:\n        return 1return 1");
    ed.ctrl('y');
    assert_eq!(ed.text(), "def f(x):\n    if x:\n        return 1return ");
    ed.ctrl('a').typed("z");
    assert_eq!(ed.text(), "z");
    // Unbound Alt chords type nothing; AltGr as Ctrl+Alt (Windows) is text.
    ed.alt(KeyCode::Char('o'));
    ed.key(
        KeyCode::Char('@'),
        KeyModifiers::CONTROL | KeyModifiers::ALT,
    );
    assert_eq!(ed.text(), "z@");
    // Brackets: Enter between them opens an indented line.
    let mut ed = Ed::new("a.rs", "fn f() {}");
    ed.press(KeyCode::End)
        .press(KeyCode::Left)
        .press(KeyCode::Enter);
    assert_eq!(ed.text(), "fn f() {\n    \n}");
    assert_eq!(ed.app.cursor(), Pos::new(1, 4));
}

#[test]
fn tab_indents_selected_lines_and_shift_tab_dedents() {
    let mut ed = Ed::new("a.py", "a\nb\nc");
    ed.key(KeyCode::Down, KeyModifiers::SHIFT)
        .key(KeyCode::Down, KeyModifiers::SHIFT);
    ed.key(KeyCode::End, KeyModifiers::SHIFT)
        .press(KeyCode::Tab);
    assert_eq!(ed.text(), "    a\n    b\n    c");
    ed.key(KeyCode::BackTab, KeyModifiers::SHIFT);
    assert_eq!(ed.text(), "a\nb\nc");
    // A selection that ends at the start of a line leaves that line alone.
    let mut ed = Ed::new("a.py", "a\nb\nc");
    ed.key(KeyCode::Down, KeyModifiers::SHIFT)
        .key(KeyCode::Down, KeyModifiers::SHIFT);
    ed.press(KeyCode::Tab);
    assert_eq!(ed.text(), "    a\n    b\nc");
}

#[test]
fn find_moves_to_matches_and_wraps() {
    let mut ed = Ed::new("a.py", "one\ntwo\nOne more one\n");
    ed.ctrl('f').typed("one");
    assert_eq!(ed.app.cursor(), Pos::new(0, 3));
    ed.press(KeyCode::Enter);
    assert_eq!(
        ed.app.cursor(),
        Pos::new(2, 3),
        "lowercase queries ignore case"
    );
    ed.press(KeyCode::Enter);
    assert_eq!(ed.app.cursor(), Pos::new(2, 12));
    ed.press(KeyCode::Enter);
    assert_eq!(ed.app.cursor(), Pos::new(0, 3), "wraps around");
    ed.typed("x");
    assert!(ed.screen()[H as usize - 1].contains("no match"));
    // Esc leaves the match selected: typing replaces it.
    ed.press(KeyCode::Esc).typed("!");
    assert_eq!(ed.text(), "!\ntwo\nOne more one\n");
    // Ctrl-G goes to a line (its first non-blank); out-of-range numbers stop at the last line.
    ed.ctrl('g').typed("2");
    assert!(ed.screen()[H as usize - 1].contains("Go to line: 2"));
    ed.press(KeyCode::Enter);
    assert_eq!(ed.app.cursor(), Pos::new(1, 0));
    ed.ctrl('g').typed("99\n");
    assert_eq!(ed.app.cursor(), Pos::new(3, 0));
}

#[test]
fn wide_characters_and_tabs_keep_the_cursor_in_its_cell() {
    let mut ed = Ed::new("a.py", "\t日本x\n");
    ed.press(KeyCode::End);
    // Gutter is 3 cells; tab is 4, each ideograph 2, x 1: the end of the line is column 3+9.
    assert_eq!(ed.term.get_cursor_position().unwrap(), (12, 0).into());
    assert_eq!(ed.screen()[0], " 1     日本x");
    ed.press(KeyCode::Left).press(KeyCode::Left);
    assert_eq!(
        ed.term.get_cursor_position().unwrap(),
        (9, 0).into(),
        "before 本"
    );
    ed.press(KeyCode::Down).press(KeyCode::Up);
    assert_eq!(
        ed.app.cursor(),
        Pos::new(0, 4),
        "the goal column survives a trip down and up"
    );
}

#[test]
fn no_color_keeps_ghost_text_distinct_without_colours() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.py");
    let app = App::new("", file_info(&path), Config::parse("", true).unwrap(), None);
    let mut ed = Ed::with_app(app, Some(dir));
    ed.typed("x = ").propose("1");
    let s = ed.style_of(0, "1");
    assert!(s.add_modifier.contains(Modifier::DIM));
    assert!(matches!(s.fg, None | Some(Color::Reset)), "{s:?}");
}

#[test]
fn without_a_model_the_editor_still_edits_and_says_why() {
    let mut ed = Ed::new("a.py", "");
    ed.reply(Reply::Unavailable {
        message: "no default model is built into this infill; pass --model DIR".into(),
    });
    ed.typed("abc").idle();
    assert!(ed.requests.is_empty());
    assert_eq!(ed.text(), "abc");
    assert!(ed.screen()[H as usize - 2].contains("no model"));
}

#[test]
fn a_panic_writes_the_unsaved_text_to_a_recovery_file_that_the_next_open_offers() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.py");
    std::fs::write(&path, "saved\n").unwrap();
    let recovery = state.path().join("recovery").join("a.py");
    let mut info = file_info(&path);
    info.recovery = Some(recovery.clone());
    let mut app = App::new("saved\n", info.clone(), config(), None);
    let err = tui::guarded(&mut app, |app| {
        app.handle(
            Event::Key(KeyEvent::new(KeyCode::Char('!'), KeyModifiers::NONE)),
            Instant::now(),
        );
        panic!("simulated bug");
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("simulated bug") && err.contains("recovery"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&recovery).unwrap(), "!saved\n");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "saved\n",
        "the original is untouched"
    );

    // Reopening offers the recovered text; `r` restores it, undo goes back to the disk version.
    let offer = infill::tui::RecoveryOffer {
        path: recovery.clone(),
        text: std::fs::read_to_string(&recovery).unwrap(),
        written: None,
    };
    let app = App::new("saved\n", info, config(), Some(offer));
    let mut ed = Ed::with_app(app, None);
    assert!(ed.screen()[H as usize - 1].contains("[r] restore"));
    ed.typed("r");
    assert_eq!(ed.text(), "!saved\n");
    assert!(ed.app.document().is_modified());
    ed.ctrl('z');
    assert_eq!(ed.text(), "saved\n");
}

#[test]
fn a_signal_ends_the_loop_and_keeps_the_unsaved_text() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.py");
    let mut info = file_info(&path);
    info.recovery = Some(state.path().join("r.py"));
    let mut app = App::new("", info, config(), None);
    let (tx, rx) = std::sync::mpsc::channel();
    for c in "hello".chars() {
        tx.send(Event::Key(KeyEvent::new(
            KeyCode::Char(c),
            KeyModifiers::NONE,
        )))
        .unwrap();
    }
    tx.send(Event::Terminate).unwrap();
    let mut term = Terminal::new(TestBackend::new(W, H)).unwrap();
    let err = tui::guarded(&mut app, |app| {
        tui::event_loop(&mut term, app, &rx, &mut |_| {}, &mut |_| {})
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("signal"), "{err}");
    assert_eq!(
        std::fs::read_to_string(state.path().join("r.py")).unwrap(),
        "hello"
    );
    assert!(!path.exists(), "the file itself was never written");
}

#[test]
fn the_event_loop_draws_every_batch_and_sends_requests_after_the_debounce() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.py");
    let mut cfg = config();
    cfg.debounce_ms = 1;
    let mut app = App::new("", file_info(&path), cfg, None);
    app.handle(
        Event::Worker(Reply::Ready { model: "m".into() }),
        Instant::now(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    tx.send(Event::Key(KeyEvent::new(
        KeyCode::Char('x'),
        KeyModifiers::NONE,
    )))
    .unwrap();
    let mut term = Terminal::new(TestBackend::new(W, H)).unwrap();
    let mut sent = Vec::new();
    let mut copied: Vec<String> = Vec::new();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        drop(tx);
    });
    tui::event_loop(&mut term, &mut app, &rx, &mut |r| sent.push(r), &mut |t| {
        copied.push(t.to_owned())
    })
    .unwrap();
    sender.join().unwrap();
    assert!(copied.is_empty());
    assert_eq!(sent.len(), 1);
    let Job::Complete(r) = &sent[0] else {
        panic!("a completion request")
    };
    assert_eq!(r.prefix, "x");
    let row: String = (0..W)
        .map(|x| term.backend().buffer()[(x, 0)].symbol().to_owned())
        .collect();
    assert!(row.starts_with(" 1 x"), "{row:?}");
}

#[test]
fn a_config_file_with_a_mistake_is_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "[keys]\naccept = \"hyperkey\"\n").unwrap();
    let err = Config::load(&cfg, true).unwrap_err().to_string();
    assert!(
        err.contains("config.toml") && err.contains("hyperkey"),
        "{err}"
    );
    let missing = Config::load(&dir.path().join("none.toml"), true)
        .unwrap_err()
        .to_string();
    assert!(missing.contains("none.toml"), "{missing}");
    assert!(Config::load(&dir.path().join("none.toml"), false).is_ok());
}

#[test]
fn binary_files_and_directories_are_refused_before_the_terminal_changes() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("x.py");
    std::fs::write(&bin, b"\x00\x01").unwrap();
    let err = tui::open(&bin, config()).err().unwrap().to_string();
    assert!(err.contains("binary"), "{err}");
    let err = tui::open(dir.path(), config()).err().unwrap().to_string();
    assert!(err.contains("directory"), "{err}");
    let new = tui::open(&dir.path().join("new.rs"), config()).unwrap();
    assert_eq!(new.document().text(), "");
}

/// A scored token of `text` at `start..end` with rank `rank`.
fn token(text: &str, start: usize, end: usize, id: u32, rank: usize) -> TokenScore {
    TokenScore {
        start,
        end,
        text: text[start..end].to_owned(),
        id,
        logprob: (1.0f32 / rank as f32).ln(),
        rank,
        entropy_bits: 1.5,
        top: vec![infill::model::generate::Alternative {
            text: "return".into(),
            id: 7,
            prob: 0.6,
        }],
    }
}

#[test]
fn the_overlay_colours_tokens_by_rank_and_drops_scores_of_changed_text() {
    let text = "x = 1\ny = 2\n";
    let mut ed = Ed::new("a.py", text);
    ed.press(KeyCode::F(2)).idle();
    assert_eq!(ed.scores.len(), 1, "F2 asks for scores");
    let req = ed.scores[0].clone();
    assert_eq!(req.text, text);
    // x(1) ' ='(2) ' 1'(3) '\n'(4) y(500) ' ='(50) ' 2'(5000) '\n'(1)
    let bounds = [
        (0, 1, 1),
        (1, 3, 2),
        (3, 5, 3),
        (5, 6, 4),
        (6, 7, 500),
        (7, 9, 50),
        (9, 11, 5000),
        (11, 12, 1),
    ];
    let tokens: Vec<TokenScore> = bounds
        .iter()
        .enumerate()
        .map(|(i, &(a, b, r))| token(text, a, b, i as u32, r))
        .collect();
    ed.reply(Reply::Scored {
        id: req.id,
        from: 0,
        tokens: tokens[..4].to_vec(),
    });
    ed.reply(Reply::Scored {
        id: req.id,
        from: 4,
        tokens: tokens[4..].to_vec(),
    });
    ed.reply(Reply::ScoreDone {
        id: req.id,
        tokens_per_second: 1000.0,
        ms: 8.0,
    });
    assert!(
        ed.screen()[H as usize - 2].contains("overlay 8 ms"),
        "the refresh time"
    );
    assert_eq!(ed.style_of(0, "x").fg, Some(Color::Green));
    assert_eq!(ed.style_of(1, "y").fg, Some(Color::Red));
    assert_eq!(ed.style_of(1, "=").fg, Some(Color::Yellow));
    let gutter = 3;
    assert_eq!(
        ed.term.backend().buffer()[(gutter + 4, 1)].fg,
        Color::Magenta,
        "the 2 of y = 2"
    );
    // The inspector shows the token under the cursor.
    let screen = ed.screen().join("\n");
    assert!(
        screen.contains("token \"x\"") && screen.contains("rank 1"),
        "{screen}"
    );
    assert!(screen.contains("\"return\""), "{screen}");

    // Asking for a completion while scores are computed makes scoring step aside, and resume after.
    let mut other = Ed::new("a.py", "x = 1\n");
    other.press(KeyCode::F(2)).idle();
    let scoring = other.scores.last().unwrap().clone();
    other.key(KeyCode::Char(' '), KeyModifiers::CONTROL);
    assert!(
        scoring.cancel.load(std::sync::atomic::Ordering::Relaxed),
        "scoring yields"
    );
    let asked = other.requests.last().unwrap().id;
    other.done(asked, "").idle();
    assert!(
        other.scores.len() == 2,
        "scoring resumes after the completion"
    );

    // F3 goes to the next token outside the top 10: `y` on line 2.
    ed.press(KeyCode::F(3));
    assert_eq!(ed.app.cursor(), Pos::new(1, 0));
    assert!(
        ed.screen()[H as usize - 1].contains("top 1000"),
        "the legend"
    );
    ed.press(KeyCode::F(3));
    assert_eq!(ed.app.cursor(), Pos::new(1, 1));
    ed.key(KeyCode::F(3), KeyModifiers::SHIFT);
    assert_eq!(ed.app.cursor(), Pos::new(1, 0));

    // Typing at the end of line 2: the text before keeps its colours, the new text has none
    // until it is scored.
    ed.press(KeyCode::End).typed("0");
    let cell = |ed: &Ed, x: u16, y: u16| ed.term.backend().buffer()[(x, y)].fg;
    assert_eq!(ed.style_of(0, "x").fg, Some(Color::Green));
    assert_eq!(ed.style_of(1, "y").fg, Some(Color::Red));
    assert_eq!(
        cell(&ed, gutter + 5, 1),
        Color::Reset,
        "no score on changed text"
    );
    // Scoring waits while a completion is in flight: the person at the cursor comes first.
    ed.idle();
    let completion = ed.requests.last().unwrap().id;
    assert!(ed.app.is_thinking());
    ed.done(completion, "").idle();
    let again = ed.scores.last().unwrap().clone();
    assert_ne!(again.id, req.id);
    assert_eq!(again.text, "x = 1\ny = 20\n");
    // The worker answers with the whole text's scores, chunk by chunk (unchanged chunks from its
    // cache); line 2 gets its colours back.
    let new = "x = 1\ny = 20\n";
    let mut rescored = tokens[..6].to_vec();
    rescored.push(token(new, 9, 12, 9, 20));
    rescored.push(token(new, 12, 13, 10, 1));
    ed.reply(Reply::Scored {
        id: again.id,
        from: 0,
        tokens: rescored,
    });
    assert_eq!(ed.style_of(1, "y").fg, Some(Color::Red), "kept");
    assert_eq!(cell(&ed, gutter + 5, 1), Color::Yellow, "scored again");
    // F2 turns it off: syntax colours again.
    ed.press(KeyCode::F(2));
    assert_ne!(ed.style_of(0, "x").fg, Some(Color::Green));
}

#[test]
fn proposals_can_be_coloured_by_confidence_and_the_cut_setting_reaches_the_pipeline() {
    let confidence = vec![(3, 0.9), (4, 0.3), (7, 0.1), (8, 0.6)];
    let mut ed = Ed::new("a.py", "");
    ed.key(KeyCode::Char(' '), KeyModifiers::CONTROL);
    let id = ed.requests[0].id;
    ed.done_with(id, "foo(bar)", confidence);
    assert_eq!(
        ed.style_of(0, "(").fg,
        Some(Color::DarkGray),
        "off by default"
    );
    ed.press(KeyCode::F(4));
    assert_eq!(ed.style_of(0, "foo").fg, Some(Color::DarkGray));
    assert_eq!(ed.style_of(0, "(").fg, Some(Color::Yellow));
    assert_eq!(ed.style_of(0, "bar").fg, Some(Color::Red));
    assert_eq!(ed.style_of(0, ")").fg, Some(Color::DarkGray));
    // Typed-through text leaves the colours of the rest in place.
    ed.typed("fo");
    assert_eq!(ed.style_of(0, "bar").fg, Some(Color::Red));

    // min_confidence goes to the pipeline, which cuts there (so `infill eval` measures the same).
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse("[editor]\nmin_confidence = 0.2\n", false).unwrap();
    let app = App::new("", file_info(&dir.path().join("a.py")), cfg, None);
    let mut ed = Ed::with_app(app, Some(dir));
    ed.key(KeyCode::Char(' '), KeyModifiers::CONTROL);
    assert_eq!(ed.requests[0].settings.min_confidence, 0.2);
    assert!(Config::parse("[editor]\nmin_confidence = 1.5\n", false).is_err());
}

#[test]
fn a_huge_minified_line_is_shown_without_colours_instead_of_parsed_on_every_key() {
    let small = Ed::new("a.js", "function f() { return 1; }\n");
    assert_eq!(small.style_of(0, "function").fg, Some(Color::Magenta));
    let minified = format!(
        "function f() {{ return 1; }}{}\n",
        "var a=1;".repeat(40_000)
    );
    let mut ed = Ed::new("a.js", &minified);
    assert_ne!(ed.style_of(0, "function").fg, Some(Color::Magenta));
    ed.typed("x");
    assert!(ed.app.document().line(0).starts_with("xfunction"));
}

#[test]
fn copy_and_cut_reach_the_system_clipboard_through_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = App::new(
        "one\ntwo\n",
        file_info(&dir.path().join("a.py")),
        config(),
        None,
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let ctrl = |c| Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL));
    tx.send(ctrl('c')).unwrap();
    tx.send(Event::Key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE)))
        .unwrap();
    tx.send(ctrl('x')).unwrap();
    drop(tx);
    let mut term = Terminal::new(TestBackend::new(W, H)).unwrap();
    let mut copied = Vec::new();
    tui::event_loop(&mut term, &mut app, &rx, &mut |_| {}, &mut |t| {
        copied.push(t.to_owned())
    })
    .unwrap();
    // Events already waiting are handled in one batch; the last copy wins, as on a clipboard.
    assert_eq!(copied, vec!["two\n".to_owned()]);
    assert_eq!(app.document().text(), "one\n");
}

#[test]
fn f1_shows_the_keys_and_any_key_closes_it() {
    let mut ed = Ed::new("a.py", "x\n");
    ed.press(KeyCode::F(1));
    let screen = ed.screen().join("\n");
    assert!(
        screen.contains("infill help") && screen.contains("accept the whole proposal"),
        "{screen}"
    );
    ed.press(KeyCode::Char('q'));
    assert!(!ed.screen().join("\n").contains("infill help"));
    assert_eq!(ed.text(), "x\n", "the closing key is not typed");
}

#[test]
fn quitting_on_purpose_without_saving_writes_no_recovery_file() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut info = file_info(&dir.path().join("a.py"));
    info.recovery = Some(state.path().join("r.py"));
    let mut app = App::new("", info, config(), None);
    let (tx, rx) = std::sync::mpsc::channel();
    tx.send(Event::Key(KeyEvent::new(
        KeyCode::Char('x'),
        KeyModifiers::NONE,
    )))
    .unwrap();
    for _ in 0..2 {
        tx.send(Event::Key(KeyEvent::new(
            KeyCode::Char('q'),
            KeyModifiers::CONTROL,
        )))
        .unwrap();
    }
    let mut term = Terminal::new(TestBackend::new(W, H)).unwrap();
    tui::guarded(&mut app, |app| {
        tui::event_loop(&mut term, app, &rx, &mut |_| {}, &mut |_| {})
    })
    .unwrap();
    assert!(app.should_quit() && !app.was_terminated());
    assert!(!state.path().join("r.py").exists());
}

#[test]
fn a_read_only_file_is_written_only_after_asking_and_stays_read_only() {
    let mut ed = Ed::new("a.py", "old\n");
    let mut perms = std::fs::metadata(ed.path()).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(ed.path(), perms).unwrap();
    ed.typed("x").ctrl('s');
    assert!(ed.app.message().unwrap().contains("read-only"));
    assert_eq!(std::fs::read_to_string(ed.path()).unwrap(), "old\n");
    ed.ctrl('s');
    assert_eq!(std::fs::read_to_string(ed.path()).unwrap(), "xold\n");
    assert!(
        std::fs::metadata(ed.path())
            .unwrap()
            .permissions()
            .readonly()
    );
}

#[test]
fn a_long_line_scrolls_sideways_with_the_cursor() {
    let long: String = (0..100)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut ed = Ed::new("a.txt", &format!("{long}\nshort\n"));
    ed.press(KeyCode::End);
    let (x, y) = {
        let p = ed.term.get_cursor_position().unwrap();
        (p.x, p.y)
    };
    assert_eq!((x, y), (W - 1, 0), "the cursor sits at the right edge");
    // The last characters of the line are on screen, right before the cursor.
    assert!(
        ed.screen()[0].ends_with(&long[long.len() - 10..]),
        "{:?}",
        ed.screen()[0]
    );
    ed.press(KeyCode::Home);
    assert!(
        ed.screen()[0].starts_with(" 1 abcdef"),
        "{:?}",
        ed.screen()[0]
    );
    assert_eq!(ed.term.get_cursor_position().unwrap(), (3, 0).into());
}

/// On a narrow terminal the status bar keeps the cursor's position and what the model is doing
/// apart (they once ran together as `Col 5infill-default`), shortening the right side first.
#[test]
fn a_narrow_status_bar_keeps_its_parts_apart() {
    let mut ed = Ed::new("a_file_with_a_long_name.py", "x = 1\n");
    ed.term = Terminal::new(TestBackend::new(46, H)).unwrap();
    ed.draw();
    let buf = ed.term.backend().buffer();
    let status: String = (0..46).map(|x| buf[(x, H - 2)].symbol()).collect();
    assert!(status.contains("Ln 1, Col 1"), "{status:?}");
    assert!(
        status.contains("Col 1 ") && status.contains("│ idle"),
        "{status:?}"
    );
}

#[test]
fn a_file_in_a_git_repository_gets_repository_memory_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    std::fs::create_dir(dir.path().join("pkg")).unwrap();
    let path = dir.path().join("pkg").join("a.py");
    std::fs::write(&path, "x = 1\n").unwrap();
    let app = App::new("x = 1\n", file_info(&path), config(), None);
    let dir_path = dir.path().to_path_buf();
    let mut ed = Ed::with_app(app, Some(dir));
    ed.collect();
    ed.draw();
    assert_eq!(
        ed.memories.len(),
        1,
        "the model is ready: index the repository"
    );
    assert_eq!(
        ed.memories[0].roots,
        [path.parent().unwrap().parent().unwrap()]
    );
    assert!(
        ed.screen()[H as usize - 2].contains("memory: indexing…"),
        "{:?}",
        ed.screen()
    );
    // The memory holds this file's saved copy and another file.
    let other = dir_path.join("pkg").join("b.py");
    let doc = |path: &std::path::Path, tokens: Vec<u32>| infill::memory::Document {
        path: path.to_path_buf(),
        hash: 0,
        tokens,
    };
    let memory = infill::memory::Memory::new(
        infill::memory::Documents::build(vec![
            doc(&path, vec![1, 2, 3]),
            doc(&other, vec![1, 2, 4]),
        ]),
        infill::memory::Weights::constant(0.5),
    );
    let id = ed.memories[0].id;
    ed.reply(Reply::Memory {
        id,
        memory: std::sync::Arc::new(memory),
        files: 3,
        seconds: 0.1,
    });
    assert!(
        ed.screen()[H as usize - 2].contains("memory 3 files"),
        "{:?}",
        ed.screen()
    );
    // Every request from now on carries it, and a proposal that came mostly from it says so.
    ed.press(KeyCode::End).typed(" + 2").idle();
    let r = ed.requests.last().expect("a request after typing");
    let prior = r.settings.prior.as_ref().expect("the memory");
    // The file's own indexed copy never predicts it (its text after the cursor is in there).
    let guess = prior.next(&[1, 2]).unwrap();
    assert_eq!(guess.probs, [(4, 1.0)]);
    let id = r.id;
    ed.reply(Reply::Done {
        id,
        proposal: Proposal {
            text: " + 3".into(),
            tokens: 2,
            first_token_ms: 5.0,
            total_ms: 9.0,
            tokens_per_second: 200.0,
            stop: infill::model::generate::StopReason::EndToken,
            confidence: Vec::new(),
            cache: Default::default(),
            from_memory: 0.9,
            source: Some(infill::worker::Source {
                path: other.clone(),
                line: 12,
            }),
        },
    });
    assert!(
        ed.screen()[H as usize - 2].contains("│ from memory │"),
        "{:?}",
        ed.screen()
    );
    // Where it was found, when there is room to say.
    ed.term = Terminal::new(TestBackend::new(100, H)).unwrap();
    ed.draw();
    let buf = ed.term.backend().buffer();
    let status: String = (0..100).map(|x| buf[(x, H - 2)].symbol()).collect();
    assert!(status.contains("from memory: pkg/b.py:12"), "{status:?}");
    // A save brings the memory up to date from the one it has (only what changed is indexed),
    // and the old one serves meanwhile.
    ed.ctrl('s').collect();
    assert_eq!(ed.memories.len(), 2);
    assert!(ed.memories[1].previous.is_some());
    ed.press(KeyCode::End).typed("4").idle();
    assert!(ed.requests.last().unwrap().settings.prior.is_some());

    // F6 goes to where the proposal was found, once nothing unsaved would be left behind.
    let lines: String = (1..=20).map(|i| format!("line_{i} = {i}\n")).collect();
    std::fs::write(&other, &lines).unwrap();
    ed.press(KeyCode::F(6));
    assert!(
        ed.screen()[H as usize - 1].contains("unsaved changes"),
        "{:?}",
        ed.screen()
    );
    assert!(ed.screen()[0].contains("x = 1"), "still this file");
    ed.ctrl('s').collect();
    ed.press(KeyCode::F(6));
    assert_eq!(ed.app.cursor().line, 11, "line 12 of b.py");
    assert_eq!(ed.app.document().line(11), "line_12 = 12");
    let screen = ed.screen();
    assert!(
        screen.iter().any(|l| l.contains("line_12 = 12"))
            && screen[H as usize - 2].contains("b.py"),
        "{screen:?}"
    );
    // The model and the memory came along: proposals here use it, without b.py's own copy.
    ed.press(KeyCode::End).typed(" + 1").idle();
    let prior = ed
        .requests
        .last()
        .unwrap()
        .settings
        .prior
        .as_ref()
        .expect("the memory");
    assert_eq!(prior.next(&[1, 2]).unwrap().probs, [(3, 1.0)]);
}

#[test]
fn a_file_outside_a_repository_indexes_nothing() {
    let mut ed = Ed::new("a.py", "x = 1\n");
    ed.typed("y").idle();
    assert!(ed.memories.is_empty());
    assert!(ed.requests.last().unwrap().settings.prior.is_none());
}

#[test]
fn memory_prompt_names_the_repository_and_the_file_in_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    std::fs::create_dir(dir.path().join("pkg")).unwrap();
    let path = dir.path().join("pkg").join("a.py");
    std::fs::write(&path, "x = 1\n").unwrap();
    let config = Config::parse("[editor]\nmemory_prompt = true\n", false).unwrap();
    let app = App::new("x = 1\n", file_info(&path), config, None);
    let name = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut ed = Ed::with_app(app, Some(dir));
    ed.collect();
    ed.draw();
    let id = ed.memories[0].id;
    ed.reply(Reply::Memory {
        id,
        memory: std::sync::Arc::new(infill::memory::Memory::new(
            infill::memory::Documents::unnamed(&[vec![1u32, 2, 3]]),
            infill::memory::Weights::constant(0.5),
        )),
        files: 1,
        seconds: 0.1,
    });
    ed.press(KeyCode::End).typed(" + 2").idle();
    let r = ed.requests.last().unwrap();
    let repository = r.settings.repository.as_ref().expect("a repository prompt");
    assert_eq!(
        (repository.name.as_str(), repository.path.as_str()),
        (name.as_str(), "pkg/a.py")
    );
    // Off by default.
    let mut plain = Ed::new("b.py", "y = 2\n");
    plain.typed("z").idle();
    assert!(plain.requests.last().unwrap().settings.repository.is_none());
}
