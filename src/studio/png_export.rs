//! Writing egui's screenshot pixels as a PNG file (atomically, like every file the studio writes).

use std::path::Path;

/// The part of a screenshot inside `rect` (points), clipped to the image: the window may have
/// changed size between the request and the pixels, and egui's own `region` panics then.
pub fn crop(
    image: &egui::ColorImage,
    rect: egui::Rect,
    ppp: f32,
) -> Result<egui::ColorImage, String> {
    let [w, h] = image.size;
    let to_px = |v: f32, limit: usize| ((v * ppp).round().max(0.0) as usize).min(limit);
    let (x0, x1) = (to_px(rect.min.x, w), to_px(rect.max.x, w));
    let (y0, y1) = (to_px(rect.min.y, h), to_px(rect.max.y, h));
    if x1 <= x0 || y1 <= y0 {
        return Err("the plot is not on screen: nothing to export".into());
    }
    Ok(image.region_by_pixels([x0, y0], [x1 - x0, y1 - y0]))
}

pub fn write_png(path: &Path, image: &egui::ColorImage) -> Result<(), String> {
    let [w, h] = image.size;
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, w as u32, h as u32);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder
            .write_header()
            .map_err(|e| format!("cannot encode {}: {e}", path.display()))?;
        writer
            .write_image_data(image.as_raw())
            .map_err(|e| format!("cannot encode {}: {e}", path.display()))?;
    }
    crate::fsutil::write_atomic(path, &bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crop_is_clipped_to_the_image_and_an_empty_one_refused() {
        let mut image = egui::ColorImage::filled([10, 8], egui::Color32::BLACK);
        image.pixels[3 * 10 + 4] = egui::Color32::WHITE;
        let rect = egui::Rect::from_min_max(egui::pos2(2.0, 1.5), egui::pos2(40.0, 3.0));
        let cut = crop(&image, rect, 2.0).unwrap();
        assert_eq!(cut.size, [6, 3], "x 4..10 (clipped), y 3..6");
        assert_eq!(cut.pixels[0], egui::Color32::WHITE);
        let off_screen = egui::Rect::from_min_max(egui::pos2(20.0, 0.0), egui::pos2(30.0, 4.0));
        assert!(crop(&image, off_screen, 1.0).is_err());
        let flat = egui::Rect::from_min_max(egui::pos2(1.0, 2.0), egui::pos2(5.0, 2.0));
        assert!(crop(&image, flat, 1.0).is_err());
    }

    #[test]
    fn a_written_png_decodes_to_the_same_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run-plot.png");
        let mut image = egui::ColorImage::filled([3, 2], egui::Color32::from_rgb(10, 20, 30));
        image.pixels[4] = egui::Color32::WHITE;
        write_png(&path, &image).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(&buf[..info.buffer_size()], image.as_raw());
    }
}
