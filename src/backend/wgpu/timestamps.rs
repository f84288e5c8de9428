//! Device timestamps for the profiler (`VISWORD_PROFILE=1`, profile.rs): each is a timestamp
//! query written into the open compute pass between two dispatches, so it is reached when the
//! dispatches recorded before it are done. Stamps in one submission time the device's work
//! alone; the device's waits between submissions (for the host to record the next batch) fall
//! between ops and show as the gap between a section's wall time and its ops' sum
//! (`Runtime::write_stamp` keeps each op and its closing stamp in one submission). Queries come
//! in sets of `CHUNK`; a set is resolved and read back when it is full or when the profiler asks
//! for a stamp not yet read, and stamps are numbered across sets so the profiler can hold them
//! as plain numbers.

use super::runtime::Runtime;
use super::WgpuBackend;
use crate::backend::profile::Stamp;
use crate::error::{Error, Result};

/// Timestamp queries per query set.
const CHUNK: u32 = 1024;

/// The stamps of one runtime: `values` holds the resolved ones (nanoseconds) numbered from
/// `first`, then the `written` queries of the open set follow.
pub(crate) struct Stamps {
    set: ::wgpu::QuerySet,
    written: u32,
    first: u64,
    values: Vec<u64>,
}

fn new_set(device: &::wgpu::Device) -> ::wgpu::QuerySet {
    device.create_query_set(&::wgpu::QuerySetDescriptor { label: Some("profile stamps"), ty: ::wgpu::QueryType::Timestamp, count: CHUNK })
}

impl Stamps {
    pub(super) fn new(device: &::wgpu::Device) -> Stamps {
        Stamps { set: new_set(device), written: 0, first: 0, values: Vec::new() }
    }

    /// The number the next stamp gets.
    fn next_id(&self) -> u64 {
        self.first + self.values.len() as u64 + self.written as u64
    }
}

fn lock(m: &std::sync::Mutex<Stamps>) -> std::sync::MutexGuard<'_, Stamps> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Runtime {
    /// Queue a timestamp after the dispatches recorded so far (`end`: it closes an op, see
    /// `Runtime::write_stamp`); its number, or None when this device has no timestamp queries.
    pub(crate) fn stamp(&self, end: bool) -> Result<Option<u64>> {
        let Some(m) = &self.stamps else { return Ok(None) };
        let mut s = lock(m);
        if s.written == CHUNK {
            self.resolve(&mut s)?;
        }
        let (id, index) = (s.next_id(), s.written);
        self.write_stamp(&s.set, index, end)?;
        s.written += 1;
        self.check("profile stamp")?;
        Ok(Some(id))
    }

    /// Stamp `id`'s time in nanoseconds on the device's clock (reads the open set back when
    /// the stamp is in it: waits for the device).
    pub(crate) fn stamp_ns(&self, id: u64) -> Result<u64> {
        let m = self.stamps.as_ref().ok_or_else(|| Error::shape("profile", "this wgpu device has no timestamp queries"))?;
        let mut s = lock(m);
        if id >= s.next_id() || id < s.first {
            return Err(Error::shape("profile", format!("stamp {id} is not held (held: {}..{})", s.first, s.next_id())));
        }
        if id >= s.first + s.values.len() as u64 {
            self.resolve(&mut s)?;
        }
        Ok(s.values[(id - s.first) as usize])
    }

    /// Drop the resolved values of the stamps numbered below `upto` (the profiler has read them).
    pub(crate) fn forget_stamps(&self, upto: u64) {
        if let Some(m) = &self.stamps {
            let mut s = lock(m);
            let n = (upto.saturating_sub(s.first) as usize).min(s.values.len());
            s.values.drain(..n);
            s.first += n as u64;
        }
    }

    /// Resolve the open set's written queries, read them back in nanoseconds and start a new set.
    fn resolve(&self, s: &mut Stamps) -> Result<()> {
        let n = s.written;
        if n == 0 {
            return Ok(());
        }
        let bytes = n as u64 * 8;
        let target = self.device.create_buffer(&::wgpu::BufferDescriptor {
            label: Some("profile stamps"),
            size: bytes,
            usage: ::wgpu::BufferUsages::QUERY_RESOLVE | ::wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        self.with_encoder(|e| e.resolve_query_set(&s.set, 0..n, &target, 0));
        let raw = self.read(&target, bytes)?;
        let period = self.queue.get_timestamp_period() as f64;
        s.values.extend(raw.chunks_exact(8).map(|c| {
            let ticks = u64::from_le_bytes(c.try_into().unwrap_or_default());
            (ticks as f64 * period).round() as u64
        }));
        s.set = new_set(&self.device);
        s.written = 0;
        self.check("reading the profile stamps back")
    }
}

impl WgpuBackend {
    /// A stamp for the profiler, None without timestamp queries (or if writing one failed).
    pub(crate) fn profile_stamp(&self, end: bool) -> Option<Stamp> {
        match self.rt.stamp(end) {
            Ok(Some(id)) => Some(Stamp::Wgpu(self.rt.clone(), id)),
            _ => None,
        }
    }

    /// Whether the adapter offers what the profiler's stamps need (so `VISWORD_PROFILE=1` would
    /// time this device's ops by stamps).
    pub fn offers_profile_stamps(&self) -> bool {
        self.rt.stamps_offered
    }
}
