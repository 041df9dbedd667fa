//! What licence a file is under, as its package declares it, and whether that licence is
//! permissive: for building a corpus that may be shipped (`infill train --permissive-only`).
//!
//! Declarations, nearest first:
//! - a Python distribution's `*.dist-info` at the top of a root (`site-packages`): its `RECORD`
//!   lists its files, its `METADATA` says `License-Expression` (SPDX), else the `License ::`
//!   classifiers (all of them must be permissive), else `License:` text;
//! - the nearest folder above a file (up to the root) with a `Cargo.toml` (`package.license`), a
//!   `package.json` (`license`), or a `LICENSE`/`LICENCE`/`COPYING` file, read for the licence's
//!   well-known wording.
//!
//! - for a file a Debian package installed (`/usr/include`), the package's `copyright` file (see
//!   `debian`).
//!
//! SPDX expressions are evaluated: `A OR B` is permissive when either is, `A AND B` when both are,
//! and `A WITH exception` as `A`; the old Cargo spelling `MIT/Apache-2.0` means OR. A file with no
//! declaration has an unknown licence, and one declared in words infill cannot read an
//! unrecognised one; neither is taken as permissive.

mod debian;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use debian::Debian;

/// A file's licence as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Licence {
    Permissive(String),
    NotPermissive(String),
    /// Declared, but in words infill cannot read either way (names what was declared).
    Unrecognised(String),
    /// Nothing declares one.
    Unknown,
}

impl Licence {
    /// The same verdict with its names rewritten by `f`.
    pub fn named(self, f: impl FnOnce(&str) -> String) -> Self {
        match self {
            Self::Permissive(n) => Self::Permissive(f(&n)),
            Self::NotPermissive(n) => Self::NotPermissive(f(&n)),
            Self::Unrecognised(n) => Self::Unrecognised(f(&n)),
            Self::Unknown => Self::Unknown,
        }
    }
}

/// Licence identifiers (lowercase) that permit use with attribution at most.
const PERMISSIVE: &[&str] = &[
    "mit",
    "mit-0",
    "apache-2.0",
    "bsd-2-clause",
    "bsd-3-clause",
    "bsd-3-clause-clear",
    "0bsd",
    "isc",
    "zlib",
    "unlicense",
    "bsl-1.0",
    "psf-2.0",
    "python-2.0",
    "cnri-python",
    "cc0-1.0",
    "unicode-3.0",
    "unicode-dfs-2016",
    "wtfpl",
    "x11",
    "ncsa",
    "cdla-permissive-2.0",
];

/// Whether an SPDX expression allows a permissive reading: `A OR B` when either is permissive,
/// `A AND B` when both are, `A WITH exception` as `A` (an exception only grants more). Parsed
/// by the `spdx` crate, leniently (`MIT/Apache-2.0`, imprecise names such as `Apache 2.0`), so
/// that every identifier of the SPDX list is known: one not on [`PERMISSIVE`] (a copyleft or
/// source-available licence, a `LicenseRef-`) is not permissive. `None` when the text is not an
/// expression of known identifiers (then free-text rules apply).
fn spdx(expression: &str) -> Option<bool> {
    let parsed = spdx::Expression::parse_mode(expression.trim(), spdx::ParseMode::LAX).ok()?;
    Some(parsed.evaluate(|req| match &req.license {
        spdx::LicenseItem::Spdx { id, .. } => {
            PERMISSIVE.iter().any(|p| p.eq_ignore_ascii_case(id.name))
        }
        spdx::LicenseItem::Other { .. } => false,
    }))
}

/// Free text (`License: BSD`, a classifier, a licence file's opening): copyleft and proprietary
/// wording first, then the permissive licences' names and well-known sentences.
fn words(text: &str) -> Option<bool> {
    let t = text.to_ascii_lowercase();
    let copyleft = [
        "gnu general public license",
        "gnu lesser general public",
        "gnu library general public",
        "gnu affero",
        "(gpl",
        "gplv",
        "gpl ",
        "lgpl",
        "mozilla public license",
        "(mpl",
        "eclipse public license",
        "proprietary",
        "commercial",
    ];
    if copyleft.iter().any(|w| t.contains(w)) || t.trim() == "gpl" {
        return Some(false);
    }
    let permissive = [
        "mit license",
        "mit licence",
        "mit licensed",
        "permission is hereby granted, free of charge",
        "apache",
        "asl 2",
        "bsd",
        "redistribution and use in source and binary forms",
        "isc license",
        "permission to use, copy, modify, and/or distribute",
        "zlib",
        "this software is provided 'as-is'",
        "unlicense",
        "free and unencumbered software released into the public domain",
        "public domain",
        "python software foundation",
        "boost software license",
        "cc0",
    ];
    if permissive.iter().any(|w| t.contains(w)) || t.trim() == "mit" {
        return Some(true);
    }
    None
}

