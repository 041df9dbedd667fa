//! Evaluation tasks: holes cut from held-out files (seeded), or read from a HumanEval-infilling
//! JSONL file.
//!
//! Kinds follow what the editor asks for: the rest of a line (cursor inside a line), a whole line, a
//! few lines to the end of a block, a syntactic node (a block body, a condition, call arguments, as
//! in SAFIM: Gong et al. 2024), and random character spans. A hole never crosses a file (each task is
//! cut from one file) and never splits a character (offsets are character boundaries); empty and
//! whitespace-only middles are skipped.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// The kind of hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    RestOfLine,
    WholeLine,
    MultiLine,
    SyntaxNode,
    RandomSpan,
    /// From a task file.
    External,
}

impl TaskKind {
    pub const BUILT: [TaskKind; 5] = [
        Self::RestOfLine,
        Self::WholeLine,
        Self::MultiLine,
        Self::SyntaxNode,
        Self::RandomSpan,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::RestOfLine => "rest of line",
            Self::WholeLine => "whole line",
            Self::MultiLine => "multi-line",
            Self::SyntaxNode => "syntax node",
            Self::RandomSpan => "random span",
            Self::External => "task file",
        }
    }
}

/// Which held-out files the tasks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spread {
    /// Every file alike: the tasks follow the corpus's mix of languages.
    #[default]
    Files,
    /// The languages in turn (each a full round of the kinds), then a file of that language: each
    /// language's figures rest on about as many tasks as the others'.
    Languages,
}

/// One hole to fill.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub kind: TaskKind,
    pub language: Option<String>,
    pub prefix: String,
    pub middle: String,
    pub suffix: String,
    /// HumanEval-infilling: test code and the function it checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_point: Option<String>,
}

impl Task {
    /// The file a repository task was cut from (its id is `path:start-end`).
    pub fn path(&self) -> &str {
        self.id.rsplit_once(':').map_or(&self.id, |(path, _)| path)
    }
}

fn below(rng: &mut Rng, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (rng.next_u64() % n as u64) as usize
    }
}

