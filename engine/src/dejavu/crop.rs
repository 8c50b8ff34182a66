//! Background crops (the reference's `get_crop`): the largest axis-aligned
//! rectangle that touches no object box, or a fixed corner.

use sslab_shared::audit::{AttackSpec, CropKind};

use crate::data::ImageSet;

/// `[x0, y0, x1, y1)` in pixels.
pub type Rect = [u32; 4];

/// Why an image is not attacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    NoBox,
    BoxOutside,
    CropTooSmall,
}

impl Skip {
    pub fn reason(self) -> &'static str {
        match self {
            Skip::NoBox => "no object box",
            Skip::BoxOutside => "box outside the image",
            Skip::CropTooSmall => "background crop below the minimum size",
        }
    }
}

fn overlaps(a: Rect, b: Rect) -> bool {
    a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]
}

/// The rectangle of a `size`×`size` image that touches none of `boxes` and
/// has the largest shorter side (then the largest area; then the first in
/// scan order). Its edges lie on the image's or the boxes' edges, so the
/// search runs over those coordinates only. None when the boxes cover all.
pub fn largest_free(size: u32, boxes: &[Rect]) -> Option<Rect> {
    let edges = |lo: usize, hi: usize| {
        let mut v: Vec<u32> = [0, size]
            .into_iter()
            .chain(
                boxes
                    .iter()
                    .flat_map(|b| [b[lo].min(size), b[hi].min(size)]),
            )
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let (xs, ys) = (edges(0, 2), edges(1, 3));
    let mut best: Option<(u32, u32, Rect)> = None;
    for (i, &x0) in xs.iter().enumerate() {
        for &x1 in &xs[i + 1..] {
            for (j, &y0) in ys.iter().enumerate() {
                for &y1 in &ys[j + 1..] {
                    let r = [x0, y0, x1, y1];
                    if boxes.iter().any(|&b| overlaps(r, b)) {
                        continue;
                    }
                    let key = ((x1 - x0).min(y1 - y0), (x1 - x0) * (y1 - y0));
                    if best.is_none_or(|(s, a, _)| key > (s, a)) {
                        best = Some((key.0, key.1, r));
                    }
                }
            }
        }
    }
    best.map(|(_, _, r)| r)
}

/// The crop attacked for image `i`, or why there is none.
pub fn background_crop(set: &ImageSet, i: usize, spec: &AttackSpec) -> Result<Rect, Skip> {
    let size = set.size as u32;
    if spec.crop == CropKind::Corner {
        let side = ((spec.corner_fraction * size as f64).round() as u32).clamp(1, size);
        return Ok([0, 0, side, side]);
    }
    let b = match super::split::box_of(set, i) {
        super::split::BoxState::Valid(b) => b,
        super::split::BoxState::Missing => return Err(Skip::NoBox),
        super::split::BoxState::Outside => return Err(Skip::BoxOutside),
    };
    let r = largest_free(size, &[b]).ok_or(Skip::CropTooSmall)?;
    let shorter = (r[2] - r[0]).min(r[3] - r[1]) as f64;
    if shorter < spec.min_crop * size as f64 {
        return Err(Skip::CropTooSmall);
    }
    Ok(r)
}

/// The pixels of `rect` of image `i` resized to the set's size, sampled
/// bilinearly without ever reading a pixel outside the rectangle.
pub fn resize_crop(set: &ImageSet, i: usize, rect: Rect) -> Vec<u8> {
    let s = set.size;
    let img = set.image(i);
    let [x0, y0, x1, y1] = rect.map(|v| v as f64);
    let (w, h) = (x1 - x0, y1 - y0);
    let mut out = vec![0u8; s * s * 3];
    for oy in 0..s {
        for ox in 0..s {
            let fx = (x0 + (ox as f64 + 0.5) * w / s as f64 - 0.5).clamp(x0, x1 - 1.0);
            let fy = (y0 + (oy as f64 + 0.5) * h / s as f64 - 0.5).clamp(y0, y1 - 1.0);
            let (ax, ay) = (fx.floor() as usize, fy.floor() as usize);
            let (bx, by) = (
                (ax + 1).min(rect[2] as usize - 1),
                (ay + 1).min(rect[3] as usize - 1),
            );
            let (tx, ty) = (fx - ax as f64, fy - ay as f64);
            for c in 0..3 {
                let p = |x: usize, y: usize| img[(y * s + x) * 3 + c] as f64;
                let top = p(ax, ay) * (1.0 - tx) + p(bx, ay) * tx;
                let bottom = p(ax, by) * (1.0 - tx) + p(bx, by) * tx;
                out[(oy * s + ox) * 3 + c] = (top * (1.0 - ty) + bottom * ty).round() as u8;
            }
        }
    }
    out
}

/// The crops of `images` as a set of their own (labels kept, no boxes).
pub fn crop_set(set: &ImageSet, images: &[(usize, Rect)]) -> ImageSet {
    ImageSet {
        size: set.size,
        pixels: images
            .iter()
            .flat_map(|&(i, r)| resize_crop(set, i, r))
            .collect(),
        labels: images.iter().map(|&(i, _)| set.labels[i]).collect(),
        boxes: Vec::new(),
        class_names: set.class_names.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sslab_shared::rng::Rng;

    #[test]
    fn the_largest_crop_never_touches_a_box_and_beats_every_other() {
        let mut rng = Rng::new(9);
        for _ in 0..300 {
            let size = 8 + rng.below(25) as u32;
            let boxes: Vec<Rect> = (0..1 + rng.below(3))
                .map(|_| {
                    let (x0, y0) = (
                        rng.below(size as usize) as u32,
                        rng.below(size as usize) as u32,
                    );
                    [
                        x0,
                        y0,
                        x0 + 1 + rng.below((size - x0) as usize) as u32,
                        y0 + 1 + rng.below((size - y0) as usize) as u32,
                    ]
                })
                .collect();
            let found = largest_free(size, &boxes);
            // Brute force over every rectangle of the image.
            let mut best = 0;
            for x0 in 0..size {
                for x1 in x0 + 1..=size {
                    for y0 in 0..size {
                        for y1 in y0 + 1..=size {
                            let r = [x0, y0, x1, y1];
                            if !boxes.iter().any(|&b| overlaps(r, b)) {
                                best = best.max((x1 - x0).min(y1 - y0));
                            }
                        }
                    }
                }
            }
            match found {
                Some(r) => {
                    assert!(boxes.iter().all(|&b| !overlaps(r, b)), "{r:?} {boxes:?}");
                    assert!(r[2] <= size && r[3] <= size);
                    assert_eq!((r[2] - r[0]).min(r[3] - r[1]), best, "{boxes:?}");
                }
                None => assert_eq!(best, 0),
            }
        }
    }

    fn one_image(b: [u32; 4]) -> ImageSet {
        // Red object inside the box, grey elsewhere.
        let mut pixels = vec![100u8; 32 * 32 * 3];
        for y in b[1]..b[3] {
            for x in b[0]..b[2] {
                let o = ((y * 32 + x) * 3) as usize;
                pixels[o..o + 3].copy_from_slice(&[255, 0, 0]);
            }
        }
        ImageSet {
            size: 32,
            pixels,
            labels: vec![0],
            boxes: vec![b],
            class_names: vec!["a".into()],
        }
    }

    #[test]
    fn crops_show_background_only_and_small_ones_are_skipped() {
        let spec = AttackSpec::default();
        let set = one_image([4, 6, 20, 30]);
        let r = background_crop(&set, 0, &spec).unwrap();
        assert_eq!(r, [20, 0, 32, 32]);
        let crop = resize_crop(&set, 0, r);
        assert!(crop.iter().all(|&v| v == 100), "an object pixel leaked in");
        // An object filling all but a 6 px strip leaves too little (8 px asked).
        let set = one_image([0, 0, 26, 32]);
        assert_eq!(background_crop(&set, 0, &spec), Err(Skip::CropTooSmall));
        let set = one_image([0, 0, 32, 32]);
        assert_eq!(background_crop(&set, 0, &spec), Err(Skip::CropTooSmall));
        let mut set = one_image([4, 4, 8, 8]);
        set.boxes[0] = [4, 4, 40, 8];
        assert_eq!(background_crop(&set, 0, &spec), Err(Skip::BoxOutside));
        set.boxes.clear();
        assert_eq!(background_crop(&set, 0, &spec), Err(Skip::NoBox));
        let corner = AttackSpec {
            crop: CropKind::Corner,
            ..spec
        };
        assert_eq!(background_crop(&set, 0, &corner), Ok([0, 0, 10, 10]));
    }
}
