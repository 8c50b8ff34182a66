//! The built-in data set: labelled scenes of one foreground object on a
//! procedural background, with the object's bounding box.
//!
//! The class is the object (form, colour and texture together). The background
//! type follows the class only as far as `background_correlation` says, so that
//! a background crop says little about the label unless a model memorised the
//! image — what the déjà vu audit (arXiv:2304.13850) looks for.

use sslab_shared::spec::ScenesSpec;

use super::{ImageSet, Splits};
use sslab_shared::rng::Rng;

const SHAPES: [&str; 8] = [
    "circle", "square", "triangle", "diamond", "cross", "ring", "star", "bar",
];

/// Sixteen well separated colours, one per class.
const COLOURS: [(&str, [f32; 3]); 16] = [
    ("red", [0.85, 0.12, 0.10]),
    ("yellow", [0.95, 0.85, 0.10]),
    ("blue", [0.10, 0.25, 0.90]),
    ("magenta", [0.85, 0.10, 0.75]),
    ("orange", [0.98, 0.50, 0.05]),
    ("cyan", [0.10, 0.85, 0.90]),
    ("black", [0.08, 0.08, 0.08]),
    ("white", [0.97, 0.97, 0.97]),
    ("purple", [0.45, 0.10, 0.70]),
    ("lime", [0.55, 0.95, 0.10]),
    ("pink", [0.98, 0.60, 0.75]),
    ("brown", [0.45, 0.25, 0.08]),
    ("navy", [0.05, 0.08, 0.40]),
    ("teal", [0.05, 0.50, 0.45]),
    ("gold", [0.80, 0.65, 0.25]),
    ("grey", [0.55, 0.55, 0.55]),
];

const TEXTURES: [&str; 3] = ["solid", "striped", "dotted"];

pub const BACKGROUNDS: [&str; 8] = [
    "sky", "water", "grass", "sand", "wall", "snow", "forest", "stone",
];

/// Name of a class: colour, texture and form.
pub fn class_name(class: usize) -> String {
    let texture = TEXTURES[texture_of(class)];
    format!(
        "{} {} {}",
        COLOURS[class].0,
        texture,
        SHAPES[class % SHAPES.len()]
    )
}

fn texture_of(class: usize) -> usize {
    (class / SHAPES.len() + class) % TEXTURES.len()
}

/// Generates the train and test splits. The test split uses a derived seed,
/// so it never repeats a training image.
pub fn generate(spec: &ScenesSpec) -> Splits {
    Splits::new(
        generate_set(spec, spec.train_images, spec.seed),
        generate_set(spec, spec.test_images, spec.seed ^ 0x5EED_7E57),
    )
}

fn generate_set(spec: &ScenesSpec, n: usize, seed: u64) -> ImageSet {
    let s = spec.image_size;
    let mut pixels = vec![0u8; n * s * s * 3];
    let mut labels = Vec::with_capacity(n);
    let mut boxes = Vec::with_capacity(n);
    for (i, out) in pixels.chunks_mut(s * s * 3).enumerate() {
        let mut rng = Rng::derive(seed, &[i as u64]);
        // Balanced classes in a seeded order.
        let class = (i + rng.below(spec.classes)) % spec.classes;
        let background = if rng.chance(spec.background_correlation) {
            class % BACKGROUNDS.len()
        } else {
            rng.below(BACKGROUNDS.len())
        };
        // Drawn from a stream of its own, so that the other draws, and with
        // them every scene made without a signature, stay as they were.
        let signature = (spec.background_signature > 0.0).then(|| {
            Signature::new(
                spec.background_signature as f32,
                &mut Rng::derive(seed, &[i as u64, 1]),
            )
        });
        let b = draw_scene(
            out,
            s,
            class,
            background,
            signature.as_ref(),
            spec.class_colour,
            &mut rng,
        );
        labels.push(class as u32);
        boxes.push(b);
    }
    ImageSet {
        size: s,
        pixels,
        labels,
        boxes,
        class_names: (0..spec.classes).map(class_name).collect(),
    }
}

/// Smooth random field in [0, 1] on a coarse grid, bilinearly interpolated.
struct ValueNoise {
    cells: usize,
    grid: Vec<f32>,
}