/// Lines of `text` as (start byte, line without its newline).
fn lines(text: &str) -> Vec<(usize, &str)> {
    let mut at = 0;
    text.split_inclusive('\n')
        .map(|l| {
            let start = at;
            at += l.len();
            (start, l.strip_suffix('\n').unwrap_or(l))
        })
        .collect()
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// A byte range of `text` for a hole of `kind`, or `None` when this file offers none.
fn cut(
    text: &str,
    language: Option<&str>,
    kind: TaskKind,
    rng: &mut Rng,
) -> Option<(usize, usize)> {
    let all = lines(text);
    let code: Vec<usize> = (0..all.len())
        .filter(|&i| all[i].1.trim().chars().count() >= 2)
        .collect();
    let pick = |rng: &mut Rng| code.get(below(rng, code.len())).copied();
    match kind {
        TaskKind::RestOfLine => {
            let (start, line) = all[pick(rng)?];
            let body = indent(line);
            let points: Vec<usize> = line
                .char_indices()
                .map(|(i, _)| i)
                .filter(|&i| i > body)
                .collect();
            let at = *points.get(below(rng, points.len()))?;
            Some((start + at, start + line.len()))
        }
        TaskKind::WholeLine => {
            let (start, line) = all[pick(rng)?];
            Some((start + indent(line), start + line.len()))
        }
        TaskKind::MultiLine => {
            let first = pick(rng)?;
            let (start, line) = all[first];
            let base = indent(line);
            let want = 2 + below(rng, 5);
            let mut last = first;
            for (i, (_, l)) in all.iter().enumerate().skip(first + 1) {
                if i - first >= want || (!l.trim().is_empty() && indent(l) < base) {
                    break;
                }
                last = i;
            }
            if last == first {
                return None;
            }
            let (end_start, end_line) = all[last];
            Some((start + base, end_start + end_line.len()))
        }
        TaskKind::SyntaxNode => {
            let tree = crate::syntax::parse(text, language)?;
            let mut nodes = Vec::new();
            let mut stack = vec![tree.root_node()];
            while let Some(n) = stack.pop() {
                let k = n.kind();
                let wanted = [
                    "block",
                    "body",
                    "argument",
                    "condition",
                    "parameters",
                    "arguments",
                ];
                let lines = n.end_position().row - n.start_position().row;
                if n.is_named()
                    && !n.has_error()
                    && lines <= 12
                    && wanted.iter().any(|w| k.contains(w))
                {
                    nodes.push((n.start_byte(), n.end_byte()));
                }
                let mut walk = n.walk();
                stack.extend(n.children(&mut walk));
            }
            nodes.sort_unstable();
            nodes.get(below(rng, nodes.len())).copied()
        }
        TaskKind::RandomSpan => {
            let b: Vec<usize> = text
                .char_indices()
                .map(|(i, _)| i)
                .chain([text.len()])
                .collect();
            let x = below(rng, b.len());
            let len = 1 + below(rng, 80);
            Some((b[x], b[(x + len).min(b.len() - 1)]))
        }
        TaskKind::External => None,
    }
}

/// Failed cuts in a row after which `Spread::Languages` gives up a (language, kind) slot: a language
/// whose few files cannot hold a kind of hole must not use up the attempts of the others.
const SLOT_ATTEMPTS: usize = 200;

/// `count` tasks from `files` (path, language, text), spread evenly over the kinds and, with
/// `Spread::Languages`, over the languages (files of no known language are left out then), seeded.
/// Tasks come out grouped by file and position so consecutive prompts share their start (KV-cache
/// reuse).
pub fn build(
    files: &[(String, Option<String>, String)],
    count: usize,
    seed: u64,
    spread: Spread,
) -> Vec<Task> {
    let mut rng = Rng::new(seed);
    let mut tasks = Vec::new();
    let pools: Vec<Vec<usize>> = match spread {
        Spread::Files => vec![(0..files.len()).collect()],
        Spread::Languages => {
            let mut by_language: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
            for (i, (_, language, _)) in files.iter().enumerate() {
                if let Some(language) = language {
                    by_language.entry(language).or_default().push(i);
                }
            }
            by_language.into_values().collect()
        }
    };
    if pools.iter().all(|p| p.is_empty()) {
        return tasks;
    }
    let kinds = TaskKind::BUILT.len();
    let (mut attempts, mut given_up, mut failures) = (0, 0, 0);
    while tasks.len() < count && attempts < count * 20 {
        attempts += 1;
        let slot = tasks.len() + given_up;
        if spread == Spread::Languages && failures >= SLOT_ATTEMPTS {
            given_up += 1;
            failures = 0;
            continue;
        }
        failures += 1;
        let kind = TaskKind::BUILT[slot % kinds];
        let pool = &pools[(slot / kinds) % pools.len()];
        let (path, language, text) = &files[pool[below(&mut rng, pool.len())]];
        let Some((start, end)) = cut(text, language.as_deref(), kind, &mut rng) else {
            continue;
        };
        let Some((prefix, middle, suffix)) = crate::text::split_around(text, start, end) else {
            continue;
        };
        if middle.trim().is_empty() {
            continue;
        }
        failures = 0;
        tasks.push(Task {
            id: format!("{path}:{start}-{end}"),
            kind,
            language: language.clone(),
            prefix: prefix.to_string(),
            middle: middle.to_string(),
            suffix: suffix.to_string(),
            test: None,
            entry_point: None,
        });
    }
    tasks.sort_by(|a, b| {
        a.id.split(':')
            .next()
            .cmp(&b.id.split(':').next())
            .then(a.prefix.len().cmp(&b.prefix.len()))
    });
    tasks
}

/// A line of a HumanEval-infilling task file. Other fields (a benchmark's own flags) are
/// ignored.
#[derive(Debug, Deserialize)]
struct TaskLine {
    task_id: String,
    prompt: String,
    suffix: String,
    canonical_solution: String,
    #[serde(default)]
    test: Option<String>,
    #[serde(default)]
    entry_point: Option<String>,
    /// The code's language (`python`, `rust`, ...), where the file says it.
    #[serde(default)]
    language: Option<String>,
}

/// Where a task file's language comes from, first that says: `--tasks-language`, the task's own
/// `language` field, a language named in the file's name (`humaneval-rust.jsonl`), else Python
/// (HumanEval-infilling's).
#[derive(Debug, Clone, Default)]
pub struct TaskLanguage<'a> {
    pub flag: Option<&'a str>,
    pub file_name: Option<&'a str>,
}

