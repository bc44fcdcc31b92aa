//! The Jobs screen: the job list and a live monitor of the selected run (loss curves,
//! throughput, ETA, device, latent scatter, KL per dimension), fed by the run's event log.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, TableState, Wrap};
use ratatui::Frame;

use scmz::events::Event;
use scmz::jobs::Job;

use super::{block, charts, table};
use crate::tui::app::App;

/// Where a job runs, for the table: `local` or `slurm 123_0`.
fn backend(j: &Job) -> String {
    match &j.slurm_id {
        Some(id) => format!("{} {id}", j.backend),
        None => j.backend.clone(),
    }
}

/// A column of the job table: its header, its width and its cell for a job.
type Column = (&'static str, u16, fn(&Job, &App) -> Span<'static>);

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    if !app.jobs_loaded {
        f.render_widget(
            Paragraph::new(app.waiting("loading jobs...")).block(block(app, "Jobs")),
            area,
        );
        return;
    }
    if app.jobs.is_empty() {
        f.render_widget(
            Paragraph::new("No jobs. Start one from the Datasets screen (t) or with `scmz train ... --detach`.")
                .wrap(Wrap { trim: true })
                .block(block(app, "Jobs")),
            area,
        );
        return;
    }
    // Three jobs in view at 80x24, more on taller screens; the title says when some are not.
    let table_h = (app.jobs.len() as u16 + 3).min(if area.height < 30 { 6 } else { 10 });
    let shown = usize::from(table_h.saturating_sub(3));
    let [top, bottom] = Layout::vertical([Constraint::Length(table_h), Constraint::Min(8)]).areas(area);
    // Columns by priority, the last dropped first where the table is narrow (an id or a state
    // is never cut); the note (at least 14 wide, before the backend in priority) takes what
    // is left, last.
    let columns: [Column; 5] = [
        ("job", 22, |j, _| Span::raw(j.id.clone())),
        ("state", 9, |j, app| {
            let state = j.state.to_string();
            Span::styled(state.clone(), app.theme.state(&state))
        }),
        ("model", 18, |j, app| {
            Span::raw(super::datasets::middle_cut(
                &j.name.clone().unwrap_or_default(),
                18,
                app.ascii,
            ))
        }),
        ("kind", 7, |j, _| Span::raw(j.kind())),
        ("backend", 13, |j, _| Span::raw(backend(j))),
    ];
    const NOTE: u16 = 14;
    let inner = top.width.saturating_sub(2);
    let width_of = |n: usize, note: bool| -> u16 {
        columns[..n].iter().map(|c| c.1 + 1).sum::<u16>() + if note { NOTE } else { 0 }
    };
    let (shown_cols, with_note) = [(5, true), (4, true), (4, false), (3, false), (2, false)]
        .into_iter()
        .find(|&(n, note)| width_of(n, note) <= inner)
        .unwrap_or((1, false));
    let columns = &columns[..shown_cols];
    let note_w = usize::from(inner.saturating_sub(width_of(shown_cols, false)));
    let rows: Vec<Row> = app
        .jobs
        .iter()
        .rev()
        .map(|j| {
            let mut cells: Vec<Span> = columns.iter().map(|c| (c.2)(j, app)).collect();
            if with_note {
                // Cut with a mark where it does not fit (the panel below has it whole).
                let note = j.note_among(&app.jobs).unwrap_or_default();
                let note = if note.chars().count() > note_w {
                    let kept: String = note.chars().take(note_w.saturating_sub(1)).collect();
                    format!("{kept}{}", if app.ascii { "~" } else { "…" })
                } else {
                    note
                };
                cells.push(Span::styled(note, app.theme.muted()));
            }
            Row::new(cells)
        })
        .collect();
    let mut widths: Vec<Constraint> = columns.iter().map(|c| Constraint::Length(c.1)).collect();
    let mut header: Vec<&str> = columns.iter().map(|c| c.0).collect();
    if with_note {
        widths.push(Constraint::Min(NOTE));
        header.push("note");
    }
    let title = format!(
        "Jobs ({}){}",
        app.jobs.len(),
        super::rows_in_view(app.jobs.len(), shown, app.jobs_view.sel, false)
    );
    let widget = table(app, title, &header, rows, widths);
    f.render_stateful_widget(
        widget,
        top,
        &mut TableState::default().with_selected(Some(app.jobs_view.sel)),
    );
    let Some(job) = app.selected_job() else {
        return;
    };
    monitor(f, app, job, bottom);
}

