//! A tiny built-in bitmap font for labelling image grids: 5×7 glyphs (plus one descender row)
//! covering printable ASCII (32–126) and `λ`; any other character is drawn as a box.
//!
//! Each glyph is written as eight rows of five cells, `#` for ink and `.` for paper, so the
//! shapes can be read (and fixed) right here in the source. The table is parsed at compile
//! time; a malformed glyph is a build error, never a runtime panic.

use image::{Rgb, RgbImage};

/// Width of a glyph, in font pixels.
pub const GLYPH_W: usize = 5;
/// Height of a glyph including its descender row, in font pixels.
pub const GLYPH_H: usize = 8;
/// Horizontal advance from one character to the next, in font pixels (glyph + 1 blank column).
pub const ADVANCE: usize = GLYPH_W + 1;

/// Parses eight space-separated groups of five `#`/`.` cells into row bit masks (bit 4 = left).
const fn parse(art: &str) -> [u8; GLYPH_H] {
    let b = art.as_bytes();
    let mut rows = [0u8; GLYPH_H];
    let mut row = 0;
    let mut col = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b' ' {
            assert!(col == GLYPH_W, "a glyph row must have exactly 5 cells");
            row += 1;
            col = 0;
        } else {
            assert!(c == b'#' || c == b'.', "glyph cells are '#' or '.'");
            assert!(row < GLYPH_H, "a glyph has exactly 8 rows");
            rows[row] = (rows[row] << 1) | (c == b'#') as u8;
            col += 1;
        }
        i += 1;
    }
    assert!(
        row == GLYPH_H - 1 && col == GLYPH_W,
        "a glyph has exactly 8 rows of 5 cells"
    );
    rows
}

/// Shorthand for one table entry.
const fn g(c: char, art: &str) -> (char, [u8; GLYPH_H]) {
    (c, parse(art))
}

/// Glyph drawn for characters the font lacks.
const UNKNOWN: [u8; GLYPH_H] = parse("##### #...# #...# #...# #...# #...# ##### .....");

