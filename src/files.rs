//! Files written so that nothing is lost and read only where they should be.
//!
//! - [`AtomicFile`]: every output goes to a temporary sibling (`tempfile`), is flushed and
//!   fsynced, renamed into place and its folder fsynced; on any failure, and when dropped
//!   uncommitted, the temporary file is removed, so an output is whole or absent.
//! - [`check_output`]: an output path may never be one of the inputs (the same path, a symlink or
//!   a hard link to it), and an existing file is replaced only when the user said `--overwrite`.
//! - [`open_regular`]: readers open regular files only (a FIFO would block, `/dev/zero` never
//!   ends).
//! - [`plain_name`], [`printable`]: names taken from files are checked before use and escaped
//!   before they reach a terminal.
//! - [`report_line`]: a result printed on standard output once its work is done and kept.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A file-system failure: the path and one line saying what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FileError {
    pub path: String,
    pub message: String,
}

impl FileError {
    pub fn new(path: &Path, message: impl Into<String>) -> Self {
        FileError {
            path: path.display().to_string(),
            message: message.into(),
        }
    }

    /// "cannot WHAT: reason", the reason as the OS says it ("no space left on device").
    pub fn io(path: &Path, what: &str, e: &std::io::Error) -> Self {
        FileError::new(path, format!("cannot {what}: {}", describe(e)))
    }
}

/// An I/O error in one lower-case phrase, without Rust's "(os error N)".
pub fn describe(e: &std::io::Error) -> String {
    let text = e.to_string();
    // Without the errno and without the path `tempfile` appends (the caller names the path).
    let text = text.split(" at path \"").next().unwrap_or_default();
    let text = text.split(" (os error ").next().unwrap_or_default().to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// A file being written: a temporary sibling of `out` until `commit` renames it into place.
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    out: PathBuf,
    _pending: Pending,
}

/// Temporary files and folders being written now, for `remove_pending`.
static PENDING: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A temporary file or folder listed for `remove_pending` until dropped (after its owner
/// committed it or removed it).
pub struct Pending(PathBuf);

impl Pending {
    pub fn new(path: &Path) -> Self {
        if let Ok(mut p) = PENDING.lock() {
            p.push(path.to_path_buf());
        }
        Pending(path.to_path_buf())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Ok(mut p) = PENDING.lock() {
            if let Some(i) = p.iter().rposition(|q| q == &self.0) {
                p.swap_remove(i);
            }
        }
    }
}

/// The signal that asked this process to stop (0: none), set by `signal-hook`'s handler.
static SIGNALLED: std::sync::LazyLock<std::sync::Arc<std::sync::atomic::AtomicUsize>> =
    std::sync::LazyLock::new(Default::default);

/// For a command that writes outputs in the foreground (`merge`, `overlap --out`): SIGINT,
/// SIGTERM or SIGHUP ends the process (status 128 + signal, as the default action would) after
/// removing the temporary files it was writing, instead of leaving them beside the output.
/// The handler only sets a flag (`signal-hook`); a watching thread does the rest.
pub fn remove_pending_on_signal() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        if let Err(e) = signal_hook::flag::register_usize(sig, std::sync::Arc::clone(&SIGNALLED), sig as usize) {
            eprintln!("warning: cannot handle signal {sig} ({e}); a stop may leave a temporary file");
        }
    }
    std::thread::spawn(|| loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let sig = SIGNALLED.load(std::sync::atomic::Ordering::SeqCst) as libc::c_int;
        if sig != 0 {
            remove_pending();
            let name = match sig {
                libc::SIGINT => "SIGINT",
                libc::SIGHUP => "SIGHUP",
                _ => "SIGTERM",
            };
            eprintln!("error: stopped by {name}; the output being written was removed");
            // SAFETY: _exit only ends the process (HDF5's exit handlers must not run while
            // another thread may be inside the library).
            unsafe { libc::_exit(128 + sig) }
        }
    });
}

/// Removes every temporary file and folder still being written: for a process about to end at
/// once (a signal), which runs no destructors. Never blocks on a writer holding the list.
pub fn remove_pending() {
    remove_pending_where(|_| true);
}

