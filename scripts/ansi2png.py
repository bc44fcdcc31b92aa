#!/usr/bin/env python3
"""Render a terminal capture containing ANSI escape sequences into a PNG.

Meant for README screenshots of the TUI.  Capture a pane with

    tmux capture-pane -e -p -N -t SESSION > shot.ansi
    python3 scripts/ansi2png.py shot.ansi shot.png

(-e keeps the colours, -N keeps trailing spaces so that background colours
reaching the right edge survive).

Python 3 standard library only; no ImageMagick, PIL or other tool is needed.
Text is drawn with a small built-in TrueType rasteriser (default font: DejaVu
Sans Mono); box drawing (U+2500..U+257F), block elements (U+2580..U+259F) and
Braille patterns (U+2800..U+28FF) are drawn as pixel-aligned shapes so that
borders join seamlessly and chart dots are crisp.  The output is deterministic:
the same input and options give the same PNG bytes.

Supported SGR attributes: 0 reset, 1 bold, 2 dim, 3 italic, 4 underline
(and 4:N, 21), 7 reverse, 8 hidden, 9 strike-through, their resets
22/23/24/27/28/29, colours 30-37/90-97/40-47/100-107, 39/49 defaults,
38;5;N / 48;5;N (256-colour palette) and 38;2;R;G;B / 48;2;R;G;B (truecolour),
also in the colon sub-parameter form.  Other escape sequences (cursor movement,
OSC titles/hyperlinks, ...) are skipped; the input is taken to be a plain
line-by-line dump of the screen.
"""

import argparse
import math
import os
import struct
import sys
import time
import unicodedata
import zlib

FONT_DIRS = (
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/dejavu",
    "/usr/share/fonts/TTF",
    "/usr/local/share/fonts",
    "/Library/Fonts",
)
FONT_FILES = {
    "regular": "DejaVuSansMono.ttf",
    "bold": "DejaVuSansMono-Bold.ttf",
    "italic": "DejaVuSansMono-Oblique.ttf",
    "bolditalic": "DejaVuSansMono-BoldOblique.ttf",
    "fallback": "DejaVuSans.ttf",
    "fallbackbold": "DejaVuSans-Bold.ttf",
}

PALETTES = {
    # GNOME Terminal / Tango: readable on a dark background.
    "tango": "2e3436 cc0000 4e9a06 c4a000 3465a4 75507b 06989a d3d7cf "
    "555753 ef2929 8ae234 fce94f 729fcf ad7fa8 34e2e2 eeeeec",
    # xterm's built-in defaults.
    "xterm": "000000 cd0000 00cd00 cdcd00 0000ee cd00cd 00cdcd e5e5e5 "
    "7f7f7f ff0000 00ff00 ffff00 5c5cff ff00ff 00ffff ffffff",
    # Classic VGA text mode.
    "vga": "000000 aa0000 00aa00 aa5500 0000aa aa00aa 00aaaa aaaaaa "
    "555555 ff5555 55ff55 ffff55 5555ff ff55ff 55ffff ffffff",
}

# DEC special graphics (ESC ( 0), as used by some programs for line drawing.
DEC_GRAPHICS = dict(
    zip(
        "`afgjklmnopqrstuvwxyz{|}~",
        "◆▒°±┘┐┌└┼⎺⎻─⎼⎽├┤┴┬│≤≥π≠£·",
    )
)


class Fail(Exception):
    """An error reported as one line on stderr."""


# --------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------


def parse_hex(text):
    t = text.strip().lstrip("#")
    if len(t) == 3:
        t = "".join(c * 2 for c in t)
    if len(t) != 6:
        raise ValueError(text)
    return (int(t[0:2], 16), int(t[2:4], 16), int(t[4:6], 16))


def build_palette(base16):
    pal = list(base16)
    levels = (0, 95, 135, 175, 215, 255)
    for r in range(6):
        for g in range(6):
            for b in range(6):
                pal.append((levels[r], levels[g], levels[b]))
    for i in range(24):
        v = 8 + 10 * i
        pal.append((v, v, v))
    return pal


def mix(a, b, t):
    """a*(1-t) + b*t per channel."""
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))


# --------------------------------------------------------------------------
# ANSI parsing
# --------------------------------------------------------------------------

# Style tuple fields.
FG, BG, BOLD, DIM, ITALIC, UNDER, REVERSE, HIDDEN, STRIKE = range(9)
DEFAULT_STYLE = (None, None, False, False, False, False, False, False, False)


def _int(s, default=0):
    try:
        return int(s) if s != "" else default
    except ValueError:
        return default


def _extended_colour(args):
    """args: ['5', N] or ['2', R, G, B] (colon form may have a colour-space id)."""
    if not args:
        return None, 0
    kind = args[0]
    if kind == "5" and len(args) >= 2:
        n = _int(args[1], -1)
        return (("i", n) if 0 <= n <= 255 else None), 2
    if kind == "2" and len(args) >= 4:
        r, g, b = (max(0, min(255, _int(x))) for x in args[1:4])
        return ("rgb", r, g, b), 4
    return None, len(args)


