//! How long the device spends on submitted work, for benchmarks.

use crate::Instant;

use crate::error::Result;
use crate::gpu::GpuContext;

/// How a [`GpuContext::timed`] figure was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// Timestamp queries written on the device before and after the work.
    Timestamps,
    /// Wall-clock time from an idle device to the end of the work (no timestamp queries on
    /// this adapter).
    Wall,
}

impl Clock {
    /// `timestamps` or `wall`.
    pub fn as_str(self) -> &'static str {
        match self {
            Clock::Timestamps => "timestamps",
            Clock::Wall => "wall",
        }
    }
}

impl GpuContext {
    /// Waits until the device has finished everything submitted so far.
    pub fn sync(&self) -> Result<()> {
        self.device.poll(wgpu::PollType::wait_indefinitely())?;
        Ok(())
    }

    /// Which clock [`timed`](Self::timed) uses on this device.
    pub fn clock(&self) -> Clock {
        if self
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            Clock::Timestamps
        } else {
            Clock::Wall
        }
    }

    /// Runs `f`, which records and submits device work, and returns its result with the
    /// milliseconds the device took: between timestamps written before and after the work
    /// when the adapter has timestamp queries, else wall-clock from an idle device to a full
    /// sync. Either way the device is idle before `f` runs, so earlier work is not counted;
    /// host work inside `f` (allocating outputs, recording) overlaps the device's and is
    /// counted only where the device waits for it.
    pub fn timed<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
        self.sync()?;
        match self.clock() {
            Clock::Wall => {
                let start = Instant::now();
                let out = f()?;
                self.sync()?;
                Ok((out, start.elapsed().as_secs_f64() * 1e3))
            }
            Clock::Timestamps => {
                let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("timed"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                });
                self.stamp(&queries, 0, None);
                let out = f()?;
                let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("timestamps"),
                    size: 16,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                self.stamp(&queries, 1, Some(&resolve));
                let ticks: Vec<u64> = self.read_pod(&resolve, 0, 2)?;
                let ns = ticks[1].saturating_sub(ticks[0]) as f64
                    * f64::from(self.queue.get_timestamp_period());
                Ok((out, ns / 1e6))
            }
        }
    }

    /// Submits an empty compute pass that writes timestamp `index`, then (with `resolve`)
    /// resolves both timestamps into it.
    fn stamp(&self, queries: &wgpu::QuerySet, index: u32, resolve: Option<&wgpu::Buffer>) {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("timestamp"),
            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                query_set: queries,
                beginning_of_pass_write_index: Some(index),
                end_of_pass_write_index: None,
            }),
        });
        if let Some(resolve) = resolve {
            encoder.resolve_query_set(queries, 0..2, resolve, 0);
        }
        self.queue.submit([encoder.finish()]);
    }
}
