#!/usr/bin/env python3
"""Render a terminal capture with ANSI colours into a PNG, for README screenshots of the TUI.

    tmux capture-pane -e -p -N -t SESSION > shot.ansi
    python scripts/ansi2png.py shot.ansi shot.png [--font-size 28]

(-e keeps the colours, -N keeps trailing spaces.) Text is drawn by Pillow with a system monospace
font (DejaVu Sans Mono); box-drawing lines are drawn as lines so that borders join. SGR attributes
understood: reset, bold, dim, reverse, the 16 colours, 256-colour and truecolour, default colours;
other escape sequences are skipped. Braille (the charts' dots) is drawn as dots, which the font
lacks.
"""

import argparse
import re

from PIL import Image, ImageDraw, ImageFont

FONTS = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono{}.ttf"
FG, BG = (220, 223, 228), (24, 26, 31)
BASE16 = [(0, 0, 0), (205, 49, 49), (13, 188, 121), (229, 229, 16), (36, 114, 200), (188, 63, 188),
          (17, 168, 205), (229, 229, 229), (102, 102, 102), (241, 76, 76), (35, 209, 139),
          (245, 245, 67), (59, 142, 234), (214, 112, 214), (41, 184, 219), (255, 255, 255)]
# Box drawing: the arms (left, right, up, down) each character draws.
ARMS = {"─": "lr", "│": "ud", "╭": "rd", "╮": "ld", "╰": "ru", "╯": "lu", "┌": "rd", "┐": "ld",
        "└": "ru", "┘": "lu", "├": "udr", "┤": "udl", "┬": "lrd", "┴": "lru", "┼": "lrud"}


BRAILLE = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (0, 3), (1, 3)]


def palette(n):
    if n < 16:
        return BASE16[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return steps[n // 36], steps[n // 6 % 6], steps[n % 6]
    v = 8 + 10 * (n - 232)
    return v, v, v


def sgr(params, st):
    """Applies one SGR sequence's parameters to the state dict."""
    p = [int(x) if x else 0 for x in re.split("[;:]", params)] or [0]
    i = 0
    while i < len(p):
        c = p[i]
        if c == 0:
            st.update(fg=None, bg=None, bold=False, dim=False, rev=False)
        elif c == 1:
            st["bold"] = True
        elif c == 2:
            st["dim"] = True
        elif c == 22:
            st.update(bold=False, dim=False)
        elif c == 7:
            st["rev"] = True
        elif c == 27:
            st["rev"] = False
        elif 30 <= c <= 37 or 90 <= c <= 97:
            st["fg"] = BASE16[c - 30 if c < 90 else c - 82]
        elif 40 <= c <= 47 or 100 <= c <= 107:
            st["bg"] = BASE16[c - 40 if c < 100 else c - 92]
        elif c == 39:
            st["fg"] = None
        elif c == 49:
            st["bg"] = None
        elif c in (38, 48) and i + 1 < len(p):
            key = "fg" if c == 38 else "bg"
            if p[i + 1] == 5 and i + 2 < len(p):
                st[key] = palette(p[i + 2])
                i += 2
            elif p[i + 1] == 2 and i + 4 < len(p):
                st[key] = tuple(p[i + 2:i + 5])
                i += 4
        i += 1


def cells(text):
    """The screen as rows of (character, fg, bg, bold) cells."""
    st = dict(fg=None, bg=None, bold=False, dim=False, rev=False)
    rows = []
    for line in text.split("\n"):
        row = []
        for m in re.finditer(r"\x1b\[([0-9;:]*)([A-Za-z])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|([^\x1b])", line):
            if m.group(3) is not None:
                fg, bg = st["fg"] or FG, st["bg"] or BG
                if st["rev"]:
                    fg, bg = bg, fg
                if st["dim"]:
                    fg = tuple((a + b) // 2 for a, b in zip(fg, bg))
                row.append((m.group(3), fg, bg, st["bold"]))
            elif m.group(2) == "m":
                sgr(m.group(1), st)
        rows.append(row)
    while rows and not rows[-1]:
        rows.pop()
    return rows


def render(rows, size):
    font = ImageFont.truetype(FONTS.format(""), size)
    bold = ImageFont.truetype(FONTS.format("-Bold"), size)
    w = round(font.getlength("M"))
    h = round(size * 1.25)
    width = max((len(r) for r in rows), default=1)
    img = Image.new("RGB", (width * w, len(rows) * h), BG)
    d = ImageDraw.Draw(img)
    lw = max(1, size // 14)
    for y, row in enumerate(rows):
        for x, (ch, fg, bg, b) in enumerate(row):
            x0, y0 = x * w, y * h
            d.rectangle([x0, y0, x0 + w - 1, y0 + h - 1], fill=bg)
            if ch in ARMS:
                cx, cy = x0 + w // 2, y0 + h // 2
                ends = {"l": (x0, cy), "r": (x0 + w, cy), "u": (cx, y0), "d": (cx, y0 + h)}
                for a in ARMS[ch]:
                    d.line([(cx, cy), ends[a]], fill=fg, width=lw)
            elif 0x2801 <= ord(ch) <= 0x28FF:
                # Braille dots (the charts): bit k lights dot BRAILLE[k] (column, row) of 2 x 4.
                r = max(1, w // 6)
                for k, (c, rr) in enumerate(BRAILLE):
                    if (ord(ch) - 0x2800) >> k & 1:
                        cx, cy = x0 + w * (1 + 2 * c) // 4, y0 + h * (1 + 2 * rr) // 8
                        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
            elif ch != " ":
                d.text((x0, y0 + (h - size) // 2), ch, font=bold if b else font, fill=fg)
    return img


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--font-size", type=int, default=20)
    a = ap.parse_args()
    with open(a.input, encoding="utf-8", errors="replace") as f:
        rows = cells(f.read())
    render(rows, a.font_size).save(a.output, optimize=True)


if __name__ == "__main__":
    main()
