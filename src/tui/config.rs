//! The editor's settings: `config.toml` in the XDG config directory, keys for the completion
//! actions, timing, colours.
//!
//! ```toml
//! [editor]
//! tab_width = 4
//! debounce_ms = 75      # idle time before asking the model
//! max_tokens = 48       # longest proposal
//! completions = true
//! min_confidence = 0.0  # cut proposals before a token less probable than this (0: off)
//! confidence_colours = false   # colour ghost text by token probability (F4 toggles)
//! exact_cache = false   # never reuse the suffix's keys and values out of place while typing
//! memory = true         # index the file's git repository as repository memory
//! memory_prompt = false  # also put its most relevant code before the prompt (models trained
//!                        # with repository-level prompts: Qwen2.5-Coder, StarCoder2)
//!
//! [keys]                # completion actions; one key or a list
//! accept = "tab"
//! accept_word = "ctrl-right"
//! accept_line = ["ctrl-down", "alt-enter"]
//! dismiss = "esc"
//! next_alternative = ["alt-n", "alt-]"]
//! previous_alternative = "alt-p"
//! trigger = "ctrl-space"
//!
//! [colors]              # names (dark_gray, cyan, ...) or "#rrggbb"
//! ghost = "dark_gray"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::Color;
use serde::Deserialize;

/// What a completion key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Accept,
    AcceptWord,
    AcceptLine,
    Dismiss,
    NextAlternative,
    PreviousAlternative,
    Trigger,
}

impl Action {
    const ALL: [(Self, &'static str); 7] = [
        (Self::Accept, "accept"),
        (Self::AcceptWord, "accept_word"),
        (Self::AcceptLine, "accept_line"),
        (Self::Dismiss, "dismiss"),
        (Self::NextAlternative, "next_alternative"),
        (Self::PreviousAlternative, "previous_alternative"),
        (Self::Trigger, "trigger"),
    ];

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(a, _)| *a)
    }

    fn defaults(self) -> &'static [&'static str] {
        match self {
            Self::Accept => &["tab"],
            Self::AcceptWord => &["ctrl-right"],
            Self::AcceptLine => &["ctrl-down", "alt-enter"],
            Self::Dismiss => &["esc"],
            // Alt-[ is ESC [, the start of every escape sequence: terminals cannot deliver it.
            Self::NextAlternative => &["alt-n", "alt-]"],
            Self::PreviousAlternative => &["alt-p"],
            Self::Trigger => &["ctrl-space"],
        }
    }
}

/// A key with its modifiers, as written in the config ("ctrl-right", "alt-]", "tab").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeySpec {
    code: KeyCode,
    mods: KeyModifiers,
}

impl KeySpec {
    /// The spec a key event matches: letters are compared case-insensitively and Shift is ignored
    /// on characters (the character already says it).
    pub fn of(event: &KeyEvent) -> Self {
        let mut mods =
            event.modifiers & (KeyModifiers::CONTROL | KeyModifiers::ALT | KeyModifiers::SHIFT);
        let code = match event.code {
            KeyCode::Char(c) => {
                mods.remove(KeyModifiers::SHIFT);
                KeyCode::Char(c.to_ascii_lowercase())
            }
            KeyCode::BackTab => {
                mods.insert(KeyModifiers::SHIFT);
                KeyCode::Tab
            }
            c => c,
        };
        Self { code, mods }
    }
}

