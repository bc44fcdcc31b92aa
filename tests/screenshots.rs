//! README screenshots: a terminal capture with its colours (`tmux capture-pane -e`) becomes a PNG
//! (scripts/ansi2png.py) whose cells carry those colours, borders and chart dots.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn a_coloured_capture_becomes_a_png_of_its_cells() {
    let dir = tempfile::tempdir().unwrap();
    let ansi = dir.path().join("shot.ansi");
    // Row 0: "ab" on red (SGR 41), then a truecolour green "X". Row 1: a border line and a full
    // Braille cell in blue (SGR 34), with a window title sequence to skip.
    std::fs::write(
        &ansi,
        "\x1b[41mab\x1b[0m\x1b[38;2;0;255;0mX\x1b[0m\n\x1b]2;title\x07\x1b[34m─⣿\x1b[0m\n",
    )
    .unwrap();
    let png = dir.path().join("shot.png");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ansi2png.py");
    let out = Command::new(common::python())
        .arg(&script)
        .arg(&ansi)
        .arg(&png)
        .args(["--font-size", "20"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    // Per cell (column, row): its colours, most frequent first.
    let probe = common::run_python(
        "import sys, json\n\
         from PIL import Image\n\
         im = Image.open(sys.argv[1]).convert('RGB')\n\
         w, h = im.size\n\
         cw, ch = w // 3, h // 2\n\
         out = {'size': [w, h]}\n\
         for c in range(3):\n\
         \x20   for r in range(2):\n\
         \x20       cols = im.crop((c * cw, r * ch, (c + 1) * cw, (r + 1) * ch)).getcolors(10000)\n\
         \x20       out[f'{c},{r}'] = [list(rgb) for n, rgb in sorted(cols, reverse=True)]\n\
         px = lambda x, y: list(im.getpixel((cw + x, ch + y)))\n\
         out['dots'] = [px(cw // 4, ch // 8), px(3 * cw // 4, 7 * ch // 8), px(cw // 2, ch // 2)]\n\
         print(json.dumps(out))",
        &[&png],
    );
    let v: serde_json::Value = serde_json::from_str(probe.trim()).unwrap();
    let colours = |cell: &str| -> Vec<[u8; 3]> { serde_json::from_value(v[cell].clone()).unwrap() };
    let (red, green, blue, bg) = ([205, 49, 49], [0, 255, 0], [36, 114, 200], [24, 26, 31]);
    assert_eq!(v["size"][1], 50, "two rows of 25 pixels at size 20: {}", v["size"]);
    assert_eq!(colours("0,0")[0], red, "a red background");
    assert!(colours("0,0").len() > 2, "with a letter on it");
    assert!(colours("2,0").contains(&green), "truecolour text");
    assert_eq!(colours("0,1")[..2], [bg, blue], "a border line across the cell");
    // The full Braille cell: dots at the first and last of its 2 x 4 places, none between.
    let dots: Vec<[u8; 3]> = serde_json::from_value(v["dots"].clone()).unwrap();
    assert_eq!(dots, [blue, blue, bg], "Braille drawn as dots");
    assert_eq!(colours("2,1"), [bg], "an empty cell");
}