impl ValueNoise {
    fn new(rng: &mut Rng, cells: usize) -> Self {
        let grid = (0..(cells + 1) * (cells + 1)).map(|_| rng.f32()).collect();
        ValueNoise { cells, grid }
    }

    /// `x`, `y` in [0, 1].
    fn at(&self, x: f32, y: f32) -> f32 {
        let fx = x.clamp(0.0, 1.0) * self.cells as f32;
        let fy = y.clamp(0.0, 1.0) * self.cells as f32;
        let (ix, iy) = (
            (fx as usize).min(self.cells - 1),
            (fy as usize).min(self.cells - 1),
        );
        let (tx, ty) = (fx - ix as f32, fy - iy as f32);
        let (tx, ty) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
        let g = |x: usize, y: usize| self.grid[y * (self.cells + 1) + x];
        let top = g(ix, iy) * (1.0 - tx) + g(ix + 1, iy) * tx;
        let bottom = g(ix, iy + 1) * (1.0 - tx) + g(ix + 1, iy + 1) * tx;
        top * (1.0 - ty) + bottom * ty
    }
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn scale(c: [f32; 3], f: f32) -> [f32; 3] {
    [c[0] * f, c[1] * f, c[2] * f]
}

/// Paints one background pixel; `x`, `y` in [0, 1].
struct Background {
    kind: usize,
    coarse: ValueNoise,
    fine: ValueNoise,
    phase: f32,
    freq: f32,
    tint: f32,
}

impl Background {
    fn new(kind: usize, rng: &mut Rng) -> Self {
        Background {
            kind,
            coarse: ValueNoise::new(rng, 4),
            fine: ValueNoise::new(rng, 16),
            phase: rng.f32() * std::f32::consts::TAU,
            freq: 3.0 + rng.f32() * 4.0,
            tint: 0.85 + rng.f32() * 0.3,
        }
    }

    fn colour(&self, x: f32, y: f32) -> [f32; 3] {
        let c = self.coarse.at(x, y);
        let f = self.fine.at(x, y);
        let c = match BACKGROUNDS[self.kind] {
            "sky" => {
                let base = mix([0.35, 0.60, 0.95], [0.80, 0.90, 1.0], y);
                mix(base, [1.0, 1.0, 1.0], ((c - 0.55) * 2.5).clamp(0.0, 1.0))
            }
            "water" => {
                let wave = (y * self.freq * 6.0 + self.phase + (x * 9.0).sin() * 0.6).sin();
                mix(
                    [0.05, 0.30, 0.50],
                    [0.20, 0.55, 0.70],
                    0.5 + 0.35 * wave + 0.15 * (c - 0.5),
                )
            }
            "grass" => {
                let blade = self.fine.at(x * 0.2, y * 1.0 + x * 3.0);
                scale([0.20, 0.55, 0.15], 0.7 + 0.5 * blade * c)
            }
            "sand" => {
                let dune = (x * self.freq + y * 2.0 + self.phase).sin() * 0.08;
                scale([0.87, 0.76, 0.53], 0.9 + dune + 0.2 * (f - 0.5))
            }
            "wall" => {
                let rows = 6.0;
                let by = y * rows;
                let row = by.floor();
                let bx = x * rows * 0.6 + if row as i32 % 2 == 0 { 0.0 } else { 0.5 };
                let mortar = by.fract() < 0.12 || bx.fract() < 0.08;
                if mortar {
                    [0.75, 0.72, 0.68]
                } else {
                    scale([0.62, 0.25, 0.18], 0.8 + 0.4 * f)
                }
            }
            "snow" => scale([0.93, 0.95, 0.98], 0.9 + 0.1 * c + 0.05 * (f - 0.5)),
            "forest" => {
                let canopy = (c * 0.6 + f * 0.4 - 0.5) * 3.0;
                mix(
                    [0.05, 0.20, 0.07],
                    [0.25, 0.45, 0.15],
                    (0.5 + canopy).clamp(0.0, 1.0),
                )
            }
            _ => scale([0.45, 0.45, 0.47], 0.75 + 0.35 * f + 0.2 * (c - 0.5)),
        };
        scale(c, self.tint)
    }
}

/// A pattern one image's background wears alone: a random colour in
/// stripes, checks or rings of random direction, spacing and phase.
struct Signature {
    strength: f32,
    colour: [f32; 3],
    kind: usize,
    dir: (f32, f32),
    freq: f32,
    phase: f32,
    centre: (f32, f32),
}

impl Signature {
    fn new(strength: f32, rng: &mut Rng) -> Self {
        let angle = rng.f32() * std::f32::consts::PI;
        Signature {
            strength,
            colour: hue_colour(rng.f32()),
            kind: rng.below(3),
            dir: (angle.cos(), angle.sin()),
            // Two to five cycles across the image: a small crop still shows
            // part of one.
            freq: 2.0 + 3.0 * rng.f32(),
            phase: rng.f32(),
            centre: (rng.f32(), rng.f32()),
        }
    }

