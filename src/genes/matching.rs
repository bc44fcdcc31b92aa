//! Matching one gene list against another through the best shared key: Ensembl ids when both
//! sides have them, symbols when both have them, the GENCODE table when one side has only ids and
//! the other only symbols, the ortholog table across human and mouse; case-insensitive symbols
//! only where the tables say nothing. Every match records the route it took.

use rustc_hash::FxHashMap as HashMap;

use serde::{Deserialize, Serialize};

use super::reference::{reference, strip_version, GENCODE_NAME, ORTHOLOG_NAME};
use crate::data::gene_ids::classify;
use crate::data::GeneTable;

/// A gene list to match: a dataset's genes, or (later) a model's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GeneList {
    /// Shown in reports: a file name or a model name.
    pub label: String,
    /// The primary names (var index / model gene names), in column order.
    pub names: Vec<String>,
    /// Ensembl ids per gene, when known.
    pub gene_ids: Option<Vec<String>>,
    /// Symbols per gene, when known.
    pub symbols: Option<Vec<String>>,
    /// `human`, `mouse`, ... when it can be told.
    pub species: Option<String>,
    /// Where ids and symbols came from (`var/gene_ids`, `index`), for reports.
    pub id_key: Option<String>,
    pub symbol_key: Option<String>,
}

impl GeneList {
    pub fn from_table(label: impl Into<String>, t: &GeneTable) -> Self {
        let gene_ids = t.gene_ids().map(<[String]>::to_vec);
        let symbols = t.symbols().map(<[String]>::to_vec);
        let species = gene_ids
            .as_deref()
            .and_then(|v| classify(v).species)
            .or_else(|| symbols.as_deref().and_then(|v| classify(v).species));
        GeneList {
            label: label.into(),
            names: t.index.clone(),
            gene_ids,
            symbols,
            species,
            id_key: t.gene_id_key.clone(),
            symbol_key: t.symbol_key.clone(),
        }
    }

    /// A list of plain names, classified here (tests, benchmarks).
    pub fn from_names(label: impl Into<String>, names: Vec<String>) -> Self {
        let t = GeneTable::new("names".into(), names, Vec::new());
        Self::from_table(label, &t)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The name to show for gene `i`: its symbol when known.
    pub fn display(&self, i: usize) -> &str {
        self.symbols.as_ref().map_or(&self.names[i], |s| &s[i])
    }

    /// What kinds of identifiers this list has, in words.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(k) = &self.id_key {
            parts.push(format!("Ensembl ids (`{k}`)"));
        }
        if let Some(k) = &self.symbol_key {
            parts.push(format!("symbols (`{k}`)"));
        }
        if parts.is_empty() {
            parts.push(format!("{} names", classify(&self.names).kind));
        }
        format!(
            "{} of {}",
            parts.join(" and "),
            self.species.as_deref().unwrap_or("unknown species")
        )
    }

    /// Symbols per gene: native symbols, else (human) ids through GENCODE.
    fn symbols_or_converted(&self) -> Vec<Option<&str>> {
        if let Some(s) = &self.symbols {
            return s.iter().map(|x| Some(x.as_str())).collect();
        }
        let r = reference();
        match &self.gene_ids {
            Some(ids) => ids
                .iter()
                .map(|id| r.id_to_symbol.get(strip_version(id)).map(String::as_str))
                .collect(),
            None => vec![None; self.len()],
        }
    }
}

/// How a gene of the reference list was found in the query list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// Same Ensembl id (version suffixes ignored).
    GeneId,
    /// Same symbol.
    Symbol,
    /// One side's Ensembl id turned into a symbol through GENCODE v44.
    IdToSymbol,
    /// Human and mouse genes paired through the Ensembl 105 ortholog table.
    Ortholog,
    /// Symbols equal up to case, where the tables say nothing.
    CaseInsensitive,
    /// Identical names of another kind (integers, other ids).
    Name,
}

impl Route {
    pub fn describe(self) -> String {
        match self {
            Route::GeneId => "Ensembl id".into(),
            Route::Symbol => "symbol".into(),
            Route::IdToSymbol => format!("id to symbol ({GENCODE_NAME})"),
            Route::Ortholog => format!("ortholog ({ORTHOLOG_NAME})"),
            Route::CaseInsensitive => "symbol, case-insensitive".into(),
            Route::Name => "name".into(),
        }
    }
}

/// The result of matching reference list B against query list A.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Matching {
    /// For each gene of B: the index of the matching gene in A and the route.
    pub b_to_a: Vec<Option<(usize, Route)>>,
    /// The primary key used, and why.
    pub key: String,
    pub reason: String,
    /// Set when A and B are of different species.
    pub cross_species: Option<(String, String)>,
    /// Genes of A whose key occurs more than once: the first occurrence is used.
    pub a_duplicates: Vec<String>,
}

impl Matching {
    pub fn found(&self) -> usize {
        self.b_to_a.iter().filter(|m| m.is_some()).count()
    }

