//! Widgets shared by the Models and Jobs screens, all fed by event-log records: loss curves,
//! the latent scatter and the per-dimension KL bars.

use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::canvas::{Canvas, Points};
use ratatui::widgets::{Axis, Bar, BarChart, BarGroup, Chart, Clear, Dataset as Series, GraphType, Paragraph, Wrap};
use ratatui::Frame;

use scmz::events::{Event, LossTerms, Record};

use super::{block, block_line};
use crate::tui::app::{App, Term};

fn term(t: &LossTerms, which: Term) -> f64 {
    match which {
        Term::Total => t.elbo,
        Term::Recon => t.recon,
        Term::Kl => t.kl,
    }
}

fn short(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The two curves' markers and the glyphs the title's legend draws them with: the first a fine
/// braille line, the second dots (`*` and `#` with `--ascii`), so that they tell apart without
/// colour and where they cross.
fn curve_markers(app: &App) -> ([Marker; 2], [&'static str; 2]) {
    if app.ascii {
        ([Marker::Dot, Marker::Block], ["*", "#"])
    } else {
        ([Marker::Braille, Marker::Dot], ["⠤", "•"])
    }
}

/// Two line series in the theme's train and validation colours, each its own marker; the title
/// (which names them) is the legend.
fn two_curves<'a>(
    app: &App,
    title: Line<'a>,
    data: [&'a [(f64, f64)]; 2],
    (x_title, x_bounds, x_labels): (&'a str, [f64; 2], [String; 2]),
    (y_bounds, y_labels): ([f64; 2], Vec<String>),
) -> Chart<'a> {
    let (markers, _) = curve_markers(app);
    let series = data
        .iter()
        .zip([app.theme.train, app.theme.validation])
        .zip(markers)
        .map(|((d, color), marker)| {
            Series::default()
                .marker(marker)
                .graph_type(GraphType::Line)
                .style(Style::default().fg(color))
                .data(d)
        })
        .collect();
    Chart::new(series)
        .legend_position(None)
        .block(block_line(app, title))
        .x_axis(
            Axis::default()
                .title(Span::styled(x_title, app.theme.muted()))
                .style(app.theme.muted())
                .bounds(x_bounds)
                .labels(x_labels),
        )
        .y_axis(
            Axis::default()
                .style(app.theme.muted())
                .bounds(y_bounds)
                .labels(y_labels),
        )
}

/// Train and validation curves of one loss term per epoch.
pub fn loss_chart(f: &mut Frame, app: &App, records: &[Record], area: Rect) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let y = |v: f64| if app.log_scale { v.max(1e-9).log10() } else { v };
    for r in records {
        if let Event::Epoch {
            epoch,
            train: t,
            val: v,
            ..
        } = &r.event
        {
            let x = *epoch as f64 + 1.0;
            train.push((x, y(term(t, app.term))));
            if v.elbo != 0.0 || v.recon != 0.0 {
                val.push((x, y(term(v, app.term))));
            }
        }
    }
    let (_, glyph) = curve_markers(app);
    let title = Line::from(vec![
        Span::styled(
            format!(
                " {} per cell{} ",
                app.term.name(),
                if app.log_scale { ", log10" } else { "" }
            ),
            app.theme.accent(),
        ),
        Span::styled(format!("{} train ", glyph[0]), Style::default().fg(app.theme.train)),
        Span::styled(
            format!("{} validation ", glyph[1]),
            Style::default().fg(app.theme.validation),
        ),
    ]);
    if train.is_empty() {
        f.render_widget(
            Paragraph::new("waiting for the first epoch...").block(block_line(app, title)),
            area,
        );
        return;
    }
    let (lo, hi) = y_range(train.iter().chain(&val).map(|p| p.1), app.log_scale);
    let xmax = train.last().map_or(1.0, |p| p.0).max(2.0);
    let ylab = |v: f64| short(if app.log_scale { 10f64.powf(v) } else { v });
    let chart = two_curves(
        app,
        title,
        [&train, &val],
        ("epoch", [1.0, xmax], ["1".to_string(), format!("{}", xmax as usize)]),
        ([lo, hi], vec![ylab(lo), ylab((lo + hi) / 2.0), ylab(hi)]),
    );
    f.render_widget(chart, area);
}

/// The latest latent sample on its first two principal components, one colour per category.
pub fn latent_scatter(f: &mut Frame, app: &App, records: &[Record], area: Rect) {
    let latest = records.iter().rev().find_map(|r| match &r.event {
        Event::Latent {
            epoch,
            key,
            categories,
            codes,
            points,
            explained,
        } => Some((epoch, key, categories, codes, points, explained)),
        _ => None,
    });
    let Some((epoch, key, cats, codes, points, explained)) = latest else {
        f.render_widget(
            Paragraph::new("no latent sample yet").block(block(app, "Latent (PC1 x PC2)")),
            area,
        );
        return;
    };
    let title = format!(
        "Latent epoch {}  PC1 {:.0}% PC2 {:.0}%{}",
        epoch + 1,
        100.0 * explained[0],
        100.0 * explained[1],
        key.as_ref().map(|k| format!("  by {k}")).unwrap_or_default()
    );
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for p in points {
        x0 = x0.min(p[0] as f64);
        x1 = x1.max(p[0] as f64);
        y0 = y0.min(p[1] as f64);
        y1 = y1.max(p[1] as f64);
    }
    if x1 <= x0 || y1 <= y0 {
        (x0, x1, y0, y1) = (-1.0, 1.0, -1.0, 1.0);
    }
    let n_groups = cats.len().max(1);
    let mut groups: Vec<Vec<(f64, f64)>> = vec![Vec::new(); n_groups];
    for (p, &c) in points.iter().zip(codes.iter().chain(std::iter::repeat(&-1))) {
        groups[c.max(0) as usize % n_groups].push((p[0] as f64, p[1] as f64));
    }
    let inner = block(app, "").inner(area);
    // Up to three lines when there is room; labels shortened until all fit (`legend`).
    let full_len: usize = cats.iter().map(|c| c.chars().take(10).count() + 2).sum();
    let legend_h = match inner.height {
        _ if cats.is_empty() => 0,
        0..8 => 0,
        8..14 => 1,
        _ => full_len.div_ceil(inner.width.max(1) as usize).clamp(1, 3) as u16,
    };
    let (legend, hidden) = legend(cats, inner.width as usize, legend_h as usize);
    let theme = &app.theme;
    let canvas = Canvas::default()
        .block(block(app, title))
        .marker(if app.ascii { Marker::Dot } else { Marker::Braille })
        .x_bounds([x0, x1])
        .y_bounds([y0, y1])
        .paint(|ctx| {
            for (i, g) in groups.iter().enumerate() {
                if theme.monochrome {
                    // Without colour a category is told by its letter, point by point.
                    for &(x, y) in g {
                        ctx.print(x, y, category_letter(i).to_string());
                    }
                } else {
                    ctx.draw(&Points {
                        coords: g,
                        color: theme.category(i),
                    });
                }
            }
        });
    f.render_widget(canvas, area);
    if legend_h > 0 {
        let mut spans = Vec::new();
        for (i, c) in legend.iter().enumerate() {
            if theme.monochrome {
                // Reversed, so that it reads apart from its label.
                spans.push(Span::styled(
                    category_letter(i).to_string(),
                    Style::default().add_modifier(ratatui::style::Modifier::REVERSED),
                ));
            } else {
                spans.push(Span::styled("■", Style::default().fg(theme.category(i))));
            }
            spans.push(Span::styled(format!("{c} "), theme.muted()));
        }
        if hidden > 0 {
            spans.push(Span::styled(format!("+{hidden}"), theme.muted()));
        }
        let r = Rect {
            x: inner.x,
            y: inner.y + inner.height - legend_h,
            width: inner.width,
            height: legend_h,
        };
        f.render_widget(Clear, r);
        f.render_widget(Paragraph::new(Line::from(spans)).wrap(Wrap { trim: false }), r);
    }
}

/// The letter that stands for category `i` where there is no colour: a to z, then A to Z, then
/// `+` for the rest.
fn category_letter(i: usize) -> char {
    match i {
        0..26 => char::from(b'a' + i as u8),
        26..52 => char::from(b'A' + (i - 26) as u8),
        _ => '+',
    }
}

/// A label in `n` characters: its start and its end around `…` when longer (cell types differ
/// at their ends as often as at their starts: `CD4+…T Reg`, `CD4+…emory`).
fn shortened(label: &str, n: usize) -> String {
    let chars: Vec<char> = label.chars().collect();
    if chars.len() <= n {
        return label.to_string();
    }
    let tail = (n - 1) / 2;
    let head = n - 1 - tail;
    chars[..head]
        .iter()
        .chain(['…'].iter())
        .chain(&chars[chars.len() - tail..])
        .collect()
}

/// The legend's labels for `lines` lines of `width` cells (each label a square, itself and a
/// space): every category, shortened (start and end) to 10, 8 or 6 characters until all fit
/// while still told apart; where none does, as many as fit of the shortest that tell apart, and
/// how many are left out (said as `+N`).
fn legend(cats: &[String], width: usize, lines: usize) -> (Vec<String>, usize) {
    // Whether labels fill no more than `lines` lines, a label never split over two.
    let fits = |labels: &[String], reserve: usize| {
        let (mut line, mut used) = (1, 0);
        for l in labels {
            let w = l.chars().count() + 2;
            if used + w > width {
                line += 1;
                used = 0;
            }
            used += w;
        }
        line < lines || (line == lines && used + reserve <= width)
    };
    let short = |n: usize| -> Vec<String> { cats.iter().map(|c| shortened(c, n)).collect() };
    let apart = |labels: &[String]| labels.iter().collect::<std::collections::HashSet<_>>().len() == labels.len();
    for n in [10, 8, 6] {
        let labels = short(n);
        if fits(&labels, 0) && apart(&labels) {
            return (labels, 0);
        }
    }
    let mut labels = [6, 8, 10, 14, 20]
        .into_iter()
        .map(short)
        .find(|l| apart(l))
        .unwrap_or_else(|| short(20));
    while !labels.is_empty() && !fits(&labels, format!("+{}", cats.len() - labels.len() + 1).len()) {
        labels.pop();
    }
    let hidden = cats.len() - labels.len();
    (labels, hidden)
}

/// KL per latent dimension at the latest epoch: dimensions near zero are unused.
pub fn kl_bars(f: &mut Frame, app: &App, records: &[Record], area: Rect) {
    let kl = records.iter().rev().find_map(|r| match &r.event {
        Event::Epoch { kl_per_dim, .. } => Some(kl_per_dim.clone()),
        _ => None,
    });
    let Some(kl) = kl.filter(|k| !k.is_empty()) else {
        f.render_widget(Paragraph::new("-").block(block(app, "KL per latent dimension")), area);
        return;
    };
    let active = kl.iter().filter(|&&v| v > 0.05).count();
    let bars: Vec<Bar> = kl
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            Bar::default()
                .label(Line::from(format!("z{}", i + 1)))
                .value((v * 100.0).round().max(0.0) as u64)
                .text_value(format!("{v:.1}"))
        })
        .collect();
    let inner_w = area.width.saturating_sub(2) as usize;
    let bar_w = ((inner_w / kl.len().max(1)).saturating_sub(1)).clamp(1, 5) as u16;
    let chart = BarChart::default()
        .block(block(
            app,
            format!("KL per latent dimension: {active}/{} above 0.05 nats", kl.len()),
        ))
        .data(BarGroup::default().bars(&bars))
        .bar_width(bar_w)
        .bar_gap(1)
        .bar_style(Style::default().fg(app.theme.accent))
        .value_style(Style::default().fg(app.theme.background).bg(app.theme.accent))
        .label_style(app.theme.muted());
    f.render_widget(chart, area);
}