fn remove_pending_where(chosen: impl Fn(&Path) -> bool) {
    let Ok(p) = PENDING.try_lock() else { return };
    for path in p.iter().filter(|p| chosen(p)) {
        if path.is_dir() {
            let _ = std::fs::remove_dir_all(path);
        } else {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl AtomicFile {
    /// Creates the temporary file beside `out` (creating `out`'s folder when missing).
    pub fn create(out: &Path) -> Result<Self, FileError> {
        let dir = match out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| FileError::io(&dir, "create the folder", &e))?;
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            // As a plain create would (the umask applies), not tempfile's private 0600.
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(&dir)
            .map_err(|e| FileError::io(out, "create a temporary file beside it", &e))?;
        Ok(AtomicFile {
            _pending: Pending::new(tmp.path()),
            tmp,
            out: out.to_path_buf(),
        })
    }

    /// The temporary file's path, for writers that take a path (HDF5, safetensors); they must
    /// write the same file (truncate, not replace it) and close it before `commit`.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// The final path.
    pub fn out(&self) -> &Path {
        &self.out
    }

    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Flushes and fsyncs the data, renames the file into place and fsyncs its folder; an error
    /// (a full disk among them) removes the temporary file and leaves `out` as it was.
    pub fn commit(mut self) -> Result<(), FileError> {
        let out = self.out.clone();
        // A stop asked for while writing (see `remove_pending_on_signal`): not put in place.
        if SIGNALLED.load(std::sync::atomic::Ordering::SeqCst) != 0 {
            // The watching thread removes this file and ends the process with the signal's
            // status within its next poll; until then nothing more is written.
            loop {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        self.tmp
            .as_file_mut()
            .flush()
            .and_then(|_| self.tmp.as_file().sync_all())
            .map_err(|e| FileError::io(&out, "write", &e))?;
        self.tmp
            .persist(&out)
            .map_err(|e| FileError::io(&out, "rename into place", &e.error))?;
        sync_dir(&out);
        Ok(())
    }
}

/// Fsyncs the folder holding `path`, so that a rename into it survives a crash (best effort: some
/// file systems refuse to sync a folder).
pub fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Writes `bytes` to `out` atomically (see [`AtomicFile`]).
pub fn write_atomic(out: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let mut f = AtomicFile::create(out)?;
    f.file().write_all(bytes).map_err(|e| FileError::io(out, "write", &e))?;
    f.commit()
}

/// The input folder (after symlinks) that holds the real path `real`, if any.
fn input_folder_holding<'a>(real: &Path, inputs: &[&'a Path]) -> Option<&'a Path> {
    inputs.iter().copied().find(|input| {
        std::fs::metadata(input).is_ok_and(|m| m.is_dir())
            && std::fs::canonicalize(input).is_ok_and(|i| real.starts_with(i))
    })
}

/// Checks that writing `out` loses nothing: it is none of `inputs` (by path, symlink or hard
/// link; nor inside an input folder), not a folder, and, when it exists, `overwrite` was given.
pub fn check_output(out: &Path, inputs: &[&Path], overwrite: bool) -> Result<(), FileError> {
    let exists = match std::fs::symlink_metadata(out) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(FileError::io(out, "read", &e)),
    };
    if !exists {
        // A new file inside an input folder (a 10x folder, a model's folder, the zoo) is refused
        // too: judged by the nearest folder above it that exists.
        let mut above = out.parent();
        while let Some(p) = above {
            let p = if p.as_os_str().is_empty() { Path::new(".") } else { p };
            if let Ok(real) = std::fs::canonicalize(p) {
                if let Some(input) = input_folder_holding(&real, inputs) {
                    return Err(FileError::new(
                        out,
                        format!(
                            "would be written inside the input {}; write the output to another path",
                            input.display()
                        ),
                    ));
                }
                break;
            }
            above = p.parent();
        }
        // No folder is made for an output: a typo in its path would scatter folders.
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            if std::fs::metadata(parent).is_err() {
                return Err(FileError::new(
                    out,
                    format!(
                        "its folder {} does not exist; create it first, or check the path",
                        printable(&parent.display().to_string())
                    ),
                ));
            }
        }
        return Ok(());
    }
    if let Ok(target) = std::fs::metadata(out) {
        let holder = std::fs::canonicalize(out)
            .ok()
            .and_then(|real| input_folder_holding(&real, inputs));
        for input in inputs {
            let Ok(m) = std::fs::metadata(input) else { continue };
            let same = m.dev() == target.dev() && m.ino() == target.ino();
            let inside = holder == Some(*input);
            if same || inside {
                return Err(FileError::new(
                    out,
                    format!(
                        "is the input {}{}; write the output to another path",
                        input.display(),
                        if same { "" } else { " (a file inside it)" }
                    ),
                ));
            }
        }
        if target.is_dir() {
            return Err(FileError::new(out, "is a folder; name the output file"));
        }
    }
    if std::fs::metadata(out).is_err() {
        let to = std::fs::read_link(out)
            .map(|t| printable(&t.display().to_string()).into_owned())
            .unwrap_or_default();
        return Err(FileError::new(
            out,
            format!("is a symbolic link to {to}, which does not exist; remove the link or name another output"),
        ));
    }
    if !overwrite {
        return Err(FileError::new(out, "already exists; pass --overwrite to replace it"));
    }
    Ok(())
}

/// Opens `path` for reading if it is a regular file (after symlinks); anything else (a FIFO, a
/// device, a folder) is refused before it is opened.
pub fn open_regular(path: &Path) -> Result<File, FileError> {
    require_regular(path)?;
    File::open(path).map_err(|e| FileError::io(path, "read", &e))
}

