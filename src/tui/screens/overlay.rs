//! What shows over a screen and takes every key while it does: the help, the training form,
//! a confirmation (cancel a job; project a low-overlap pair anyway) and a job's log pane. One at
//! a time: `App::overlay`.

use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent};
use scmz::jobs::Submission;
use scmz::spec::{EngineRequest, TrainSpec};

use crate::tui::app::{App, Screen};
use crate::tui::worker::Request;

#[derive(Debug, Clone, PartialEq)]
pub enum Overlay {
    Help,
    Form(TrainForm),
    /// `c` on a running job: its id, until `y` cancels it or another key does not.
    ConfirmCancel(String),
    /// `p` on a pair whose overlap is below the projection's minimum: the share found and the
    /// minimum, until `y` projects anyway (`--force`) or another key does not.
    ConfirmForce {
        found: f64,
        least: f64,
    },
    /// `p` on a pair projected before: the earlier output, until `y` replaces it or another key
    /// keeps it; `force` carries a low-overlap confirmation given already.
    ConfirmReplace {
        output: PathBuf,
        force: bool,
    },
    /// Enter on a job: its stderr log, followed while open.
    Log(LogView),
}

/// A job's log in the log pane: `scroll` lines up from the end (0: the end, followed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogView {
    pub job: String,
    pub lines: Vec<String>,
    pub scroll: usize,
}

/// A field of the training form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Name,
    Likelihood,
    Epochs,
    BatchKey,
    LabelKey,
    Device,
}

impl Field {
    pub const ALL: [Field; 6] = [
        Field::Name,
        Field::Likelihood,
        Field::Epochs,
        Field::BatchKey,
        Field::LabelKey,
        Field::Device,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::Likelihood => "likelihood",
            Field::Epochs => "epochs",
            Field::BatchKey => "batch key",
            Field::LabelKey => "label key",
            Field::Device => "device",
        }
    }
}

/// The training form.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainForm {
    pub data: Vec<PathBuf>,
    pub name: String,
    pub likelihood: String,
    pub epochs: String,
    pub batch_key: String,
    pub label_key: String,
    pub device: String,
    pub focus: Field,
    /// The dataset's obs columns, when known, and whether each is categorical: the batch and
    /// label keys must name a categorical one.
    pub columns: Option<Vec<(String, bool)>>,
    /// Whether this machine has a GPU: `cuda` is offered only then (jobs from the form run here).
    pub gpu: bool,
}

impl TrainForm {
    pub(in crate::tui) fn new(data: Vec<PathBuf>, labels: Option<String>) -> Self {
        let stem = data
            .first()
            .and_then(|p| p.file_stem())
            .map(|s| {
                s.to_string_lossy()
                    .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-")
            })
            .unwrap_or_else(|| "model".into());
        TrainForm {
            data,
            name: stem,
            likelihood: "nb".into(),
            epochs: "50".into(),
            batch_key: String::new(),
            label_key: labels.unwrap_or_default(),
            device: "auto".into(),
            focus: Field::Name,
            columns: None,
            gpu: scmz::jobs::has_gpu(),
        }
    }

