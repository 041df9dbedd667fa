//! Licences of files a Debian package installed (`/usr/include`'s headers): dpkg's file lists
//! (`var/lib/dpkg/info/*.list`) name the package that owns a file, and the package's
//! `usr/share/doc/<package>/copyright` declares its licences. Debian keeps them there rather than
//! next to the files, so the folder walk of [`super::Licences`] finds nothing for them.
//!
//! A machine-readable copyright file (DEP-5) is read stanza by stanza: the upstream files' licences
//! (every `Files:` stanza but those covering only Debian's own `debian/*` packaging, and the header's
//! `License:` if it has one) must all be permissive, since which stanza covers an installed file is
//! written in terms of the source tree, not of where the file is installed. Debian's short names are
//! not SPDX identifiers (`Expat`, `APACHE-2-LLVM-EXCEPTIONS`, `solar-public-domain`), so they are read
//! by family; a name read no way is judged by the wording of its licence text. A free-text copyright
//! file is read for its wording as a whole: any copyleft or proprietary wording leaves it out.
//!
//! The system is the one at `DPKG_ROOT` (dpkg's own variable; `/` when unset).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Licence, by_wording, spdx, words};

/// The packages of one Debian system, read when first asked about.
#[derive(Debug)]
pub struct Debian {
    root: PathBuf,
    /// Installed path (absolute, as dpkg lists it) -> package; read on first use.
    owners: Option<HashMap<PathBuf, String>>,
    /// Package -> its licence, once read.
    packages: HashMap<String, Licence>,
}

impl Default for Debian {
    fn default() -> Self {
        let root = std::env::var_os("DPKG_ROOT")
            .filter(|r| !r.is_empty())
            .map_or_else(|| PathBuf::from("/"), PathBuf::from);
        Self::at(&root)
    }
}

impl Debian {
    /// The Debian system installed under `root`.
    pub fn at(root: &Path) -> Self {
        Self {
            root: std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf()),
            owners: None,
            packages: HashMap::new(),
        }
    }

    /// The licence of the installed file at `path`; unknown when no package owns it.
    pub fn of(&mut self, path: &Path) -> Licence {
        let Some(installed) = std::fs::canonicalize(path)
            .ok()
            .and_then(|p| Some(Path::new("/").join(p.strip_prefix(&self.root).ok()?)))
        else {
            return Licence::Unknown;
        };
        let info = self.root.join("var/lib/dpkg/info");
        let owners = self.owners.get_or_insert_with(|| file_lists(&info));
        let Some(package) = owners.get(&installed) else {
            return Licence::Unknown;
        };
        if let Some(known) = self.packages.get(package) {
            return known.clone();
        }
        let file = self
            .root
            .join("usr/share/doc")
            .join(package)
            .join("copyright");
        let licence = std::fs::read_to_string(&file).map_or(Licence::Unknown, |text| {
            copyright(&text).named(|names| format!("{package}: {names}"))
        });
        self.packages.insert(package.clone(), licence.clone());
        licence
    }
}

/// Every path dpkg lists, with its package (`libfoo-dev:amd64.list` lists `libfoo-dev`'s).
fn file_lists(info: &Path) -> HashMap<PathBuf, String> {
    let mut owners = HashMap::new();
    for entry in std::fs::read_dir(info).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "list") {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let package = stem.split(':').next().unwrap_or(stem).to_string();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines().filter(|l| l.starts_with('/')) {
            owners.insert(PathBuf::from(line), package.clone());
        }
    }
    owners
}

