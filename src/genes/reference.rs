//! The offline reference tables, embedded in the binary so matching works without a network:
//! GENCODE v44 human Ensembl gene ids to symbols, and Ensembl 105 human-to-mouse orthologs
//! (both from the celltypist package, MIT licence). Parsed once, on first use.

use rustc_hash::FxHashMap as HashMap;
use std::io::Read;
use std::sync::OnceLock;

const GENCODE: &[u8] = include_bytes!("reference/gencode_v44_human_gene_id_to_symbol.csv.gz");
const ORTHOLOGS: &[u8] = include_bytes!("reference/ensembl105_human_to_mouse_symbols.csv.gz");

pub const GENCODE_NAME: &str = "GENCODE v44";
pub const ORTHOLOG_NAME: &str = "Ensembl 105 orthologs";

pub struct Reference {
    /// Human Ensembl id (no version) -> symbol.
    pub id_to_symbol: HashMap<String, String>,
    /// Human symbol -> Ensembl ids (a few symbols have several).
    pub symbol_to_ids: HashMap<String, Vec<String>>,
    /// Human symbol -> mouse symbols; an empty list means "no mouse ortholog".
    pub human_to_mouse: HashMap<String, Vec<String>>,
    /// Mouse symbol -> human symbols.
    pub mouse_to_human: HashMap<String, Vec<String>>,
}

fn gunzip(bytes: &[u8]) -> String {
    let mut s = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut s)
        .expect("embedded reference table is valid gzip");
    s
}

/// Strips an Ensembl version suffix: `ENSG00000141510.16` -> `ENSG00000141510`.
pub fn strip_version(id: &str) -> &str {
    match id.split_once('.') {
        Some((base, v)) if id.starts_with("ENS") && v.chars().all(|c| c.is_ascii_digit()) => base,
        _ => id,
    }
}

impl Reference {
    fn load() -> Self {
        let mut id_to_symbol = HashMap::default();
        let mut symbol_to_ids: HashMap<String, Vec<String>> = HashMap::default();
        for line in gunzip(GENCODE).lines() {
            let Some((id, symbol)) = line.split_once(',') else {
                continue;
            };
            let id = strip_version(id.trim()).to_string();
            let symbol = symbol.trim();
            if id.is_empty() || symbol.is_empty() {
                continue;
            }
            symbol_to_ids.entry(symbol.to_string()).or_default().push(id.clone());
            id_to_symbol.insert(id, symbol.to_string());
        }
        let mut human_to_mouse: HashMap<String, Vec<String>> = HashMap::default();
        let mut mouse_to_human: HashMap<String, Vec<String>> = HashMap::default();
        for line in gunzip(ORTHOLOGS).lines() {
            let Some((human, mouse)) = line.split_once(',') else {
                continue;
            };
            let (human, mouse) = (human.trim(), mouse.trim());
            if human.is_empty() {
                continue;
            }
            let list = human_to_mouse.entry(human.to_string()).or_default();
            if !mouse.is_empty() {
                list.push(mouse.to_string());
                mouse_to_human
                    .entry(mouse.to_string())
                    .or_default()
                    .push(human.to_string());
            }
        }
        Reference {
            id_to_symbol,
            symbol_to_ids,
            human_to_mouse,
            mouse_to_human,
        }
    }

    /// Whether `symbol` is a current (GENCODE v44) human symbol.
    pub fn is_current_human_symbol(&self, symbol: &str) -> bool {
        self.symbol_to_ids.contains_key(symbol)
    }
}

/// The tables, parsed on first use (about 30 ms).
pub fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(Reference::load)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tables_load_with_their_documented_sizes() {
        let r = reference();
        assert!(r.id_to_symbol.len() > 60_000, "{}", r.id_to_symbol.len());
        assert_eq!(r.id_to_symbol.get("ENSG00000141510").map(String::as_str), Some("TP53"));
        assert!(r.human_to_mouse["TP53"].contains(&"Trp53".to_string()));
        assert!(r.mouse_to_human["Trp53"].contains(&"TP53".to_string()));
        assert_eq!(strip_version("ENSG00000141510.16"), "ENSG00000141510");
        assert_eq!(strip_version("RP11-34P13.7"), "RP11-34P13.7");
    }
}