/// The language a task file's name gives: a part of it (split at anything but letters and
/// digits) that names a known language.
pub fn language_in_name(name: &str, known: &[&str]) -> Option<String> {
    let stem = name.split('.').next().unwrap_or(name).to_ascii_lowercase();
    stem.split(|c: char| !c.is_ascii_alphanumeric())
        .find_map(|part| known.iter().find(|k| k.eq_ignore_ascii_case(part)))
        .map(|k| (*k).to_string())
}

/// Reads tasks in the HumanEval-infilling format (one JSON object per line); errors name the line.
/// `known` are the languages infill has grammars for; a language outside them is an error.
pub fn read_task_file(
    text: &str,
    language: &TaskLanguage,
    known: &[&str],
) -> anyhow::Result<Vec<Task>> {
    let check = |name: &str, from: &str| -> anyhow::Result<String> {
        known
            .iter()
            .find(|k| k.eq_ignore_ascii_case(name))
            .map(|k| (*k).to_string())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{from}: unknown language {name:?}; infill knows {}",
                    known.join(", ")
                )
            })
    };
    let flag = language
        .flag
        .map(|l| check(l, "--tasks-language"))
        .transpose()?;
    let by_name = language.file_name.and_then(|n| language_in_name(n, known));
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let t: TaskLine = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!("line {}: not a task ({e}); each line needs task_id, prompt, suffix, canonical_solution", i + 1)
        })?;
        let own = t
            .language
            .as_deref()
            .map(|l| check(l, &format!("line {}", i + 1)))
            .transpose()?;
        let language = flag
            .clone()
            .or(own)
            .or_else(|| by_name.clone())
            .unwrap_or_else(|| "python".to_string());
        tasks.push(Task {
            id: t.task_id,
            kind: TaskKind::External,
            language: Some(language),
            prefix: t.prompt,
            middle: t.canonical_solution,
            suffix: t.suffix,
            test: t.test,
            entry_point: t.entry_point,
        });
    }
    Ok(tasks)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn files() -> Vec<(String, Option<String>, String)> {
        vec![
            ("a.py".into(), Some("python".into()), "def f(x):\n    if x > 0:\n        return g(x, 1)\n    return 0  # café\n".into()),
            ("b.rs".into(), Some("rust".into()), "fn main() {\n    let v = vec![1, 2];\n    for x in &v {\n        println!(\"{x} €\");\n    }\n}\n".into()),
        ]
    }

    #[test]
    fn tasks_are_deterministic_within_one_file_and_on_character_boundaries() {
        let f = files();
        let a = build(&f, 60, 9, Spread::Files);
        let b = build(&f, 60, 9, Spread::Files);
        assert_eq!(a.len(), 60);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        for t in &a {
            let whole = format!("{}{}{}", t.prefix, t.middle, t.suffix);
            assert!(
                f.iter().any(|(_, _, text)| *text == whole),
                "{} crosses files",
                t.id
            );
            assert!(!t.middle.trim().is_empty());
        }
        let kinds: std::collections::HashSet<_> = a.iter().map(|t| t.kind).collect();
        assert_eq!(kinds.len(), 5);
        assert!(
            a.iter()
                .filter(|t| t.kind == TaskKind::RestOfLine)
                .all(|t| !t.middle.contains('\n'))
        );
        assert!(
            a.iter()
                .filter(|t| t.kind == TaskKind::MultiLine)
                .all(|t| t.middle.contains('\n'))
        );
    }

    /// Spread over languages, one Python file among five Rust files gets half the tasks; spread
    /// over files, about a sixth. A language whose file cannot hold a kind (a one-liner has no
    /// multi-line hole) gives up that slot instead of the whole build stopping short.
    #[test]
    fn tasks_can_be_spread_evenly_over_languages() {
        let mut f = files();
        for i in 0..4 {
            let (_, language, text) = f[1].clone();
            f.push((format!("c{i}.rs"), language, text));
        }
        let python = |tasks: &[Task]| {
            tasks
                .iter()
                .filter(|t| t.language.as_deref() == Some("python"))
                .count()
        };
        let even = build(&f, 100, 3, Spread::Languages);
        assert_eq!(even.len(), 100);
        assert_eq!(python(&even), 50);
        let by_file = build(&f, 100, 3, Spread::Files);
        assert_eq!(by_file.len(), 100);
        assert!((5..=30).contains(&python(&by_file)), "{}", python(&by_file));

        f.push(("one.js".into(), Some("javascript".into()), "f(1)".into()));
        let with_js = build(&f, 60, 3, Spread::Languages);
        assert_eq!(with_js.len(), 60);
        let js: Vec<&Task> = with_js
            .iter()
            .filter(|t| t.language.as_deref() == Some("javascript"))
            .collect();
        assert!((12..=20).contains(&js.len()), "{}", js.len());
        assert!(js.iter().all(|t| t.kind != TaskKind::MultiLine));
    }

    const KNOWN: [&str; 3] = ["python", "rust", "go"];

    #[test]
    fn task_files_are_read_and_bad_lines_named() {
        let ok = r#"{"task_id": "t/0", "prompt": "def f():\n    ", "suffix": "\n", "canonical_solution": "return 1", "entry_point": "f", "test": "def check(c):\n    assert c() == 1\n"}"#;
        let tasks =
            read_task_file(&format!("{ok}\n\n{ok}\n"), &TaskLanguage::default(), &KNOWN).unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0].middle, "return 1");
        assert_eq!(tasks[0].language.as_deref(), Some("python"));
        let err = read_task_file(
            &format!("{ok}\n{{\"task_id\": 3}}\n"),
            &TaskLanguage::default(),
            &KNOWN,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("line 2:"), "{err}");
    }

    /// The language comes from the flag, else the task, else the file's name; unknown fields are
    /// a benchmark's own and ignored; an unknown language is an error that lists the known ones.
    #[test]
    fn a_task_files_language_comes_from_the_file_itself() {
        let line = |extra: &str| {
            format!(
                r#"{{"task_id": "t", "prompt": "fn f() {{\n", "suffix": "}}\n", "canonical_solution": "    1\n"{extra}}}"#
            )
        };
        let read = |text: &str, flag: Option<&str>, file_name: Option<&str>| {
            read_task_file(text, &TaskLanguage { flag, file_name }, &KNOWN)
                .map(|t| t[0].language.clone().unwrap_or_default())
                .map_err(|e| e.to_string())
        };
        let tagged = line(r#", "language": "Rust", "brace_only": true"#);
        assert_eq!(read(&tagged, None, None).unwrap(), "rust");
        assert_eq!(
            read(&line(""), None, Some("humaneval-rust-lines.jsonl")).unwrap(),
            "rust"
        );
        assert_eq!(
            read(&line(""), None, Some("single-line.jsonl")).unwrap(),
            "python"
        );
        assert_eq!(read(&tagged, Some("go"), None).unwrap(), "go");
        let err = read(&line(""), Some("klingon"), None).unwrap_err();
        assert!(
            err.contains("klingon") && err.contains("python, rust, go"),
            "{err}"
        );
        let err = read(&line(r#", "language": "cobol""#), None, None).unwrap_err();
        assert!(err.starts_with("line 1:") && err.contains("cobol"), "{err}");
    }
}