/// A package's licence from its `copyright` file.
pub fn copyright(text: &str) -> Licence {
    if !text.starts_with("Format:") {
        return by_wording("copyright", text);
    }
    let stanzas = stanzas(text);
    // Standalone `License:` stanzas give the text of a name the `Files:` stanzas use.
    let texts: HashMap<String, &str> = stanzas
        .iter()
        .filter(|s| s.field("files").is_none() && s.field("format").is_none())
        .filter_map(|s| {
            let (name, text) = s.field("license")?.split_once('\n')?;
            Some((name.trim().to_ascii_lowercase(), text))
        })
        .collect();
    let mut names: Vec<String> = Vec::new();
    let mut verdicts = Vec::new();
    for (i, stanza) in stanzas.iter().enumerate() {
        let covers_upstream = match stanza.field("files") {
            Some(files) => !files.split_whitespace().all(|f| f.starts_with("debian/")),
            None => i == 0,
        };
        let Some(licence) = stanza.field("license").filter(|_| covers_upstream) else {
            continue;
        };
        let (name, own_text) = licence.split_once('\n').unwrap_or((licence, ""));
        let name = name.trim();
        let text = match own_text.trim() {
            "" => texts.get(&name.to_ascii_lowercase()).copied().unwrap_or(""),
            _ => own_text,
        };
        verdicts.push(short_name(name).or_else(|| words(text)));
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    let names = names.join(", ");
    if verdicts.contains(&Some(false)) {
        Licence::NotPermissive(names)
    } else if !verdicts.is_empty() && verdicts.iter().all(|v| *v == Some(true)) {
        Licence::Permissive(names)
    } else if names.is_empty() {
        Licence::Unknown
    } else {
        Licence::Unrecognised(names)
    }
}

/// A Debian short licence name read as an SPDX expression, its names mapped by family first;
/// `None` when some name is of no family known.
fn short_name(name: &str) -> Option<bool> {
    let lower = name.to_ascii_lowercase().replace(',', " and ");
    let mut mapped = Vec::new();
    let mut tokens = lower.split_whitespace().peekable();
    while let Some(token) = tokens.next() {
        // "X with Y exception": an exception only grants more.
        if token == "with" {
            while let Some(t) = tokens.next_if(|t| !matches!(*t, "or" | "and" | ")")) {
                if t.starts_with("exception") {
                    break;
                }
            }
            continue;
        }
        mapped.push(family(token).unwrap_or(token));
    }
    spdx(&mapped.join(" "))
}

/// The SPDX identifier standing for a Debian name's family (the licence's own version matters
/// not for the verdict).
fn family(name: &str) -> Option<&'static str> {
    let name = name.trim_matches(|c| c == '(' || c == ')');
    Some(match name {
        "expat" | "mit/x11" | "x11" => "MIT",
        n if n.starts_with("mit") => "MIT",
        n if n.starts_with("apache-2") || n.starts_with("apache2") => "Apache-2.0",
        n if n.starts_with("bsd") => "BSD-3-Clause",
        n if n.contains("public-domain") || n == "pd" => "CC0-1.0",
        "python" | "psf" | "psf-2" => "PSF-2.0",
        "zlib" | "zlib/libpng" | "libpng" => "Zlib",
        "isc" => "ISC",
        "icu" | "unicode" => "Unicode-3.0",
        "boost" | "bsl" => "BSL-1.0",
        n if n.starts_with("gpl") => "GPL-2.0-or-later",
        n if n.starts_with("lgpl") => "LGPL-2.1-or-later",
        n if n.starts_with("agpl") => "AGPL-3.0-or-later",
        n if n.starts_with("mpl") => "MPL-2.0",
        n if n.starts_with("epl") => "EPL-2.0",
        n if n.starts_with("cddl") => "CDDL-1.0",
        n if n.starts_with("eupl") => "EUPL-1.2",
        _ => return None,
    })
}

/// A DEP-5 stanza: its fields, names lowercased, continuation lines kept after a newline.
struct Stanza {
    fields: Vec<(String, String)>,
}

