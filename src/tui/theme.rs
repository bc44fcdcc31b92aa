//! Themes: TOML files in `themes/` (bundled into the binary) or any file the user names. Every
//! key is required, so an incomplete theme is caught when it is chosen, not as an odd colour
//! later; errors name the file and the key.

use std::path::Path;

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;

const BUNDLED: [(&str, &str); 3] = [
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    ("high-contrast", include_str!("../../themes/high-contrast.toml")),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    name: String,
    background: String,
    foreground: String,
    muted: String,
    accent: String,
    border: String,
    selection_fg: String,
    selection_bg: String,
    ok: String,
    warn: String,
    error: String,
    train: String,
    validation: String,
    categories: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Theme {
    pub name: String,
    pub background: Color,
    pub foreground: Color,
    pub muted: Color,
    pub accent: Color,
    pub border: Color,
    pub selection_fg: Color,
    pub selection_bg: Color,
    pub ok: Color,
    pub warn: Color,
    pub error: Color,
    pub train: Color,
    pub validation: Color,
    pub categories: Vec<Color>,
    /// `NO_COLOR`: styles use modifiers only.
    pub monochrome: bool,
}

fn color(key: &str, v: &str) -> Result<Color, String> {
    v.trim()
        .parse::<Color>()
        .map_err(|_| format!("key `{key}`: `{v}` is not a colour (use #rrggbb, a name like blue, or reset)"))
}

impl Theme {
    pub fn parse(text: &str) -> Result<Theme, String> {
        let f: ThemeFile = toml::from_str(text).map_err(|e| scmz::config::one_line_toml_error(&e, text))?;
        if f.categories.is_empty() {
            return Err("key `categories`: give at least one colour".into());
        }
        Ok(Theme {
            name: f.name,
            background: color("background", &f.background)?,
            foreground: color("foreground", &f.foreground)?,
            muted: color("muted", &f.muted)?,
            accent: color("accent", &f.accent)?,
            border: color("border", &f.border)?,
            selection_fg: color("selection_fg", &f.selection_fg)?,
            selection_bg: color("selection_bg", &f.selection_bg)?,
            ok: color("ok", &f.ok)?,
            warn: color("warn", &f.warn)?,
            error: color("error", &f.error)?,
            train: color("train", &f.train)?,
            validation: color("validation", &f.validation)?,
            categories: f
                .categories
                .iter()
                .enumerate()
                .map(|(i, c)| color(&format!("categories[{i}]"), c))
                .collect::<Result<_, _>>()?,
            monochrome: false,
        })
    }

    /// A bundled theme by name, a theme file in the user config directory's `themes/`, or a path.
    pub fn load(name_or_path: &str) -> anyhow::Result<Theme> {
        let path = Path::new(name_or_path);
        let user = directories::ProjectDirs::from("", "", "scmz")
            .map(|p| p.config_dir().join("themes").join(format!("{name_or_path}.toml")));
        let file = if name_or_path.ends_with(".toml") || name_or_path.contains('/') {
            Some(path.to_path_buf())
        } else {
            user.filter(|p| p.exists())
        };
        if let Some(file) = file {
            // A FIFO or a device (`--theme /dev/zero`) would be read without end; a theme is small.
            let meta = scmz::files::require_regular(&file).map_err(|e| anyhow::anyhow!("theme {e}"))?;
            if meta.len() > 1 << 20 {
                anyhow::bail!(
                    "theme {}: {} bytes, too large for a theme file (a few hundred bytes of TOML); check the path",
                    file.display(),
                    meta.len()
                );
            }
            let text = std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("theme {}: {e}", file.display()))?;
            return Theme::parse(&text).map_err(|e| anyhow::anyhow!("theme {}: {e}", file.display()));
        }
        match BUNDLED.iter().find(|(n, _)| *n == name_or_path) {
            Some((_, text)) => Ok(Theme::parse(text).expect("bundled themes parse")),
            None => anyhow::bail!(
                "no theme `{name_or_path}`: use {} or a path to a .toml theme file",
                BUNDLED.map(|(n, _)| n).join(", ")
            ),
        }
    }

    #[cfg(test)]
    pub fn bundled(name: &str) -> Theme {
        Theme::load(name).expect("bundled theme")
    }

    /// The same theme with colours removed (`NO_COLOR`).
    pub fn without_color(mut self) -> Theme {
        let r = Color::Reset;
        for c in [
            &mut self.background,
            &mut self.foreground,
            &mut self.muted,
            &mut self.accent,
            &mut self.border,
            &mut self.selection_fg,
            &mut self.selection_bg,
            &mut self.ok,
            &mut self.warn,
            &mut self.error,
            &mut self.train,
            &mut self.validation,
        ] {
            *c = r;
        }
        self.categories = vec![r];
        self.monochrome = true;
        self
    }

    pub fn base(&self) -> Style {
        Style::default().fg(self.foreground).bg(self.background)
    }
    pub fn muted(&self) -> Style {
        Style::default().fg(self.muted)
    }
    pub fn accent(&self) -> Style {
        Style::default().fg(self.accent).add_modifier(Modifier::BOLD)
    }
    pub fn border(&self) -> Style {
        Style::default().fg(self.border)
    }
    pub fn selected(&self) -> Style {
        if self.monochrome {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default().fg(self.selection_fg).bg(self.selection_bg)
        }
    }
    pub fn state(&self, state: &str) -> Style {
        let c = match state {
            "done" | "counts" => self.ok,
            "running" | "queued" => self.accent,
            "failed" | "error" => self.error,
            "cancelled" | "normalised" => self.warn,
            _ => self.foreground,
        };
        Style::default().fg(c)
    }
    pub fn category(&self, i: usize) -> Color {
        self.categories[i % self.categories.len()]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Ten cell types (Kang's annotation, the demo's bulk labels) get ten different colours in
    /// every bundled theme (high contrast had eight).
    #[test]
    fn bundled_themes_colour_ten_labels_apart() {
        for (name, _) in BUNDLED {
            let t = Theme::bundled(name);
            let colours: std::collections::HashSet<String> = (0..10).map(|i| format!("{:?}", t.category(i))).collect();
            assert_eq!(colours.len(), 10, "{name}");
        }
    }

    #[test]
    fn bundled_themes_parse_and_bad_ones_name_the_key() {
        for (name, _) in BUNDLED {
            assert_eq!(Theme::bundled(name).name, name);
        }
        let good = BUNDLED[0].1;
        let e = Theme::parse(&good.replace("accent = \"#5fafff\"", "accent = \"#zzzzzz\"")).unwrap_err();
        assert!(e.contains("`accent`") && e.contains("#zzzzzz"), "{e}");
        let e = Theme::parse(&good.replace("muted =", "mutted =")).unwrap_err();
        assert!(e.contains("mutted"), "{e}");
        let e = Theme::parse(&good.replace("border = \"#585858\"\n", "")).unwrap_err();
        assert!(e.contains("border"), "{e}");
        assert!(Theme::load("nosuch").unwrap_err().to_string().contains("high-contrast"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mine.toml");
        std::fs::write(&p, good.replace("ok = \"#87d787\"", "ok = 5")).unwrap();
        let e = Theme::load(p.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("mine.toml") && e.contains("ok"), "{e}");
        // A device or a folder is refused at once, not read without end.
        let e = Theme::load("/dev/zero").unwrap_err().to_string();
        assert!(e.contains("/dev/zero") && e.contains("a device"), "{e}");
        let e = Theme::load(&format!("{}/", dir.path().display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a folder"), "{e}");
    }
}