/// Classifies a declared licence (an SPDX expression or free text).
pub fn classify(declared: &str) -> Licence {
    let declared = declared.trim();
    let name = declared.lines().next().unwrap_or(declared).trim();
    let name: String = name.chars().take(80).collect();
    match spdx(declared).or_else(|| words(declared)) {
        Some(true) => Licence::Permissive(name),
        Some(false) => Licence::NotPermissive(name),
        None if name.is_empty() => Licence::Unknown,
        None => Licence::Unrecognised(name),
    }
}

/// A Python distribution's licence from its `METADATA` headers.
fn python_metadata(metadata: &str) -> Licence {
    let headers = metadata.split("\n\n").next().unwrap_or_default();
    let field = |name: &str| {
        headers
            .lines()
            .filter_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("unknown"))
            .collect::<Vec<_>>()
    };
    if let Some(expression) = field("License-Expression:").first() {
        return classify(expression);
    }
    let classifiers: Vec<&str> = field("Classifier: License ::")
        .into_iter()
        .map(|c| c.rsplit("::").next().unwrap_or(c).trim())
        .collect();
    if !classifiers.is_empty() {
        let all = classifiers.join(", ");
        return match classifiers
            .iter()
            .map(|c| words(c))
            .collect::<Option<Vec<_>>>()
        {
            Some(v) if v.iter().all(|&p| p) => Licence::Permissive(all),
            Some(_) => Licence::NotPermissive(all),
            None => Licence::Unrecognised(all),
        };
    }
    field("License:")
        .first()
        .map_or(Licence::Unknown, |text| classify(text))
}

/// The licences declared under one root.
#[derive(Debug, Default)]
pub struct Licences {
    root: PathBuf,
    /// Relative path -> the licence of the Python distribution whose `RECORD` lists it.
    recorded: HashMap<String, Licence>,
    /// Folder (relative, "" for the root) -> its own declaration, once looked up.
    folders: HashMap<String, Option<Licence>>,
    /// Where nothing under the root declares a licence: the Debian package that installed the file.
    debian: Debian,
}

impl Licences {
    /// Reads the Python distributions at the top of `root`; folders are read when asked about.
    pub fn scan(root: &Path) -> Self {
        let mut recorded = HashMap::new();
        let entries = std::fs::read_dir(root).into_iter().flatten().flatten();
        for entry in entries {
            let dir = entry.path();
            if dir.extension().is_none_or(|e| e != "dist-info") {
                continue;
            }
            let Ok(metadata) = std::fs::read_to_string(dir.join("METADATA")) else {
                continue;
            };
            let licence = python_metadata(&metadata);
            let record = std::fs::read_to_string(dir.join("RECORD")).unwrap_or_default();
            for line in record.lines() {
                let path = match line.strip_prefix('"') {
                    Some(quoted) => quoted.split('"').next(),
                    None => line.split(',').next(),
                };
                if let Some(path) = path.filter(|p| !p.starts_with("../")) {
                    recorded.insert(path.to_string(), licence.clone());
                }
            }
        }
        Self {
            root: root.to_path_buf(),
            recorded,
            folders: Default::default(),
            debian: Debian::default(),
        }
    }

    /// The licence of the file at `rel` (relative to the root, `/`-separated).
    pub fn of(&mut self, rel: &str) -> Licence {
        if let Some(l) = self.recorded.get(rel) {
            return l.clone();
        }
        let mut folder = rel.rsplit_once('/').map_or("", |(d, _)| d);
        loop {
            if let Some(l) = self.folder(folder) {
                return l;
            }
            if folder.is_empty() {
                return self.debian.of(&self.root.join(rel));
            }
            folder = folder.rsplit_once('/').map_or("", |(d, _)| d);
        }
    }

    fn folder(&mut self, rel: &str) -> Option<Licence> {
        if let Some(known) = self.folders.get(rel) {
            return known.clone();
        }
        let dir = self.root.join(rel);
        let declared = cargo_licence(&dir)
            .or_else(|| npm_licence(&dir))
            .map(|d| classify(&d))
            .or_else(|| licence_file(&dir));
        self.folders.insert(rel.to_string(), declared.clone());
        declared
    }
}

fn cargo_licence(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
    let doc: toml::Table = text.parse().ok()?;
    doc.get("package")?
        .get("license")?
        .as_str()
        .map(String::from)
}

fn npm_licence(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("package.json")).ok()?;
    let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
    doc.get("license")?.as_str().map(String::from)
}

/// A licence file's licence, from its first 4 KB.
fn licence_file(dir: &Path) -> Option<Licence> {
    let names = [
        "LICENSE",
        "LICENCE",
        "COPYING",
        "LICENSE-MIT",
        "LICENSE-APACHE",
    ];
    let entries = std::fs::read_dir(dir).ok()?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.to_ascii_uppercase())
                .is_some_and(|n| {
                    names
                        .iter()
                        .any(|m| n == *m || n.starts_with(&format!("{m}.")))
                })
        })
        .collect();
    files.sort();
    let file = files.first()?;
    let text = std::fs::read(file).ok()?;
    let head = String::from_utf8_lossy(text.get(..4096).unwrap_or(&text));
    let name = file.file_name()?.to_string_lossy().into_owned();
    Some(by_wording(&name, &head))
}