    /// The values left and right cycle through; empty for free text.
    pub fn choices(&self, f: Field) -> &'static [&'static str] {
        match f {
            Field::Likelihood => &["nb", "zinb", "poisson"],
            Field::Device if self.gpu => &["auto", "cpu", "cuda"],
            Field::Device => &["auto", "cpu"],
            _ => &[],
        }
    }

    pub fn value(&self, f: Field) -> &str {
        match f {
            Field::Name => &self.name,
            Field::Likelihood => &self.likelihood,
            Field::Epochs => &self.epochs,
            Field::BatchKey => &self.batch_key,
            Field::LabelKey => &self.label_key,
            Field::Device => &self.device,
        }
    }

    fn value_mut(&mut self, f: Field) -> &mut String {
        match f {
            Field::Name => &mut self.name,
            Field::Likelihood => &mut self.likelihood,
            Field::Epochs => &mut self.epochs,
            Field::BatchKey => &mut self.batch_key,
            Field::LabelKey => &mut self.label_key,
            Field::Device => &mut self.device,
        }
    }

    pub(in crate::tui) fn submission(&self, zoo: &Path) -> Result<Submission, String> {
        let name = self.name.trim();
        scmz::zoo::check_name(name)?;
        // As `scmz train --epochs` reads it.
        let epochs = scmz::spec::epochs(self.epochs.trim()).map_err(|e| format!("epochs: {e}"))?;
        if zoo.join(name).exists() {
            return Err(format!(
                "name: the zoo has a model `{name}` already; pick another name (or `scmz train ... --overwrite` to replace it)"
            ));
        }
        fn choice<T: clap::ValueEnum>(form: &TrainForm, f: Field) -> Result<T, String> {
            T::from_str(form.value(f), false).map_err(|e| format!("{}: {e}", f.label()))
        }
        let first = self.data.first().cloned().unwrap_or_default();
        let mut spec = TrainSpec::defaults(first, name.into());
        spec.data = self.data.clone();
        spec.epochs = Some(epochs);
        spec.likelihood = choice(self, Field::Likelihood)?;
        spec.device = choice(self, Field::Device)?;
        spec.zoo = Some(zoo.to_path_buf());
        let optional = |f: Field| Some(self.value(f).trim().to_string()).filter(|v| !v.is_empty());
        for f in [Field::BatchKey, Field::LabelKey] {
            if let (Some(key), Some(columns)) = (optional(f), &self.columns) {
                let categorical: Vec<&str> = columns.iter().filter(|c| c.1).map(|c| c.0.as_str()).collect();
                match columns.iter().find(|c| c.0 == key) {
                    None => {
                        return Err(format!(
                            "{} `{key}`: no such obs column (has {})",
                            f.label(),
                            columns.iter().map(|c| c.0.as_str()).collect::<Vec<_>>().join(", ")
                        ))
                    }
                    Some((_, false)) => {
                        return Err(format!(
                            "{} `{key}`: not categorical; it needs categories (categorical: {})",
                            f.label(),
                            if categorical.is_empty() {
                                "none".to_string()
                            } else {
                                categorical.join(", ")
                            }
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        spec.batch_key = optional(Field::BatchKey);
        spec.label_key = optional(Field::LabelKey);
        Ok(Submission::local(EngineRequest::Train(Box::new(spec))))
    }

    /// A key in the form; `Some(submission)` on Enter when the form is complete.
    fn key(&mut self, k: KeyEvent, zoo: &Path) -> Option<Result<Submission, String>> {
        let i = Field::ALL.iter().position(|f| *f == self.focus).unwrap_or(0);
        let n = Field::ALL.len();
        let choices = self.choices(self.focus);
        match k.code {
            KeyCode::Tab | KeyCode::Down => self.focus = Field::ALL[(i + 1) % n],
            KeyCode::BackTab | KeyCode::Up => self.focus = Field::ALL[(i + n - 1) % n],
            KeyCode::Left | KeyCode::Right if !choices.is_empty() => {
                let value = self.value_mut(self.focus);
                let at = choices.iter().position(|c| *c == value.as_str()).unwrap_or(0);
                let next = if k.code == KeyCode::Right {
                    at + 1
                } else {
                    at + choices.len() - 1
                };
                *value = choices[next % choices.len()].to_string();
            }
            KeyCode::Backspace if choices.is_empty() => {
                self.value_mut(self.focus).pop();
            }
            KeyCode::Char(c) if choices.is_empty() => self.value_mut(self.focus).push(c),
            KeyCode::Enter => return Some(self.submission(zoo)),
            _ => {}
        }
        None
    }
}

impl App {
    /// The overlay in view, if any, takes the key (true when there was one).
    pub(in crate::tui) fn overlay_key(&mut self, k: KeyEvent) -> bool {
        let yes = matches!(k.code, KeyCode::Char('y') | KeyCode::Char('Y'));
        match self.overlay.take() {
            None => return false,
            // Any key closes the help.
            Some(Overlay::Help) => {}
            Some(Overlay::ConfirmForce { .. }) => {
                if yes {
                    self.submit_projection(true, false);
                }
            }
            Some(Overlay::ConfirmReplace { force, .. }) => {
                if yes {
                    self.submit_projection(force, true);
                } else {
                    self.notice = Some("the earlier projection is kept".into());
                }
            }
            Some(Overlay::ConfirmCancel(id)) => {
                if yes {
                    self.notice = Some(format!("cancelling job {id}..."));
                    self.outbox.push(Request::Cancel(id));
                }
            }
            Some(Overlay::Form(mut form)) => {
                if k.code == KeyCode::Esc {
                    return true;
                }
                match form.key(k, &self.sources.zoo) {
                    Some(Ok(req)) => {
                        self.outbox.push(Request::Submit(Box::new(req)));
                        self.screen = Screen::Jobs;
                        self.jobs_view.sel = 0;
                        self.jobs_view.awaiting = true;
                    }
                    Some(Err(e)) => {
                        self.notice = Some(e);
                        self.overlay = Some(Overlay::Form(form));
                    }
                    None => self.overlay = Some(Overlay::Form(form)),
                }
            }
            Some(Overlay::Log(mut view)) => {
                let page = 10;
                let most = view.lines.len().saturating_sub(1);
                match k.code {
                    KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q') => {
                        self.outbox.push(Request::JobLog(None));
                        return true;
                    }
                    KeyCode::Up | KeyCode::Char('k') => view.scroll = (view.scroll + 1).min(most),
                    KeyCode::Down | KeyCode::Char('j') => view.scroll = view.scroll.saturating_sub(1),
                    KeyCode::PageUp => view.scroll = (view.scroll + page).min(most),
                    KeyCode::PageDown => view.scroll = view.scroll.saturating_sub(page),
                    KeyCode::Char('g') | KeyCode::Home => view.scroll = most,
                    KeyCode::Char('G') | KeyCode::End => view.scroll = 0,
                    _ => {}
                }
                self.overlay = Some(Overlay::Log(view));
            }
        }
        true
    }

    /// The log pane's view, when it is open.
    #[cfg(test)]
    pub fn log_view(&self) -> Option<&LogView> {
        match &self.overlay {
            Some(Overlay::Log(v)) => Some(v),
            _ => None,
        }
    }

    /// The training form, when it is open.
    #[cfg(test)]
    pub fn form(&self) -> Option<&TrainForm> {
        match &self.overlay {
            Some(Overlay::Form(f)) => Some(f),
            _ => None,
        }
    }
}
