//! `scripts/install.sh` as a user runs it: scmz installed into a prefix works from any folder, with
//! its completions and manual pages; installing again changes nothing; `--uninstall` leaves nothing.
//! The test installs the binaries this build made (`--from`), so CI builds nothing twice.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{data, stderr, stdout};

fn install(args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::new("bash")
        .arg(root.join("scripts/install.sh"))
        .args(args)
        .current_dir("/")
        .output()
        .unwrap()
}

fn files_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn installed_scmz_runs_from_anywhere_and_uninstalls_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let prefix = root.path().join("prefix");
    let built = Path::new(env!("CARGO_BIN_EXE_scmz")).parent().unwrap();
    let (p, b) = (prefix.to_str().unwrap(), built.to_str().unwrap());
    let o = install(&["--from", b, "--prefix", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("is not on your PATH"), "{}", stderr(&o));
    let listed = files_below(&prefix);

    // The installed scmz, from a folder of its own, with a dataset given by a relative path.
    let work = root.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::copy(data("pbmc68k_counts.h5ad"), work.join("cells.h5ad")).unwrap();
    let scmz = |args: &[&str]| {
        Command::new(prefix.join("bin/scmz"))
            .args(args)
            .current_dir(&work)
            .env("SCMZ_ZOO", work.join("zoo"))
            .env("SCMZ_STATE_DIR", work.join("state"))
            .env("SCMZ_CACHE_DIR", work.join("cache"))
            .env("SCMZ_CONFIG", work.join("config.toml"))
            .output()
            .unwrap()
    };
    let o = scmz(&["version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("libtorch devices: {"), "{}", stdout(&o));
    let o = scmz(&["datasets", data("").to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(rows.len() >= 10, "{rows:#?}");
    let o = scmz(&["train", "cells.h5ad", "--name", "installed", "--epochs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(work.join("zoo/installed/manifest.json").exists());

    // Completions for three shells and the manual pages, with the engine's and the job options.
    for (file, needles) in [
        (
            "share/bash-completion/completions/scmz",
            ["train", "--n-latent", "--detach"],
        ),
        ("share/zsh/site-functions/_scmz", ["train", "--n-latent", "--detach"]),
        (
            "share/fish/vendor_completions.d/scmz.fish",
            ["train", "n-latent", "detach"],
        ),
        ("share/man/man1/scmz.1", ["train", "project", "jobs"]),
        ("share/man/man1/scmz-train.1", ["scmz train", "n\\-latent", "detach"]),
    ] {
        let text = std::fs::read_to_string(prefix.join(file)).unwrap();
        for n in needles {
            assert!(text.contains(n), "{file} lacks {n}");
        }
    }

    // Every page a page names is there (SEE ALSO named scmz-jobs-logs(1) and scmz-help(1)).
    let man1 = prefix.join("share/man/man1");
    for page in std::fs::read_dir(&man1).unwrap().flatten() {
        let text = std::fs::read_to_string(page.path()).unwrap().replace("\\-", "-");
        for (i, _) in text.match_indices("(1)") {
            let name = text[..i]
                .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .next()
                .unwrap();
            if name.starts_with("scmz") {
                assert!(
                    man1.join(format!("{name}.1")).exists(),
                    "{:?} names {name}(1)",
                    page.file_name()
                );
            }
        }
    }
    let jobs_page = std::fs::read_to_string(man1.join("scmz-jobs.1")).unwrap();
    assert!(!jobs_page.contains("supervise"), "the jobs page shows a hidden command");

    // The engine finds libtorch by a path outside the clone (the venv), so the clone may go.
    match Command::new("readelf")
        .arg("-d")
        .arg(prefix.join("bin/scmz-engine"))
        .output()
    {
        Ok(o) if o.status.success() => {
            let dynamic = stdout(&o);
            let runpath = dynamic
                .lines()
                .find(|l| l.contains("RUNPATH") || l.contains("RPATH"))
                .unwrap_or_else(|| panic!("the engine has no run path: {dynamic}"));
            assert!(runpath.contains("torch/lib"), "{runpath}");
            assert!(
                !runpath.contains(env!("CARGO_MANIFEST_DIR")),
                "libtorch found through the clone: {runpath}"
            );
        }
        _ => eprintln!("readelf is not here: the engine's run path is not checked"),
    }

    // Idempotent: a second install leaves the same files.
    let o = install(&["--from", b, "--prefix", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(files_below(&prefix), listed);

    // Uninstalled, nothing is left (a file of the user's beside it stays).
    std::fs::write(prefix.join("share/mine.txt"), b"the user's").unwrap();
    let o = install(&["--uninstall", "--prefix", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(files_below(&prefix), vec!["share/mine.txt".to_string()]);
    assert!(!prefix.join("bin").exists());
}

/// An uninstall removes what the install made and nothing else: not the files an edited list
/// names outside the prefix (directly, through `..`, `//` or a linked folder), not the folders
/// that were there before; the folders it made, the prefix's own included, go.
#[test]
fn uninstall_removes_only_what_the_install_made() {
    let root = tempfile::tempdir().unwrap();
    let built = Path::new(env!("CARGO_BIN_EXE_scmz")).parent().unwrap();
    let b = built.to_str().unwrap();

    // A prefix the install makes, two folders deep: gone after the uninstall.
    let made = root.path().join("made/deep");
    let m = made.to_str().unwrap();
    for _ in 0..2 {
        let o = install(&["--from", b, "--prefix", m]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = install(&["--uninstall", "--prefix", m]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!root.path().join("made").exists(), "a folder the install made stayed");

    // A prefix with an empty bin of the user's, and a list edited to reach outside.
    let prefix = root.path().join("prefix");
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    let p = prefix.to_str().unwrap();
    let o = install(&["--from", b, "--prefix", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let victim = root.path().join("victim");
    std::fs::create_dir_all(victim.join("d")).unwrap();
    for f in ["viadir", "d/inner", "direct"] {
        std::fs::write(victim.join(f), b"keep").unwrap();
    }
    std::os::unix::fs::symlink(&victim, prefix.join("share/evil")).unwrap();
    let list = prefix.join("share/scmz/installed-files");
    let mut text = std::fs::read_to_string(&list).unwrap();
    for line in [
        format!("{p}/share/evil/viadir"),
        format!("{p}//share/evil/d/inner"),
        format!("{p}/../victim/direct"),
        victim.join("direct").display().to_string(),
        format!("{p}/share/evil/d/"),
    ] {
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(&list, text).unwrap();
    let o = install(&["--uninstall", "--prefix", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("skipping"), "{}", stderr(&o));
    for f in ["viadir", "d/inner", "direct"] {
        assert!(victim.join(f).exists(), "{f} outside the prefix was removed");
    }
    assert!(prefix.join("bin").is_dir(), "the user's bin folder was removed");
    assert!(!prefix.join("bin/scmz").exists());

    // A prefix whose share is a link elsewhere (a dotfile manager's) is refused before anything
    // is written there: the files would land outside, where the uninstall does not go.
    let linked = root.path().join("linked");
    let elsewhere = root.path().join("elsewhere/share");
    std::fs::create_dir_all(&linked).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, linked.join("share")).unwrap();
    let o = install(&["--from", b, "--prefix", linked.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert!(files_below(&elsewhere).is_empty() && !linked.join("bin").exists());
}
