//! Plain text tables: left-aligned columns separated by two spaces, numbers right-aligned.

pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
    /// (column, most characters) pairs, see `limit`.
    limits: Vec<(usize, usize)>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            right: vec![false; header.len()],
            limits: Vec::new(),
        }
    }

    /// Right-aligns the given columns (numbers).
    pub fn right(mut self, cols: &[usize]) -> Self {
        for &c in cols {
            self.right[c] = true;
        }
        self
    }

    /// Shortens cells of column `col` longer than `max` characters to their start and end around
    /// an ellipsis (rows added after this call), so that one long name cannot push every other
    /// column off the screen; `--json` keeps the whole text.
    pub fn limit(mut self, col: usize, max: usize) -> Self {
        self.limits.push((col, max.max(5)));
        self
    }

    /// Adds a row; control characters in its cells (names read from files) are escaped.
    pub fn row(&mut self, cells: Vec<String>) {
        let row = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let c = scmz::files::printable(&c).into_owned();
                match self.limits.iter().find(|(col, _)| *col == i) {
                    Some(&(_, max)) if c.chars().count() > max => {
                        let head: String = c.chars().take((max - 1) / 2).collect();
                        let tail: Vec<char> = c.chars().rev().take(max - 1 - head.chars().count()).collect();
                        format!("{head}\u{2026}{}", tail.into_iter().rev().collect::<String>())
                    }
                    _ => c,
                }
            })
            .collect();
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let n = self.header.len();
        let width: Vec<usize> = (0..n)
            .map(|c| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let cells: Vec<String> = (0..n)
                .map(|c| {
                    let s = r.get(c).map_or("", |s| s.as_str());
                    if self.right[c] {
                        format!("{s:>w$}", w = width[c])
                    } else {
                        format!("{s:<w$}", w = width[c])
                    }
                })
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::Table;

    #[test]
    fn long_cells_keep_their_ends() {
        let mut t = Table::new(&["name", "state"]).limit(0, 9);
        t.row(vec!["a-very-long-model-name".into(), "done".into()]);
        t.row(vec!["short".into(), "failed".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "a-ve\u{2026}name  done");
        assert_eq!(lines[2], "short      failed");
    }
}