    /// Number of distinct genes of A used by the match.
    pub fn a_used(&self) -> usize {
        let mut used: Vec<usize> = self.b_to_a.iter().flatten().map(|(a, _)| *a).collect();
        used.sort_unstable();
        used.dedup();
        used.len()
    }

    pub fn routes(&self) -> Vec<(Route, usize)> {
        let mut counts: std::collections::BTreeMap<Route, usize> = Default::default();
        for (_, r) in self.b_to_a.iter().flatten() {
            *counts.entry(*r).or_default() += 1;
        }
        counts.into_iter().collect()
    }
}

/// key -> first index in A; later duplicates are recorded.
fn index_of<'a>(keys: impl Iterator<Item = Option<&'a str>>, dups: &mut Vec<String>) -> HashMap<&'a str, usize> {
    let mut map = HashMap::default();
    map.reserve(keys.size_hint().0);
    for (i, k) in keys.enumerate() {
        let Some(k) = k.filter(|k| !k.is_empty()) else { continue };
        if let Some(_first) = map.get(k) {
            if !dups.iter().any(|d| d == k) {
                dups.push(k.to_string());
            }
        } else {
            map.insert(k, i);
        }
    }
    map
}

/// Upper-cased key -> first index, for the case-insensitive fallback.
fn upper_index<'a>(keys: impl Iterator<Item = Option<&'a str>>) -> HashMap<String, usize> {
    let mut map = HashMap::default();
    for (i, s) in keys.enumerate() {
        if let Some(s) = s {
            map.entry(s.to_uppercase()).or_insert(i);
        }
    }
    map
}

/// Matches every gene of `b` (the reference, e.g. a model) to a gene of `a` (the query).
pub fn match_genes(a: &GeneList, b: &GeneList) -> Matching {
    let mut m = Matching {
        b_to_a: vec![None; b.len()],
        key: String::new(),
        reason: String::new(),
        cross_species: None,
        a_duplicates: Vec::new(),
    };
    let (sa, sb) = (a.species.as_deref(), b.species.as_deref());
    if let (Some(x), Some(y)) = (sa, sb) {
        if x != y {
            m.cross_species = Some((x.to_string(), y.to_string()));
            match_orthologs(a, b, &mut m);
            return m;
        }
    }
    let mut dups = Vec::new();
    if let (Some(ia), Some(ib)) = (&a.gene_ids, &b.gene_ids) {
        m.key = "Ensembl id".into();
        m.reason = "both sides have Ensembl ids, which are unambiguous (version suffixes ignored)".into();
        let map = index_of(ia.iter().map(|s| Some(strip_version(s))), &mut dups);
        for (j, id) in ib.iter().enumerate() {
            if let Some(&i) = map.get(strip_version(id)) {
                m.b_to_a[j] = Some((i, Route::GeneId));
            }
        }
        // Genes whose ids differ between annotation releases may still share a symbol.
        if let (Some(sa), Some(sb)) = (&a.symbols, &b.symbols) {
            symbols_fallback(sa, sb, &mut m, Route::Symbol, &mut dups);
        }
    } else if let (Some(sa), Some(sb)) = (&a.symbols, &b.symbols) {
        m.key = "symbol".into();
        m.reason = if a.gene_ids.is_some() || b.gene_ids.is_some() {
            "only one side has Ensembl ids; both have symbols".into()
        } else {
            "neither side has Ensembl ids; both have symbols".into()
        };
        symbols_fallback(sa, sb, &mut m, Route::Symbol, &mut dups);
        // One side's ids may still name a current symbol the other side uses.
        let r = reference();
        let via_ids = |l: &GeneList| -> Option<Vec<Option<String>>> {
            l.gene_ids.as_ref().map(|ids| {
                ids.iter()
                    .map(|id| r.id_to_symbol.get(strip_version(id)).cloned())
                    .collect()
            })
        };
        if let Some(b_conv) = via_ids(b) {
            let map = index_of(sa.iter().map(|s| Some(s.as_str())), &mut Vec::new());
            for (j, s) in b_conv.iter().enumerate() {
                if m.b_to_a[j].is_none() {
                    if let Some(&i) = s.as_deref().and_then(|s| map.get(s)) {
                        m.b_to_a[j] = Some((i, Route::IdToSymbol));
                    }
                }
            }
        }
        if let Some(a_conv) = via_ids(a) {
            let map = index_of(a_conv.iter().map(|s| s.as_deref()), &mut Vec::new());
            for (j, s) in sb.iter().enumerate() {
                if m.b_to_a[j].is_none() {
                    if let Some(&i) = map.get(s.as_str()) {
                        m.b_to_a[j] = Some((i, Route::IdToSymbol));
                    }
                }
            }
        }
    } else if a.gene_ids.is_some() != b.gene_ids.is_some() && (a.symbols.is_some() || b.symbols.is_some()) {
        m.key = format!("id to symbol ({GENCODE_NAME})");
        m.reason = "one side has only Ensembl ids, the other only symbols: ids are turned into symbols through the \
                    GENCODE v44 table"
            .into();
        let ha = a.symbols_or_converted();
        let hb = b.symbols_or_converted();
        let map = index_of(ha.iter().copied(), &mut dups);
        for (j, s) in hb.iter().enumerate() {
            if let Some(&i) = s.and_then(|s| map.get(s)) {
                m.b_to_a[j] = Some((i, Route::IdToSymbol));
            }
        }
        case_insensitive(ha.iter().copied(), hb.iter().copied(), &mut m);
    } else {
        m.key = "name".into();
        m.reason = "no Ensembl ids or symbols on both sides: names compared as they are".into();
        let map = index_of(a.names.iter().map(|s| Some(s.as_str())), &mut dups);
        for (j, n) in b.names.iter().enumerate() {
            if let Some(&i) = map.get(n.as_str()) {
                m.b_to_a[j] = Some((i, Route::Name));
            }
        }
    }
    m.a_duplicates = dups;
    m
}

