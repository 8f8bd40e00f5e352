//! Helpers shared by the integration tests: raw Standard MIDI File bytes built by hand, so each
//! test controls exactly what the parser sees (running status, odd divisions, hostile lengths).
#![allow(dead_code)]

pub mod peak_alloc;
pub mod studio;

pub fn vlq(mut n: u32) -> Vec<u8> {
    let mut out = vec![(n & 0x7f) as u8];
    n >>= 7;
    while n > 0 {
        out.push(((n & 0x7f) as u8) | 0x80);
        n >>= 7;
    }
    out.reverse();
    out
}

/// A track chunk around raw event bytes (an end-of-track is appended).
pub fn track(events: &[u8]) -> Vec<u8> {
    let mut body = events.to_vec();
    body.extend_from_slice(&[0x00, 0xff, 0x2f, 0x00]);
    let mut out = b"MTrk".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend(body);
    out
}

/// A whole file; `division` is the raw header word (ticks per quarter, or SMPTE when negative).
pub fn smf(format: u16, division: u16, tracks: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"MThd".to_vec();
    out.extend_from_slice(&6u32.to_be_bytes());
    out.extend_from_slice(&format.to_be_bytes());
    out.extend_from_slice(&(tracks.len() as u16).to_be_bytes());
    out.extend_from_slice(&division.to_be_bytes());
    for t in tracks {
        out.extend_from_slice(t);
    }
    out
}

/// Event bytes: delta time then a message.
pub fn ev(delta: u32, message: &[u8]) -> Vec<u8> {
    let mut out = vlq(delta);
    out.extend_from_slice(message);
    out
}

pub fn tempo(delta: u32, us_per_quarter: u32) -> Vec<u8> {
    let b = us_per_quarter.to_be_bytes();
    ev(delta, &[0xff, 0x51, 0x03, b[1], b[2], b[3]])
}

pub fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

pub fn assert_close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-9, "{what}: {a} != {b}");
}

/// A tensor's f32 values as bits, flattened: for comparisons that must be exact.
pub fn bits(t: &candle_core::Tensor) -> Vec<u32> {
    let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    values.iter().map(|v| v.to_bits()).collect()
}

/// Every tensor of a safetensors file in a checkpoint folder, as bits, sorted by name: for
/// comparisons that must be exact.
pub fn tensor_bits(dir: &std::path::Path, file: &str) -> Vec<(String, Vec<u32>)> {
    let tensors =
        candle_core::safetensors::load(dir.join(file), &candle_core::Device::Cpu).unwrap();
    let mut all: Vec<(String, Vec<u32>)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let values = bits(&t);
            (name, values)
        })
        .collect();
    all.sort();
    all
}

/// Largest absolute difference over the largest magnitude of the expected values (`b`).
pub fn max_rel_err(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let values = |t: &candle_core::Tensor| {
        t.to_dtype(candle_core::DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-6);
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

/// A tensor of `shape` with values uniform in [-1, 1) from `seed`.
#[allow(dead_code)]
pub fn random(shape: &[usize], seed: u64) -> candle_core::Tensor {
    let mut rng = echoai::rng::Rng::new(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
    candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu).unwrap()
}