def apply_sgr(style, params):
    s = list(style)
    parts = params.split(";") if params else ["0"]
    i = 0
    while i < len(parts):
        p = parts[i]
        i += 1
        if ":" in p:
            sub = p.split(":")
            head = _int(sub[0])
            if head in (38, 48, 58):
                args = sub[1:]
                if args and args[0] == "2" and len(args) >= 5:
                    args = ["2"] + args[2:5]  # 38:2:CS:R:G:B
                col, _ = _extended_colour(args)
                if head == 38 and col is not None:
                    s[FG] = col
                elif head == 48 and col is not None:
                    s[BG] = col
            elif head == 4:
                s[UNDER] = _int(sub[1] if len(sub) > 1 else "1", 1) != 0
            continue
        n = _int(p)
        if n == 0:
            s = list(DEFAULT_STYLE)
        elif n == 1:
            s[BOLD] = True
        elif n == 2:
            s[DIM] = True
        elif n == 3:
            s[ITALIC] = True
        elif n in (4, 21):
            s[UNDER] = True
        elif n == 7:
            s[REVERSE] = True
        elif n == 8:
            s[HIDDEN] = True
        elif n == 9:
            s[STRIKE] = True
        elif n == 22:
            s[BOLD] = s[DIM] = False
        elif n == 23:
            s[ITALIC] = False
        elif n == 24:
            s[UNDER] = False
        elif n == 27:
            s[REVERSE] = False
        elif n == 28:
            s[HIDDEN] = False
        elif n == 29:
            s[STRIKE] = False
        elif 30 <= n <= 37:
            s[FG] = ("i", n - 30)
        elif 40 <= n <= 47:
            s[BG] = ("i", n - 40)
        elif 90 <= n <= 97:
            s[FG] = ("i", n - 90 + 8)
        elif 100 <= n <= 107:
            s[BG] = ("i", n - 100 + 8)
        elif n == 39:
            s[FG] = None
        elif n == 49:
            s[BG] = None
        elif n in (38, 48, 58):
            col, used = _extended_colour(parts[i:])
            i += used
            if n == 38 and col is not None:
                s[FG] = col
            elif n == 48 and col is not None:
                s[BG] = col
        # everything else (blink, fonts, overline, ...) is ignored
    return tuple(s)


def char_width(ch):
    if unicodedata.east_asian_width(ch) in ("W", "F"):
        return 2
    return 1


def is_zero_width(ch):
    o = ord(ch)
    if o in (0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF) or 0xFE00 <= o <= 0xFE0F:
        return True
    return unicodedata.combining(ch) != 0 or unicodedata.category(ch) in ("Mn", "Me")