fn monitor(f: &mut Frame, app: &App, job: &Job, area: Rect) {
    let records = &app.jobs_view.run.records;
    if job.kind() != "train" {
        let written = match &job.request {
            scmz::spec::EngineRequest::Project(spec) if job.state == scmz::jobs::JobState::Done => spec
                .output
                .as_ref()
                .map(|o| format!("; written to {}", o.display()))
                .unwrap_or_default(),
            _ => String::new(),
        };
        let text = format!(
            "{} job of model {}: {}{}{written}",
            job.kind(),
            job.name.clone().unwrap_or_default(),
            job.state,
            job.note_among(&app.jobs).map(|r| format!(" ({r})")).unwrap_or_default()
        );
        // A finished projection: what it found, as its report says.
        let mut lines = vec![Line::from(text)];
        if let Some(report) = app.jobs_view.summaries.get(&job.id) {
            lines.extend(report.iter().map(|l| Line::from(l.clone())));
        }
        lines.push(Line::from(Span::styled(
            "Enter shows the job's whole log and report.",
            app.theme.muted(),
        )));
        f.render_widget(
            Paragraph::new(lines).wrap(Wrap { trim: true }).block(block(app, "Run")),
            area,
        );
        return;
    }
    let roomy = area.height >= 24;
    let mut lines = stats_lines(app, job);
    let title = format!("Run {}", job.name.clone().unwrap_or_default());
    if records.is_empty() && job.state.is_final() {
        // No epoch ran: the whole panel for the reason, wrapped, however long.
        lines.push(Line::from(Span::styled(
            "No epoch ran; Enter shows the job's whole log.",
            app.theme.muted(),
        )));
        f.render_widget(
            Paragraph::new(lines).wrap(Wrap { trim: true }).block(block(app, title)),
            area,
        );
        return;
    }
    // As high as its lines wrap to (a number never falls off its end), at most half the panel.
    let width = area.width.saturating_sub(2) as usize;
    let rows: usize = lines.iter().map(|l| super::overlays::wrapped_rows(l, width)).sum();
    let stats_h = (rows as u16 + 2).clamp(5, (area.height / 2).max(5));
    let [stats, rest] = Layout::vertical([Constraint::Length(stats_h), Constraint::Min(4)]).areas(area);
    f.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: true }).block(block(app, title)),
        stats,
    );
    if roomy {
        let [upper, lower] = Layout::vertical([Constraint::Percentage(62), Constraint::Percentage(38)]).areas(rest);
        let [loss, latent] = Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(upper);
        charts::loss_chart(f, app, records, loss);
        charts::latent_scatter(f, app, records, latent);
        charts::kl_bars(f, app, records, lower);
    } else {
        let [loss, latent] = Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(rest);
        charts::loss_chart(f, app, records, loss);
        charts::latent_scatter(f, app, records, latent);
    }
}

/// The run's state, progress and end (or reason), a line each.
fn stats_lines<'a>(app: &App, job: &Job) -> Vec<Line<'a>> {
    let records = &app.jobs_view.run.records;
    let start = records.iter().find_map(|r| match &r.event {
        Event::Start {
            device,
            n_train,
            n_val,
            max_epochs,
            ..
        } => Some((device.clone(), *n_train, *n_val, *max_epochs)),
        _ => None,
    });
    let epoch = records.iter().rev().find_map(|r| match &r.event {
        Event::Epoch {
            epoch,
            cells_per_s,
            elapsed_s,
            eta_s,
            val,
            kl_per_dim,
            ..
        } => Some((*epoch, *cells_per_s, *elapsed_s, *eta_s, val.elbo, kl_per_dim.len())),
        _ => None,
    });
    let step = records.iter().rev().find_map(|r| match &r.event {
        Event::Step { cells_per_s, .. } => Some(*cells_per_s),
        _ => None,
    });
    // The end of the run's last part (a resumed run holds the end of the part before).
    let last_start = records
        .iter()
        .rposition(|r| matches!(r.event, Event::Start { .. }))
        .unwrap_or(0);
    let end = records[last_start..].iter().rev().find_map(|r| match &r.event {
        Event::End { status, best_epoch, .. } => Some((status.clone(), *best_epoch)),
        _ => None,
    });
    let key = |k: &str| Span::styled(format!("{k} "), app.theme.muted());
    let mut l1 = vec![
        key("state"),
        Span::styled(job.state.to_string(), app.theme.state(&job.state.to_string())),
    ];
    let mut l2 = Vec::new();
    if let Some((device, n_train, n_val, max_epochs)) = &start {
        l1.extend([
            key("  device"),
            Span::raw(device.clone()),
            key("  cells"),
            Span::raw(format!("{n_train} train / {n_val} validation")),
        ]);
        if let Some((e, cps, elapsed, eta, val, _)) = epoch {
            l2.extend([
                key("epoch"),
                Span::styled(format!("{}/{max_epochs}", e + 1), app.theme.accent()),
                key("  throughput"),
                Span::raw(format!(
                    "{:.0} cells/s",
                    if job.state.is_final() { cps } else { step.unwrap_or(cps) }
                )),
                key("  elapsed"),
                Span::raw(scmz::human::format_duration(elapsed)),
            ]);
            if !job.state.is_final() {
                l2.extend([key("  ETA"), Span::raw(scmz::human::format_duration(eta))]);
            }
            l2.extend([key("  val ELBO"), Span::raw(format!("{val:.1}"))]);
        } else if !job.state.is_final() {
            l2.push(Span::raw("first epoch running..."));
        }
    } else {
        let waiting = if app.jobs_view.run.replaced() {
            "  a later run of this name restarted or replaced this job's run and its log"
        } else if job.state.is_final() {
            "  the run never started"
        } else {
            "  waiting for the run to start"
        };
        l1.push(Span::styled(waiting, app.theme.muted()));
    }
    let mut l3 = Vec::new();
    if let Some((status, best)) = end {
        l3.push(key("ended"));
        l3.push(Span::raw(status));
        if let Some(b) = best {
            l3.push(Span::raw(format!(", best epoch {}", b + 1)));
        }
    } else if let Some(r) = job.note_among(&app.jobs) {
        l3.push(Span::styled(r, Style::default().fg(app.theme.warn)));
    }
    [l1, l2, l3]
        .into_iter()
        .filter(|l| !l.is_empty())
        .map(Line::from)
        .collect()
}
