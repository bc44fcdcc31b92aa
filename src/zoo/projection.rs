//! The report of `scmz project`: what the engine prints and writes as JSON (`--json`), and what
//! the front end reads back (the mapping prediction of the overlap screen).

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ProjectReport {
    pub data: String,
    pub model: String,
    pub cells: usize,
    pub model_genes: usize,
    pub found: usize,
    pub pct_found: f64,
    pub key: String,
    pub missing_policy: crate::spec::Missing,
    pub warnings: Vec<String>,
    /// Predicted from the model's reference cells with the same genes hidden.
    pub predicted_displacement: Option<f64>,
    pub predicted_agreement: Option<f64>,
    /// Fine-tuning of a new batch: mean ELBO per query cell before and after.
    pub finetune_loss: Option<(f64, f64)>,
    /// Cells per transferred label.
    pub labels: Vec<(String, usize)>,
    pub mean_confidence: Option<f64>,
    pub output: String,
}

impl ProjectReport {
    /// How the lines of `print` that say what a projection found begin (genes found, the
    /// predicted mapping, labels, warnings): the TUI shows a finished job's lines that do.
    pub const FINDINGS: [&'static str; 4] = ["genes ", "predicted ", "labels ", "warning:"];

    /// The labels transferred, the six largest by name and the rest counted (none silently left
    /// out), with the mean confidence.
    pub fn labels_line(&self) -> Option<String> {
        if self.labels.is_empty() {
            return None;
        }
        let top: Vec<String> = self.labels.iter().take(6).map(|(l, n)| format!("{l} ({n})")).collect();
        let rest: usize = self.labels.iter().skip(6).map(|(_, n)| n).sum();
        Some(format!(
            "{}{} (mean confidence {:.2})",
            top.join(", "),
            match self.labels.len().saturating_sub(6) {
                0 => String::new(),
                k => format!(", +{k} more ({rest} cells)"),
            },
            self.mean_confidence.unwrap_or(0.0)
        ))
    }

    /// The report as lines for people on standard output ([`crate::files::report_line`]);
    /// `routes`: how many model genes each matching route found.
    pub fn print(&self, routes: &[(crate::genes::Route, usize)]) -> std::io::Result<()> {
        // Labels, names and gene symbols come from files: control characters are shown escaped.
        macro_rules! println {
            ($($t:tt)*) => { crate::files::report_line(&crate::files::printable(&format!($($t)*)))? };
        }
        println!("model      {} ({} genes)", self.model, self.model_genes);
        println!("data       {} ({} cells)", self.data, self.cells);
        println!(
            "genes      {} of the model's genes found ({:.1} %); {}",
            self.found, self.pct_found, self.key
        );
        let routes: Vec<String> = routes
            .iter()
            .map(|(route, n)| format!("{} {n}", route.describe()))
            .collect();
        println!("routes     {}", routes.join(", "));
        println!(
            "missing    {} genes, {}",
            self.model_genes - self.found,
            if self.missing_policy == crate::spec::Missing::Mask {
                "masked"
            } else {
                "zero-filled"
            }
        );
        if let (Some(d), a) = (self.predicted_displacement, self.predicted_agreement) {
            println!(
                "predicted  latent displacement {:.3} of the latent spread{}",
                d,
                a.map(|a| format!("; label agreement with all genes {:.1} %", 100.0 * a))
                    .unwrap_or_default()
            );
        }
        if let Some((before, after)) = self.finetune_loss {
            println!("finetune   new batch: query ELBO per cell {before:.2} -> {after:.2}");
        }
        if let Some(line) = self.labels_line() {
            println!("labels     {line}");
        }
        if !self.output.is_empty() {
            println!("wrote      {}", self.output);
        }
        for w in &self.warnings {
            println!("warning: {w}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_labels_line_counts_what_it_does_not_name() {
        let mut r = super::ProjectReport {
            data: String::new(),
            model: String::new(),
            cells: 0,
            model_genes: 0,
            found: 0,
            pct_found: 0.0,
            key: String::new(),
            missing_policy: crate::spec::Missing::Mask,
            warnings: Vec::new(),
            predicted_displacement: None,
            predicted_agreement: None,
            finetune_loss: None,
            labels: (1..=8).map(|i| (format!("t{i}"), 100 - i)).collect(),
            mean_confidence: Some(0.5),
            output: String::new(),
        };
        let line = r.labels_line().unwrap_or_default();
        assert!(
            line.starts_with("t1 (99), t2 (98)") && line.contains("+2 more (185 cells)"),
            "{line}"
        );
        r.labels.truncate(3);
        assert!(!r.labels_line().unwrap_or_default().contains("more"));
    }
}
