//! A finding's chart as a PNG, for `report.md` and the API: the figure
//! against the axis it runs across (line, ±1 std bars), or each side of a
//! difference (bars), with zero marked. Text is an 8×8 bitmap font so
//! that no font file is needed.

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};
use sslab_shared::study::Finding;

const W: u32 = 520;
const H: u32 = 300;
const LEFT: i32 = 64;
const RIGHT: i32 = 20;
const TOP: i32 = 34;
const BOTTOM: i32 = 48;
const INK: Rgb<u8> = Rgb([30, 30, 30]);
const GRID: Rgb<u8> = Rgb([215, 215, 215]);
const BLUE: Rgb<u8> = Rgb([40, 90, 200]);
const ORANGE: Rgb<u8> = Rgb([225, 120, 30]);

pub fn png(f: &Finding) -> Vec<u8> {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    text(&mut img, 8, 8, &clip(&f.name, 62), INK);
    let verdict = match &f.ours {
        Some(m) => format!("{}: {m:+.3}", f.verdict),
        None => f.verdict.clone(),
    };
    text(&mut img, 8, 20, &clip(&verdict, 62), INK);
    let points = &f.series;
    if points.is_empty() {
        return encode(&img);
    }
    let (x0, x1, y0, y1) = (LEFT, W as i32 - RIGHT, TOP + 8, H as i32 - BOTTOM);
    let mut lo = points.iter().map(|p| p.mean - p.std).fold(0.0f64, f64::min);
    let mut hi = points.iter().map(|p| p.mean + p.std).fold(0.0f64, f64::max);
    if hi - lo < 1e-9 {
        hi += 0.5;
        lo -= 0.5;
    }
    let pad = (hi - lo) * 0.08;
    let (lo, hi) = (lo - pad, hi + pad);
    let y_of = |v: f64| y1 - ((v - lo) / (hi - lo) * (y1 - y0) as f64).round() as i32;
    for i in 0..=4 {
        let v = lo + (hi - lo) * i as f64 / 4.0;
        let y = y_of(v);
        line(&mut img, x0, y, x1, y, GRID);
        let label = format!("{v:.2}");
        text(
            &mut img,
            x0 - 6 - 8 * label.len() as i32,
            y - 4,
            &label,
            INK,
        );
    }
    let zero = y_of(0.0);
    line(&mut img, x0, zero, x1, zero, INK);
    line(&mut img, x0, y0, x0, y1, INK);
    let step = (x1 - x0) / points.len() as i32;
    let x_of = |i: usize| x0 + step / 2 + step * i as i32;
    let bars = f.axis.is_empty();
    let mut last: Option<(i32, i32)> = None;
    for (i, p) in points.iter().enumerate() {
        let (x, y) = (x_of(i), y_of(p.mean));
        let colour = if bars && i == 1 { ORANGE } else { BLUE };
        if bars {
            let half = (step / 4).max(4);
            for bx in x - half..=x + half {
                line(&mut img, bx, zero, bx, y, colour);
            }
        } else if let Some((px, py)) = last {
            line(&mut img, px, py, x, y, colour);
            line(&mut img, px, py + 1, x, y + 1, colour);
        }
        last = Some((x, y));
        let (ya, yb) = (y_of(p.mean + p.std), y_of(p.mean - p.std));
        line(&mut img, x, ya, x, yb, INK);
        line(&mut img, x - 4, ya, x + 4, ya, INK);
        line(&mut img, x - 4, yb, x + 4, yb, INK);
        if !bars {
            for d in -2..=2 {
                line(&mut img, x - 2, y + d, x + 2, y + d, colour);
            }
        }
        let max = (step / 8).max(3) as usize;
        for (row, l) in wrap(&p.label, max).iter().enumerate() {
            let y = y1 + 6 + 10 * row as i32;
            text(&mut img, x - 4 * l.chars().count() as i32, y, l, INK);
        }
    }
    if !f.axis.is_empty() {
        let l = clip(&f.axis, 60);
        text(
            &mut img,
            (x0 + x1) / 2 - 4 * l.len() as i32,
            y1 + 28,
            &l,
            INK,
        );
    }
    encode(&img)
}

/// Words on at most two lines of `n` characters, the rest clipped.
fn wrap(s: &str, n: usize) -> Vec<String> {
    let mut lines: Vec<String> = vec![String::new()];
    for word in s.split_whitespace() {
        let line = lines.last_mut().expect("one line at least");
        if line.is_empty() {
            line.push_str(word);
        } else if line.chars().count() + 1 + word.chars().count() <= n {
            line.push(' ');
            line.push_str(word);
        } else {
            lines.push(word.to_string());
        }
    }
    let mut out: Vec<String> = lines.iter().take(2).map(|l| clip(l, n)).collect();
    if lines.len() > 2
        && let Some(last) = out.last_mut()
    {
        if last.chars().count() < n {
            last.push('~');
        } else {
            *last = clip(&format!("{last}~"), n);
        }
    }
    out
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('~');
        out
    }
}

fn encode(img: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    // Writing a PNG into memory cannot fail for a valid image.
    let _ = img.write_to(&mut out, image::ImageFormat::Png);
    out.into_inner()
}

fn put(img: &mut RgbImage, x: i32, y: i32, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn line(img: &mut RgbImage, x0: i32, y0: i32, x1: i32, y1: i32, c: Rgb<u8>) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        put(img, x, y, c);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// The text in characters the font has: a few symbols spelt out, accented
/// letters from the Latin-1 set, anything else `?`.
fn drawable(s: &str) -> Vec<char> {
    s.chars()
        .flat_map(|ch| match ch {
            '…' => "...".chars().collect::<Vec<_>>(),
            '→' => "->".chars().collect(),
            '±' => "+-".chars().collect(),
            '×' => vec!['x'],
            '−' | '–' | '—' => vec!['-'],
            other => vec![other],
        })
        .collect()
}

fn text(img: &mut RgbImage, x: i32, y: i32, s: &str, c: Rgb<u8>) {
    for (i, ch) in drawable(s).into_iter().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::LATIN_FONTS.get(ch))
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    put(img, x + 8 * i as i32 + col, y + row as i32, c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sslab_shared::study::{Expect, SeriesPoint};

    #[test]
    fn draws_a_png_of_the_series() {
        let mut f = Finding {
            name: "backbone beats projector".into(),
            claim: String::new(),
            ours: Some(0.2),
            std: Some(0.01),
            n: 3,
            agrees: Some(true),
            verdict: "agrees".into(),
            detail: String::new(),
            expect: Expect::Positive,
            tolerance: 0.0,
            series: vec![
                SeriesPoint {
                    label: "2".into(),
                    mean: 0.1,
                    std: 0.02,
                    n: 3,
                },
                SeriesPoint {
                    label: "8".into(),
                    mean: 0.3,
                    std: 0.01,
                    n: 3,
                },
            ],
            axis: "schedule.epochs".into(),
        };
        for axis in ["schedule.epochs", ""] {
            f.axis = axis.into();
            let bytes = png(&f);
            let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
            assert_eq!((img.width(), img.height()), (W, H));
            let blue = img.pixels().filter(|p| **p == BLUE).count();
            assert!(blue > 20, "{axis}: {blue} blue pixels");
        }
    }
}