impl FromStr for KeySpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let mut mods = KeyModifiers::NONE;
        let mut rest = lower.as_str();
        loop {
            if let Some(r) = rest.strip_prefix("ctrl-") {
                mods |= KeyModifiers::CONTROL;
                rest = r;
            } else if let Some(r) = rest.strip_prefix("alt-") {
                mods |= KeyModifiers::ALT;
                rest = r;
            } else if let Some(r) = rest.strip_prefix("shift-") {
                mods |= KeyModifiers::SHIFT;
                rest = r;
            } else {
                break;
            }
        }
        let code = match rest {
            "tab" => KeyCode::Tab,
            "esc" | "escape" => KeyCode::Esc,
            "enter" | "return" => KeyCode::Enter,
            "space" => KeyCode::Char(' '),
            "left" => KeyCode::Left,
            "right" => KeyCode::Right,
            "up" => KeyCode::Up,
            "down" => KeyCode::Down,
            "home" => KeyCode::Home,
            "end" => KeyCode::End,
            "pageup" => KeyCode::PageUp,
            "pagedown" => KeyCode::PageDown,
            "backspace" => KeyCode::Backspace,
            "delete" => KeyCode::Delete,
            f if f.len() > 1 && f.starts_with('f') => {
                match f.get(1..).unwrap_or("").parse::<u8>() {
                    Ok(n @ 1..=24) => KeyCode::F(n),
                    _ => return Err(format!("unknown key {s:?}")),
                }
            }
            c if c.chars().count() == 1 => KeyCode::Char(c.chars().next().unwrap_or(' ')),
            _ => {
                return Err(format!(
                    "unknown key {s:?} (try e.g. \"tab\", \"ctrl-right\", \"alt-]\")"
                ));
            }
        };
        if mods.contains(KeyModifiers::SHIFT) && matches!(code, KeyCode::Char(_)) {
            mods.remove(KeyModifiers::SHIFT);
        }
        if mods == KeyModifiers::ALT && matches!(code, KeyCode::Char('[' | 'o')) {
            // Alt sends ESC first: ESC [ and ESC O start the sequences arrow and function keys
            // send, so a terminal program waits for the rest and the key never arrives alone.
            return Err(format!(
                "{s:?} cannot be told apart from the start of an arrow key's escape sequence; choose another key (e.g. \"alt-p\")"
            ));
        }
        Ok(Self { code, mods })
    }
}

/// Completion keys.
#[derive(Debug, Clone)]
pub struct Keymap {
    keys: Vec<(KeySpec, Action)>,
}

impl Keymap {
    pub fn action(&self, event: &KeyEvent) -> Option<Action> {
        let spec = KeySpec::of(event);
        self.keys.iter().find(|(k, _)| *k == spec).map(|(_, a)| *a)
    }

    /// The key names bound to `action`, for the help screen.
    pub fn describe(&self, action: Action, overrides: &BTreeMap<String, Vec<String>>) -> String {
        let name = Action::ALL
            .iter()
            .find(|(a, _)| *a == action)
            .map_or("", |(_, n)| n);
        overrides
            .get(name)
            .map_or_else(|| action.defaults().join(" / "), |keys| keys.join(" / "))
    }
}

/// Everything the editor reads from the config file (defaults when there is none).
#[derive(Debug, Clone)]
pub struct Config {
    pub tab_width: usize,
    pub debounce_ms: u64,
    pub max_tokens: usize,
    pub completions: bool,
    /// Cut proposals before their first token less probable than this (0: never).
    pub min_confidence: f32,
    /// Colour ghost text by each token's probability (F4 toggles).
    pub confidence_colours: bool,
    /// Compute every prompt exactly: no reuse of keys and values out of place while typing
    /// (slower by the suffix's length per keystroke in the PSM order).
    pub exact_cache: bool,
    /// Index the code of the file's git repository and mix it into every proposal.
    pub memory: bool,
    /// Also put the repository's most relevant code before the prompt, for models trained with
    /// repository-level prompts (with `memory`).
    pub memory_prompt: bool,
    pub ghost: Color,
    /// NO_COLOR is set: no colours, only attributes (dim, bold, reverse).
    pub no_color: bool,
    pub keymap: Keymap,
    key_names: BTreeMap<String, Vec<String>>,
}

