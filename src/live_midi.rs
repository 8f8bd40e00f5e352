//! Live MIDI: sending a performance to an output port in real time, and recording a primer from
//! an input port. The ports sit behind two small traits ([`MidiOut`], [`MidiIn`]) with a midir
//! implementation and an in-memory fake, so everything but the OS connection is tested here.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use midly::live::LiveEvent;

use crate::midi::NoteTracker;
use crate::performance::Performance;

pub const CLIENT_NAME: &str = "EchoAI Studio";

#[derive(Debug, thiserror::Error)]
pub enum LiveMidiError {
    #[error("MIDI is not available on this system: {0}")]
    Unavailable(String),
    #[error("no MIDI port matches `{0}`; `echoai ports` lists them")]
    NoSuchPort(String),
    #[error("cannot connect to the MIDI port: {0}")]
    Connect(String),
    #[error("cannot send to the MIDI port: {0}")]
    Send(String),
}

/// Which port: by (part of) its name, by its index in the list, or a new virtual port that other
/// programs (a DAW) connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortChoice {
    Name(String),
    Index(usize),
    Virtual(String),
}

impl PortChoice {
    /// A number is an index; anything else a name.
    pub fn parse(text: &str) -> PortChoice {
        text.parse()
            .map(PortChoice::Index)
            .unwrap_or_else(|_| PortChoice::Name(text.to_string()))
    }

    /// The index of the chosen port in `names`.
    pub fn resolve(&self, names: &[String]) -> Result<usize, LiveMidiError> {
        match self {
            PortChoice::Index(i) if *i < names.len() => Ok(*i),
            PortChoice::Index(i) => Err(LiveMidiError::NoSuchPort(i.to_string())),
            PortChoice::Name(n) => names
                .iter()
                .position(|p| p == n)
                .or_else(|| {
                    let lower = n.to_lowercase();
                    names.iter().position(|p| p.to_lowercase().contains(&lower))
                })
                .ok_or_else(|| LiveMidiError::NoSuchPort(n.clone())),
            PortChoice::Virtual(n) => Err(LiveMidiError::NoSuchPort(n.clone())),
        }
    }
}

/// A connection that takes raw MIDI messages.
pub trait MidiSender: Send {
    fn send(&mut self, message: &[u8]) -> Result<(), LiveMidiError>;
}

pub trait MidiOut {
    fn ports(&self) -> Result<Vec<String>, LiveMidiError>;
    fn connect(&self, port: &PortChoice) -> Result<Box<dyn MidiSender>, LiveMidiError>;
}

/// Receives `(microseconds, message bytes)` from an input port.
pub type MidiCallback = Box<dyn FnMut(u64, &[u8]) + Send>;

pub trait MidiIn {
    fn ports(&self) -> Result<Vec<String>, LiveMidiError>;
    /// Listens until the returned connection is dropped.
    fn listen(
        &self,
        port: &PortChoice,
        callback: MidiCallback,
    ) -> Result<Box<dyn Send>, LiveMidiError>;
}

// ---------------------------------------------------------------------------------------------
// midir

/// The system's MIDI (ALSA sequencer, CoreMIDI, WinMM) through midir.
pub struct MidirOut;

struct MidirSender(midir::MidiOutputConnection);

impl MidiSender for MidirSender {
    fn send(&mut self, message: &[u8]) -> Result<(), LiveMidiError> {
        self.0
            .send(message)
            .map_err(|e| LiveMidiError::Send(e.to_string()))
    }
}

fn output() -> Result<midir::MidiOutput, LiveMidiError> {
    midir::MidiOutput::new(CLIENT_NAME).map_err(|e| LiveMidiError::Unavailable(e.to_string()))
}

fn input() -> Result<midir::MidiInput, LiveMidiError> {
    midir::MidiInput::new(CLIENT_NAME).map_err(|e| LiveMidiError::Unavailable(e.to_string()))
}

impl MidiOut for MidirOut {
    fn ports(&self) -> Result<Vec<String>, LiveMidiError> {
        let out = output()?;
        Ok(out
            .ports()
            .iter()
            .map(|p| out.port_name(p).unwrap_or_else(|_| "(unnamed)".into()))
            .collect())
    }

    fn connect(&self, port: &PortChoice) -> Result<Box<dyn MidiSender>, LiveMidiError> {
        let out = output()?;
        if let PortChoice::Virtual(name) = port {
            return virtual_output(out, name);
        }
        let ports = out.ports();
        let names: Vec<String> = ports
            .iter()
            .map(|p| out.port_name(p).unwrap_or_default())
            .collect();
        let index = port.resolve(&names)?;
        let conn = out
            .connect(&ports[index], CLIENT_NAME)
            .map_err(|e| LiveMidiError::Connect(e.to_string()))?;
        Ok(Box::new(MidirSender(conn)))
    }
}

