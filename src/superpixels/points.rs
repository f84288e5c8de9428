//! The prompt grid (docs/svp.md §2.1): n×n foreground points spread over the encoder's view,
//! in SAM's input frame.

use super::frame::Frame;

/// Point (i, j), i, j ∈ [0, n), at cell `(X0 + (i + ½)(X1 − X0)/n, Y0 + (j + ½)(Y1 − Y0)/n)`,
/// times `S_in / L` into the input frame (f64, then f32). Prompt k = j·n + i (x fastest).
pub fn point_grid(frame: &Frame, n: usize) -> Vec<(f32, f32)> {
    let [x0, y0, x1, y1] = frame.view;
    let scale = frame.input_size as f64 / frame.mask_size as f64;
    let mut points = Vec::with_capacity(n * n);
    for j in 0..n {
        for i in 0..n {
            // The same operation order as the reference: ((i + ½)·(X1 − X0)) / n, then + X0.
            let x = x0 + (i as f64 + 0.5) * (x1 - x0) / n as f64;
            let y = y0 + (j as f64 + 0.5) * (y1 - y0) / n as f64;
            points.push(((x * scale) as f32, (y * scale) as f32));
        }
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A square image seen whole: the 2×2 grid sits at the quarter points of the input frame.
    #[test]
    fn grid_covers_the_view() {
        let f = Frame::new((100, 100), 1024, 256, [0.0, 0.0, 100.0, 100.0]).unwrap();
        let p = point_grid(&f, 2);
        assert_eq!(p, vec![(256.0, 256.0), (768.0, 256.0), (256.0, 768.0), (768.0, 768.0)]);
        assert!(point_grid(&f, 0).is_empty());
    }
}