/// Refuses anything but a regular file (after symlinks).
pub fn require_regular(path: &Path) -> Result<std::fs::Metadata, FileError> {
    let m = std::fs::metadata(path).map_err(|e| match std::fs::read_link(path) {
        Ok(target) if e.kind() == std::io::ErrorKind::NotFound => FileError::new(
            path,
            format!(
                "is a symbolic link to `{}`, which does not exist",
                printable(&target.display().to_string())
            ),
        ),
        _ => FileError::io(path, "read", &e),
    })?;
    if !m.is_file() {
        let kind = if m.is_dir() {
            "a folder"
        } else {
            use std::os::unix::fs::FileTypeExt;
            let t = m.file_type();
            if t.is_fifo() {
                "a FIFO (named pipe)"
            } else if t.is_char_device() || t.is_block_device() {
                "a device"
            } else if t.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            }
        };
        return Err(FileError::new(path, format!("is {kind}, not a regular file")));
    }
    Ok(m)
}

/// True for a plain file name: no folder part, not `.`/`..`, nothing but a name.
pub fn plain_name(name: &str) -> bool {
    let p = Path::new(name);
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && p.components().count() == 1
}

/// `s` with control characters (escape sequences among them) shown as `\u{..}` escapes, so that a
/// name read from a file cannot drive the terminal it is printed on.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    // Control characters, and the invisible marks that reorder or hide text (bidi overrides and
    // isolates, zero-width characters).
    let hostile = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    if !s.chars().any(hostile) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if hostile(c) {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// Writes `line` and a line end to standard output: a report printed once the work it reports is
/// done and kept. A reader that has gone (`| head`) is not an error, as the work is not lost; any
/// other failure (a full disk behind `>`) is. `println!` would panic on either.
pub fn report_line(line: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn outputs_never_replace_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("a.h5ad");
        std::fs::write(&input, b"data").unwrap();
        let link = dir.path().join("link.h5ad");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        let hard = dir.path().join("hard.h5ad");
        std::fs::hard_link(&input, &hard).unwrap();
        for out in [&input, &link, &hard] {
            let e = check_output(out, &[&input], true).unwrap_err();
            assert!(e.message.contains("is the input"), "{e}");
        }
        let other = dir.path().join("other.h5ad");
        assert!(check_output(&other, &[&input], false).is_ok());
        std::fs::write(&other, b"old").unwrap();
        let e = check_output(&other, &[&input], false).unwrap_err();
        assert!(e.message.contains("--overwrite"), "{e}");
        assert!(check_output(&other, &[&input], true).is_ok());
        // A file inside an input folder (a Matrix Market dataset) is the input too.
        let mtx = dir.path().join("mtx");
        std::fs::create_dir(&mtx).unwrap();
        std::fs::write(mtx.join("matrix.mtx"), b"%").unwrap();
        let e = check_output(&mtx.join("matrix.mtx"), &[&mtx], true).unwrap_err();
        assert!(e.message.contains("inside"), "{e}");
        // And so is a new file there, or in a new folder there (judged by the folder that exists).
        for out in [mtx.join("new.h5ad"), mtx.join("sub/deeper/new.h5ad")] {
            let e = check_output(&out, &[&mtx], true).unwrap_err();
            assert!(e.message.contains("inside the input"), "{e}");
        }
        assert!(check_output(&dir.path().join("beside.h5ad"), &[&mtx], true).is_ok());
        // No folder is made for an output.
        let e = check_output(&dir.path().join("no/such/out.h5ad"), &[&mtx], true).unwrap_err();
        assert!(e.message.contains("does not exist"), "{}", e.message);
    }

    #[test]
    fn an_uncommitted_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.csv");
        {
            let mut f = AtomicFile::create(&out).unwrap();
            f.file().write_all(b"half").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomic(&out, b"whole").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// What a process ending at once (a signal; no destructors run) removes: the temporary files
    /// and folders being written, not the outputs already in place.
    #[test]
    fn pending_temporaries_are_removed_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&dir.path().join("done.csv"), b"whole").unwrap();
        let mut f = AtomicFile::create(&dir.path().join("half.csv")).unwrap();
        f.file().write_all(b"half").unwrap();
        let staging = dir.path().join(".tmp-model");
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join("weights"), b"w").unwrap();
        let _staged = Pending::new(&staging);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
        // (Only this test's: other tests of this process write files now.)
        remove_pending_where(|p| p.starts_with(dir.path()));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["done.csv"]);
        drop(f);
    }

    #[test]
    fn only_regular_files_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("x.h5ad");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_regular(&fifo).unwrap_err();
        assert!(e.message.contains("FIFO"), "{e}");
        assert!(open_regular(Path::new("/dev/zero"))
            .unwrap_err()
            .message
            .contains("device"));
    }

    #[test]
    fn names_and_printing() {
        assert!(plain_name("weights.safetensors"));
        for bad in ["", ".", "..", "../x", "/etc/passwd", "a/b"] {
            assert!(!plain_name(bad), "{bad}");
        }
        assert_eq!(printable("B cell"), "B cell");
        assert_eq!(printable("\x1b[2Jx"), "\\u{1b}[2Jx");
        assert_eq!(printable("a\u{202e}b"), "a\\u{202e}b");
    }
}