/// `scmz compare` over the overlap sweep: held-out log-likelihood per cell of the pretrained
/// model and of one trained from scratch (means over seeds), by share of the model's genes.
pub fn comparison_chart(f: &mut Frame, app: &App, c: &scmz::zoo::comparison::Comparison, area: Rect) {
    let mut pcts: Vec<u32> = c.rows.iter().map(|r| r.overlap_pct).collect();
    pcts.sort_unstable();
    pcts.dedup();
    let mean = |pct: u32, f: fn(&scmz::zoo::comparison::ComparisonRow) -> f64| {
        let v: Vec<f64> = c.rows.iter().filter(|r| r.overlap_pct == pct).map(f).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let pre: Vec<(f64, f64)> = pcts.iter().map(|&p| (p as f64, mean(p, |r| r.pretrained_ll))).collect();
    let scr: Vec<(f64, f64)> = pcts.iter().map(|&p| (p as f64, mean(p, |r| r.scratch_ll))).collect();
    let data = std::path::Path::new(&c.data)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let (_, glyph) = curve_markers(app);
    let title = Line::from(vec![
        Span::styled(format!(" held-out log-lik. on {data} "), app.theme.accent()),
        Span::styled(
            format!("{} pretrained ", glyph[0]),
            Style::default().fg(app.theme.train),
        ),
        Span::styled(
            format!("{} from scratch ", glyph[1]),
            Style::default().fg(app.theme.validation),
        ),
    ]);
    let (lo, hi) = pre
        .iter()
        .chain(&scr)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), p| (l.min(p.1), h.max(p.1)));
    if pcts.is_empty() || !lo.is_finite() {
        f.render_widget(Paragraph::new("no comparison rows").block(block_line(app, title)), area);
        return;
    }
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let (first, last) = (pcts[0] as f64, pcts[pcts.len() - 1] as f64);
    let (x0, x1) = (first, last.max(first + 1.0));
    let chart = two_curves(
        app,
        title,
        [&pre, &scr],
        ("% of model genes", [x0, x1], [format!("{x0:.0}"), format!("{x1:.0}")]),
        ([lo - pad, hi + pad], vec![short(lo), short(hi)]),
    );
    f.render_widget(chart, area);
}