def parse_ansi(text):
    """Return a list of rows; each row is a list of cells or None (blank).

    A cell is [text, style, width]; the column after a wide character holds
    the marker "cont" (carrying its style for the background).
    """
    rows = [[]]
    row = rows[0]
    col = 0
    style = DEFAULT_STYLE
    g = ["B", "B"]  # G0/G1 character sets
    shift = 0
    i = 0
    n = len(text)

    def put(cell, c):
        while len(row) <= c:
            row.append(None)
        row[c] = cell

    while i < n:
        ch = text[i]
        i += 1
        if ch == "\x1b":
            if i >= n:
                break
            k = text[i]
            i += 1
            if k == "[":  # CSI
                j = i
                while j < n and "\x30" <= text[j] <= "\x3f":
                    j += 1
                params = text[i:j]
                while j < n and "\x20" <= text[j] <= "\x2f":
                    j += 1
                final = text[j] if j < n else ""
                i = j + 1
                if final == "m" and not params.startswith(("<", "=", ">", "?")):
                    style = apply_sgr(style, params)
            elif k in "]P^_X":  # OSC / DCS / PM / APC: skip to BEL or ST
                while i < n:
                    if text[i] == "\x07":
                        i += 1
                        break
                    if text[i] == "\x1b" and i + 1 < n and text[i + 1] == "\\":
                        i += 2
                        break
                    i += 1
            elif k in "()":
                if i < n:
                    g[0 if k == "(" else 1] = text[i]
                    i += 1
            elif k in "*+-./#%":
                i += 1  # other charset designations: skip one byte
            # any other two-byte escape is ignored
            continue
        if ch == "\n":
            rows.append([])
            row = rows[-1]
            col = 0
            continue
        if ch == "\r":
            col = 0
            continue
        if ch == "\t":
            col = (col // 8 + 1) * 8
            continue
        if ch == "\b":
            col = max(0, col - 1)
            continue
        if ch == "\x0e":
            shift = 1
            continue
        if ch == "\x0f":
            shift = 0
            continue
        if ch < " " or ch == "\x7f" or "\x80" <= ch <= "\x9f":
            continue
        if g[shift] == "0":
            ch = DEC_GRAPHICS.get(ch, ch)
        if is_zero_width(ch):
            # attach combining marks to the previous character
            c = col - 1
            while c >= 0 and c < len(row) and row[c] == "cont":
                c -= 1
            if 0 <= c < len(row) and isinstance(row[c], list):
                row[c][0] += ch
            continue
        w = char_width(ch)
        put([ch, style, w], col)
        if w == 2:
            put("cont", col + 1)
        col += w
    if text.endswith("\n") and rows and not rows[-1]:
        rows.pop()
    return rows


# --------------------------------------------------------------------------
# TrueType font reading and rasterising
# --------------------------------------------------------------------------


class TrueTypeFont:
    def __init__(self, path):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise Fail("cannot read font %s: %s" % (path, e.strerror))
        self.path = path
        self.data = data
        try:
            self._parse()
        except (struct.error, IndexError, KeyError) as e:
            raise Fail("cannot parse font %s (%s)" % (path, e))
        self._outlines = {}

    def _parse(self):
        d = self.data
        base = 0
        if d[:4] == b"ttcf":
            base = struct.unpack_from(">I", d, 12)[0]
        ver, ntab = struct.unpack_from(">IH", d, base)
        if ver not in (0x00010000, 0x74727565):
            raise Fail("%s: not a TrueType outline font (CFF .otf is not supported)" % self.path)
        tabs = {}
        for k in range(ntab):
            tag, _cs, off, ln = struct.unpack_from(">4sIII", d, base + 12 + 16 * k)
            tabs[tag] = (off, ln)
        for need in (b"head", b"hhea", b"hmtx", b"maxp", b"loca", b"glyf", b"cmap"):
            if need not in tabs:
                raise Fail("%s: no %s table" % (self.path, need.decode()))
        head = tabs[b"head"][0]
        self.upem = struct.unpack_from(">H", d, head + 18)[0]
        loca_long = struct.unpack_from(">h", d, head + 50)[0] == 1
        hhea = tabs[b"hhea"][0]
        self.ascender, self.descender, self.line_gap = struct.unpack_from(">hhh", d, hhea + 4)
        nhm = struct.unpack_from(">H", d, hhea + 34)[0]
        self.num_glyphs = struct.unpack_from(">H", d, tabs[b"maxp"][0] + 4)[0]
        hm = tabs[b"hmtx"][0]
        adv = list(struct.unpack_from(">%dH" % (2 * nhm), d, hm)[0::2])
        adv += [adv[-1]] * (self.num_glyphs - nhm)
        self.advances = adv
        lo = tabs[b"loca"][0]
        if loca_long:
            self.loca = struct.unpack_from(">%dI" % (self.num_glyphs + 1), d, lo)
        else:
            self.loca = [2 * v for v in struct.unpack_from(">%dH" % (self.num_glyphs + 1), d, lo)]
        self.glyf = tabs[b"glyf"][0]
        self.cmap = self._parse_cmap(tabs[b"cmap"][0])
        # decorations (font units, y up)
        self.underline_pos, self.underline_thick = -self.upem // 10, self.upem // 16
        if b"post" in tabs:
            self.underline_pos, self.underline_thick = struct.unpack_from(">hh", d, tabs[b"post"][0] + 8)
        self.strike_pos, self.strike_thick = self.upem * 3 // 10, self.underline_thick
        if b"OS/2" in tabs and tabs[b"OS/2"][1] >= 30:
            self.strike_thick, self.strike_pos = struct.unpack_from(">hh", d, tabs[b"OS/2"][0] + 26)

    def _parse_cmap(self, off):
        d = self.data
        _v, n = struct.unpack_from(">HH", d, off)
        subs = []
        for k in range(n):
            pid, eid, so = struct.unpack_from(">HHI", d, off + 4 + 8 * k)
            fmt = struct.unpack_from(">H", d, off + so)[0]
            rank = {(3, 10, 12): 0, (0, 4, 12): 1, (0, 6, 12): 1, (3, 1, 4): 2, (0, 3, 4): 3}.get(
                (pid, eid, fmt), 4 if fmt in (4, 12) and pid in (0, 3) else 9
            )
            subs.append((rank, off + so, fmt))
        subs.sort()
        if not subs or subs[0][0] == 9:
            raise Fail("%s: no usable Unicode cmap" % self.path)
        _r, so, fmt = subs[0]
        cmap = {}
        if fmt == 12:
            ngroups = struct.unpack_from(">I", d, so + 12)[0]
            for k in range(ngroups):
                start, end, gid = struct.unpack_from(">III", d, so + 16 + 12 * k)
                for c in range(start, end + 1):
                    cmap[c] = gid + c - start
        else:
            segx2 = struct.unpack_from(">H", d, so + 6)[0]
            segs = segx2 // 2
            ends = struct.unpack_from(">%dH" % segs, d, so + 14)
            starts = struct.unpack_from(">%dH" % segs, d, so + 16 + segx2)
            deltas = struct.unpack_from(">%dh" % segs, d, so + 16 + 2 * segx2)
            ro_pos = so + 16 + 3 * segx2
            ros = struct.unpack_from(">%dH" % segs, d, ro_pos)
            for k in range(segs):
                for c in range(starts[k], ends[k] + 1):
                    if c == 0xFFFF:
                        continue
                    if ros[k] == 0:
                        gid = (c + deltas[k]) & 0xFFFF
                    else:
                        addr = ro_pos + 2 * k + ros[k] + 2 * (c - starts[k])
                        gid = struct.unpack_from(">H", d, addr)[0]
                        if gid:
                            gid = (gid + deltas[k]) & 0xFFFF
                    if gid:
                        cmap[c] = gid
        return cmap

    def glyph_id(self, ch):
        return self.cmap.get(ord(ch), 0)

    def contours(self, gid, depth=0):
        if gid in self._outlines:
            return self._outlines[gid]
        res = self._read_contours(gid, depth)
        self._outlines[gid] = res
        return res

    def _read_contours(self, gid, depth):
        if gid >= self.num_glyphs or depth > 8:
            return []
        d = self.data
        start, end = self.loca[gid], self.loca[gid + 1]
        if end <= start:
            return []
        p = self.glyf + start
        ncont = struct.unpack_from(">h", d, p)[0]
        if ncont >= 0:
            end_pts = struct.unpack_from(">%dH" % ncont, d, p + 10)
            npts = end_pts[-1] + 1 if ncont else 0
            q = p + 10 + 2 * ncont
            q += 2 + struct.unpack_from(">H", d, q)[0]
            flags = []
            while len(flags) < npts:
                f = d[q]
                q += 1
                flags.append(f)
                if f & 8:
                    flags.extend([f] * d[q])
                    q += 1
            flags = flags[:npts]
            coords = []
            for short_bit, same_bit in ((2, 16), (4, 32)):
                v = 0
                vals = []
                for f in flags:
                    if f & short_bit:
                        dv = d[q]
                        q += 1
                        v += dv if f & same_bit else -dv
                    elif not f & same_bit:
                        v += struct.unpack_from(">h", d, q)[0]
                        q += 2
                    vals.append(v)
                coords.append(vals)
            xs, ys = coords
            out = []
            s = 0
            for e in end_pts:
                out.append([(xs[k], ys[k], flags[k] & 1) for k in range(s, e + 1)])
                s = e + 1
            return out
        # composite glyph
        out = []
        q = p + 10
        while True:
            flags, cg = struct.unpack_from(">HH", d, q)
            q += 4
            xy = flags & 2
            if flags & 1:
                a1, a2 = struct.unpack_from(">hh" if xy else ">HH", d, q)
                q += 4
            else:
                a1, a2 = struct.unpack_from(">bb" if xy else ">BB", d, q)
                q += 2
            a, b, c, e = 1.0, 0.0, 0.0, 1.0
            if flags & 8:
                a = e = struct.unpack_from(">h", d, q)[0] / 16384.0
                q += 2
            elif flags & 0x40:
                a, e = (v / 16384.0 for v in struct.unpack_from(">hh", d, q))
                q += 4
            elif flags & 0x80:
                a, b, c, e = (v / 16384.0 for v in struct.unpack_from(">hhhh", d, q))
                q += 8
            dx, dy = (a1, a2) if xy else (0, 0)
            for cont in self.contours(cg, depth + 1):
                out.append([(a * x + c * y + dx, b * x + e * y + dy, on) for x, y, on in cont])
            if not flags & 0x20:
                break
        return out


def _flatten(contours, scale, ox, oy):
    """Outline -> list of line segments in pixel space (y down)."""
    lines = []
    for cont in contours:
        pts = [(ox + x * scale, oy - y * scale, on) for x, y, on in cont]
        if len(pts) < 2:
            continue
        first_on = next((k for k, p in enumerate(pts) if p[2]), None)
        if first_on is None:
            a, b = pts[0], pts[-1]
            pts = [((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, 1)] + pts
        else:
            pts = pts[first_on:] + pts[:first_on]
        start = pts[0]
        cur = (start[0], start[1])
        ctrl = None

        def quad(p0, p1, p2):
            ddx = p0[0] - 2 * p1[0] + p2[0]
            ddy = p0[1] - 2 * p1[1] + p2[1]
            nseg = 1 + int(math.sqrt(math.sqrt(3.0 * (ddx * ddx + ddy * ddy))))
            prev = p0
            for k in range(1, nseg + 1):
                t = k / nseg
                mt = 1 - t
                pt = (
                    mt * mt * p0[0] + 2 * mt * t * p1[0] + t * t * p2[0],
                    mt * mt * p0[1] + 2 * mt * t * p1[1] + t * t * p2[1],
                )
                lines.append((prev, pt))
                prev = pt

        for p in pts[1:] + [start]:
            xy = (p[0], p[1])
            if p[2]:
                if ctrl is None:
                    lines.append((cur, xy))
                else:
                    quad(cur, ctrl, xy)
                    ctrl = None
                cur = xy
            elif ctrl is None:
                ctrl = xy
            else:
                mid = ((ctrl[0] + xy[0]) / 2, (ctrl[1] + xy[1]) / 2)
                quad(cur, ctrl, mid)
                cur = mid
                ctrl = xy
    return lines


def rasterize(lines, w, h):
    """Signed-area accumulation rasteriser (as in font-rs); returns w*h coverage floats."""
    stride = w + 3
    acc = [0.0] * (stride * h + 3)
    for (x0, y0), (x1, y1) in lines:
        if y0 == y1:
            continue
        x0 = min(max(x0, 0.0), w - 1e-3)
        x1 = min(max(x1, 0.0), w - 1e-3)
        if y0 < y1:
            direction = 1.0
        else:
            direction = -1.0
            x0, y0, x1, y1 = x1, y1, x0, y0
        dxdy = (x1 - x0) / (y1 - y0)
        x = x0
        if y0 < 0:
            x -= y0 * dxdy
        ystart = max(0, int(y0))
        yend = min(h, int(math.ceil(y1)))
        for y in range(ystart, yend):
            line = y * stride
            dy = min(y + 1.0, y1) - max(float(y), y0)
            xnext = x + dxdy * dy
            dd = dy * direction
            xa, xb = (x, xnext) if x < xnext else (xnext, x)
            xaf = math.floor(xa)
            xai = int(xaf)
            xbc = math.ceil(xb)
            xbi = int(xbc)
            base = line + xai
            if xbi <= xai + 1:
                xmf = 0.5 * (x + xnext) - xaf
                acc[base] += dd - dd * xmf
                acc[base + 1] += dd * xmf
            else:
                s = 1.0 / (xb - xa)
                x0f = xa - xaf
                a0 = 0.5 * s * (1.0 - x0f) * (1.0 - x0f)
                x1f = xb - xbc + 1.0
                am = 0.5 * s * x1f * x1f
                acc[base] += dd * a0
                if xbi == xai + 2:
                    acc[base + 1] += dd * (1.0 - a0 - am)
                else:
                    a1 = s * (1.5 - x0f)
                    acc[base + 1] += dd * (a1 - a0)
                    for xi in range(xai + 2, xbi - 1):
                        acc[line + xi] += dd * s
                    a2 = a1 + (xbi - xai - 3) * s
                    acc[line + xbi - 1] += dd * (1.0 - a2 - am)
                acc[line + xbi] += dd * am
            x = xnext
    out = [0.0] * (w * h)
    total = 0.0
    for y in range(h):
        line = y * stride
        row = y * w
        for xi in range(w):
            total += acc[line + xi]
            v = total if total >= 0 else -total
            out[row + xi] = 1.0 if v > 1.0 else v
        for xi in range(w, stride):  # keep the running sum consistent
            total += acc[line + xi]
        total = 0.0
    return out


# --------------------------------------------------------------------------
# Procedural glyphs: box drawing, blocks, braille
# --------------------------------------------------------------------------

# Box drawing U+2500..U+257F as arms (up, right, down, left):
# 0 none, 1 light, 2 heavy, 3 double.
_BOX = {}
for _cp, _code in zip(range(0x2500, 0x2504), ("0101", "0202", "1010", "2020")):
    _BOX[_cp] = _code
for _k, _code in enumerate(
    "0110 0210 0120 0220 0011 0012 0021 0022 1100 1200 2100 2200 1001 1002 2001 2002 "
    "1110 1210 2110 1120 2120 2210 1220 2220 1011 1012 2011 1021 2021 2012 1022 2022 "
    "0111 0112 0211 0212 0121 0122 0221 0222 1101 1102 1201 1202 2101 2102 2201 2202 "
    "1111 1112 1211 1212 2111 1121 2121 2112 2211 1122 1221 2212 1222 2122 2221 2222".split()
):
    _BOX[0x250C + _k] = _code
for _k, _code in enumerate(
    "0303 3030 0310 0130 0330 0013 0031 0033 1300 3100 3300 1003 3001 3003 "
    "1310 3130 3330 1013 3031 3033 0313 0131 0333 1303 3101 3303 1313 3131 3333".split()
):
    _BOX[0x2550 + _k] = _code
for _k, _code in enumerate("0001 1000 0100 0010 0002 2000 0200 0020 0201 1020 0102 2010".split()):
    _BOX[0x2574 + _k] = _code
# dashed lines: code point -> (vertical?, heavy?, dashes)
_DASHES = {
    0x2504: (False, False, 3), 0x2505: (False, True, 3), 0x2506: (True, False, 3), 0x2507: (True, True, 3),
    0x2508: (False, False, 4), 0x2509: (False, True, 4), 0x250A: (True, False, 4), 0x250B: (True, True, 4),
    0x254C: (False, False, 2), 0x254D: (False, True, 2), 0x254E: (True, False, 2), 0x254F: (True, True, 2),
}
_ARCS = {0x256D: "DR", 0x256E: "DL", 0x256F: "UL", 0x2570: "UR"}
_QUADS = {  # U+2596..U+259F: (UL, UR, LL, LR)
    0x2596: (0, 0, 1, 0), 0x2597: (0, 0, 0, 1), 0x2598: (1, 0, 0, 0), 0x2599: (1, 0, 1, 1),
    0x259A: (1, 0, 0, 1), 0x259B: (1, 1, 1, 0), 0x259C: (1, 1, 0, 1), 0x259D: (0, 1, 0, 0),
    0x259E: (0, 1, 1, 0), 0x259F: (0, 1, 1, 1),
}


def is_procedural(ch):
    if len(ch) != 1:
        return False
    o = ord(ch)
    return (o in _BOX or o in _DASHES or o in _ARCS or 0x2571 <= o <= 0x2573
            or 0x2580 <= o <= 0x259F or 0x2800 <= o <= 0x28FF)


class Canvas:
    """A small float coverage buffer."""

    def __init__(self, w, h):
        self.w, self.h = w, h
        self.a = [0.0] * (w * h)

    def rect(self, x0, y0, x1, y1, alpha=1.0):
        x0, x1 = max(0, int(x0)), min(self.w, int(x1))
        y0, y1 = max(0, int(y0)), min(self.h, int(y1))
        a = self.a
        for y in range(y0, y1):
            r = y * self.w
            for x in range(x0, x1):
                if a[r + x] < alpha:
                    a[r + x] = alpha

    def shape(self, inside, ss=4):
        """Anti-aliased shape from a predicate over sub-pixel sample points."""
        inv = 1.0 / ss
        off = [(k + 0.5) * inv for k in range(ss)]
        a = self.a
        for y in range(self.h):
            for x in range(self.w):
                hits = 0
                for fy in off:
                    for fx in off:
                        if inside(x + fx, y + fy):
                            hits += 1
                if hits:
                    v = hits / (ss * ss)
                    k = y * self.w + x
                    if a[k] < v:
                        a[k] = v


def draw_procedural(ch, w, h, t):
    """Coverage for box/block/braille char in a w*h cell; t = light line width."""
    o = ord(ch)
    cv = Canvas(w, h)
    T = 2 * t  # heavy
    if 0x2800 <= o <= 0x28FF:
        bits = o - 0x2800
        # dot -> (col, row): bits 0..7 = dots 1,2,3,4,5,6,7,8
        pos = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (0, 3), (1, 3))
        sw, sh = w / 2.0, h / 4.0
        ds = max(1, int(round(min(sw, sh) * 0.55)))
        for k, (cx, cy) in enumerate(pos):
            if bits & (1 << k):
                x0 = int(round(cx * sw + (sw - ds) / 2.0))
                y0 = int(round(cy * sh + (sh - ds) / 2.0))
                cv.rect(x0, y0, x0 + ds, y0 + ds)
        return cv
    if 0x2580 <= o <= 0x259F:
        def ry(f):
            return int(round(h * f))

        def rx(f):
            return int(round(w * f))

        if o == 0x2580:
            cv.rect(0, 0, w, ry(0.5))
        elif 0x2581 <= o <= 0x2588:
            cv.rect(0, h - ry((o - 0x2580) / 8.0), w, h)
        elif 0x2589 <= o <= 0x258F:
            cv.rect(0, 0, rx((0x2590 - o) / 8.0), h)
        elif o == 0x2590:
            cv.rect(rx(0.5), 0, w, h)
        elif 0x2591 <= o <= 0x2593:
            cv.rect(0, 0, w, h, (o - 0x2590) * 0.25)
        elif o == 0x2594:
            cv.rect(0, 0, w, ry(1 / 8.0))
        elif o == 0x2595:
            cv.rect(w - rx(1 / 8.0), 0, w, h)
        else:
            ul, ur, ll, lr = _QUADS[o]
            mx, my = rx(0.5), ry(0.5)
            if ul:
                cv.rect(0, 0, mx, my)
            if ur:
                cv.rect(mx, 0, w, my)
            if ll:
                cv.rect(0, my, mx, h)
            if lr:
                cv.rect(mx, my, w, h)
        return cv

    X1 = (w - t) // 2  # light vertical line occupies [X1, X1+t)
    Y1 = (h - t) // 2  # light horizontal line occupies [Y1, Y1+t)
    XA, XB = X1 - t, X1 + t  # double rails
    YA, YB = Y1 - t, Y1 + t

    if o in _DASHES:
        vert, heavy, nd = _DASHES[o]
        th = T if heavy else t
        length = h if vert else w
        seg = length / float(nd)
        for k in range(nd):
            a = int(round(k * seg + seg * 0.2))
            b = int(round(k * seg + seg * 0.8))
            if vert:
                x0 = (w - th) // 2
                cv.rect(x0, a, x0 + th, b)
            else:
                y0 = (h - th) // 2
                cv.rect(a, y0, b, y0 + th)
        return cv
    if o in _ARCS:
        d = _ARCS[o]
        cx, cy = X1 + t / 2.0, Y1 + t / 2.0
        r = max(1.0, min(cx, w - cx, cy, h - cy))
        sx = 1 if "R" in d else -1
        sy = 1 if "D" in d else -1
        ax, ay = cx + sx * r, cy + sy * r  # arc centre
        # straight parts from the arc ends to the cell edges
        if sy > 0:
            cv.rect(X1, int(round(ay)), X1 + t, h)
        else:
            cv.rect(X1, 0, X1 + t, int(round(ay)))
        if sx > 0:
            cv.rect(int(round(ax)), Y1, w, Y1 + t)
        else:
            cv.rect(0, Y1, int(round(ax)), Y1 + t)
        half = t / 2.0

        def inside(px, py):
            # only the quadrant of the circle facing the cell centre
            if (px - ax) * sx > 0 or (py - ay) * sy > 0:
                return False
            dist = math.hypot(px - ax, py - ay)
            return abs(dist - r) <= half

        cv.shape(inside)
        return cv
    if 0x2571 <= o <= 0x2573:
        half = t * 0.75
        norm = math.hypot(w, h)

        def inside(px, py):
            res = False
            if o in (0x2571, 0x2573):  # from (w,0) to (0,h)
                res = abs(px * h + py * w - w * h) / norm <= half
            if o in (0x2572, 0x2573) and not res:
                res = abs(px * h - py * w) / norm <= half
            return res

        cv.shape(inside)
        return cv

    U, R, D, L = (int(c) for c in _BOX[o])

    def th(wt):
        return T if wt == 2 else t

    def vx(wt):  # left x of a single/heavy vertical line
        return (w - th(wt)) // 2

    def hy(wt):  # top y of a single/heavy horizontal line
        return (h - th(wt)) // 2

    # --- horizontal arms ---
    for arm, wt in (("R", R), ("L", L)):
        if not wt:
            continue
        right = arm == "R"
        if wt in (1, 2):
            if not U and not D:
                x_in = vx(wt) if right else vx(wt) + th(wt)
            elif 3 in (U, D):
                if U == 3 and D == 3:
                    x_in = XB if right else XA + t  # near rail
                else:
                    x_in = XA if right else XB + t  # far rail
            else:
                m = max(U, D)
                x_in = vx(m) if right else vx(m) + th(m)
            y0 = hy(wt)
            if right:
                cv.rect(x_in, y0, w, y0 + th(wt))
            else:
                cv.rect(0, y0, x_in, y0 + th(wt))
        else:  # double: two rails
            for y0, side, opp in ((YA, U, D), (YB, D, U)):
                if side == 3:
                    x_in = XB if right else XA + t
                elif side:
                    x_in = X1 if right else X1 + t
                elif opp == 3:
                    x_in = XA if right else XB + t
                else:
                    x_in = X1 if right else X1 + t
                if right:
                    cv.rect(x_in, y0, w, y0 + t)
                else:
                    cv.rect(0, y0, x_in, y0 + t)
    # --- vertical arms ---
    for arm, wt in (("D", D), ("U", U)):
        if not wt:
            continue
        down = arm == "D"
        if wt in (1, 2):
            if not L and not R:
                y_in = hy(wt) if down else hy(wt) + th(wt)
            elif 3 in (L, R):
                if L == 3 and R == 3:
                    y_in = YB if down else YA + t
                else:
                    y_in = YA if down else YB + t
            else:
                m = max(L, R)
                y_in = hy(m) if down else hy(m) + th(m)
            x0 = vx(wt)
            if down:
                cv.rect(x0, y_in, x0 + th(wt), h)
            else:
                cv.rect(x0, 0, x0 + th(wt), y_in)
        else:
            for x0, side, opp in ((XA, L, R), (XB, R, L)):
                if side == 3:
                    y_in = YB if down else YA + t
                elif side:
                    y_in = Y1 if down else Y1 + t
                elif opp == 3:
                    y_in = YA if down else YB + t
                else:
                    y_in = Y1 if down else Y1 + t
                if down:
                    cv.rect(x0, y_in, x0 + t, h)
                else:
                    cv.rect(x0, 0, x0 + t, y_in)
    return cv


# --------------------------------------------------------------------------
# Renderer
# --------------------------------------------------------------------------


class Renderer:
    def __init__(self, fonts, font_size, line_height):
        self.fonts = fonts  # dict name -> TrueTypeFont or None
        reg = fonts["regular"]
        self.size = float(font_size)
        self.scale = self.size / reg.upem
        adv = reg.advances[reg.glyph_id("M")] or reg.advances[0]
        self.adv_px = adv * self.scale
        self.cell_w = max(1, int(round(self.adv_px)))
        natural = (reg.ascender - reg.descender + reg.line_gap) * self.scale
        self.cell_h = max(1, int(round(natural * line_height)))
        extra = self.cell_h - (reg.ascender - reg.descender) * self.scale
        self.baseline = int(round(reg.ascender * self.scale + extra / 2.0))
        self.line_w = max(1, int(round(self.size / 14.0)))
        self.underline_y = self.baseline + max(1, int(round(-reg.underline_pos * self.scale)))
        self.underline_t = max(1, int(round(reg.underline_thick * self.scale)))
        self.strike_t = max(1, int(round(reg.strike_thick * self.scale)))
        self.strike_y = self.baseline - int(round(reg.strike_pos * self.scale)) - self.strike_t // 2
        self.pad_x = self.cell_w
        self.pad_y = self.cell_h // 2
        self.stride_px = 0  # bytes/3 per canvas row; set before calling mask()
        self._cache = {}

    def _font_for(self, text, bold, italic):
        name = ("bold" if bold else "") + ("italic" if italic else "") or "regular"
        order = [name, "bold" if bold else "regular", "regular",
                 "fallbackbold" if bold else "fallback", "fallback"]
        base = text[0]
        for nm in order:
            f = self.fonts.get(nm)
            if f is not None and f.glyph_id(base):
                return f
        return self.fonts.get(name) or self.fonts["regular"]

    def mask(self, text, width, bold, italic):
        """List of (byte offset relative to cell origin, alpha 1..255)."""
        key = (text, width, bold, italic)
        m = self._cache.get(key)
        if m is not None:
            return m
        cw = self.cell_w * width
        if is_procedural(text):
            cv = draw_procedural(text, cw, self.cell_h, self.line_w)
            cov, mw, mh, ox, oy = cv.a, cv.w, cv.h, 0, 0
        else:
            mw = cw + 2 * self.pad_x
            mh = self.cell_h + 2 * self.pad_y
            lines = []
            x_org = base_adv = 0.0
            for k, ch in enumerate(text):
                font = self._font_for(ch if k else text, bold, italic)
                gid = font.glyph_id(ch)
                scale = self.size / font.upem
                adv = font.advances[gid] * scale
                if k == 0:
                    if adv > cw * 1.05:  # too wide for its cell(s): shrink to fit
                        scale *= cw / adv
                        adv = cw
                    x_org = self.pad_x + (cw - adv) / 2.0
                    base_adv = adv
                    gx = x_org
                else:
                    # combining mark: zero-advance marks hang left of the pen
                    # position after the base; spacing ones overlay the base
                    gx = x_org + base_adv if adv == 0 else x_org
                lines.extend(_flatten(font.contours(gid), scale, gx, self.pad_y + self.baseline))
            cov = rasterize(lines, mw, mh)
            ox, oy = -self.pad_x, -self.pad_y
        out = []
        sp = self.stride_px
        for y in range(mh):
            r = y * mw
            for x in range(mw):
                v = cov[r + x]
                if v > 0.002:
                    a = int(v * 255 + 0.5)
                    if a:
                        out.append((((y + oy) * sp + (x + ox)) * 3, a))
        self._cache[key] = out
        return out


def resolve(colour, palette, default):
    if colour is None:
        return default
    if colour[0] == "i":
        return palette[colour[1]]
    return colour[1:]


def render(rows, args, fonts):
    cols = args.cols or max([len(r) for r in rows] + [1])
    nrows = args.rows or max(len(rows), 1)
    rows = (rows + [[] for _ in range(nrows)])[:nrows]
    pad = args.padding
    rnd = Renderer(fonts, args.font_size, args.line_height)
    margin_x, margin_y = rnd.pad_x, rnd.pad_y
    img_w = cols * rnd.cell_w + 2 * pad
    img_h = nrows * rnd.cell_h + 2 * pad
    cw = img_w + 2 * margin_x  # working canvas has an extra margin for overflow
    ch = img_h + 2 * margin_y
    rnd.stride_px = cw
    cell_w, cell_h = rnd.cell_w, rnd.cell_h
    dfg, dbg = args.fg, args.bg
    palette = args.palette
    img = bytearray(bytes(dbg) * (cw * ch))
    x_base = margin_x + pad
    y_base = margin_y + pad

    def fill(x0, y0, x1, y1, rgb):
        pix = bytes(rgb) * (x1 - x0)
        for y in range(y0, y1):
            k = (y * cw + x0) * 3
            img[k:k + len(pix)] = pix

    # resolve every cell's colours once
    grid = []
    for r in range(nrows):
        row = rows[r]
        line = []
        prev_style = DEFAULT_STYLE
        for c in range(cols):
            cell = row[c] if c < len(row) else None
            if cell == "cont":
                line.append(("cont", prev_style, 1))
                continue
            if cell is None:
                line.append((" ", DEFAULT_STYLE, 1))
                continue
            text, style, width = cell
            if c + width > cols:
                width = 1
            prev_style = style
            line.append((text, style, width))
        resolved = []
        for text, style, width in line:
            fg = resolve(style[FG], palette, dfg)
            bg = resolve(style[BG], palette, dbg)
            if style[REVERSE]:
                fg, bg = bg, fg
            if style[DIM]:
                fg = mix(fg, bg, 0.4)
            resolved.append((text, style, width, fg, bg))
        grid.append(resolved)

    # pass 1: backgrounds, in runs
    for r, line in enumerate(grid):
        y0 = y_base + r * cell_h
        c = 0
        while c < cols:
            bg = line[c][4]
            e = c + 1
            while e < cols and line[e][4] == bg:
                e += 1
            if bg != dbg:
                fill(x_base + c * cell_w, y0, x_base + e * cell_w, y0 + cell_h, bg)
            c = e

    # pass 2: glyphs and decorations
    def blit(m, origin, rgb):
        fr, fg_, fb = rgb
        for off, a in m:
            k = origin + off
            if a >= 255:
                img[k] = fr
                img[k + 1] = fg_
                img[k + 2] = fb
            else:
                na = 255 - a
                img[k] = (img[k] * na + fr * a + 127) // 255
                img[k + 1] = (img[k + 1] * na + fg_ * a + 127) // 255
                img[k + 2] = (img[k + 2] * na + fb * a + 127) // 255

    for r, line in enumerate(grid):
        y0 = y_base + r * cell_h
        for c, (text, style, width, fg, bg) in enumerate(line):
            if text == "cont":
                continue
            x0 = x_base + c * cell_w
            if style[HIDDEN]:
                continue
            if text != " ":
                m = rnd.mask(text, width, style[BOLD], style[ITALIC])
                blit(m, (y0 * cw + x0) * 3, fg)
            if style[UNDER]:
                yy = min(y0 + rnd.underline_y, y0 + cell_h - rnd.underline_t)
                fill(x0, yy, x0 + width * cell_w, yy + rnd.underline_t, fg)
            if style[STRIKE]:
                yy = y0 + rnd.strike_y
                fill(x0, yy, x0 + width * cell_w, yy + rnd.strike_t, fg)

    # crop the margin and encode
    raw = bytearray()
    row_bytes = img_w * 3
    for y in range(margin_y, margin_y + img_h):
        k = (y * cw + margin_x) * 3
        raw.append(0)
        raw += img[k:k + row_bytes]
    return img_w, img_h, bytes(raw), (cols, nrows, cell_w, cell_h)


def png_bytes(w, h, raw):
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def find_font(explicit, key):
    if explicit:
        if not os.path.isfile(explicit):
            raise Fail("font not found: %s" % explicit)
        return explicit
    for d in FONT_DIRS:
        p = os.path.join(d, FONT_FILES[key])
        if os.path.isfile(p):
            return p
    return None


def colour_arg(text):
    try:
        return parse_hex(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a #rrggbb colour: %r" % text)


def palette_arg(text):
    if text in PALETTES:
        text = PALETTES[text]
    parts = text.replace(",", " ").split()
    if len(parts) != 16:
        raise argparse.ArgumentTypeError(
            "palette must be one of %s or 16 comma-separated #rrggbb colours" % ", ".join(sorted(PALETTES)))
    try:
        return build_palette([parse_hex(p) for p in parts])
    except ValueError:
        raise argparse.ArgumentTypeError("bad colour in palette: %r" % text)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Render an ANSI terminal capture (tmux capture-pane -e -p -N) into a PNG.")
    ap.add_argument("input", help="capture file with ANSI escapes ('-' for stdin)")
    ap.add_argument("output", help="PNG file to write")
    ap.add_argument("--font-size", type=float, default=14, help="font size in pixels per em (default 14; "
                    "use 28 for a crisp 2x image)")
    ap.add_argument("--line-height", type=float, default=1.0, help="cell height factor (default 1.0)")
    ap.add_argument("--fg", type=colour_arg, default=parse_hex("#d0d0d0"), help="default foreground (#d0d0d0)")
    ap.add_argument("--bg", type=colour_arg, default=parse_hex("#1c1c1c"), help="default background (#1c1c1c)")
    ap.add_argument("--palette", type=palette_arg, default=palette_arg("tango"),
                    help="colours 0-15: tango (default), xterm, vga, or 16 comma-separated hex colours")
    ap.add_argument("--cols", type=int, default=0, help="grid width (default: widest line)")
    ap.add_argument("--rows", type=int, default=0, help="grid height (default: number of lines)")
    ap.add_argument("--padding", type=int, default=8, help="border in pixels, in the default background (8)")
    ap.add_argument("--font", help="regular TrueType font (default DejaVu Sans Mono)")
    ap.add_argument("--font-bold", help="bold font")
    ap.add_argument("--font-italic", help="italic font")
    ap.add_argument("--font-bold-italic", help="bold italic font")
    ap.add_argument("-v", "--verbose", action="store_true", help="print size and timing to stderr")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.font_size <= 0 or args.line_height <= 0 or args.cols < 0 or args.rows < 0 or args.padding < 0:
            raise Fail("--font-size/--line-height must be positive, --cols/--rows/--padding not negative")
        reg = find_font(args.font, "regular")
        if reg is None:
            raise Fail("DejaVu Sans Mono not found (install fonts-dejavu-core, or pass --font FILE.ttf)")
        fonts = {"regular": TrueTypeFont(reg)}
        for key, explicit in (("bold", args.font_bold), ("italic", args.font_italic),
                              ("bolditalic", args.font_bold_italic)):
            p = find_font(explicit, key) if (explicit or not args.font) else None
            fonts[key] = TrueTypeFont(p) if p else None
        fonts["bolditalic"] = fonts["bolditalic"] or fonts["bold"]
        for key in ("fallback", "fallbackbold"):
            p = find_font(None, key)
            fonts[key] = TrueTypeFont(p) if p else None
        try:
            if args.input == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(args.input, "rb") as f:
                    data = f.read()
        except OSError as e:
            raise Fail("cannot read %s: %s" % (args.input, e.strerror))
        rows = parse_ansi(data.decode("utf-8", errors="replace"))
        w, h, raw, (cols, nrows, cw, chh) = render(rows, args, fonts)
        png = png_bytes(w, h, raw)
        try:
            with open(args.output, "wb") as f:
                f.write(png)
        except OSError as e:
            raise Fail("cannot write %s: %s" % (args.output, e.strerror))
    except Fail as e:
        sys.stderr.write("ansi2png: %s\n" % e)
        return 1
    if args.verbose:
        sys.stderr.write("ansi2png: %s: %dx%d cells of %dx%d px -> %dx%d px, %d bytes, %.2fs\n" % (
            args.output, cols, nrows, cw, chh, w, h, len(png), time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
