//! An embedded 5×7 bitmap font (with two descender rows) for printable ASCII and a few
//! extra symbols, and text drawing onto a [`Canvas`] at an integer scale.
//!
//! Every glyph is [`GLYPH_WIDTH`] × [`GLYPH_HEIGHT`] pixels: rows 0–6 hold capitals and
//! digits (the baseline is under row 6), rows 7–8 hold descenders (`g j p q y , _`).
//! Characters advance by [`ADVANCE`] pixels (one blank column between glyphs). A
//! character the font lacks is drawn as a hollow box.

use super::canvas::{Canvas, Rgb};

/// Glyph width in font pixels.
pub const GLYPH_WIDTH: u32 = 5;
/// Glyph height in font pixels, descender rows included.
pub const GLYPH_HEIGHT: u32 = 9;
/// Height of capitals and digits in font pixels (rows above the baseline).
pub const CAP_HEIGHT: u32 = 7;
/// Horizontal distance from one character to the next, in font pixels.
pub const ADVANCE: u32 = 6;

/// One glyph: a bit mask per row, bit 4 = leftmost column.
type Glyph = [u8; GLYPH_HEIGHT as usize];

/// Parses glyph art: up to nine space-separated rows of five `.`/`#` characters
/// (missing trailing rows are blank). Runs at compile time, so malformed art is a
/// build error rather than a run-time one.
const fn g(art: &str) -> Glyph {
    let b = art.as_bytes();
    let mut rows = [0u8; GLYPH_HEIGHT as usize];
    let (mut row, mut col, mut i) = (0usize, 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b' ' => {
                assert!(col == 5, "glyph row is not 5 wide");
                row += 1;
                col = 0;
            }
            c => {
                assert!(c == b'#' || c == b'.', "glyph art uses only '#' and '.'");
                assert!(
                    row < GLYPH_HEIGHT as usize && col < 5,
                    "glyph art too large"
                );
                rows[row] = (rows[row] << 1) | (c == b'#') as u8;
                col += 1;
            }
        }
        i += 1;
    }
    assert!(col == 5, "glyph row is not 5 wide");
    rows
}

