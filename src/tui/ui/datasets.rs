//! The Datasets screen: the catalog as a table, and the selected dataset's details.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, TableState, Wrap};
use ratatui::Frame;

use super::{block, table, thousands};
use crate::tui::app::{App, SORT_COLUMNS};

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let wide = area.width >= 110;
    let [list, details] = if wide {
        Layout::horizontal([Constraint::Percentage(62), Constraint::Percentage(38)]).areas(area)
    } else {
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area)
    };
    let rows = app.visible_datasets();
    let title = format!(
        "Datasets {} of {}  sorted by {}{}{}",
        rows.len(),
        app.datasets.len(),
        SORT_COLUMNS[app.sort.0],
        if app.sort.1 { " (reversed)" } else { "" },
        if app.filter.is_empty() {
            String::new()
        } else {
            format!("  filter \"{}\"", app.filter)
        }
    );
    if !app.loaded {
        f.render_widget(Paragraph::new("scanning...").block(block(app, title)), list);
        return;
    }
    let table_rows: Vec<Row> = rows
        .iter()
        .map(|d| {
            let mark = if app.marked.contains(&d.path) { "*" } else { " " };
            let values = if d.error.is_some() {
                "error".to_string()
            } else {
                d.values.clone()
            };
            Row::new(vec![
                Span::raw(mark),
                Span::raw(app.display_path(&d.path)),
                Span::raw(thousands(d.n_cells)),
                Span::raw(thousands(d.n_genes)),
                Span::raw(scmz::data::catalog::id_kind_label(d)),
                Span::raw(d.species.clone().unwrap_or_else(|| "-".into())),
                Span::styled(values.clone(), app.theme.state(&values)),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(1),
        Constraint::Min(18),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(10),
    ];
    let header = ["", "dataset", "cells", "genes", "ids", "species", "values"];
    let widget = table(app, title, &header, table_rows, widths);
    let mut state = TableState::default().with_selected(Some(app.ds_sel));
    f.render_stateful_widget(widget, list, &mut state);
    draw_details(f, app, details);
}

fn draw_details(f: &mut Frame, app: &App, area: Rect) {
    let Some(d) = app.selected_dataset() else {
        f.render_widget(
            Paragraph::new("no datasets here: run scmz in a folder with .h5ad files or 10x outputs")
                .block(block(app, "Details")),
            area,
        );
        return;
    };
    let key = |k: &str| Span::styled(format!("{k:<9}"), app.theme.muted());
    let mut lines = vec![Line::from(vec![key("file"), Span::raw(app.display_path(&d.path))])];
    if let Some(e) = &d.error {
        lines.push(Line::from(Span::styled(
            e.clone(),
            Style::default().fg(app.theme.error),
        )));
    } else {
        lines.push(Line::from(vec![
            key("format"),
            Span::raw(d.format.clone().unwrap_or_default()),
        ]));
        lines.push(Line::from(vec![
            key("shape"),
            Span::raw(format!(
                "{} cells x {} genes",
                thousands(d.n_cells),
                thousands(d.n_genes)
            )),
        ]));
        lines.push(Line::from(vec![
            key("genes"),
            Span::raw(format!(
                "{} ({})",
                scmz::data::catalog::id_kind_label(d),
                d.species.clone().unwrap_or_else(|| "species unknown".into())
            )),
        ]));
        lines.push(Line::from(vec![
            key("matrix"),
            Span::styled(d.values.clone(), app.theme.state(&d.values)),
            Span::raw(format!(" in {}", d.matrix)),
        ]));
        match app.details.get(&d.path) {
            Some(Ok(cols)) if !cols.is_empty() => {
                lines.push(Line::from(Span::styled("obs columns", app.theme.accent())));
                for c in cols {
                    let mut spans = vec![Span::raw(format!(" {} ", c.name))];
                    if c.top.is_empty() {
                        spans.push(Span::styled(c.kind.clone(), app.theme.muted()));
                    } else {
                        let top: Vec<String> = c.top.iter().map(|(k, n)| format!("{k} {n}")).collect();
                        spans.push(Span::styled(
                            format!("{} categories: {}", c.n_categories, top.join(", ")),
                            app.theme.muted(),
                        ));
                    }
                    lines.push(Line::from(spans));
                }
            }
            Some(Err(e)) => lines.push(Line::from(Span::styled(
                e.clone(),
                Style::default().fg(app.theme.error),
            ))),
            _ => {}
        }
        for w in d.warnings.iter().chain(
            (!d.duplicated_genes.is_empty())
                .then(|| format!("{} duplicated gene names", d.duplicated_genes.len()))
                .iter(),
        ) {
            lines.push(Line::from(Span::styled(
                format!("! {w}"),
                Style::default().fg(app.theme.warn),
            )));
        }
    }
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block(app, "Details")),
        area,
    );
}