    /// Paints the pattern over the background colour `c` at (x, y) in [0, 1]².
    fn over(&self, c: [f32; 3], x: f32, y: f32) -> [f32; 3] {
        let wave =
            |t: f32| 0.5 + 0.5 * ((t * self.freq + self.phase) * std::f32::consts::TAU).sin();
        let along = x * self.dir.0 + y * self.dir.1;
        let across = y * self.dir.0 - x * self.dir.1;
        let v = match self.kind {
            0 => wave(along),
            1 => {
                let (a, b) = (wave(along) - 0.5, wave(across) - 0.5);
                if a * b > 0.0 { 1.0 } else { 0.0 }
            }
            _ => wave(((x - self.centre.0).powi(2) + (y - self.centre.1).powi(2)).sqrt()),
        };
        mix(c, self.colour, self.strength * v)
    }
}

/// A saturated colour at `hue` turns round the colour wheel.
fn hue_colour(hue: f32) -> [f32; 3] {
    let h = hue.fract() * 6.0;
    let f = h.fract();
    match h as usize {
        0 => [1.0, f, 0.0],
        1 => [1.0 - f, 1.0, 0.0],
        2 => [0.0, 1.0, f],
        3 => [0.0, 1.0 - f, 1.0],
        4 => [f, 0.0, 1.0],
        _ => [1.0, 0.0, 1.0 - f],
    }
}

/// Whether the point (u, v) in [-1, 1]² lies inside the class's form.
fn inside(shape: usize, u: f32, v: f32) -> bool {
    let r = (u * u + v * v).sqrt();
    match SHAPES[shape] {
        "circle" => r <= 1.0,
        "square" => u.abs() <= 0.85 && v.abs() <= 0.85,
        "triangle" => (-0.9..=0.9).contains(&v) && u.abs() <= (v + 0.9) / 1.8,
        "diamond" => u.abs() + v.abs() <= 1.0,
        "cross" => (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0),
        "ring" => (0.55..=1.0).contains(&r),
        "star" => {
            let theta = v.atan2(u);
            r <= 0.55
                + 0.45
                    * (2.5 * theta + std::f32::consts::FRAC_PI_2)
                        .cos()
                        .abs()
                        .powf(3.0)
        }
        _ => u * u + (v * v) / 0.16 <= 1.0,
    }
}

/// Pixel (px, py) in the coordinates of an object of `side` pixels whose
/// box starts at `origin`: [-1, 1]² inside the box.
fn form_coords(px: usize, py: usize, origin: [usize; 2], side: usize) -> (f32, f32) {
    let at = |p: usize, o: usize| ((p as f32 + 0.5) - o as f32) / side as f32 * 2.0 - 1.0;
    (at(px, origin[0]), at(py, origin[1]))
}

/// Draws a scene into `out` (RGB bytes) and returns the object's box.
fn draw_scene(
    out: &mut [u8],
    s: usize,
    class: usize,
    background: usize,
    signature: Option<&Signature>,
    class_colour: f64,
    rng: &mut Rng,
) -> [u32; 4] {
    let bg = Background::new(background, rng);
    let side = ((0.4 + 0.3 * rng.f32()) * s as f32).round().max(4.0) as usize;
    let x0 = rng.below(s - side + 1);
    let y0 = rng.below(s - side + 1);
    let shade = 0.85 + 0.3 * rng.f32();
    // Some objects wear their class's colour, the rest any colour: colour
    // helps but does not decide, so form and texture must be learned.
    let hue = if rng.chance(class_colour) {
        class
    } else {
        rng.below(COLOURS.len())
    };
    let colour = scale(COLOURS[hue].1, shade);
    let texture = texture_of(class);
    let stripe_freq = 3.0 + rng.f32();
    let shape = class % SHAPES.len();
    for py in 0..s {
        for px in 0..s {
            let (x, y) = ((px as f32 + 0.5) / s as f32, (py as f32 + 0.5) / s as f32);
            let (u, v) = form_coords(px, py, [x0, y0], side);
            let c = if u.abs() <= 1.0 && v.abs() <= 1.0 && inside(shape, u, v) {
                match TEXTURES[texture] {
                    "striped" if ((u + v) * stripe_freq * std::f32::consts::PI).sin() > 0.0 => {
                        mix(colour, [0.0, 0.0, 0.0], 0.55)
                    }
                    "dotted"
                        if ((u * 2.5).fract().abs() - 0.5).powi(2)
                            + ((v * 2.5).fract().abs() - 0.5).powi(2)
                            < 0.06 =>
                    {
                        mix(colour, [1.0, 1.0, 1.0], 0.6)
                    }
                    _ => colour,
                }
            } else {
                let c = bg.colour(x, y);
                signature.map_or(c, |sig| sig.over(c, x, y))
            };
            let o = (py * s + px) * 3;
            for k in 0..3 {
                out[o + k] = (c[k].clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
    [x0 as u32, y0 as u32, (x0 + side) as u32, (y0 + side) as u32]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ScenesSpec {
        ScenesSpec {
            classes: 6,
            train_images: 60,
            test_images: 12,
            image_size: 32,
            background_correlation: 0.0,
            seed: 3,
            ..ScenesSpec::default()
        }
    }

    #[test]
    fn deterministic_balanced_and_boxed() {
        let a = generate(&spec());
        let b = generate(&spec());
        assert_eq!(a.train.pixels, b.train.pixels);
        assert_ne!(a.train.pixels[..3072], a.test.pixels[..3072]);
        assert_eq!(a.train.len(), 60);
        assert_eq!(a.test.len(), 12);
        let mut counts = [0; 6];
        for &l in &a.train.labels {
            counts[l as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c >= 4), "{counts:?}");
        for bx in &a.train.boxes {
            assert!(bx[0] < bx[2] && bx[1] < bx[3] && bx[2] <= 32 && bx[3] <= 32);
            // Objects cover a good share of the image but leave background.
            let side = bx[2] - bx[0];
            assert!((12..=23).contains(&side), "{bx:?}");
        }
        assert_eq!(a.train.class_names.len(), 6);
        assert_eq!(class_name(0), "red solid circle");
    }

    #[test]
    fn a_signature_changes_the_background_alone() {
        let plain = generate(&spec()).train;
        let signed = generate(&ScenesSpec {
            background_signature: 0.5,
            ..spec()
        })
        .train;
        assert_eq!(plain.labels, signed.labels);
        assert_eq!(plain.boxes, signed.boxes);
        let s = 32;
        let (mut inside_same, mut outside_changed, mut outside) = (true, 0, 0);
        for i in 0..plain.len() {
            let b = plain.boxes[i];
            let (p, q) = (plain.image(i), signed.image(i));
            for y in 0..s {
                for x in 0..s {
                    let o = (y * s + x) * 3;
                    let same = p[o..o + 3] == q[o..o + 3];
                    let in_box =
                        (b[0]..b[2]).contains(&(x as u32)) && (b[1]..b[3]).contains(&(y as u32));
                    if in_box {
                        // The form's own pixels never change; the box's
                        // corners outside the form are background.
                        inside_same &= same || !in_form(&plain, i, x, y);
                    } else {
                        outside += 1;
                        outside_changed += usize::from(!same);
                    }
                }
            }
        }
        assert!(inside_same);
        assert!(
            outside_changed * 2 > outside,
            "{outside_changed} of {outside}"
        );
    }

    /// Whether pixel (x, y) of image `i` lies inside its object's form.
    fn in_form(set: &ImageSet, i: usize, x: usize, y: usize) -> bool {
        let b = set.boxes[i].map(|v| v as usize);
        let (u, v) = form_coords(x, y, [b[0], b[1]], b[2] - b[0]);
        inside(set.labels[i] as usize % SHAPES.len(), u, v)
    }
}