/// Glyphs for ASCII 32 (space) to 126 (`~`), in order.
const ASCII: [Glyph; 95] = [
    g("..... ..... ..... ..... ..... ..... ....."), // ' '
    g("..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#.."), // !
    g(".#.#. .#.#. .#.#. ..... ..... ..... ....."), // "
    g(".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#."), // #
    g("..#.. .#### #.#.. .###. ..#.# ####. ..#.."), // $
    g("##... ##..# ...#. ..#.. .#... #..## ...##"), // %
    g(".##.. #..#. #.#.. .#... #.#.# #..#. .##.#"), // &
    g("..#.. ..#.. .#... ..... ..... ..... ....."), // '
    g("...#. ..#.. .#... .#... .#... ..#.. ...#."), // (
    g(".#... ..#.. ...#. ...#. ...#. ..#.. .#..."), // )
    g("..... ..#.. #.#.# .###. #.#.# ..#.. ....."), // *
    g("..... ..#.. ..#.. ##### ..#.. ..#.. ....."), // +
    g("..... ..... ..... ..... ..... .##.. ..#.. .#..."), // ,
    g("..... ..... ..... ##### ..... ..... ....."), // -
    g("..... ..... ..... ..... ..... .##.. .##.."), // .
    g("..... ....# ...#. ..#.. .#... #.... ....."), // /
    g(".###. #...# #..## #.#.# ##..# #...# .###."), // 0
    g("..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###."), // 1
    g(".###. #...# ....# ...#. ..#.. .#... #####"), // 2
    g("##### ...#. ..#.. ...#. ....# #...# .###."), // 3
    g("...#. ..##. .#.#. #..#. ##### ...#. ...#."), // 4
    g("##### #.... ####. ....# ....# #...# .###."), // 5
    g("..##. .#... #.... ####. #...# #...# .###."), // 6
    g("##### ....# ...#. ..#.. .#... .#... .#..."), // 7
    g(".###. #...# #...# .###. #...# #...# .###."), // 8
    g(".###. #...# #...# .#### ....# ...#. .##.."), // 9
    g("..... .##.. .##.. ..... .##.. .##.. ....."), // :
    g("..... .##.. .##.. ..... .##.. ..#.. .#..."), // ;
    g("...#. ..#.. .#... #.... .#... ..#.. ...#."), // <
    g("..... ..... ##### ..... ##### ..... ....."), // =
    g(".#... ..#.. ...#. ....# ...#. ..#.. .#..."), // >
    g(".###. #...# ....# ...#. ..#.. ..... ..#.."), // ?
    g(".###. #...# ....# .##.# #.#.# #.#.# .###."), // @
    g(".###. #...# #...# ##### #...# #...# #...#"), // A
    g("####. #...# #...# ####. #...# #...# ####."), // B
    g(".###. #...# #.... #.... #.... #...# .###."), // C
    g("###.. #..#. #...# #...# #...# #..#. ###.."), // D
    g("##### #.... #.... ####. #.... #.... #####"), // E
    g("##### #.... #.... ####. #.... #.... #...."), // F
    g(".###. #...# #.... #.### #...# #...# .####"), // G
    g("#...# #...# #...# ##### #...# #...# #...#"), // H
    g(".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###."), // I
    g("..### ...#. ...#. ...#. ...#. #..#. .##.."), // J
    g("#...# #..#. #.#.. ##... #.#.. #..#. #...#"), // K
    g("#.... #.... #.... #.... #.... #.... #####"), // L
    g("#...# ##.## #.#.# #.#.# #...# #...# #...#"), // M
    g("#...# #...# ##..# #.#.# #..## #...# #...#"), // N
    g(".###. #...# #...# #...# #...# #...# .###."), // O
    g("####. #...# #...# ####. #.... #.... #...."), // P
    g(".###. #...# #...# #...# #.#.# #..#. .##.#"), // Q
    g("####. #...# #...# ####. #.#.. #..#. #...#"), // R
    g(".#### #.... #.... .###. ....# ....# ####."), // S
    g("##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#.."), // T
    g("#...# #...# #...# #...# #...# #...# .###."), // U
    g("#...# #...# #...# #...# #...# .#.#. ..#.."), // V
    g("#...# #...# #...# #.#.# #.#.# #.#.# .#.#."), // W
    g("#...# #...# .#.#. ..#.. .#.#. #...# #...#"), // X
    g("#...# #...# .#.#. ..#.. ..#.. ..#.. ..#.."), // Y
    g("##### ....# ...#. ..#.. .#... #.... #####"), // Z
    g(".###. .#... .#... .#... .#... .#... .###."), // [
    g("..... #.... .#... ..#.. ...#. ....# ....."), // \
    g(".###. ...#. ...#. ...#. ...#. ...#. .###."), // ]
    g("..#.. .#.#. #...# ..... ..... ..... ....."), // ^
    g("..... ..... ..... ..... ..... ..... ..... #####"), // _
    g(".#... ..#.. ...#. ..... ..... ..... ....."), // `
    g("..... ..... .###. ....# .#### #...# .####"), // a
    g("#.... #.... #.##. ##..# #...# #...# ####."), // b
    g("..... ..... .###. #.... #.... #...# .###."), // c
    g("....# ....# .##.# #..## #...# #...# .####"), // d
    g("..... ..... .###. #...# ##### #.... .###."), // e
    g("..##. .#..# .#... ###.. .#... .#... .#..."), // f
    g("..... ..... .#### #...# #...# #...# .#### ....# .###."), // g
    g("#.... #.... #.##. ##..# #...# #...# #...#"), // h
    g("..#.. ..... .##.. ..#.. ..#.. ..#.. .###."), // i
    g("...#. ..... ..##. ...#. ...#. ...#. ...#. #..#. .##.."), // j
    g("#.... #.... #..#. #.#.. ##... #.#.. #..#."), // k
    g(".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###."), // l
    g("..... ..... ##.#. #.#.# #.#.# #.#.# #.#.#"), // m
    g("..... ..... #.##. ##..# #...# #...# #...#"), // n
    g("..... ..... .###. #...# #...# #...# .###."), // o
    g("..... ..... ####. #...# #...# #...# ####. #.... #...."), // p
    g("..... ..... .#### #...# #...# #...# .#### ....# ....#"), // q
    g("..... ..... #.##. ##..# #.... #.... #...."), // r
    g("..... ..... .###. #.... .###. ....# ####."), // s
    g(".#... .#... ###.. .#... .#... .#..# ..##."), // t
    g("..... ..... #...# #...# #...# #..## .##.#"), // u
    g("..... ..... #...# #...# #...# .#.#. ..#.."), // v
    g("..... ..... #...# #...# #.#.# #.#.# .#.#."), // w
    g("..... ..... #...# .#.#. ..#.. .#.#. #...#"), // x
    g("..... ..... #...# #...# #...# #...# .#### ....# .###."), // y
    g("..... ..... ##### ...#. ..#.. .#... #####"), // z
    g("...#. ..#.. ..#.. .#... ..#.. ..#.. ...#."), // {
    g("..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#.."), // |
    g(".#... ..#.. ..#.. ...#. ..#.. ..#.. .#..."), // }
    g("..... ..... .#... #.#.# ...#. ..... ....."), // ~
];