#[cfg(unix)]
fn virtual_output(
    out: midir::MidiOutput,
    name: &str,
) -> Result<Box<dyn MidiSender>, LiveMidiError> {
    use midir::os::unix::VirtualOutput;
    let conn = out
        .create_virtual(name)
        .map_err(|e| LiveMidiError::Connect(e.to_string()))?;
    Ok(Box::new(MidirSender(conn)))
}

#[cfg(not(unix))]
fn virtual_output(
    _out: midir::MidiOutput,
    name: &str,
) -> Result<Box<dyn MidiSender>, LiveMidiError> {
    Err(LiveMidiError::Connect(format!(
        "virtual ports (`{name}`) need Linux or macOS; on Windows install a loopback driver such as loopMIDI and choose its port"
    )))
}

pub struct MidirIn;

impl MidiIn for MidirIn {
    fn ports(&self) -> Result<Vec<String>, LiveMidiError> {
        let inp = input()?;
        Ok(inp
            .ports()
            .iter()
            .map(|p| inp.port_name(p).unwrap_or_else(|_| "(unnamed)".into()))
            .collect())
    }

    fn listen(
        &self,
        port: &PortChoice,
        mut callback: MidiCallback,
    ) -> Result<Box<dyn Send>, LiveMidiError> {
        let inp = input()?;
        let ports = inp.ports();
        let names: Vec<String> = ports
            .iter()
            .map(|p| inp.port_name(p).unwrap_or_default())
            .collect();
        let index = port.resolve(&names)?;
        let conn = inp
            .connect(
                &ports[index],
                CLIENT_NAME,
                move |micros, bytes, _| callback(micros, bytes),
                (),
            )
            .map_err(|e| LiveMidiError::Connect(e.to_string()))?;
        Ok(Box::new(conn))
    }
}

// ---------------------------------------------------------------------------------------------
// The fake

/// Every message a [`FakeMidiOut`] connection was sent, with when.
pub type SentLog = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

/// An output "port" that records what it is sent.
#[derive(Clone, Default)]
pub struct FakeMidiOut {
    pub log: SentLog,
    pub port_names: Vec<String>,
}

struct FakeSender(SentLog);

impl MidiSender for FakeSender {
    fn send(&mut self, message: &[u8]) -> Result<(), LiveMidiError> {
        if let Ok(mut log) = self.0.lock() {
            log.push((Instant::now(), message.to_vec()));
        }
        Ok(())
    }
}

impl MidiOut for FakeMidiOut {
    fn ports(&self) -> Result<Vec<String>, LiveMidiError> {
        Ok(self.port_names.clone())
    }

    fn connect(&self, port: &PortChoice) -> Result<Box<dyn MidiSender>, LiveMidiError> {
        if !matches!(port, PortChoice::Virtual(_)) {
            port.resolve(&self.port_names)?;
        }
        Ok(Box::new(FakeSender(self.log.clone())))
    }
}

/// An input "port" that plays a script of `(microseconds, message)` into the callback at once.
#[derive(Clone, Default)]
pub struct FakeMidiIn {
    pub port_names: Vec<String>,
    pub script: Vec<(u64, Vec<u8>)>,
}

impl MidiIn for FakeMidiIn {
    fn ports(&self) -> Result<Vec<String>, LiveMidiError> {
        Ok(self.port_names.clone())
    }

    fn listen(
        &self,
        port: &PortChoice,
        mut callback: MidiCallback,
    ) -> Result<Box<dyn Send>, LiveMidiError> {
        port.resolve(&self.port_names)?;
        for (micros, bytes) in &self.script {
            callback(*micros, bytes);
        }
        Ok(Box::new(()))
    }
}

// ---------------------------------------------------------------------------------------------
// Scheduling a performance

#[derive(Clone, Copy, Debug)]
struct Timed {
    seconds: f64,
    on: bool,
    pitch: u8,
    velocity: u8,
}

/// A transport command.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Command {
    Play,
    Pause,
    Seek(f64),
    Stop,
}

/// Plays a performance on a [`MidiSender`] from a thread of its own. It starts paused at 0.
/// Stop, seek, pause and drop all silence the port: note-offs for sounding notes, then CC 123.
pub struct MidiScheduler {
    commands: Option<Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    /// Seconds as f64 bits, for a UI's playhead.
    position: Arc<std::sync::atomic::AtomicU64>,
}

