//! Augmented views in the SimCLR style (arXiv:2002.05709): random resized
//! crop, horizontal flip, colour jitter, grayscale; BYOL's asymmetric blur
//! and solarize (arXiv:2006.07733); additive Gaussian noise
//! (arXiv:2303.01986); small local views for multi-crop (SwAV, DINO, MSN).
//! Each view is seeded
//! by (run seed, epoch, image, view), so a run reproduces exactly whatever the
//! number of threads.

use sslab_shared::spec::AugmentSpec;

use crate::data::ImageSet;
use sslab_shared::rng::Rng;

/// Per-channel normalisation applied to every model input. Fixed, so that an
/// exported model needs nothing from its training data to run.
pub const MEAN: [f32; 3] = [0.5, 0.5, 0.5];
pub const STD: [f32; 3] = [0.25, 0.25, 0.25];

/// Writes image `index` of `set`, normalised, as CHW floats into `out`.
pub fn plain(set: &ImageSet, index: usize, out: &mut [f32]) {
    let s = set.size;
    let img = set.image(index);
    for c in 0..3 {
        for p in 0..s * s {
            out[c * s * s + p] = (img[p * 3 + c] as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
}

/// `rng.chance(p)`, drawing nothing when `p` is 0 so that turning on an
/// augmentation leaves the draws of the others as they were.
fn maybe(rng: &mut Rng, p: f64) -> bool {
    p > 0.0 && rng.chance(p)
}

/// Writes view `which` (0 or 1) of image `index`, augmented and normalised,
/// as CHW floats.
pub fn view(
    spec: &AugmentSpec,
    set: &ImageSet,
    index: usize,
    which: usize,
    rng: &mut Rng,
    out: &mut [f32],
) {
    let scale = [spec.crop_min_scale, spec.crop_max_scale];
    render(spec, set, index, which, set.size, scale, rng, out)
}

/// A view of `size`×`size` pixels from a crop of `scale` of the area; the
/// blur and solarize settings of view `which`.
#[allow(clippy::too_many_arguments)]
fn render(
    spec: &AugmentSpec,
    set: &ImageSet,
    index: usize,
    which: usize,
    size: usize,
    scale: [f64; 2],
    rng: &mut Rng,
    out: &mut [f32],
) {
    let src = set.size;
    let s = size;
    let img = set.image(index);
    let (cx, cy, cw, ch) = crop_box(scale, src, rng);
    let flip = rng.chance(spec.flip_prob);
    let jitter = rng
        .chance(spec.jitter_prob)
        .then(|| Jitter::draw(spec.jitter_strength, rng));
    let gray = rng.chance(spec.grayscale_prob);
    let blur = maybe(rng, spec.blur_prob[which])
        .then(|| rng.range(spec.blur_sigma[0], spec.blur_sigma[1]));
    let solarize = maybe(rng, spec.solarize_prob[which]);
    let plane = s * s;
    let post = blur.is_some() || solarize || spec.noise_std > 0.0;
    // Bilinear taps at the centre of each output pixel: the same for every
    // row (columns) and every column (rows), so found once.
    let taps = |start: f64, extent: f64| -> Vec<Tap> {
        (0..s)
            .map(|o| Tap::at(start + (o as f64 + 0.5) * extent / s as f64 - 0.5, src))
            .collect()
    };
    let (cols, rows) = (taps(cx, cw), taps(cy, ch));
    let hue = jitter.as_ref().map(|j| j.hue.sin_cos());
    // Raw [0, 1] values when more passes follow, normalised otherwise.
    let (scale_c, shift_c) = if post {
        ([1.0; 3], [0.0; 3])
    } else {
        (
            [0, 1, 2].map(|c| 1.0 / STD[c]),
            [0, 1, 2].map(|c| -MEAN[c] / STD[c]),
        )
    };
    // Byte to [0, 1], looked up rather than divided per tap.
    let unit: [f32; 256] = std::array::from_fn(|v| v as f32 / 255.0);
    let row_bytes = src * 3;
    let (red, rest) = out[..3 * plane].split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    for (oy, ty) in rows.iter().enumerate() {
        let upper_row = &img[ty.lo * row_bytes..][..row_bytes];
        let lower_row = &img[ty.hi * row_bytes..][..row_bytes];
        let span = oy * s..(oy + 1) * s;
        let (r_out, g_out, b_out) = (
            &mut red[span.clone()],
            &mut green[span.clone()],
            &mut blue[span],
        );
        for (ox, tx) in cols.iter().enumerate() {
            let (l, r) = (tx.lo * 3, tx.hi * 3);
            let (ul, ur) = (&upper_row[l..l + 3], &upper_row[r..r + 3]);
            let (ll, lr) = (&lower_row[l..l + 3], &lower_row[r..r + 3]);
            let mut rgb = [0.0f32; 3];
            for (c, v) in rgb.iter_mut().enumerate() {
                let upper = unit[ul[c] as usize] * (1.0 - tx.t) + unit[ur[c] as usize] * tx.t;
                let lower = unit[ll[c] as usize] * (1.0 - tx.t) + unit[lr[c] as usize] * tx.t;
                *v = upper * (1.0 - ty.t) + lower * ty.t;
            }
            if let (Some(j), Some(m)) = (&jitter, &hue) {
                rgb = j.apply(rgb, m);
            }
            if gray {
                let l = luma(rgb);
                rgb = [l, l, l];
            }
            let dx = if flip { s - 1 - ox } else { ox };
            r_out[dx] = rgb[0] * scale_c[0] + shift_c[0];
            g_out[dx] = rgb[1] * scale_c[1] + shift_c[1];
            b_out[dx] = rgb[2] * scale_c[2] + shift_c[2];
        }
    }
    if !post {
        return;
    }
    if let Some(sigma) = blur {
        for c in 0..3 {
            gaussian_blur(&mut out[c * plane..(c + 1) * plane], s, sigma as f32);
        }
    }
    for (i, v) in out[..3 * plane].iter_mut().enumerate() {
        if solarize && *v >= 0.5 {
            *v = 1.0 - *v;
        }
        if spec.noise_std > 0.0 {
            *v += (spec.noise_std * rng.normal()) as f32;
        }
        let c = i / plane;
        *v = (*v - MEAN[c]) / STD[c];
    }
}

/// Separable Gaussian blur of one s×s plane, edges clamped; the kernel
/// reaches 3σ on each side.
fn gaussian_blur(plane: &mut [f32], s: usize, sigma: f32) {
    let radius = (3.0 * sigma).ceil().max(1.0) as isize;
    let weights: Vec<f32> = (-radius..=radius)
        .map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = weights.iter().sum();
    let weights: Vec<f32> = weights.iter().map(|w| w / total).collect();
    let mut tmp = vec![0.0f32; s * s];
    let clamp = |v: isize| v.clamp(0, s as isize - 1) as usize;
    for y in 0..s {
        for x in 0..s {
            tmp[y * s + x] = weights
                .iter()
                .enumerate()
                .map(|(k, w)| w * plane[y * s + clamp(x as isize + k as isize - radius)])
                .sum();
        }
    }
    for y in 0..s {
        for x in 0..s {
            plane[y * s + x] = weights
                .iter()
                .enumerate()
                .map(|(k, w)| w * tmp[clamp(y as isize + k as isize - radius) * s + x])
                .sum();
        }
    }
}

/// Area fraction in [min, max], aspect ratio in [3/4, 4/3] (log-uniform);
/// falls back to the whole image after ten misses, like torchvision.
fn crop_box(scale: [f64; 2], s: usize, rng: &mut Rng) -> (f64, f64, f64, f64) {
    let side = s as f64;
    for _ in 0..10 {
        let area = rng.range(scale[0], scale[1]) * side * side;
        let ratio = rng.range((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln()).exp();
        let w = (area * ratio).sqrt();
        let h = (area / ratio).sqrt();
        if w <= side && h <= side && w >= 1.0 && h >= 1.0 {
            let x = rng.range(0.0, side - w + f64::EPSILON);
            let y = rng.range(0.0, side - h + f64::EPSILON);
            return (x, y, w, h);
        }
    }
    (0.0, 0.0, side, side)
}

/// One axis of a bilinear sample: the two source pixels and the weight of
/// the second, edges clamped.
struct Tap {
    lo: usize,
    hi: usize,
    t: f32,
}

impl Tap {
    fn at(f: f64, s: usize) -> Tap {
        let f = f.clamp(0.0, (s - 1) as f64);
        let lo = f.floor() as usize;
        Tap {
            lo,
            hi: (lo + 1).min(s - 1),
            t: (f - lo as f64) as f32,
        }
    }
}

fn luma(c: [f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

/// Brightness, contrast, saturation and hue, drawn once per view.
struct Jitter {
    brightness: f32,
    contrast: f32,
    saturation: f32,
    /// Hue rotation in radians (in YIQ space).
    hue: f32,
}

impl Jitter {
    fn draw(strength: f64, rng: &mut Rng) -> Self {
        let s = 0.8 * strength;
        Jitter {
            brightness: rng.range(1.0 - s, 1.0 + s) as f32,
            contrast: rng.range(1.0 - s, 1.0 + s) as f32,
            saturation: rng.range(1.0 - s, 1.0 + s) as f32,
            hue: (rng.range(-0.2 * strength, 0.2 * strength) * std::f64::consts::TAU) as f32,
        }
    }

    /// `hue` is `self.hue.sin_cos()`, found once per view.
    fn apply(&self, c: [f32; 3], hue: &(f32, f32)) -> [f32; 3] {
        let c = c.map(|v| (v * self.brightness).clamp(0.0, 1.0));
        // Contrast against mid-grey rather than the image mean: per-pixel and close.
        let c = c.map(|v| ((v - 0.5) * self.contrast + 0.5).clamp(0.0, 1.0));
        let l = luma(c);
        let c = c.map(|v| (l + (v - l) * self.saturation).clamp(0.0, 1.0));
        // Hue: rotate the chroma plane of YIQ.
        let y = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
        let i = 0.596 * c[0] - 0.274 * c[1] - 0.322 * c[2];
        let q = 0.211 * c[0] - 0.523 * c[1] + 0.312 * c[2];
        let (sin, cos) = *hue;
        let (i, q) = (i * cos - q * sin, i * sin + q * cos);
        [
            (y + 0.956 * i + 0.621 * q).clamp(0.0, 1.0),
            (y - 0.272 * i - 0.647 * q).clamp(0.0, 1.0),
            (y - 1.106 * i + 1.703 * q).clamp(0.0, 1.0),
        ]
    }
}

/// Every view of each image in `indices`, in parallel: `globals` full-size
/// views (blur and solarize of view 0, then of view 1 for the rest), then
/// `spec.local_views` local views of `local_side` pixels cut from
/// `local_crop_scale` of the area (with view 0's blur and solarize). One CHW
/// float buffer per view; view v of image i is seeded by (seed, epoch, i, v + 1).
pub fn batch_views(
    spec: &AugmentSpec,
    set: &ImageSet,
    indices: &[usize],
    seed: u64,
    epoch: usize,
    globals: usize,
) -> Vec<Vec<f32>> {
    let local = spec.local_side(set.size);
    let kinds: Vec<(usize, usize, [f64; 2])> = (0..globals)
        .map(|v| {
            (
                v.min(1),
                set.size,
                [spec.crop_min_scale, spec.crop_max_scale],
            )
        })
        .chain((0..spec.local_views).map(|_| (0, local, spec.local_crop_scale)))
        .collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = indices.len().div_ceil(threads).max(1);
    let mut outputs: Vec<Vec<f32>> = kinds
        .iter()
        .map(|&(_, size, _)| vec![0.0f32; indices.len() * 3 * size * size])
        .collect();
    // Each thread renders every view of its share of the images straight
    // into its part of the output buffers.
    let mut shares: Vec<Vec<&mut [f32]>> = (0..indices.len().div_ceil(chunk))
        .map(|_| Vec::with_capacity(kinds.len()))
        .collect();
    for (out, &(_, size, _)) in outputs.iter_mut().zip(&kinds) {
        for (share, part) in shares
            .iter_mut()
            .zip(out.chunks_mut(chunk * 3 * size * size))
        {
            share.push(part);
        }
    }
    std::thread::scope(|scope| {
        for (idx, share) in indices.chunks(chunk).zip(shares) {
            let kinds = &kinds;
            scope.spawn(move || {
                for (v, (part, &(which, size, scale))) in share.into_iter().zip(kinds).enumerate() {
                    let per = 3 * size * size;
                    for (&i, out) in idx.iter().zip(part.chunks_mut(per)) {
                        let mut rng = Rng::derive(seed, &[epoch as u64, i as u64, v as u64 + 1]);
                        render(spec, set, i, which, size, scale, &mut rng, out);
                    }
                }
            });
        }
    });
    outputs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two global views of a batch.
    fn two_view_batch(
        spec: &AugmentSpec,
        set: &ImageSet,
        indices: &[usize],
        seed: u64,
        epoch: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let globals_only = AugmentSpec {
            local_views: 0,
            ..spec.clone()
        };
        let mut views = batch_views(&globals_only, set, indices, seed, epoch, 2).into_iter();
        let a = views.next().expect("two views");
        (a, views.next().expect("two views"))
    }
    use sslab_shared::spec::ScenesSpec;

    fn set() -> ImageSet {
        crate::data::scenes::generate(&ScenesSpec {
            classes: 3,
            train_images: 8,
            test_images: 1,
            image_size: 32,
            background_correlation: 0.0,
            seed: 1,
            ..ScenesSpec::default()
        })
        .train
    }

    #[test]
    fn identity_settings_reproduce_the_image() {
        let set = set();
        let spec = AugmentSpec {
            crop_min_scale: 1.0,
            crop_max_scale: 1.0,
            flip_prob: 0.0,
            jitter_prob: 0.0,
            jitter_strength: 0.0,
            grayscale_prob: 0.0,
            ..AugmentSpec::default()
        };
        let mut a = vec![0.0; 3 * 32 * 32];
        let mut b = vec![0.0; 3 * 32 * 32];
        plain(&set, 2, &mut a);
        // A full-area crop has ratio 1 only by chance; retry seeds until it is square.
        let mut seen_exact = false;
        for seed in 0..50 {
            view(&spec, &set, 2, 0, &mut Rng::new(seed), &mut b);
            let diff = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            seen_exact |= diff < 1e-5;
        }
        assert!(seen_exact);
    }

    #[test]
    fn flips_mirror_and_views_are_seeded() {
        let set = set();
        let spec = AugmentSpec {
            crop_min_scale: 1.0,
            crop_max_scale: 1.0,
            flip_prob: 1.0,
            jitter_prob: 0.0,
            jitter_strength: 0.0,
            grayscale_prob: 0.0,
            ..AugmentSpec::default()
        };
        let (a1, b1) = two_view_batch(&spec, &set, &[0, 3, 5], 9, 2);
        let (a2, b2) = two_view_batch(&spec, &set, &[0, 3, 5], 9, 2);
        assert_eq!(a1, a2);
        assert_eq!(b1, b2);
        let (a3, _) = two_view_batch(&AugmentSpec::default(), &set, &[0, 3, 5], 9, 3);
        assert_ne!(a1, a3);
    }

    /// The draws follow their settings: crop area and aspect ratio within
    /// range and spread over it, flips at their rate, jitter factors within
    /// 1 ± 0.8·s and the hue within ± 0.2·s of a turn.
    #[test]
    fn crop_flip_and_jitter_draws_follow_their_settings() {
        let mut rng = Rng::new(7);
        let (mut lo, mut hi) = (f64::MAX, 0.0f64);
        for _ in 0..4000 {
            let (x, y, w, h) = crop_box([0.2, 1.0], 32, &mut rng);
            assert!(x >= 0.0 && y >= 0.0 && x + w <= 32.0 + 1e-9 && y + h <= 32.0 + 1e-9);
            let area = w * h / 1024.0;
            assert!((0.2 - 1e-9..=1.0 + 1e-9).contains(&area), "{area}");
            assert!(
                (0.75 - 1e-9..=4.0 / 3.0 + 1e-9).contains(&(w / h)),
                "{}",
                w / h
            );
            (lo, hi) = (lo.min(area), hi.max(area));
        }
        assert!(lo < 0.21 && hi > 0.97, "areas span {lo}..{hi}");

        // Left half black, right half white: a flipped view is bright on the left.
        let mut set = set();
        for i in 0..set.len() {
            let n = set.size * set.size * 3;
            for p in 0..set.size * set.size {
                let v = if p % set.size < set.size / 2 { 0 } else { 255 };
                set.pixels[i * n + p * 3..i * n + p * 3 + 3].fill(v);
            }
        }
        let spec = AugmentSpec {
            flip_prob: 0.3,
            ..still(AugmentSpec::default())
        };
        let all: Vec<usize> = (0..set.len()).collect();
        let (mut flipped, mut views) = (0, 0);
        for epoch in 0..150 {
            let (a, b) = two_view_batch(&spec, &set, &all, 1, epoch);
            for v in a.chunks(3 * 32 * 32).chain(b.chunks(3 * 32 * 32)) {
                flipped += (v[0] > 0.0) as usize;
                views += 1;
            }
        }
        let rate = flipped as f64 / views as f64;
        assert!(
            (rate - 0.3).abs() < 0.03,
            "flip rate {rate} over {views} views"
        );

        let mut rng = Rng::new(3);
        let (mut b_lo, mut b_hi, mut hue) = (f32::MAX, 0.0f32, 0.0f32);
        for _ in 0..2000 {
            let j = Jitter::draw(0.5, &mut rng);
            for f in [j.brightness, j.contrast, j.saturation] {
                assert!((0.6..=1.4).contains(&f), "{f}");
            }
            (b_lo, b_hi) = (b_lo.min(j.brightness), b_hi.max(j.brightness));
            hue = hue.max(j.hue.abs());
        }
        assert!(b_lo < 0.62 && b_hi > 1.38, "{b_lo}..{b_hi}");
        let turn = std::f32::consts::TAU;
        assert!(hue <= 0.1 * turn + 1e-6 && hue > 0.09 * turn, "{hue}");
        // Any hue shift leaves gray gray.
        let mut j = Jitter::draw(0.0, &mut rng);
        j.hue = 0.3 * turn;
        let g = j.apply([0.4, 0.4, 0.4], &j.hue.sin_cos());
        assert!(g.iter().all(|v| (v - 0.4).abs() < 2e-3), "{g:?}");
    }

    #[test]
    fn jitter_and_grayscale_stay_in_range() {
        let set = set();
        let spec = AugmentSpec {
            jitter_prob: 1.0,
            jitter_strength: 1.0,
            grayscale_prob: 0.5,
            ..AugmentSpec::default()
        };
        let (a, _) = two_view_batch(&spec, &set, &[0, 1, 2, 3, 4, 5, 6, 7], 4, 0);
        let lo = (0.0 - MEAN[0]) / STD[0] - 1e-4;
        let hi = (1.0 - MEAN[0]) / STD[0] + 1e-4;
        assert!(a.iter().all(|v| (lo..=hi).contains(v)));
    }

    /// A full, unflipped, un-jittered view, for looking at one effect at a time.
    fn still(spec: AugmentSpec) -> AugmentSpec {
        AugmentSpec {
            crop_min_scale: 1.0,
            crop_max_scale: 1.0,
            flip_prob: 0.0,
            jitter_prob: 0.0,
            grayscale_prob: 0.0,
            ..spec
        }
    }

    /// Back from normalised floats to [0, 1].
    fn raw(v: &[f32]) -> Vec<f32> {
        v.iter().map(|x| x * STD[0] + MEAN[0]).collect()
    }

    #[test]
    fn blur_is_asymmetric_and_smooths() {
        let set = set();
        let spec = still(AugmentSpec {
            blur_prob: [1.0, 0.0],
            blur_sigma: [1.5, 1.5],
            ..AugmentSpec::default()
        });
        let (a, b) = two_view_batch(&spec, &set, &[0, 1, 2, 3], 5, 0);
        // Total variation along rows: the blurred first view has much less.
        let tv = |v: &[f32]| -> f32 { v.windows(2).map(|w| (w[1] - w[0]).abs()).sum() };
        assert!(
            tv(&raw(&a)) < 0.7 * tv(&raw(&b)),
            "{} vs {}",
            tv(&raw(&a)),
            tv(&raw(&b))
        );
        // A blur keeps the mean (clamped edges, normalised kernel).
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        assert!((mean(&raw(&a)) - mean(&raw(&b))).abs() < 0.01);
    }

    #[test]
    fn solarize_inverts_bright_values_and_noise_has_its_std() {
        let set = set();
        let (plain_a, _) = two_view_batch(&still(AugmentSpec::default()), &set, &[3], 1, 0);
        let sol = still(AugmentSpec {
            solarize_prob: [1.0, 1.0],
            ..AugmentSpec::default()
        });
        let (a, _) = two_view_batch(&sol, &set, &[3], 1, 0);
        for (p, s) in raw(&plain_a).iter().zip(raw(&a)) {
            let want = if *p >= 0.5 { 1.0 - p } else { *p };
            assert!((s - want).abs() < 1e-5, "{p} → {s}");
        }
        let noisy = still(AugmentSpec {
            noise_std: 0.1,
            ..AugmentSpec::default()
        });
        let (n, _) = two_view_batch(&noisy, &set, &[3, 4, 5, 6], 1, 0);
        let (c, _) = two_view_batch(&still(AugmentSpec::default()), &set, &[3, 4, 5, 6], 1, 0);
        let d: Vec<f32> = raw(&n).iter().zip(raw(&c)).map(|(x, y)| x - y).collect();
        let std = (d.iter().map(|x| x * x).sum::<f32>() / d.len() as f32).sqrt();
        assert!((std - 0.1).abs() < 0.01, "{std}");
        // Seeded: the same noise again.
        assert_eq!(two_view_batch(&noisy, &set, &[3, 4, 5, 6], 1, 0).0, n);
    }

    #[test]
    fn local_views_are_small_seeded_and_distinct() {
        let set = set();
        let spec = AugmentSpec {
            local_views: 2,
            local_size: 16,
            ..AugmentSpec::default()
        };
        let views = batch_views(&spec, &set, &[0, 3, 5], 9, 1, 2);
        let sizes: Vec<usize> = views.iter().map(|v| v.len()).collect();
        assert_eq!(
            sizes,
            [
                3 * 3 * 32 * 32,
                3 * 3 * 32 * 32,
                3 * 3 * 16 * 16,
                3 * 3 * 16 * 16
            ]
        );
        assert_eq!(views, batch_views(&spec, &set, &[0, 3, 5], 9, 1, 2));
        assert_ne!(views[2], views[3]);
        // The global views are those of a batch without local views.
        let (a, b) = two_view_batch(&spec, &set, &[0, 3, 5], 9, 1);
        assert_eq!((a, b), (views[0].clone(), views[1].clone()));
        // One global view (MAE, SimMIM) is the first of the two.
        let one = batch_views(&AugmentSpec::default(), &set, &[0, 3, 5], 9, 1, 1);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0], views[0]);
    }
}