/// `×` (multiplication sign).
const TIMES: Glyph = g("..... #...# .#.#. ..#.. .#.#. #...# .....");
/// `·` (middle dot).
const MIDDLE_DOT: Glyph = g("..... ..... ..... .##.. .##.. ..... .....");
/// `°` (degree sign).
const DEGREE: Glyph = g(".##.. #..#. #..#. .##.. ..... ..... .....");
/// `µ` (micro sign).
const MICRO: Glyph = g("..... ..... #...# #...# #...# #..## ###.# #.... #....");
/// `±` (plus-minus sign).
const PLUS_MINUS: Glyph = g("..#.. ..#.. ##### ..#.. ..#.. ..... #####");
/// `…` (ellipsis).
const ELLIPSIS: Glyph = g("..... ..... ..... ..... ..... ..... #.#.#");
/// Drawn for characters the font lacks.
const MISSING: Glyph = g("##### #...# #...# #...# #...# #...# #####");

/// The glyph for `c`: its bit mask per row (bit 4 = leftmost column). Characters
/// outside the font get a hollow box.
pub fn glyph(c: char) -> &'static [u8; GLYPH_HEIGHT as usize] {
    match c {
        ' '..='~' => &ASCII[c as usize - 32],
        '×' => &TIMES,
        '·' => &MIDDLE_DOT,
        '°' => &DEGREE,
        'µ' | 'μ' => &MICRO,
        '±' => &PLUS_MINUS,
        '…' => &ELLIPSIS,
        '−' | '–' | '—' => &ASCII['-' as usize - 32],
        '\u{2018}' | '\u{2019}' => &ASCII['\'' as usize - 32],
        '\u{201c}' | '\u{201d}' => &ASCII['"' as usize - 32],
        _ => &MISSING,
    }
}

/// Width in canvas pixels of `text` drawn at `scale` (no trailing gap); 0 when empty.
pub fn text_width(text: &str, scale: u32) -> u32 {
    let n = u32::try_from(text.chars().count()).unwrap_or(u32::MAX);
    if n == 0 {
        0
    } else {
        n.saturating_mul(ADVANCE)
            .saturating_sub(ADVANCE - GLYPH_WIDTH)
            .saturating_mul(scale)
    }
}

/// Height in canvas pixels of a line of text at `scale`, descenders included.
pub fn text_height(scale: u32) -> u32 {
    GLYPH_HEIGHT * scale
}

/// Draws `text` left to right with its top-left corner at (`x`, `y`), each font pixel a
/// `scale` × `scale` block (`scale` 0 is treated as 1). Parts off the canvas are
/// clipped.
pub fn draw_text(canvas: &mut Canvas, x: i64, y: i64, text: &str, scale: u32, color: Rgb) {
    let s = i64::from(scale.max(1));
    for (i, c) in text.chars().enumerate() {
        let gx = x + i as i64 * i64::from(ADVANCE) * s;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..GLYPH_WIDTH {
                if bits & (0x10 >> col) != 0 {
                    canvas.fill_rect(
                        gx + i64::from(col) * s,
                        y + row as i64 * s,
                        s as u32,
                        s as u32,
                        color,
                    );
                }
            }
        }
    }
}

