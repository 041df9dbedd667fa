//! Terminal input: the thread that reads keys, and the repair of what the terminal parser makes
//! of an Escape pressed just before a key that sends an escape sequence.
//!
//! crossterm reads `ESC ESC [ B` (Esc, then Down, delivered together as tmux and fast typists do)
//! as Esc followed by the characters `[` and `B`, which would be typed into the file. Events
//! that arrive in one burst are read together and such a run is decoded back into the key it
//! was. No key sequence ever reaches the document as escape-sequence bytes.

use std::sync::mpsc;
use std::time::Duration;

use crossterm::event::{Event as Term, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::Event;

/// Reads terminal events until the app's end drops the receiver.
pub fn read_input(tx: &mpsc::Sender<Event>) {
    loop {
        let mut burst = match crossterm::event::read() {
            Ok(e) => vec![e],
            Err(_) => {
                let _ = tx.send(Event::Terminate);
                return;
            }
        };
        // Whatever the terminal sent together with it is already parsed: take it as one burst.
        while burst.len() < MAX_BURST && crossterm::event::poll(Duration::ZERO).unwrap_or(false) {
            match crossterm::event::read() {
                Ok(e) => burst.push(e),
                Err(_) => break,
            }
        }
        for event in repair(burst) {
            let event = match event {
                Term::Key(k) => Event::Key(k),
                Term::Paste(text) => Event::Paste(text),
                Term::Resize(..) => Event::Resize,
                _ => continue,
            };
            if tx.send(event).is_err() {
                return;
            }
        }
    }
}

/// Longest run of events read as one burst (a paste comes as one event, not many).
const MAX_BURST: usize = 256;

/// Decodes `Esc`, `[` (or `O`), parameters and a final character, all in one burst, back into
/// Esc followed by the key the sequence stands for. Everything else passes through unchanged.
pub fn repair(burst: Vec<Term>) -> Vec<Term> {
    let mut out = Vec::with_capacity(burst.len());
    let mut i = 0;
    while let Some(event) = burst.get(i) {
        out.push(event.clone());
        i += 1;
        if !is_plain(event, KeyCode::Esc) {
            continue;
        }
        if let Some((key, used)) = sequence_after(burst.get(i..).unwrap_or_default()) {
            out.push(Term::Key(key));
            i += used;
        }
    }
    out
}

fn is_plain(event: &Term, code: KeyCode) -> bool {
    matches!(event, Term::Key(k) if k.code == code && k.modifiers == KeyModifiers::NONE && k.kind == KeyEventKind::Press)
}

/// The characters at the start of `events`, as long as they are plain typed characters.
fn chars(events: &[Term]) -> Vec<char> {
    events
        .iter()
        .map_while(|e| match e {
            Term::Key(KeyEvent {
                code: KeyCode::Char(c),
                modifiers,
                kind: KeyEventKind::Press,
                ..
            }) if (*modifiers - KeyModifiers::SHIFT).is_empty() => Some(*c),
            _ => None,
        })
        .take(12)
        .collect()
}

/// A CSI (`[` params final) or SS3 (`O` final) sequence at the start of `events`: the key and
/// how many events it spans.
fn sequence_after(events: &[Term]) -> Option<(KeyEvent, usize)> {
    let cs = chars(events);
    let (&intro, rest) = cs.split_first()?;
    match intro {
        'O' => {
            let code = final_key(*rest.first()?, &[])?;
            Some((KeyEvent::new(code, KeyModifiers::NONE), 2))
        }
        '[' => {
            let params_len = rest
                .iter()
                .take_while(|c| c.is_ascii_digit() || **c == ';')
                .count();
            let params: Vec<u32> = rest
                .get(..params_len)?
                .iter()
                .collect::<String>()
                .split(';')
                .map(|p| p.parse().unwrap_or(1))
                .collect();
            let fin = *rest.get(params_len)?;
            let code = final_key(fin, &params)?;
            let mods = params.get(1).map_or(KeyModifiers::NONE, |&m| modifiers(m));
            Some((KeyEvent::new(code, mods), 2 + params_len))
        }
        _ => None,
    }
}

/// The key of a sequence's final character (`~` keys by their first parameter).
fn final_key(fin: char, params: &[u32]) -> Option<KeyCode> {
    Some(match fin {
        'A' => KeyCode::Up,
        'B' => KeyCode::Down,
        'C' => KeyCode::Right,
        'D' => KeyCode::Left,
        'H' => KeyCode::Home,
        'F' => KeyCode::End,
        'Z' => KeyCode::BackTab,
        'P' => KeyCode::F(1),
        'Q' => KeyCode::F(2),
        'R' => KeyCode::F(3),
        'S' => KeyCode::F(4),
        '~' => match params.first()? {
            1 | 7 => KeyCode::Home,
            2 => KeyCode::Insert,
            3 => KeyCode::Delete,
            4 | 8 => KeyCode::End,
            5 => KeyCode::PageUp,
            6 => KeyCode::PageDown,
            n @ 11..=15 => KeyCode::F((n - 10) as u8),
            n @ 17..=21 => KeyCode::F((n - 11) as u8),
            n @ 23..=24 => KeyCode::F((n - 12) as u8),
            _ => return None,
        },
        _ => return None,
    })
}

/// xterm's modifier parameter: 1 + (shift 1, alt 2, ctrl 4).
fn modifiers(param: u32) -> KeyModifiers {
    let bits = param.saturating_sub(1);
    let mut mods = KeyModifiers::NONE;
    if bits & 1 != 0 {
        mods |= KeyModifiers::SHIFT;
    }
    if bits & 2 != 0 {
        mods |= KeyModifiers::ALT;
    }
    if bits & 4 != 0 {
        mods |= KeyModifiers::CONTROL;
    }
    mods
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> Term {
        Term::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn typed(s: &str) -> Vec<Term> {
        s.chars().map(|c| key(KeyCode::Char(c))).collect()
    }

    /// What crossterm delivers for `ESC ESC [ B` is Esc, '[', 'B': repaired to Esc, Down.
    #[test]
    fn esc_then_an_arrow_in_one_burst_is_esc_and_the_arrow() {
        let burst = [vec![key(KeyCode::Esc)], typed("[B")].concat();
        assert_eq!(repair(burst), [key(KeyCode::Esc), key(KeyCode::Down)]);
        let ss3 = [vec![key(KeyCode::Esc)], typed("OA")].concat();
        assert_eq!(repair(ss3), [key(KeyCode::Esc), key(KeyCode::Up)]);
        let delete = [vec![key(KeyCode::Esc)], typed("[3~x")].concat();
        assert_eq!(
            repair(delete),
            [
                key(KeyCode::Esc),
                key(KeyCode::Delete),
                key(KeyCode::Char('x'))
            ]
        );
        let ctrl_right = [vec![key(KeyCode::Esc)], typed("[1;5C")].concat();
        assert_eq!(
            repair(ctrl_right),
            [
                key(KeyCode::Esc),
                Term::Key(KeyEvent::new(KeyCode::Right, KeyModifiers::CONTROL))
            ]
        );
    }

    #[test]
    fn text_that_is_not_a_sequence_passes_through() {
        for s in ["[x", "[", "[12", "Ox", "hello [B"] {
            let burst = [vec![key(KeyCode::Esc)], typed(s)].concat();
            assert_eq!(repair(burst.clone()), burst, "{s:?}");
        }
        // Without an Esc before it, `[B` is text.
        assert_eq!(repair(typed("[B")), typed("[B"));
    }
}
