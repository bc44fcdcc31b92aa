//! The one error type of the data layer: it names the file, the element inside it and, where we
//! know one, what the user can do about it.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataError {
    pub path: PathBuf,
    /// The element inside the file (`X/indptr`, `var/_index`, `matrix.mtx line 12`), if any.
    pub element: Option<String>,
    pub problem: String,
    pub hint: Option<String>,
}

impl DataError {
    pub fn new(path: &Path, element: impl Into<Option<String>>, problem: impl Into<String>) -> Self {
        DataError {
            path: path.to_path_buf(),
            element: element.into(),
            problem: problem.into(),
            hint: None,
        }
    }

    /// An error about one element (HDF5 path or text line) of the file.
    pub fn at(path: &Path, element: &str, problem: impl Into<String>) -> Self {
        Self::new(path, Some(element.to_string()), problem)
    }

    pub fn file(path: &Path, problem: impl Into<String>) -> Self {
        Self::new(path, None, problem)
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(e) = &self.element {
            write!(f, ": `{e}`")?;
        }
        // HDF5 error stacks span lines; the user gets one line.
        let problem = self.problem.split_whitespace().collect::<Vec<_>>().join(" ");
        write!(f, ": {problem}")?;
        if let Some(h) = &self.hint {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DataError {}

pub type Result<T> = std::result::Result<T, DataError>;

/// Attaches file and element to errors from the HDF5 library or the OS.
pub(crate) trait Context<T> {
    fn at(self, path: &Path, element: &str) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn at(self, path: &Path, element: &str) -> Result<T> {
        self.map_err(|e| {
            let text = e.to_string();
            // HDF5's report of a failed write holds the OS's errno among its internals.
            if text.contains("errno = 28") {
                DataError::at(path, element, "cannot write: no space left on device")
            } else {
                DataError::at(path, element, text)
            }
        })
    }
}