impl Default for Config {
    /// The built-in settings (NO_COLOR from the environment).
    fn default() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        // Every built-in key name parses (a test checks), so nothing is skipped here.
        let keys = Action::ALL
            .iter()
            .flat_map(|(action, _)| {
                action
                    .defaults()
                    .iter()
                    .filter_map(|k| k.parse::<KeySpec>().ok())
                    .map(|k| (k, *action))
            })
            .collect();
        Self {
            tab_width: 4,
            debounce_ms: 75,
            max_tokens: 48,
            completions: true,
            min_confidence: 0.0,
            confidence_colours: false,
            exact_cache: false,
            memory: true,
            memory_prompt: false,
            ghost: Color::DarkGray,
            no_color,
            keymap: Keymap { keys },
            key_names: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    editor: RawEditor,
    #[serde(default)]
    keys: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    colors: RawColors,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEditor {
    tab_width: Option<usize>,
    debounce_ms: Option<u64>,
    max_tokens: Option<usize>,
    completions: Option<bool>,
    min_confidence: Option<f32>,
    confidence_colours: Option<bool>,
    exact_cache: Option<bool>,
    memory: Option<bool>,
    memory_prompt: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColors {
    ghost: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl Config {
    /// The config file's default place: `$XDG_CONFIG_HOME/infill/config.toml` (or
    /// `~/.config/infill/config.toml`).
    pub fn default_path() -> Option<PathBuf> {
        crate::files::xdg_dir("XDG_CONFIG_HOME", ".config").map(|d| d.join("config.toml"))
    }

    /// The settings from the file the user named (it must exist), else from the default place (if
    /// there is a file there), else the defaults.
    pub fn resolve(named: Option<&Path>) -> anyhow::Result<Self> {
        match (named, Self::default_path()) {
            (Some(p), _) => Self::load(p, true),
            (None, Some(p)) => Self::load(&p, false),
            (None, None) => Ok(Self::default()),
        }
    }

    /// Reads `path` (`explicit`: the user named it, so it must exist); a missing default file means
    /// defaults. Errors name the file and the setting.
    pub fn load(path: &Path, explicit: bool) -> anyhow::Result<Self> {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default());
            }
            Err(e) => anyhow::bail!("{}: cannot read ({e})", path.display()),
        };
        Self::parse(&text, no_color).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses config text.
    pub fn parse(text: &str, no_color: bool) -> Result<Self, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        Self::from_file(raw, no_color)
    }

    fn from_file(raw: RawConfig, no_color: bool) -> Result<Self, String> {
        let mut key_names = BTreeMap::new();
        for (name, keys) in raw.keys {
            if Action::from_name(&name).is_none() {
                let known: Vec<&str> = Action::ALL.iter().map(|(_, n)| *n).collect();
                return Err(format!(
                    "[keys] has unknown action {name:?}; actions are {}",
                    known.join(", ")
                ));
            }
            let keys = match keys {
                OneOrMany::One(k) => vec![k],
                OneOrMany::Many(k) => k,
            };
            key_names.insert(name, keys);
        }
        let mut keys = Vec::new();
        for (action, name) in Action::ALL {
            let names: Vec<String> = key_names
                .get(name)
                .cloned()
                .unwrap_or_else(|| action.defaults().iter().map(|s| (*s).to_owned()).collect());
            for n in names {
                let spec: KeySpec = n.parse().map_err(|e| format!("[keys] {name}: {e}"))?;
                keys.push((spec, action));
            }
        }
        let e = raw.editor;
        let d = Self::default();
        let tab_width = e.tab_width.unwrap_or(d.tab_width);
        if !(1..=16).contains(&tab_width) {
            return Err(format!(
                "[editor] tab_width must be 1..=16 (got {tab_width})"
            ));
        }
        let max_tokens = e.max_tokens.unwrap_or(d.max_tokens);
        let min_confidence = e.min_confidence.unwrap_or(d.min_confidence);
        if !(0.0..1.0).contains(&min_confidence) {
            return Err(format!(
                "[editor] min_confidence must be in [0, 1) (got {min_confidence})"
            ));
        }
        if max_tokens == 0 {
            return Err("[editor] max_tokens must be at least 1".into());
        }
        let ghost = match raw.colors.ghost {
            Some(c) => parse_color(&c).map_err(|e| format!("[colors] ghost: {e}"))?,
            None => d.ghost,
        };
        Ok(Self {
            tab_width,
            debounce_ms: e.debounce_ms.unwrap_or(d.debounce_ms),
            max_tokens,
            completions: e.completions.unwrap_or(d.completions),
            min_confidence,
            confidence_colours: e.confidence_colours.unwrap_or(d.confidence_colours),
            exact_cache: e.exact_cache.unwrap_or(d.exact_cache),
            memory: e.memory.unwrap_or(d.memory),
            memory_prompt: e.memory_prompt.unwrap_or(d.memory_prompt),
            ghost,
            no_color,
            keymap: Keymap { keys },
            key_names,
        })
    }

    /// The keys bound to `action`, for the help screen.
    pub fn keys_for(&self, action: Action) -> String {
        self.keymap.describe(action, &self.key_names)
    }
}

fn parse_color(s: &str) -> Result<Color, String> {
    Color::from_str(s)
        .map_err(|_| format!("unknown colour {s:?} (a name like dark_gray, or #rrggbb)"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key(code: KeyCode, mods: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, mods)
    }

    #[test]
    fn defaults_bind_the_documented_keys() {
        let c = Config::parse("", false).unwrap();
        let a = |code, mods| c.keymap.action(&key(code, mods));
        assert_eq!(a(KeyCode::Tab, KeyModifiers::NONE), Some(Action::Accept));
        assert_eq!(
            a(KeyCode::Right, KeyModifiers::CONTROL),
            Some(Action::AcceptWord)
        );
        assert_eq!(
            a(KeyCode::Enter, KeyModifiers::ALT),
            Some(Action::AcceptLine)
        );
        assert_eq!(
            a(KeyCode::Char(']'), KeyModifiers::ALT),
            Some(Action::NextAlternative)
        );
        assert_eq!(
            a(KeyCode::Char('n'), KeyModifiers::ALT),
            Some(Action::NextAlternative)
        );
        assert_eq!(
            a(KeyCode::Char('p'), KeyModifiers::ALT),
            Some(Action::PreviousAlternative)
        );
        assert_eq!(
            a(KeyCode::Char(' '), KeyModifiers::CONTROL),
            Some(Action::Trigger)
        );
        assert_eq!(a(KeyCode::Right, KeyModifiers::NONE), None);
        assert_eq!((c.tab_width, c.debounce_ms), (4, 75));
    }

    #[test]
    fn keys_and_settings_can_be_changed() {
        let c = Config::parse(
            "[editor]\ndebounce_ms = 20\ntab_width = 8\nexact_cache = true\n[keys]\naccept = [\"ctrl-e\", \"tab\"]\n[colors]\nghost = \"#808080\"\n",
            false,
        )
        .unwrap();
        assert_eq!(c.debounce_ms, 20);
        assert!(c.exact_cache && !Config::default().exact_cache);
        assert_eq!(
            c.keymap
                .action(&key(KeyCode::Char('e'), KeyModifiers::CONTROL)),
            Some(Action::Accept)
        );
        assert_eq!(c.ghost, Color::Rgb(128, 128, 128));
        assert_eq!(c.keys_for(Action::Accept), "ctrl-e / tab");
    }

    #[test]
    fn mistakes_name_the_setting() {
        let err = Config::parse("[keys]\naccept_all = \"tab\"\n", false).unwrap_err();
        assert!(
            err.contains("accept_all") && err.contains("accept_word"),
            "{err}"
        );
        let err = Config::parse("[keys]\naccept = \"hyper-x\"\n", false).unwrap_err();
        assert!(err.contains("accept") && err.contains("hyper-x"), "{err}");
        // Terminals deliver Alt-[ as the start of an escape sequence: refused, with a way out.
        let err = Config::parse("[keys]\nprevious_alternative = \"alt-[\"\n", false).unwrap_err();
        assert!(err.contains("alt-[") && err.contains("alt-p"), "{err}");
        let err = Config::parse("[editor]\ntab_width = 0\n", false).unwrap_err();
        assert!(err.contains("tab_width"), "{err}");
        let err = Config::parse("[editor]\ndebounce = 3\n", false).unwrap_err();
        assert!(err.contains("debounce"), "{err}");
        let err = Config::parse("[colors]\nghost = \"mauve-ish\"\n", false).unwrap_err();
        assert!(err.contains("ghost"), "{err}");
    }
}
