//! The Datasets screen: the catalog as a table, and the selected dataset's details.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, TableState, Wrap};
use ratatui::Frame;

use super::{block, table, thousands};
use crate::tui::app::App;

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let wide = area.width >= 110;
    let [list, details] = if wide {
        Layout::horizontal([Constraint::Percentage(62), Constraint::Percentage(38)]).areas(area)
    } else {
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area)
    };
    let rows = app.visible_datasets();
    let in_view = super::rows_shown(
        rows.len(),
        list.height.saturating_sub(3) as usize,
        app.datasets_view.sel,
    )
    .map_or(String::new(), |(a, b)| format!(", rows {a}-{b}"));
    // Marks the filter hides are still marks (t trains on them): counted, never out of sight.
    let marked = &app.datasets_view.marked;
    let hidden = marked.iter().filter(|p| !rows.iter().any(|d| &d.path == *p)).count();
    let marks = match (marked.len(), hidden) {
        (0, _) => String::new(),
        (n, 0) => format!("  {n} marked"),
        (n, h) => format!("  {n} marked ({h} hidden by the filter)"),
    };
    // The filter first: of all the title says, it is what the user typed.
    let title = format!(
        "Datasets {}{} of {}{in_view}{marks}  sorted by {}{}",
        if app.datasets_view.filter.is_empty() {
            String::new()
        } else {
            format!("matching \"{}\": ", app.datasets_view.filter)
        },
        rows.len(),
        app.datasets.len(),
        app.datasets_view.sort.name(),
        if app.datasets_view.descending {
            " (reversed)"
        } else {
            ""
        },
    );
    if !app.loaded {
        f.render_widget(
            Paragraph::new(app.waiting("scanning...")).block(block(app, title)),
            list,
        );
        return;
    }
    // The name column gets what the fixed columns, their gaps and the border leave; a longer
    // name loses its middle, so that rows differing only at the end stay apart.
    let name_width = (list.width as usize)
        .saturating_sub(2 + 1 + 7 + 6 + 10 + 7 + 10 + 6)
        .max(18);
    let table_rows: Vec<Row> = rows
        .iter()
        .map(|d| {
            let mark = if app.datasets_view.marked.contains(&d.path) {
                "*"
            } else {
                " "
            };
            let values = if d.error.is_some() {
                "error".to_string()
            } else {
                d.values.clone()
            };
            // An unreadable file has no shape: "-", not "0 cells".
            let count = |n: usize| {
                if d.error.is_some() {
                    "-".to_string()
                } else {
                    thousands(n)
                }
            };
            Row::new(vec![
                Span::raw(mark),
                Span::raw(middle_cut(&app.display_path(&d.path), name_width, app.ascii)),
                Span::raw(count(d.n_cells)),
                Span::raw(count(d.n_genes)),
                Span::raw(if d.error.is_some() {
                    "-".to_string()
                } else {
                    scmz::data::catalog::id_kind_label(d)
                }),
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
    let mut state = TableState::default().with_selected(Some(app.datasets_view.sel));
    f.render_stateful_widget(widget, list, &mut state);
    draw_details(f, app, details);
}

fn draw_details(f: &mut Frame, app: &App, area: Rect) {
    let Some(d) = app.selected_dataset() else {
        f.render_widget(
            Paragraph::new(if app.datasets.is_empty() {
                "no datasets here: run scmz in a folder with .h5ad files or 10x outputs".to_string()
            } else {
                format!(
                    "no dataset matches \"{}\" (of {}): / edits the filter, Esc in it clears it",
                    app.datasets_view.filter,
                    app.datasets.len()
                )
            })
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
        let mut col_lines: Vec<Line> = Vec::new();
        match app.datasets_view.details.get(&d.path) {
            Some(Ok(cols)) if !cols.is_empty() => {
                lines.push(Line::from(Span::styled(
                    format!("obs columns ({})", cols.len()),
                    app.theme.accent(),
                )));
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
                    col_lines.push(Line::from(spans));
                }
            }
            Some(Err(e)) => lines.push(Line::from(Span::styled(
                e.clone(),
                Style::default().fg(app.theme.error),
            ))),
            _ => {}
        }
        // The count of duplicated names, unless a warning says it already (with what to do).
        let mut warn_lines: Vec<Line> = Vec::new();
        let said = d.warnings.iter().any(|w| w.contains("duplicated gene names"));
        for w in d.warnings.iter().chain(
            (!d.duplicated_genes.is_empty() && !said)
                .then(|| format!("{} duplicated gene names", d.duplicated_genes.len()))
                .iter(),
        ) {
            warn_lines.push(Line::from(Span::styled(
                format!("! {w}"),
                Style::default().fg(app.theme.warn),
            )));
        }
        // Columns as room allows, the warnings kept; those left out are counted, not cut.
        let width = area.width.saturating_sub(2) as usize;
        let rows = |l: &Line| super::overlays::wrapped_rows(l, width);
        let room = (area.height.saturating_sub(2) as usize)
            .saturating_sub(lines.iter().chain(&warn_lines).map(rows).sum::<usize>());
        let all: usize = col_lines.iter().map(rows).sum();
        if all <= room {
            lines.extend(col_lines);
        } else {
            let mut used = 1; // the line saying how many are left out
            let n = col_lines.len();
            let mut kept = 0;
            for l in col_lines {
                let r = rows(&l);
                if used + r > room {
                    break;
                }
                used += r;
                kept += 1;
                lines.push(l);
            }
            lines.push(Line::from(Span::styled(
                format!(" +{} more (scmz inspect shows all)", n - kept),
                app.theme.muted(),
            )));
        }
        lines.extend(warn_lines);
    }
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block(app, "Details")),
        area,
    );
}

/// `text` in at most `width` characters: when longer, its start and its end (the end is longer:
/// file names differ there) around an ellipsis (`~` with `--ascii`).
pub(super) fn middle_cut(text: &str, width: usize, ascii: bool) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= width || width < 5 {
        return text.to_string();
    }
    let mark = if ascii { '~' } else { '…' };
    let head = (width - 1) / 3;
    let tail = width - 1 - head;
    let mut out: String = chars[..head].iter().collect();
    out.push(mark);
    out.extend(&chars[chars.len() - tail..]);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn long_names_lose_their_middle_and_keep_their_end() {
        let a = "10x/1.2.0/filtered_gene_bc_matrices/hg19_chr21";
        let b = "10x/1.2.0/filtered_gene_bc_matrices_h5.h5";
        let (ca, cb) = (super::middle_cut(a, 24, false), super::middle_cut(b, 24, false));
        assert_eq!(ca.chars().count(), 24);
        assert_ne!(ca, cb);
        assert!(ca.ends_with("hg19_chr21") && cb.ends_with("_h5.h5"), "{ca} {cb}");
        assert_eq!(super::middle_cut("short", 24, false), "short");
        assert!(super::middle_cut(a, 24, true).contains('~'));
    }
}