/// Draws `text` rotated a quarter turn counter-clockwise (reading bottom to top, as a
/// y-axis label). The rotated text occupies a box [`text_height`] wide and
/// [`text_width`] tall whose top-left corner is (`x`, `y`).
pub fn draw_text_vertical(canvas: &mut Canvas, x: i64, y: i64, text: &str, scale: u32, color: Rgb) {
    let s = i64::from(scale.max(1));
    let bottom = y + i64::from(text_width(text, scale.max(1)));
    for (i, c) in text.chars().enumerate() {
        // Along the text runs upwards from `bottom`; glyph rows run rightwards.
        let along0 = i as i64 * i64::from(ADVANCE) * s;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..GLYPH_WIDTH {
                if bits & (0x10 >> col) != 0 {
                    let along = along0 + i64::from(col) * s;
                    canvas.fill_rect(
                        x + row as i64 * s,
                        bottom - along - s,
                        s as u32,
                        s as u32,
                        color,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_glyphs_are_in_order() {
        // Spot-check the table's alignment: a misplaced entry shifts everything after it.
        assert_eq!(glyph(' '), &[0; 9]);
        assert_eq!(glyph('0')[0], 0b01110);
        assert_eq!(glyph('1')[6], 0b01110);
        assert_eq!(glyph('A')[3], 0b11111);
        assert_eq!(glyph('L')[6], 0b11111);
        assert_eq!(glyph('_')[7], 0b11111);
        assert_eq!(glyph('g')[8], 0b01110);
        assert_eq!(glyph('z')[2], 0b11111);
        assert_eq!(glyph('|'), &[4, 4, 4, 4, 4, 4, 4, 0, 0]);
        assert_eq!(glyph('~')[3], 0b10101);
        // Every printable character but space has ink; unknown ones get the box.
        for c in '!'..='~' {
            assert!(glyph(c).iter().any(|&r| r != 0), "{c:?} is blank");
            assert_ne!(glyph(c), &MISSING, "{c:?}");
        }
        assert_eq!(glyph('€'), &MISSING);
        assert_ne!(glyph('×'), &MISSING);
    }

    #[test]
    fn glyphs_are_distinct() {
        let all: Vec<char> = ('!'..='~').collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(glyph(*a), glyph(*b), "{a:?} and {b:?} look the same");
            }
        }
    }

    #[test]
    fn text_metrics() {
        assert_eq!(text_width("", 2), 0);
        assert_eq!(text_width("a", 1), 5);
        assert_eq!(text_width("ab", 3), 33);
        assert_eq!(text_width("××", 1), 11);
        assert_eq!(text_height(2), 18);
    }

    #[test]
    fn draws_scaled_and_rotated() {
        let white = Rgb::WHITE;
        let black = Rgb::BLACK;
        let mut c = Canvas::new(40, 40, white).unwrap();
        draw_text(&mut c, 2, 3, "L", 2, black);
        // 'L': left column set on every cap row, bottom row full.
        assert_eq!(c.pixel(2, 3), Some(black));
        assert_eq!(c.pixel(3, 4), Some(black));
        assert_eq!(c.pixel(4, 3), Some(white));
        assert_eq!(c.pixel(11, 3 + 12), Some(black));
        assert_eq!(c.pixel(11, 3 + 11), Some(white));

        let mut v = Canvas::new(40, 40, white).unwrap();
        draw_text_vertical(&mut v, 0, 0, "L", 1, black);
        // Rotated CCW: the L's stem becomes the bottom row of a 9-wide, 5-tall box,
        // its foot the rightmost cap column (x = 6), running up.
        for x in 0..7 {
            assert_eq!(v.pixel(x, 4), Some(black), "x={x}");
        }
        for y in 0..5 {
            assert_eq!(v.pixel(6, y), Some(black), "y={y}");
        }
        assert_eq!(v.pixel(0, 3), Some(white));
        // Off-canvas text is clipped, not a panic.
        draw_text(&mut v, -100, 38, "clip", 3, black);
        draw_text_vertical(&mut v, 38, -5, "clip", 3, black);
    }

    #[test]
    #[ignore = "writes /tmp/plot-font.png for a visual check"]
    fn write_specimen() {
        let mut c = Canvas::new(760, 170, Rgb::WHITE).unwrap();
        let lines = [
            " !\"#$%&'()*+,-./0123456789:;<=>?",
            "@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`",
            "abcdefghijklmnopqrstuvwxyz{|}~",
            "×·°µ±…− € jumpy, quirky: 2.5e-3 (p<0.05)",
        ];
        for (i, line) in lines.iter().enumerate() {
            draw_text(&mut c, 4, 4 + i as i64 * 40, line, 3, Rgb::BLACK);
        }
        crate::fsutil::write_atomic(
            std::path::Path::new("/tmp/plot-font.png"),
            &c.encode_png().unwrap(),
        )
        .unwrap();
    }
}
