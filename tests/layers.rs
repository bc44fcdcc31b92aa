//! The layers of the architecture (`src/lib.rs`), checked rather than commented: libtorch is the
//! engine's alone. No source file outside `src/engine/` names `tch`, and the `scmz` front end
//! (CLI and TUI) is linked without libtorch, so it starts without loading it.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A use of the crate: `tch::`, `use tch` or `extern crate tch`, outside comments.
fn names_tch(source: &str) -> Option<String> {
    source
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//"))
        .find(|l| {
            l.contains("tch::")
                && !l.contains("_tch::")
                && l.split("tch::")
                    .next()
                    .is_some_and(|before| !before.ends_with(|c: char| c.is_alphanumeric() || c == '_'))
                || l.starts_with("use tch")
                || l.contains("extern crate tch")
        })
        .map(String::from)
}

#[test]
fn only_the_engine_names_libtorch() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 30, "{files:?}");
    let engine = root.join("src/engine");
    let mut engine_uses = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        match (f.starts_with(&engine), names_tch(&text)) {
            (true, Some(_)) => engine_uses += 1,
            (false, Some(line)) => panic!("{} names libtorch outside src/engine: {line}", f.display()),
            _ => {}
        }
    }
    // The check sees what it looks for: the engine does use tch.
    assert!(engine_uses >= 5, "{engine_uses}");
    assert!(names_tch("let t = tch::Tensor::zeros(...);").is_some());
    assert!(names_tch("// tch::Tensor in a comment").is_none());
}

#[test]
fn the_front_end_is_linked_without_libtorch() {
    let needed = |bin: &str| -> String {
        let o = std::process::Command::new("readelf")
            .args(["-d", bin])
            .output()
            .expect("readelf (binutils) runs");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains("(NEEDED)"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let front = needed(env!("CARGO_BIN_EXE_scmz"));
    assert!(front.contains("libc.so"), "{front}");
    for lib in ["libtorch", "libc10"] {
        assert!(!front.contains(lib), "scmz needs {lib}:\n{front}");
    }
    let engine = needed(env!("CARGO_BIN_EXE_scmz-engine"));
    assert!(engine.contains("libtorch"), "{engine}");
}