impl MidiScheduler {
    pub fn new(perf: &Performance, sender: Box<dyn MidiSender>) -> MidiScheduler {
        let (tx, rx) = mpsc::channel();
        let position = Arc::new(std::sync::atomic::AtomicU64::new(0f64.to_bits()));
        let schedule = Schedule::new(timed_events(perf), sender, position.clone());
        let thread = std::thread::Builder::new()
            .name("midi-scheduler".into())
            .spawn(move || run_scheduler(schedule, rx))
            .ok();
        MidiScheduler {
            commands: Some(tx),
            thread,
            position,
        }
    }

    fn send(&self, command: Command) {
        if let Some(tx) = &self.commands {
            let _ = tx.send(command);
        }
    }

    pub fn play(&self) {
        self.send(Command::Play);
    }

    pub fn pause(&self) {
        self.send(Command::Pause);
    }

    pub fn seek(&self, seconds: f64) {
        self.send(Command::Seek(seconds));
    }

    pub fn stop(&self) {
        self.send(Command::Stop);
    }

    /// Seconds into the piece (updated as events are sent and on seek).
    pub fn position(&self) -> f64 {
        f64::from_bits(self.position.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Drop for MidiScheduler {
    fn drop(&mut self) {
        // Closing the channel tells the thread to silence the port and finish.
        self.commands.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct PortState {
    sender: Box<dyn MidiSender>,
    sounding: [bool; 128],
}

impl PortState {
    fn send_event(&mut self, e: &Timed) {
        let message = if e.on {
            [0x90, e.pitch, e.velocity]
        } else {
            [0x80, e.pitch, 0]
        };
        if self.sender.send(&message).is_ok() {
            self.sounding[e.pitch as usize] = e.on;
        }
    }

    fn all_notes_off(&mut self) {
        for pitch in 0..128u8 {
            if std::mem::take(&mut self.sounding[pitch as usize]) {
                let _ = self.sender.send(&[0x80, pitch, 0]);
            }
        }
        let _ = self.sender.send(&[0xB0, 123, 0]);
    }
}

/// The scheduler's decisions, apart from any clock: what to send at a given time, what a
/// command does, and when the next event is due. `now` is time on some monotonic clock (the
/// thread's real one, or a test's fake one), as a duration since that clock's start.
pub struct Schedule {
    events: Vec<Timed>,
    port: PortState,
    next: usize,
    paused_at: f64,
    /// While playing: the clock time that corresponds to time 0 of the piece.
    origin: Option<Duration>,
    position: Arc<std::sync::atomic::AtomicU64>,
}

impl Schedule {
    fn new(
        events: Vec<Timed>,
        sender: Box<dyn MidiSender>,
        position: Arc<std::sync::atomic::AtomicU64>,
    ) -> Schedule {
        Schedule {
            events,
            port: PortState {
                sender,
                sounding: [false; 128],
            },
            next: 0,
            paused_at: 0.0,
            origin: None,
            position,
        }
    }

    /// A schedule for `perf` on `sender`, for driving by hand (tests with a fake clock).
    pub fn for_performance(perf: &Performance, sender: Box<dyn MidiSender>) -> Schedule {
        let position = Arc::new(std::sync::atomic::AtomicU64::new(0f64.to_bits()));
        Schedule::new(timed_events(perf), sender, position)
    }

    fn store(&self, seconds: f64) {
        self.position
            .store(seconds.to_bits(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Seconds into the piece.
    pub fn position(&self) -> f64 {
        f64::from_bits(self.position.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Sends every event due by `now`; at the end of the piece, silences the port and stops.
    pub fn send_due(&mut self, now: Duration) {
        let Some(start) = self.origin else {
            return;
        };
        while let Some(event) = self.events.get(self.next) {
            if start + Duration::from_secs_f64(event.seconds.max(0.0)) > now {
                return;
            }
            self.port.send_event(event);
            self.store(event.seconds);
            self.next += 1;
        }
        // The piece is over: silence and wait at the end.
        self.port.all_notes_off();
        self.paused_at = now.saturating_sub(start).as_secs_f64();
        self.origin = None;
    }

    /// When the next event is due on the clock, while playing.
    pub fn next_due(&self) -> Option<Duration> {
        let start = self.origin?;
        let event = self.events.get(self.next)?;
        Some(start + Duration::from_secs_f64(event.seconds.max(0.0)))
    }

    pub fn is_playing(&self) -> bool {
        self.origin.is_some()
    }

    /// Applies a transport command at clock time `now`.
    pub fn apply(&mut self, command: Command, now: Duration) {
        let at = |seconds: f64| now.saturating_sub(Duration::from_secs_f64(seconds));
        match command {
            Command::Play => {
                if self.origin.is_none() {
                    if self.next >= self.events.len() {
                        self.next = 0;
                        self.paused_at = 0.0;
                    }
                    self.origin = Some(at(self.paused_at));
                }
            }
            Command::Pause => {
                if let Some(start) = self.origin.take() {
                    self.paused_at = now.saturating_sub(start).as_secs_f64();
                    self.store(self.paused_at);
                }
                self.port.all_notes_off();
            }
            Command::Seek(seconds) => {
                self.port.all_notes_off();
                let seconds = if seconds.is_finite() {
                    seconds.max(0.0)
                } else {
                    0.0
                };
                self.next = self.events.partition_point(|e| e.seconds < seconds);
                self.paused_at = seconds;
                self.store(seconds);
                if self.origin.is_some() {
                    self.origin = Some(at(seconds));
                }
            }
            Command::Stop => {
                self.port.all_notes_off();
                self.origin = None;
                self.next = 0;
                self.paused_at = 0.0;
                self.store(0.0);
            }
        }
    }

    /// Silences the port (the scheduler is going away).
    pub fn finish(&mut self) {
        self.port.all_notes_off();
    }
}

/// Note-ons and note-offs in time order, releases before onsets at one time.
fn timed_events(perf: &Performance) -> Vec<Timed> {
    let mut events: Vec<Timed> = perf
        .notes
        .iter()
        .flat_map(|n| {
            [
                Timed {
                    seconds: n.start,
                    on: true,
                    pitch: n.pitch.min(127),
                    velocity: n.velocity.clamp(1, 127),
                },
                Timed {
                    seconds: n.end,
                    on: false,
                    pitch: n.pitch.min(127),
                    velocity: 0,
                },
            ]
        })
        .collect();
    events.sort_by(|a, b| a.seconds.total_cmp(&b.seconds).then(a.on.cmp(&b.on)));
    events
}

/// The scheduler thread: the real clock, waiting on commands until the next event is due.
fn run_scheduler(mut schedule: Schedule, commands: Receiver<Command>) {
    let clock = Instant::now();
    loop {
        let now = clock.elapsed();
        schedule.send_due(now);
        let command = match schedule.next_due() {
            Some(due) => match commands.recv_timeout(due.saturating_sub(clock.elapsed())) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            },
            None => match commands.recv() {
                Ok(c) => c,
                Err(_) => break,
            },
        };
        schedule.apply(command, clock.elapsed());
    }
    schedule.finish();
}

// ---------------------------------------------------------------------------------------------
// Recording

/// Builds a performance from timestamped input messages (sustain pedal folded in); times start
/// at the first message.
#[derive(Default)]
pub struct MidiRecorder {
    tracker: NoteTracker,
    first_micros: Option<u64>,
    last_seconds: f64,
}

impl MidiRecorder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, micros: u64, bytes: &[u8]) {
        let Ok(LiveEvent::Midi { channel, message }) = LiveEvent::parse(bytes) else {
            return;
        };
        let first = *self.first_micros.get_or_insert(micros);
        let seconds = micros.saturating_sub(first) as f64 / 1e6;
        self.last_seconds = self.last_seconds.max(seconds);
        self.tracker.handle(channel.as_int(), message, seconds);
    }

    /// Notes completed so far (for drawing while recording).
    pub fn notes_so_far(&self) -> usize {
        self.tracker.notes().len()
    }

    pub fn finish(self) -> Performance {
        Performance::from_notes(self.tracker.finish(self.last_seconds))
    }
}

/// Records from `port` for `seconds` (blocking) into a performance.
pub fn record(
    midi_in: &dyn MidiIn,
    port: &PortChoice,
    seconds: f64,
) -> Result<Performance, LiveMidiError> {
    let recorder = Arc::new(Mutex::new(MidiRecorder::new()));
    let sink = recorder.clone();
    let connection = midi_in.listen(
        port,
        Box::new(move |micros, bytes| {
            if let Ok(mut r) = sink.lock() {
                r.push(micros, bytes);
            }
        }),
    )?;
    // Bounded here too: `from_secs_f64` panics on infinity and NaN.
    let seconds = if seconds.is_finite() {
        seconds.clamp(0.0, 86_400.0)
    } else {
        0.0
    };
    std::thread::sleep(Duration::from_secs_f64(seconds));
    drop(connection);
    let recorder = std::mem::take(
        &mut *recorder
            .lock()
            .map_err(|_| LiveMidiError::Unavailable("the recording thread failed".into()))?,
    );
    Ok(recorder.finish())
}