/// The glyph table: printable ASCII in code order, then extra characters.
const GLYPHS: [(char, [u8; GLYPH_H]); 96] = [
    g(' ', "..... ..... ..... ..... ..... ..... ..... ....."),
    g('!', "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#.. ....."),
    g('"', ".#.#. .#.#. .#.#. ..... ..... ..... ..... ....."),
    g('#', ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#. ....."),
    g('$', "..#.. .#### #.#.. .###. ..#.# ####. ..#.. ....."),
    g('%', "##... ##..# ...#. ..#.. .#... #..## ...## ....."),
    g('&', ".##.. #..#. #.#.. .#... #.#.# #..#. .##.# ....."),
    g('\'', "..#.. ..#.. .#... ..... ..... ..... ..... ....."),
    g('(', "...#. ..#.. .#... .#... .#... ..#.. ...#. ....."),
    g(')', ".#... ..#.. ...#. ...#. ...#. ..#.. .#... ....."),
    g('*', "..... ..#.. #.#.# .###. #.#.# ..#.. ..... ....."),
    g('+', "..... ..#.. ..#.. ##### ..#.. ..#.. ..... ....."),
    g(',', "..... ..... ..... ..... ..... .##.. ..#.. .#..."),
    g('-', "..... ..... ..... ##### ..... ..... ..... ....."),
    g('.', "..... ..... ..... ..... ..... .##.. .##.. ....."),
    g('/', "..... ....# ...#. ..#.. .#... #.... ..... ....."),
    g('0', ".###. #...# #..## #.#.# ##..# #...# .###. ....."),
    g('1', "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###. ....."),
    g('2', ".###. #...# ....# ...#. ..#.. .#... ##### ....."),
    g('3', "##### ...#. ..#.. ...#. ....# #...# .###. ....."),
    g('4', "...#. ..##. .#.#. #..#. ##### ...#. ...#. ....."),
    g('5', "##### #.... ####. ....# ....# #...# .###. ....."),
    g('6', "..##. .#... #.... ####. #...# #...# .###. ....."),
    g('7', "##### ....# ...#. ..#.. .#... .#... .#... ....."),
    g('8', ".###. #...# #...# .###. #...# #...# .###. ....."),
    g('9', ".###. #...# #...# .#### ....# ...#. .##.. ....."),
    g(':', "..... .##.. .##.. ..... .##.. .##.. ..... ....."),
    g(';', "..... .##.. .##.. ..... .##.. ..#.. .#... ....."),
    g('<', "...#. ..#.. .#... #.... .#... ..#.. ...#. ....."),
    g('=', "..... ..... ##### ..... ##### ..... ..... ....."),
    g('>', ".#... ..#.. ...#. ....# ...#. ..#.. .#... ....."),
    g('?', ".###. #...# ....# ...#. ..#.. ..... ..#.. ....."),
    g('@', ".###. #...# ....# .##.# #.#.# #.#.# .###. ....."),
    g('A', ".###. #...# #...# #...# ##### #...# #...# ....."),
    g('B', "####. #...# #...# ####. #...# #...# ####. ....."),
    g('C', ".###. #...# #.... #.... #.... #...# .###. ....."),
    g('D', "###.. #..#. #...# #...# #...# #..#. ###.. ....."),
    g('E', "##### #.... #.... ####. #.... #.... ##### ....."),
    g('F', "##### #.... #.... ####. #.... #.... #.... ....."),
    g('G', ".###. #...# #.... #.### #...# #...# .#### ....."),
    g('H', "#...# #...# #...# ##### #...# #...# #...# ....."),
    g('I', ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###. ....."),
    g('J', "..### ...#. ...#. ...#. ...#. #..#. .##.. ....."),
    g('K', "#...# #..#. #.#.. ##... #.#.. #..#. #...# ....."),
    g('L', "#.... #.... #.... #.... #.... #.... ##### ....."),
    g('M', "#...# ##.## #.#.# #.#.# #...# #...# #...# ....."),
    g('N', "#...# #...# ##..# #.#.# #..## #...# #...# ....."),
    g('O', ".###. #...# #...# #...# #...# #...# .###. ....."),
    g('P', "####. #...# #...# ####. #.... #.... #.... ....."),
    g('Q', ".###. #...# #...# #...# #.#.# #..#. .##.# ....."),
    g('R', "####. #...# #...# ####. #.#.. #..#. #...# ....."),
    g('S', ".#### #.... #.... .###. ....# ....# ####. ....."),
    g('T', "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ....."),
    g('U', "#...# #...# #...# #...# #...# #...# .###. ....."),
    g('V', "#...# #...# #...# #...# #...# .#.#. ..#.. ....."),
    g('W', "#...# #...# #...# #.#.# #.#.# #.#.# .#.#. ....."),
    g('X', "#...# #...# .#.#. ..#.. .#.#. #...# #...# ....."),
    g('Y', "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#.. ....."),
    g('Z', "##### ....# ...#. ..#.. .#... #.... ##### ....."),
    g('[', ".###. .#... .#... .#... .#... .#... .###. ....."),
    g('\\', "..... #.... .#... ..#.. ...#. ....# ..... ....."),
    g(']', ".###. ...#. ...#. ...#. ...#. ...#. .###. ....."),
    g('^', "..#.. .#.#. #...# ..... ..... ..... ..... ....."),
    g('_', "..... ..... ..... ..... ..... ..... ##### ....."),
    g('`', ".#... ..#.. ...#. ..... ..... ..... ..... ....."),
    g('a', "..... ..... .###. ....# .#### #...# .#### ....."),
    g('b', "#.... #.... #.##. ##..# #...# #...# ####. ....."),
    g('c', "..... ..... .###. #.... #.... #...# .###. ....."),
    g('d', "....# ....# .##.# #..## #...# #...# .#### ....."),
    g('e', "..... ..... .###. #...# ##### #.... .###. ....."),
    g('f', "..##. .#..# .#... ###.. .#... .#... .#... ....."),
    g('g', "..... ..... .#### #...# #...# .#### ....# .###."),
    g('h', "#.... #.... #.##. ##..# #...# #...# #...# ....."),
    g('i', "..#.. ..... .##.. ..#.. ..#.. ..#.. .###. ....."),
    g('j', "...#. ..... ..##. ...#. ...#. ...#. #..#. .##.."),
    g('k', "#.... #.... #..#. #.#.. ##... #.#.. #..#. ....."),
    g('l', ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###. ....."),
    g('m', "..... ..... ##.#. #.#.# #.#.# #...# #...# ....."),
    g('n', "..... ..... #.##. ##..# #...# #...# #...# ....."),
    g('o', "..... ..... .###. #...# #...# #...# .###. ....."),
    g('p', "..... ..... ####. #...# #...# ####. #.... #...."),
    g('q', "..... ..... .#### #...# #...# .#### ....# ....#"),
    g('r', "..... ..... #.##. ##..# #.... #.... #.... ....."),
    g('s', "..... ..... .###. #.... .###. ....# ####. ....."),
    g('t', ".#... .#... ###.. .#... .#... .#..# ..##. ....."),
    g('u', "..... ..... #...# #...# #...# #..## .##.# ....."),
    g('v', "..... ..... #...# #...# #...# .#.#. ..#.. ....."),
    g('w', "..... ..... #...# #...# #.#.# #.#.# .#.#. ....."),
    g('x', "..... ..... #...# .#.#. ..#.. .#.#. #...# ....."),
    g('y', "..... ..... #...# #...# #...# .#### ....# .###."),
    g('z', "..... ..... ##### ...#. ..#.. .#... ##### ....."),
    g('{', "...#. ..#.. ..#.. .#... ..#.. ..#.. ...#. ....."),
    g('|', "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ....."),
    g('}', ".#... ..#.. ..#.. ...#. ..#.. ..#.. .#... ....."),
    g('~', "..... ..... .#... #.#.# ...#. ..... ..... ....."),
    g('λ', "##... ..#.. ..#.. .#.#. .#.#. #...# #...# ....."),
];

/// The rows of `c`'s glyph (bit 4 is the leftmost column); a box for unknown characters.
pub fn glyph(c: char) -> [u8; GLYPH_H] {
    let code = c as u32;
    if (32..=126).contains(&code) {
        // Printable ASCII is stored in code order.
        return GLYPHS[(code - 32) as usize].1;
    }
    GLYPHS[95..]
        .iter()
        .find(|(ch, _)| *ch == c)
        .map_or(UNKNOWN, |(_, rows)| *rows)
}

/// Width in pixels of `text` drawn at `scale` (no trailing blank column).
pub fn text_width(text: &str, scale: usize) -> usize {
    chars_width(text.chars().count(), scale)
}

/// Width in pixels of `n` characters drawn at `scale` (every glyph has the same advance).
pub fn chars_width(n: usize, scale: usize) -> usize {
    if n == 0 { 0 } else { (n * ADVANCE - 1) * scale }
}

/// Height in pixels of a line of text drawn at `scale`, descender included.
pub fn text_height(scale: usize) -> usize {
    GLYPH_H * scale
}

/// Draws `text` with its top-left corner at (`x`, `y`), each font pixel a `scale`×`scale`
/// square of `color`. Anything falling outside the image is clipped.
pub fn draw_text(img: &mut RgbImage, x: usize, y: usize, text: &str, scale: usize, color: Rgb<u8>) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    for (i, c) in text.chars().enumerate() {
        let gx = x + i * ADVANCE * scale;
        if gx >= w {
            break;
        }
        let rows = glyph(c);
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..GLYPH_W {
                if bits & (1 << (GLYPH_W - 1 - col)) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let px = gx + col * scale + dx;
                        let py = y + r * scale + dy;
                        if px < w && py < h {
                            img.put_pixel(px as u32, py as u32, color);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the font has a real glyph for `c` (otherwise it is drawn as a box).
    fn has_glyph(c: char) -> bool {
        GLYPHS.iter().any(|(ch, _)| *ch == c)
    }

    #[test]
    fn ascii_table_is_in_code_order_and_complete() {
        for code in 32u32..=126 {
            let c = char::from_u32(code).unwrap();
            assert_eq!(
                GLYPHS[(code - 32) as usize].0,
                c,
                "glyph table out of order at {c:?}"
            );
            assert!(has_glyph(c));
        }
        assert!(has_glyph('λ'));
        assert!(!has_glyph('é'));
    }

    #[test]
    fn glyphs_have_ink_except_space_and_unknown_is_a_box() {
        for (c, rows) in GLYPHS.iter() {
            let ink: u32 = rows.iter().map(|r| r.count_ones()).sum();
            if *c == ' ' {
                assert_eq!(ink, 0);
            } else {
                assert!(ink > 0, "{c:?} has no ink");
            }
        }
        assert_eq!(glyph('€'), UNKNOWN);
        assert_eq!(glyph('λ'), GLYPHS[95].1);
        assert_ne!(glyph('A'), glyph('B'));
    }

    #[test]
    fn draw_text_draws_and_clips() {
        let mut img = RgbImage::from_pixel(20, 10, Rgb([255, 255, 255]));
        // Partly off the image on both axes: must not panic.
        draw_text(&mut img, 15, 5, "Hello λ €", 2, Rgb([0, 0, 0]));
        draw_text(&mut img, 0, 0, "I", 1, Rgb([0, 0, 0]));
        // 'I' top row is ".###." at scale 1.
        assert_eq!(img.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(1, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(3, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(4, 0).0, [255, 255, 255]);
        assert_eq!(text_width("", 2), 0);
        assert_eq!(text_width("ab", 2), 22);
        assert_eq!(text_height(2), 16);
    }
}
