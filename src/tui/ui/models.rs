//! The Models screen: the zoo as a table, the selected model's manifest and its final
//! training curves.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, TableState, Wrap};
use ratatui::Frame;

use super::{block, charts, table, thousands};
use crate::tui::app::App;

/// A column of the table: its header, its width and its value for a model.
type Column = (&'static str, u16, fn(&scmz::zoo::Manifest) -> String);

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let n = app.models.len();
    let bad = app.models_unreadable.len();
    let title = format!(
        "Zoo {}  {n} model{}{}",
        app.sources.zoo.display(),
        if n == 1 { "" } else { "s" },
        match bad {
            0 => String::new(),
            1 => "  1 folder unreadable (scmz models says why)".into(),
            _ => format!("  {bad} folders unreadable (scmz models says why)"),
        }
    );
    if !app.models_loaded {
        f.render_widget(
            Paragraph::new(app.waiting("loading the zoo...")).block(block(app, title)),
            area,
        );
        return;
    }
    if app.models.is_empty() {
        let text = "No models yet. Train one from the Datasets screen (t), or `scmz train DATA --name NAME`.";
        f.render_widget(
            Paragraph::new(text).wrap(Wrap { trim: true }).block(block(app, title)),
            area,
        );
        return;
    }
    let table_h = (app.models.len() as u16 + 3).min(area.height / 3).max(4);
    let title = format!(
        "{title}{}",
        super::rows_in_view(n, table_h.saturating_sub(3) as usize, app.models_view.sel, false)
    );
    let [top, bottom] = Layout::vertical([Constraint::Length(table_h), Constraint::Min(6)]).areas(area);
    // Columns by priority: where the table is too narrow, the last ones go first (a column is
    // dropped whole; its values are never cut).
    let columns: [Column; 8] = [
        ("model", 12, |m| m.name.clone()),
        ("cells", 7, |m| m.n_cells().map_or("-".into(), thousands)),
        ("epochs", 7, |m| match &m.imported {
            Some(_) => "import".into(),
            None => format!("{}/{}", m.training.epochs_run, m.training.max_epochs),
        }),
        ("val ELBO", 9, |m| {
            m.metrics.best_val_elbo.map_or("-".into(), |v| format!("{v:.1}"))
        }),
        ("genes", 6, |m| thousands(m.architecture.n_genes)),
        ("latent", 6, |m| m.architecture.n_latent.to_string()),
        ("lik.", 7, |m| m.architecture.likelihood.to_string()),
        ("created", 10, |m| m.created.get(..10).unwrap_or(&m.created).to_string()),
    ];
    // Each column as wide as its widest value (341/100000 is not cut to 341/100).
    let cells: Vec<Vec<String>> = app
        .models
        .iter()
        .map(|m| columns.iter().map(|c| (c.2)(&m.manifest)).collect())
        .collect();
    let col_widths: Vec<u16> = (0..columns.len())
        .map(|i| {
            let widest = cells.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
            columns[i].1.max(widest.min(40) as u16)
        })
        .collect();
    let width_of = |i: usize| col_widths[i];
    let inner = top.width.saturating_sub(2);
    let mut shown = columns.len();
    while shown > 1 && (1..shown).map(|i| width_of(i) + 1).sum::<u16>() + columns[0].1 > inner {
        shown -= 1;
    }
    let rows: Vec<Row> = cells
        .into_iter()
        .map(|r| Row::new(r.into_iter().take(shown).collect::<Vec<_>>()))
        .collect();
    let widths: Vec<Constraint> = (0..shown)
        .map(|i| {
            if i == 0 {
                Constraint::Min(columns[0].1)
            } else {
                Constraint::Length(width_of(i))
            }
        })
        .collect();
    let header: Vec<&str> = columns[..shown].iter().map(|c| c.0).collect();
    let widget = table(app, title, &header, rows, widths);
    f.render_stateful_widget(
        widget,
        top,
        &mut TableState::default().with_selected(Some(app.models_view.sel)),
    );
    let Some(entry) = app.models.get(app.models_view.sel) else {
        return;
    };
    let [details, chart] = if bottom.width >= 100 {
        Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(bottom)
    } else {
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom)
    };
    let m = &entry.manifest;
    let key = |k: &str| Span::styled(format!("{k:<10}"), app.theme.muted());
    let ids = match (&m.genes.gene_ids, &m.genes.symbols) {
        (Some(_), Some(_)) => "Ensembl ids + symbols",
        (Some(_), None) => "Ensembl ids",
        (None, Some(_)) => "symbols",
        (None, None) => "names",
    };
    let mut lines = vec![
        Line::from(vec![
            key("genes"),
            Span::raw(format!(
                "{} ({ids}, {})",
                thousands(m.architecture.n_genes),
                m.genes.species.clone().unwrap_or_else(|| "species unknown".into())
            )),
        ]),
        Line::from(vec![
            key("network"),
            Span::raw(format!(
                "{} hidden x {} layer(s), {} latent, {} norm, dropout {}",
                m.architecture.n_hidden,
                m.architecture.n_layers,
                m.architecture.n_latent,
                m.architecture.norm,
                m.architecture.dropout
            )),
        ]),
        match &m.imported {
            Some(i) => Line::from(vec![key("imported"), Span::raw(i.describe())]),
            None => Line::from(vec![
                key("training"),
                Span::raw(format!(
                    "lr {}, batch {}, {}, {:.0} cells/s",
                    m.training.lr, m.training.batch_size, m.training.device, m.training.cells_per_s
                )),
            ]),
        },
    ];
    for (label, v) in [
        ("batch key", m.training.batch_key.clone()),
        ("label key", m.training.label_key.clone()),
    ] {
        if let Some(v) = v {
            lines.push(Line::from(vec![key(label), Span::raw(v)]));
        }
    }
    for d in &m.datasets {
        let name = std::path::Path::new(&d.path)
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| d.path.clone());
        lines.push(Line::from(vec![
            key("data"),
            Span::raw(format!(
                "{name} ({} cells, sha256 {})",
                thousands(d.n_cells),
                &d.sha256[..12.min(d.sha256.len())]
            )),
        ]));
    }
    if let Some(v) = &m.metrics.final_val {
        lines.push(Line::from(vec![
            key("final val"),
            Span::raw(format!("ELBO {:.1} = recon {:.1} + KL {:.1}", v.elbo, v.recon, v.kl)),
        ]));
    }
    if let Some(r) = &m.reference {
        lines.push(Line::from(vec![
            key("reference"),
            Span::raw(format!(
                "{} cells{}",
                thousands(r.n_cells),
                if r.labels.is_some() { " with labels" } else { "" }
            )),
        ]));
    }
    lines.push(Line::from(vec![
        key("version"),
        Span::raw(format!(
            "{} (scmz {}, schema {})",
            m.version, m.scmz_version, m.schema_version
        )),
    ]));
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block(app, m.name.clone())),
        details,
    );
    if let (Some(i), true) = (&m.imported, entry.history.is_empty()) {
        f.render_widget(
            Paragraph::new(format!(
                "Trained in {} {}: no curve of it here (`scmz model show {}` sums up the history it came with).",
                i.tool, i.tool_version, m.name
            ))
            .wrap(Wrap { trim: true })
            .style(app.theme.muted())
            .block(block(app, "Training")),
            chart,
        );
        return;
    }
    match entry.comparisons.first() {
        Some(c) => {
            let [loss, cmp] = Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(chart);
            charts::loss_chart(f, app, &entry.history, loss);
            charts::comparison_chart(f, app, c, cmp);
        }
        None => charts::loss_chart(f, app, &entry.history, chart),
    }
}