/// The y range of the curves: their span with 5 % on each side, never below 0 for values that
/// cannot be negative (ELBO, reconstruction and KL per cell, drawn on a linear scale).
fn y_range(values: impl Iterator<Item = f64>, log_scale: bool) -> (f64, f64) {
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    let floor = (!log_scale && lo >= 0.0).then_some(0.0);
    if hi - lo < 1e-9 {
        lo -= 1.0;
        hi += 1.0;
    }
    let pad = (hi - lo) * 0.05;
    let lo = lo - pad;
    (floor.map_or(lo, |f| lo.max(f)), hi + pad)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn the_y_axis_of_non_negative_curves_stays_at_or_above_zero() {
        let (lo, hi) = super::y_range([0.0, 0.4, 2.0].into_iter(), false);
        assert_eq!(lo, 0.0);
        assert!(hi > 2.0);
        let (lo, _) = super::y_range([0.1, 0.1].into_iter(), false);
        assert_eq!(lo, 0.0);
        // On a log scale, values below 1 are negative logs: left as they are.
        let (lo, _) = super::y_range([-1.0, 0.5].into_iter(), true);
        assert!(lo < -1.0);
    }

    /// Ten cell types told apart at their ends: in three lines of 34 cells all of them,
    /// shortened; in one line of 34 (the scatter at 80x24) or 12 cells, those that fit and how
    /// many do not; each label shown is told apart from the others.
    #[test]
    fn the_legend_shortens_labels_before_leaving_any_out() {
        let cats: Vec<String> = (0..10).map(|i| format!("CD4+/CD25-type{i}")).collect();
        let (labels, hidden) = super::legend(&cats, 34, 3);
        assert_eq!((labels.len(), hidden), (10, 0));
        assert_eq!(labels[3], "CD4…e3");
        let (labels, hidden) = super::legend(&cats, 34, 1);
        assert_eq!((labels.len(), hidden), (4, 6), "{labels:?}");
        let (labels, hidden) = super::legend(&cats, 12, 1);
        assert_eq!((labels.len(), hidden), (1, 9), "{labels:?} +{hidden}");
        let (labels, hidden) = super::legend(&cats[..2], 80, 1);
        assert_eq!(
            (labels, hidden),
            (vec!["CD4+/…ype0".to_string(), "CD4+/…ype1".to_string()], 0)
        );
    }
}
