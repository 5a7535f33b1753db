//! The enrolment QR code: the `otpauth://` URI as a greyscale PNG, made with `qrcode` (the matrix
//! only, without its `image` feature) and `png`.

use crate::domain::{Error, Result};

/// Pixels per QR module.
const SCALE: usize = 6;
/// Quiet zone around the code, in modules (the QR specification asks for 4).
const QUIET: usize = 4;

/// `data` as a QR code (error correction M) in a PNG image.
pub fn png(data: &str) -> Result<Vec<u8>> {
    let code = qrcode::QrCode::with_error_correction_level(data.as_bytes(), qrcode::EcLevel::M)
        .map_err(|e| Error::internal(format!("QR code: {e}")))?;
    let width = code.width();
    let modules = code.to_colors();
    let side = (width + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in modules.iter().enumerate() {
        if *color != qrcode::Color::Dark {
            continue;
        }
        let (mx, my) = (i % width + QUIET, i / width + QUIET);
        for y in my * SCALE..(my + 1) * SCALE {
            let row = y * side;
            pixels[row + mx * SCALE..row + (mx + 1) * SCALE].fill(0);
        }
    }
    let side32 = u32::try_from(side).map_err(|_| Error::internal("QR code too large"))?;
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, side32, side32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder
            .write_header()
            .map_err(|e| Error::internal(format!("PNG: {e}")))?;
        writer
            .write_image_data(&pixels)
            .map_err(|e| Error::internal(format!("PNG: {e}")))?;
        writer
            .finish()
            .map_err(|e| Error::internal(format!("PNG: {e}")))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_png_comes_out() {
        let png = super::png("otpauth://totp/authd:a%40b.c?secret=AAAA&issuer=authd").unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() < 64 * 1024);
        // The longest URI EnrollTotp can make: a 254-character e-mail and a 64-character issuer,
        // every character percent-encoded (1,244 characters), still fits a QR code and 64 KiB.
        let long = format!(
            "otpauth://totp/{i}:{e}?secret={s}&issuer={i}&algorithm=SHA1&digits=6&period=30",
            i = "%21".repeat(64),
            e = "%2B".repeat(254),
            s = "A".repeat(32)
        );
        assert!(long.len() >= 1244 && long.len() <= 1300, "{}", long.len());
        let png = super::png(&long).unwrap();
        assert!(png.len() < 64 * 1024, "{}", png.len());
    }
}