/// Exact symbol matches for unmatched genes, then case-insensitive ones.
fn symbols_fallback(sa: &[String], sb: &[String], m: &mut Matching, route: Route, dups: &mut Vec<String>) {
    let map = index_of(sa.iter().map(|s| Some(s.as_str())), dups);
    for (j, s) in sb.iter().enumerate() {
        if m.b_to_a[j].is_none() {
            if let Some(&i) = map.get(s.as_str()) {
                m.b_to_a[j] = Some((i, route));
            }
        }
    }
    case_insensitive(
        sa.iter().map(|s| Some(s.as_str())),
        sb.iter().map(|s| Some(s.as_str())),
        m,
    );
}

/// Case-insensitive matches for genes still unmatched; the upper-cased index of A is built only
/// when there are such genes.
fn case_insensitive<'a>(
    sa: impl Iterator<Item = Option<&'a str>>,
    sb: impl Iterator<Item = Option<&'a str>>,
    m: &mut Matching,
) {
    let open: Vec<(usize, &str)> = sb
        .enumerate()
        .filter(|(j, _)| m.b_to_a[*j].is_none())
        .filter_map(|(j, s)| s.map(|s| (j, s)))
        .collect();
    if open.is_empty() {
        return;
    }
    let upper = upper_index(sa);
    for (j, s) in open {
        if let Some(&i) = upper.get(&s.to_uppercase()) {
            m.b_to_a[j] = Some((i, Route::CaseInsensitive));
        }
    }
}

/// Human against mouse: pair genes through the ortholog table; genes the table does not know
/// fall back to case-insensitive symbols.
fn match_orthologs(a: &GeneList, b: &GeneList, m: &mut Matching) {
    let r = reference();
    let (x, y) = m.cross_species.clone().expect("cross-species");
    m.key = format!("ortholog ({ORTHOLOG_NAME})");
    m.reason = format!(
        "{} is {x}, {} is {y}: genes are paired through orthologs",
        a.label, b.label
    );
    let sa = a.symbols_or_converted();
    let sb = b.symbols_or_converted();
    let map = index_of(sa.iter().copied(), &mut m.a_duplicates);
    let upper = upper_index(sa.iter().copied());
    let table = match (x.as_str(), y.as_str()) {
        ("human", "mouse") => Some(&r.mouse_to_human),
        ("mouse", "human") => Some(&r.human_to_mouse),
        _ => None,
    };
    for (j, s) in sb.iter().enumerate() {
        let Some(s) = *s else { continue };
        match table.and_then(|t| t.get(s)) {
            Some(partners) => {
                if let Some(&i) = partners.iter().find_map(|p| map.get(p.as_str())) {
                    m.b_to_a[j] = Some((i, Route::Ortholog));
                }
            }
            None => {
                if let Some(&i) = upper.get(&s.to_uppercase()) {
                    m.b_to_a[j] = Some((i, Route::CaseInsensitive));
                }
            }
        }
    }
}

/// Annotation drift: how many of a human symbol list are not GENCODE v44 symbols, with examples.
pub fn stale_symbols(list: &GeneList) -> Option<(usize, Vec<String>)> {
    if list.species.as_deref() != Some("human") {
        return None;
    }
    let symbols = list.symbols.as_ref()?;
    let r = reference();
    let stale: Vec<&String> = symbols.iter().filter(|s| !r.is_current_human_symbol(s)).collect();
    Some((stale.len(), stale.iter().take(5).map(|s| s.to_string()).collect()))
}

/// A chunk of the data moved into the model's gene space: each data gene's counts go to the model
/// genes it matched (`a_to_b`), rows sorted by gene.
pub fn to_model_space(chunk: &crate::data::CsrChunk, a_to_b: &[Vec<u32>], n_genes: usize) -> crate::data::CsrChunk {
    let mut x = crate::data::CsrChunk::empty(0, n_genes);
    for r in 0..chunk.n_rows() {
        let (idx, val) = chunk.row(r);
        let mut row: Vec<(u32, f32)> = idx
            .iter()
            .zip(val)
            .flat_map(|(&c, &v)| a_to_b[c as usize].iter().map(move |&j| (j, v)))
            .collect();
        row.sort_unstable_by_key(|e| e.0);
        x.push_row(row);
    }
    x
}