/// The licence of a licence text that names no identifier, by its wording; `name` says which
/// text in the reason.
fn by_wording(name: &str, text: &str) -> Licence {
    match words(text) {
        Some(true) => Licence::Permissive(format!("{name} (permissive wording)")),
        Some(false) => Licence::NotPermissive(format!("{name} (copyleft or proprietary wording)")),
        None => Licence::Unrecognised(format!("{name} (wording of no licence infill knows)")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn permissive(declared: &str) -> Option<bool> {
        match classify(declared) {
            Licence::Permissive(_) => Some(true),
            Licence::NotPermissive(_) => Some(false),
            Licence::Unrecognised(_) | Licence::Unknown => None,
        }
    }

    #[test]
    fn spdx_expressions_and_free_text() {
        for yes in [
            "MIT OR Apache-2.0",
            "MIT/Apache-2.0",
            "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT",
            "(MIT OR Apache-2.0) AND Unicode-DFS-2016",
            "MIT OR MPL-2.0",
            "Apache-2.0 AND ISC",
            "Apache 2.0 License",
            "BSD 3-Clause License",
            "ASL 2",
            "MIT license",
        ] {
            assert_eq!(permissive(yes), Some(true), "{yes}");
        }
        for no in [
            "MPL-2.0",
            "GPL-2.0 WITH Linux-syscall-note",
            "MIT AND GPL-3.0-or-later",
            "MPL-2.0 AND MIT",
            "LicenseRef-NVIDIA-Proprietary",
            "public domain, Python, 2-Clause BSD, GPL 3 (see COPYING.txt)",
            "GNU Lesser General Public License v2.1",
            // Known identifiers that are not on the permissive list.
            "Artistic-1.0-Perl OR GPL-1.0-or-later",
            "BUSL-1.1",
            "CC-BY-NC-4.0",
        ] {
            assert_eq!(permissive(no), Some(false), "{no}");
        }
        assert_eq!(permissive("Dual License"), None);
        assert_eq!(permissive("SomethingElse-1.0"), None);
    }

    #[test]
    fn declarations_are_found_nearest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        let write = |rel: &str, text: &str| {
            let p = r.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        // A Python distribution: RECORD lists its files, METADATA says the licence.
        write(
            "good-1.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: good\nLicense: UNKNOWN\nClassifier: License :: OSI Approved :: BSD License\n\nLong description mentioning the GPL.\n",
        );
        write(
            "good-1.0.dist-info/RECORD",
            "good/__init__.py,sha256=x,10\n../../../bin/good,sha256=y,5\n",
        );
        write("good/__init__.py", "x = 1\n");
        write(
            "bad-2.0.dist-info/METADATA",
            "Metadata-Version: 2.4\nName: bad\nLicense-Expression: GPL-3.0-only\n\n",
        );
        write("bad-2.0.dist-info/RECORD", "bad.py,sha256=z,3\n");
        write("bad.py", "y = 2\n");
        write("stray.py", "z = 3\n");
        // A crate, and a folder inside it with its own licence file.
        write(
            "krate-0.1.0/Cargo.toml",
            "[package]\nname = \"krate\"\nlicense = \"MIT OR Apache-2.0\"\n",
        );
        write("krate-0.1.0/src/lib.rs", "pub fn f() {}\n");
        write(
            "krate-0.1.0/c_src/COPYING",
            "                    GNU GENERAL PUBLIC LICENSE\n                       Version 2, June 1991\n",
        );
        write("krate-0.1.0/c_src/x.c", "int x;\n");
        write(
            "pkg/package.json",
            "{\"name\": \"pkg\", \"license\": \"ISC\"}",
        );
        write("pkg/lib/index.js", "module.exports = 1;\n");
        let mut l = Licences::scan(r);
        assert!(matches!(l.of("good/__init__.py"), Licence::Permissive(s) if s == "BSD License"));
        assert!(matches!(l.of("bad.py"), Licence::NotPermissive(_)));
        assert_eq!(l.of("stray.py"), Licence::Unknown);
        assert!(
            matches!(l.of("krate-0.1.0/src/lib.rs"), Licence::Permissive(s) if s == "MIT OR Apache-2.0")
        );
        assert!(matches!(
            l.of("krate-0.1.0/c_src/x.c"),
            Licence::NotPermissive(_)
        ));
        assert!(matches!(l.of("pkg/lib/index.js"), Licence::Permissive(s) if s == "ISC"));
        write("odd/LICENSE", "You may do as the Frobnicator pleases.\n");
        write("odd/odd.py", "w = 4\n");
        assert_eq!(
            Licences::scan(r).of("odd/odd.py"),
            Licence::Unrecognised("LICENSE (wording of no licence infill knows)".into())
        );
        // A licence file at the root covers what nothing nearer declares.
        write(
            "LICENSE.txt",
            "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2\n",
        );
        let mut l = Licences::scan(r);
        assert!(matches!(l.of("stray.py"), Licence::Permissive(_)));
        assert!(matches!(l.of("bad.py"), Licence::NotPermissive(_)));
    }
}
