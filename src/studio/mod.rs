//! The studio: an eframe app over the engine. Nothing outside this module imports it.

mod app;
mod busy;
pub mod constraints_panel;
mod curves;
pub mod dialogs;
pub mod document;
pub mod export_panel;
pub mod extend;
pub mod generate_panel;
pub mod jam_panel;
mod jobs;
pub mod library_panel;
pub mod musical_typing;
pub mod outputs;
mod path_entry;
pub mod piano_roll;
mod png_export;
pub mod session;
pub mod train_panel;
pub mod training_view;
pub mod unsaved;

use std::sync::Arc;

pub use app::{Central, Status, Studio, StudioEnv, StudioSettings, Tab};

use crate::audio::PianoSoundFont;
use crate::live_midi::{MidirIn, MidirOut};

/// The real machine: rfd dialogs, the built-in synth, midir ports.
pub fn system_env() -> StudioEnv {
    StudioEnv {
        dialogs: Box::new(dialogs::RfdDialogs::default()),
        output: Box::new(outputs::SynthOut::new(PianoSoundFont::builtin())),
        midi_out: Arc::new(MidirOut),
        midi_in: Box::new(MidirIn),
        session_root: session::default_session_root(),
    }
}

struct StudioApp {
    studio: Studio,
}

impl eframe::App for StudioApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.studio.ui(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.studio.settings());
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.studio.shut_down();
    }
}

/// Whether an OpenGL renderer string names one of Mesa's CPU rasterisers.
pub fn is_software_renderer(renderer: &str) -> bool {
    let renderer = renderer.to_ascii_lowercase();
    ["llvmpipe", "softpipe", "swrast", "software rasterizer"]
        .iter()
        .any(|name| renderer.contains(name))
}

/// Opens the studio window; returns when it is closed.
pub fn run() -> Result<(), String> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("EchoAI Studio")
            .with_inner_size([1400.0, 860.0])
            .with_min_inner_size([800.0, 500.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "EchoAI Studio",
        options,
        Box::new(|cc| {
            let settings: StudioSettings = cc
                .storage
                .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
                .unwrap_or_default();
            let mut studio = Studio::new(system_env(), settings);
            let renderer = cc.gl.as_ref().map(|gl| {
                use eframe::glow::HasContext;
                // SAFETY: a plain string query on the context eframe just made current.
                unsafe { gl.get_parameter_string(eframe::glow::RENDERER) }
            });
            studio
                .train
                .set_software_renderer(renderer.as_deref().is_some_and(is_software_renderer));
            studio.open_startup_piece();
            Ok(Box::new(StudioApp { studio }))
        }),
    )
    .map_err(|e| format!("cannot open the studio window ({e}); on a machine without a display, use the `echoai` commands (see `echoai --help`)."))
}

#[cfg(test)]
mod tests {
    #[test]
    fn mesa_cpu_rasterisers_are_software_and_gpus_are_not() {
        for software in [
            "llvmpipe (LLVM 15.0.6, 256 bits)",
            "softpipe",
            "Software Rasterizer",
        ] {
            assert!(super::is_software_renderer(software), "{software}");
        }
        for gpu in [
            "NVIDIA GeForce RTX 4090/PCIe/SSE2",
            "Mesa Intel(R) UHD Graphics 620 (KBL GT2)",
            "AMD Radeon RX 7900 XTX (radeonsi, navi31, LLVM 17.0.6, DRM 3.54)",
            "Apple M2",
        ] {
            assert!(!super::is_software_renderer(gpu), "{gpu}");
        }
    }
}
