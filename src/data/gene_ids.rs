//! What kind of gene identifiers a list holds (Ensembl ids, symbols, integers) and which species
//! they suggest. Lives in `data` because the catalog reports it; the `genes` module builds the
//! matching on top of it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GeneIdKind {
    Ensembl,
    Symbol,
    Integer,
    Mixed,
    #[default]
    Empty,
}

impl std::fmt::Display for GeneIdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GeneIdKind::Ensembl => "ensembl",
            GeneIdKind::Symbol => "symbol",
            GeneIdKind::Integer => "integer",
            GeneIdKind::Mixed => "mixed",
            GeneIdKind::Empty => "empty",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GeneIdSummary {
    pub kind: GeneIdKind,
    /// Species guessed from Ensembl prefixes or symbol case; None when unclear.
    pub species: Option<String>,
    /// Ensembl ids carry a version suffix (`ENSG00000141510.16`).
    pub versioned: bool,
    pub n: usize,
    pub n_ensembl: usize,
    pub n_symbol: usize,
    pub n_integer: usize,
}

/// Splits an Ensembl gene id into (species prefix, has version), e.g. `ENSMUSG…` -> ("ENSMUS", false).
pub fn ensembl_prefix(id: &str) -> Option<(&str, bool)> {
    let rest = id.strip_prefix("ENS")?;
    let g = rest.find('G')?;
    let (species, digits) = (&rest[..g], &rest[g + 1..]);
    if !species.chars().all(|c| c.is_ascii_uppercase()) {
        return None;
    }
    let (num, version) = match digits.split_once('.') {
        Some((n, v)) => (n, Some(v)),
        None => (digits, None),
    };
    if num.len() != 11 || !num.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if version.is_some_and(|v| v.is_empty() || !v.chars().all(|c| c.is_ascii_digit())) {
        return None;
    }
    Some((&id[..3 + g], version.is_some()))
}

/// Species for an Ensembl gene-id prefix.
pub fn species_of_prefix(prefix: &str) -> String {
    match prefix {
        "ENS" => "human",
        "ENSMUS" => "mouse",
        "ENSRNO" => "rat",
        "ENSDAR" => "zebrafish",
        "ENSGAL" => "chicken",
        "ENSMMU" => "macaque",
        "ENSSSC" => "pig",
        "ENSBTA" => "cow",
        _ => return format!("other ({prefix}G)"),
    }
    .to_string()
}

fn is_symbol(s: &str) -> bool {
    !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-._@/:".contains(c))
}

/// Classifies a gene list: 90 % of one kind decides it, else `Mixed`.
pub fn classify(genes: &[String]) -> GeneIdSummary {
    let mut s = GeneIdSummary {
        n: genes.len(),
        ..Default::default()
    };
    let mut prefixes: std::collections::BTreeMap<&str, usize> = Default::default();
    let (mut upper, mut capitalised) = (0usize, 0usize);
    let mut versioned = 0usize;
    for g in genes {
        if let Some((prefix, v)) = ensembl_prefix(g) {
            s.n_ensembl += 1;
            *prefixes.entry(prefix).or_default() += 1;
            versioned += v as usize;
        } else if !g.is_empty() && g.chars().all(|c| c.is_ascii_digit()) {
            s.n_integer += 1;
        } else if is_symbol(g) {
            s.n_symbol += 1;
            let letters: Vec<char> = g.chars().filter(|c| c.is_ascii_alphabetic()).collect();
            if letters.iter().all(|c| c.is_ascii_uppercase()) {
                upper += 1;
            } else if letters[0].is_ascii_uppercase() && letters[1..].iter().all(|c| c.is_ascii_lowercase()) {
                capitalised += 1;
            }
        }
    }
    let n = genes.len().max(1) as f64;
    let share = |k: usize| k as f64 / n >= 0.9;
    s.kind = if genes.is_empty() {
        GeneIdKind::Empty
    } else if share(s.n_ensembl) {
        GeneIdKind::Ensembl
    } else if share(s.n_symbol) {
        GeneIdKind::Symbol
    } else if share(s.n_integer) {
        GeneIdKind::Integer
    } else {
        GeneIdKind::Mixed
    };
    s.versioned = s.n_ensembl > 0 && versioned * 2 > s.n_ensembl;
    s.species = match s.kind {
        GeneIdKind::Ensembl => prefixes
            .iter()
            .max_by_key(|(_, c)| **c)
            .map(|(p, _)| species_of_prefix(p)),
        // Human symbols are upper case (CD3E), mouse symbols capitalised (Cd3e).
        GeneIdKind::Symbol if upper as f64 >= 0.6 * s.n_symbol as f64 => Some("human".into()),
        GeneIdKind::Symbol if capitalised as f64 >= 0.6 * s.n_symbol as f64 => Some("mouse".into()),
        _ => None,
    };
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ensembl_ids_with_species_and_versions() {
        assert_eq!(ensembl_prefix("ENSG00000141510.16"), Some(("ENS", true)));
        assert_eq!(ensembl_prefix("ENSMUSG00000051951"), Some(("ENSMUS", false)));
        assert_eq!(ensembl_prefix("ENSG0000014151"), None);
        assert_eq!(ensembl_prefix("ENSEMBL"), None);
        let s = classify(&v(&["ENSMUSG00000051951", "ENSMUSG00000089699"]));
        assert_eq!(
            (s.kind, s.species.as_deref(), s.versioned),
            (GeneIdKind::Ensembl, Some("mouse"), false)
        );
        let s = classify(&v(&["ENSG00000141510.16", "ENSG00000141511.2"]));
        assert_eq!(
            (s.kind, s.species.as_deref(), s.versioned),
            (GeneIdKind::Ensembl, Some("human"), true)
        );
    }

    #[test]
    fn symbols_integers_and_mixed() {
        let s = classify(&v(&["CD3E", "HLA-DRA", "MT-CO1", "RP11-34P13.7"]));
        assert_eq!((s.kind, s.species.as_deref()), (GeneIdKind::Symbol, Some("human")));
        let s = classify(&v(&["Cd3e", "Xkr4", "Rp1", "Gm1992"]));
        assert_eq!((s.kind, s.species.as_deref()), (GeneIdKind::Symbol, Some("mouse")));
        assert_eq!(classify(&v(&["574405", "574404"])).kind, GeneIdKind::Integer);
        assert_eq!(classify(&v(&["574405", "CD3E"])).kind, GeneIdKind::Mixed);
        assert_eq!(classify(&[]).kind, GeneIdKind::Empty);
    }
}
