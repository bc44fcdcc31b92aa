//! The Jobs screen: the job list, the selected job's run followed live (its own part of the
//! run's event log), its log pane (Enter), cancelling (`c`, after asking) and resuming (`R`).

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent};
use scmz::events::Record;
use scmz::jobs::Job;

use super::overlay::{LogView, Overlay};
use crate::tui::app::{App, Screen};
use crate::tui::worker::Request;

/// The run of the selected job: its event log as read (`raw`, which runs with one name share)
/// and the records of this job's run in it (`records`, what the screen shows).
#[derive(Debug, Default)]
pub struct RunView {
    pub path: Option<PathBuf>,
    /// The job shown.
    pub job: Option<Job>,
    pub(in crate::tui) raw: Vec<Record>,
    pub records: Vec<Record>,
}

impl RunView {
    pub(in crate::tui) fn refilter(&mut self) {
        self.records = self
            .job
            .as_ref()
            .map_or_else(|| self.raw.clone(), |j| j.own_records(&self.raw));
    }

    /// The log holds runs, but not this job's, and the job has ended: a later run of its name
    /// restarted or replaced it. (A resume that has not started yet holds the log of the run it
    /// continues, with other jobs' records only.)
    pub fn replaced(&self) -> bool {
        self.records.is_empty() && !self.raw.is_empty() && self.job.as_ref().is_none_or(|j| j.state.is_final())
    }
}

/// The Jobs screen's state.
#[derive(Debug, Default)]
pub struct Jobs {
    /// The selected row (newest first).
    pub sel: usize,
    pub run: RunView,
    /// A job was submitted and the list does not show it yet: keys that act on the selected job
    /// wait (they would act on the row selected before).
    pub awaiting: bool,
    /// The report lines of finished projection jobs, by job id, once asked for (empty until
    /// the answer comes).
    pub summaries: std::collections::HashMap<String, Vec<String>>,
}

impl App {
    pub fn selected_job(&self) -> Option<&Job> {
        // Newest first on screen.
        self.jobs.iter().rev().nth(self.jobs_view.sel)
    }

    /// Follows the selected job's event log while the Jobs screen is in view; asks once for a
    /// finished projection's report.
    pub(in crate::tui) fn sync_follow(&mut self) {
        if let Some(j) = self
            .selected_job()
            .filter(|j| self.screen == Screen::Jobs && j.kind() == "project" && j.state == scmz::jobs::JobState::Done)
        {
            let id = j.id.clone();
            if !self.jobs_view.summaries.contains_key(&id) {
                self.jobs_view.summaries.insert(id.clone(), Vec::new());
                self.outbox.push(Request::Summary(id));
            }
        }
        let (want, job) = match (self.screen, self.selected_job()) {
            (Screen::Jobs, Some(j)) => (j.event_log(), Some(j.clone())),
            _ => (None, None),
        };
        let run = &mut self.jobs_view.run;
        if want != run.path && (want.is_some() || self.screen == Screen::Jobs) {
            *run = RunView {
                path: want.clone(),
                job,
                ..Default::default()
            };
            self.outbox.push(Request::Follow(want));
        } else if want.is_some() && want == run.path && job != run.job {
            // Another job whose run has the same log (a name used again), or this one's record
            // changed (it ended).
            run.job = job;
            run.refilter();
        }
    }

    pub(in crate::tui) fn jobs_key(&mut self, k: KeyEvent) {
        if self.jobs_view.awaiting && matches!(k.code, KeyCode::Enter | KeyCode::Char('c' | 'R')) {
            self.notice = Some("the new job is on its way to the list: press again in a moment".into());
            return;
        }
        match k.code {
            KeyCode::Enter => {
                if let Some(id) = self.selected_job().map(|j| j.id.clone()) {
                    self.overlay = Some(Overlay::Log(LogView {
                        job: id.clone(),
                        ..Default::default()
                    }));
                    self.outbox.push(Request::JobLog(Some(id)));
                }
            }
            KeyCode::Char('c') => match self.selected_job() {
                Some(j) if j.backend == "terminal" => {
                    self.notice = Some("this run belongs to a terminal: stop it there with Ctrl-C".into())
                }
                Some(j) if !j.state.is_final() => self.overlay = Some(Overlay::ConfirmCancel(j.id.clone())),
                Some(j) => self.notice = Some(format!("job {} already ended ({})", j.id, j.state)),
                None => {}
            },
            KeyCode::Char('R') => match self.selected_job() {
                Some(j) if j.backend == "terminal" => {
                    self.notice =
                        Some("this run belongs to a terminal: resume it there (scmz train ... --resume)".into())
                }
                Some(j) if j.state.is_final() && j.state != scmz::jobs::JobState::Done => {
                    let id = j.id.clone();
                    self.notice = Some(format!("resuming job {id}..."));
                    self.outbox.push(Request::Resume(id));
                }
                Some(j) => self.notice = Some(format!("job {} is {}: nothing to resume", j.id, j.state)),
                None => {}
            },
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_waiting_with_another_jobs_log_is_not_called_replaced() {
        let spec = scmz::spec::TrainSpec::defaults("d.h5ad".into(), "m".into());
        let start: Record = serde_json::from_value(serde_json::json!({"t": "2026-12-07T01:00:00Z",
            "event": "start", "name": "m", "config": {}, "device": "cpu", "data": [], "n_train": 9,
            "n_val": 1, "first_epoch": 0, "max_epochs": 5, "run": "r1", "job": "first"}))
        .unwrap();
        let mut job = Job::new("second".into(), scmz::spec::EngineRequest::Train(Box::new(spec)), None);
        for (state, replaced) in [
            (scmz::jobs::JobState::Queued, false),
            (scmz::jobs::JobState::Running, false),
            (scmz::jobs::JobState::Cancelled, true),
        ] {
            job.state = state;
            let mut view = RunView {
                job: Some(job.clone()),
                raw: vec![start.clone()],
                ..RunView::default()
            };
            view.refilter();
            assert!(view.records.is_empty());
            assert_eq!(view.replaced(), replaced, "{state}");
        }
    }
}