impl Stanza {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn stanzas(text: &str) -> Vec<Stanza> {
    let mut out = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines().chain([""]) {
        if line.trim().is_empty() {
            if !fields.is_empty() {
                out.push(Stanza {
                    fields: std::mem::take(&mut fields),
                });
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const LLVM: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: LLVM/Clang

Files: *
Copyright: 2003-2017 University of Illinois at Urbana-Champaign.
License: APACHE-2-LLVM-EXCEPTIONS
 On Debian systems the full text of the Apache Software License 2.0 can be
 found in the `/usr/share/common-licenses/Apache-2.0' file.
 .
 In addition, if you combine or link compiled forms of this Software with
 software that is licensed under the GPLv2 ...

Files: lib/Support/MD5.cpp
License: solar-public-domain
 This software was written by Alexander Peslyak in 2001.

Files: utils/unittest/googletest/*
License: BSD-3-Clause

Files: debian/*
License: GPL-2+
";

    #[test]
    fn every_upstream_stanza_must_be_permissive() {
        assert_eq!(
            copyright(LLVM),
            Licence::Permissive(
                "APACHE-2-LLVM-EXCEPTIONS, solar-public-domain, BSD-3-Clause".into()
            ),
            "Debian's own packaging (debian/*) does not count"
        );
        let mixed = LLVM.replace("License: BSD-3-Clause", "License: LGPL-2.1+");
        assert!(matches!(copyright(&mixed), Licence::NotPermissive(_)));
        let unknown = LLVM.replace("License: BSD-3-Clause", "License: Frobnicate-1");
        assert_eq!(
            copyright(&unknown),
            Licence::Unrecognised(
                "APACHE-2-LLVM-EXCEPTIONS, solar-public-domain, Frobnicate-1".into()
            ),
            "a name of no family, with no text to read, is named in the reason"
        );
        let undeclared = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: debian/*\nLicense: GPL-2+\n";
        assert_eq!(copyright(undeclared), Licence::Unknown);
    }

    #[test]
    fn short_names_are_read_by_family() {
        for permissive in [
            "Expat",
            "MIT/X11",
            "BSD-2-clause",
            "Apache-2.0 with LLVM exception",
            "Zlib",
            "public-domain",
            "ISC or GPL-2+",
            "MIT, BSD-3-clause",
        ] {
            assert_eq!(short_name(permissive), Some(true), "{permissive}");
        }
        for not in ["GPL-2+", "LGPL-2.1+ or MPL-1.1", "MIT and GPL-3"] {
            assert_eq!(short_name(not), Some(false), "{not}");
        }
        assert_eq!(short_name("SGI-B-2.0"), None);
    }

    #[test]
    fn a_name_of_no_family_is_judged_by_its_licence_text() {
        let text = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
License: Custom

Files: extra/*
License: Other
 Permission is hereby granted, free of charge, to any person obtaining a copy

License: Custom
 Redistribution and use in source and binary forms, with or without modification
";
        assert_eq!(copyright(text), Licence::Permissive("Custom, Other".into()));
    }

    #[test]
    fn free_text_is_read_for_its_wording() {
        let x11 = "This package was downloaded from https://xorg.freedesktop.org\n\nPermission is hereby granted, free of charge, to any person obtaining a copy\n";
        assert!(matches!(copyright(x11), Licence::Permissive(_)));
        let mixed = format!("{x11}\nParts are under the GNU General Public License.\n");
        assert!(matches!(copyright(&mixed), Licence::NotPermissive(_)));
    }

    #[test]
    fn installed_files_are_owned_through_dpkg_lists() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        let write = |rel: &str, text: &str| {
            let p = r.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write(
            "var/lib/dpkg/info/llvm-dev:amd64.list",
            "/.\n/usr\n/usr/include\n/usr/include/llvm/IR.h\n",
        );
        write("var/lib/dpkg/info/libc-dev.list", "/usr/include/stdio.h\n");
        write("usr/share/doc/llvm-dev/copyright", LLVM);
        write(
            "usr/share/doc/libc-dev/copyright",
            "Format: x\n\nFiles: *\nLicense: LGPL-2.1+\n",
        );
        for f in [
            "usr/include/llvm/IR.h",
            "usr/include/stdio.h",
            "usr/include/mine.h",
        ] {
            write(f, "int x;\n");
        }
        let mut debian = Debian::at(r);
        let of = |d: &mut Debian, rel: &str| d.of(&r.join(rel));
        assert!(
            matches!(of(&mut debian, "usr/include/llvm/IR.h"), Licence::Permissive(s) if s.starts_with("llvm-dev: APACHE"))
        );
        assert_eq!(
            of(&mut debian, "usr/include/stdio.h"),
            Licence::NotPermissive("libc-dev: LGPL-2.1+".into())
        );
        assert_eq!(of(&mut debian, "usr/include/mine.h"), Licence::Unknown);
        assert_eq!(of(&mut debian, "elsewhere.h"), Licence::Unknown);
    }
}
